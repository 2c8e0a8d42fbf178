//! The @name@ domain: what a valid item and page are, the one error type of the service, and
//! [`Store`], the storage it needs. It knows neither gRPC (the transport maps [`Error`] once)
//! nor SQL (the repo implements the trait).

use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything a call can fail with. The transport turns each variant into one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `INVALID_ARGUMENT`; `field` names the request field that was wrong.
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// `NOT_FOUND`: no item with that id.
    #[error("item not found")]
    NotFound,
    /// `ALREADY_EXISTS`: the name's unique constraint refused the insert.
    #[error("name: an item with this name already exists")]
    NameTaken,
    /// `UNAVAILABLE`: the database could not be reached in time; a retry may succeed.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// `INTERNAL`: anything else; details go to the log, never to the caller.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl Error {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

pub use kit::page::Page;

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const NAME_MAX_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: i64,
    pub name: String,
    /// In the smallest currency unit.
    pub price: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A validated item to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub name: String,
    pub price: i64,
}

impl NewItem {
    pub fn new(name: &str, price: i64) -> Result<Self> {
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        if name.chars().count() > NAME_MAX_CHARS {
            return Err(Error::invalid(
                "name",
                format!("at most {NAME_MAX_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::invalid("name", "must not contain control characters"));
        }
        if price < 0 {
            return Err(Error::invalid("price", "must not be negative"));
        }
        Ok(Self {
            name: name.to_owned(),
            price,
        })
    }
}

/// What the domain needs from storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// One page, and the total number of items.
    async fn page(&self, page: Page) -> Result<(i64, Vec<Item>)>;
    async fn by_id(&self, id: i64) -> Result<Option<Item>>;
    /// [`Error::NameTaken`] when the name exists.
    async fn insert(&self, item: &NewItem) -> Result<Item>;
}

/// The service's rules over a store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Domain {
    store: Arc<dyn Store>,
}

impl Domain {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn list(&self, number: u32, size: u32) -> Result<(i64, Vec<Item>)> {
        self.store.page(Page::new(number, size)).await
    }

    pub async fn get(&self, id: i64) -> Result<Item> {
        if id < 1 {
            return Err(Error::invalid("id", "must be at least 1"));
        }
        self.store.by_id(id).await?.ok_or(Error::NotFound)
    }

    pub async fn create(&self, name: &str, price: i64) -> Result<Item> {
        self.store.insert(&NewItem::new(name, price)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_item_is_validated() {
        assert!(NewItem::new("  ", 1).is_err());
        assert!(NewItem::new("x", -1).is_err());
        assert!(NewItem::new(&"x".repeat(NAME_MAX_CHARS + 1), 1).is_err());
        assert!(NewItem::new("a\u{0}b", 1).is_err());
        assert_eq!(
            NewItem::new(" tea ", 250).ok(),
            Some(NewItem {
                name: "tea".into(),
                price: 250
            })
        );
    }
}

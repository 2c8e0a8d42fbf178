//! Label values kept for the process's life, so a metric label is a borrowed `&'static str`
//! and recording a sample allocates nothing. Only for values from a small, closed set (route
//! templates, service names, the methods a server has), never from a request as such.

use std::sync::{PoisonError, RwLock};

#[derive(Debug, Default)]
pub(crate) struct Interned(RwLock<Vec<&'static str>>);

impl Interned {
    pub(crate) fn get(&self, value: &str) -> &'static str {
        let known = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = known.iter().copied().find(|k| *k == value) {
            return found;
        }
        drop(known);
        let mut known = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = known.iter().copied().find(|k| *k == value) {
            return found;
        }
        let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
        known.push(leaked);
        leaked
    }
}

//! The user domain: what a valid user, page and change are, password hashing, the one error
//! type of the service, and [`UserStore`], the storage it needs. It knows neither gRPC (the
//! transport maps [`Error`] once) nor SQL (the store implements the trait).

use std::{
    collections::HashSet,
    fmt,
    str::FromStr,
    sync::{Arc, LazyLock},
};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng},
};

pub use kit::page::Page;
use proto::user_rules::{self, NICK_NAME_MAX_CHARS, PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything a user call can fail with. The transport turns each variant into one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `INVALID_ARGUMENT`; `field` names the request field that was wrong.
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// `NOT_FOUND`: no (undeleted) user with that id or mobile.
    #[error("user not found")]
    NotFound,
    /// `UNAUTHENTICATED`: the mobile is unknown or the password wrong; one answer for both.
    #[error("wrong mobile or password")]
    BadCredentials,
    /// `ALREADY_EXISTS`: the mobile's unique constraint refused the insert.
    #[error("mobile: a user with this mobile already exists")]
    MobileTaken,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    Male,
    Female,
}

impl Gender {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Male => "male",
            Self::Female => "female",
        }
    }
}

impl FromStr for Gender {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "male" => Ok(Self::Male),
            "female" => Ok(Self::Female),
            other => Err(Error::invalid(
                "gender",
                format!("must be \"male\" or \"female\", got {other:?}"),
            )),
        }
    }
}

impl fmt::Display for Gender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User = 1,
    Admin = 2,
}

impl TryFrom<i64> for Role {
    type Error = Error;

    fn try_from(v: i64) -> Result<Self> {
        match v {
            1 => Ok(Self::User),
            2 => Ok(Self::Admin),
            other => Err(Error::Internal(
                format!("unknown role {other} in the database").into(),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub mobile: String,
    /// argon2id PHC string; `None` where the read did not load it (lists never do).
    pub password_hash: Option<String>,
    pub nick_name: String,
    /// Unix seconds, UTC.
    pub birthday: Option<i64>,
    pub gender: Gender,
    pub role: Role,
}

/// A user to insert, already validated and hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub mobile: String,
    pub password_hash: String,
    pub nick_name: String,
    pub role: Role,
    pub gender: Gender,
    pub birthday: Option<i64>,
}

/// The fields an update sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub nick_name: Option<String>,
    pub gender: Option<Gender>,
    /// `Some(None)` clears the birthday.
    pub birthday: Option<Option<i64>>,
}

pub fn validate_id(id: i64) -> Result<i64> {
    if id > 0 {
        Ok(id)
    } else {
        Err(Error::invalid("id", "must be a positive integer"))
    }
}

/// See [`user_rules::is_mobile`].
pub fn validate_mobile(mobile: &str) -> Result<&str> {
    if user_rules::is_mobile(mobile) {
        Ok(mobile)
    } else {
        Err(Error::invalid(
            "mobile",
            format!("must be {}", user_rules::mobile_rule()),
        ))
    }
}

pub fn validate_password(password: &str) -> Result<&str> {
    let n = password.chars().count();
    if (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&n) {
        Ok(password)
    } else {
        Err(Error::invalid(
            "password",
            format!("must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters, got {n}"),
        ))
    }
}

pub fn validate_nick_name(nick_name: &str) -> Result<&str> {
    let n = nick_name.chars().count();
    if nick_name.trim().is_empty() {
        Err(Error::invalid("nick_name", "must not be blank"))
    } else if n > NICK_NAME_MAX_CHARS {
        Err(Error::invalid(
            "nick_name",
            format!("must be at most {NICK_NAME_MAX_CHARS} characters, got {n}"),
        ))
    } else {
        Ok(nick_name)
    }
}

/// 0 means "no birthday"; anything else must fit the database's signed 64-bit column.
pub fn validate_birthday(unix_seconds: u64) -> Result<Option<i64>> {
    match unix_seconds {
        0 => Ok(None),
        s => i64::try_from(s)
            .map(Some)
            .map_err(|_| Error::invalid("birthday", "out of range")),
    }
}

/// argon2id with the crate's recommended parameters, run off the async runtime: one hash
/// costs tens of milliseconds of CPU, which would stall every other call on the thread.
pub async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(e.to_string().into()))
    })
    .await
    .map_err(|e| Error::Internal(e.into()))?
}

/// The hash an unknown mobile's login is checked against, made with the current parameters
/// at first use: a login costs one argon2 verification whether the mobile exists or not.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(b"no user has this password", &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Whether a stored hash was made with other than today's algorithm and parameters.
fn needs_rehash(phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let current = Params::default();
    hash.algorithm != Algorithm::Argon2id.ident()
        || hash.version != Some(Version::V0x13.into())
        || Params::try_from(&hash).map_or(true, |p| {
            (p.m_cost(), p.t_cost(), p.p_cost())
                != (current.m_cost(), current.t_cost(), current.p_cost())
        })
}

/// What the domain needs from storage. Implemented once over SQL for SQLite and PostgreSQL
/// (`repo`); every call reads the database, and failures arrive already as domain errors.
#[async_trait::async_trait]
pub trait UserStore: Send + Sync + fmt::Debug {
    /// The exact number of live users and one page of them in id order, read together.
    async fn page(&self, page: Page) -> Result<(i64, Vec<User>)>;
    async fn by_id(&self, id: i64) -> Result<Option<User>>;
    async fn by_mobile(&self, mobile: &str) -> Result<Option<User>>;
    /// Fails with [`Error::MobileTaken`] when the mobile is registered.
    async fn insert(&self, user: &NewUser) -> Result<User>;
    /// Inserts unless the mobile exists; `true` when a row was added. For idempotent seeding.
    async fn insert_if_absent(&self, user: &NewUser) -> Result<bool>;
    /// Every registered mobile, deleted users included.
    async fn mobiles(&self) -> Result<HashSet<String>>;
    /// Sets only the fields present in `changes`; `false` when no such user exists.
    async fn update(&self, id: i64, changes: &UserChanges) -> Result<bool>;
    /// Replaces a user's password hash; `false` when no such user exists.
    async fn set_password_hash(&self, id: i64, hash: &str) -> Result<bool>;
}

/// The use cases behind the six RPCs.
#[derive(Debug, Clone)]
pub struct Users {
    repo: Arc<dyn UserStore>,
}

impl Users {
    pub fn new(repo: Arc<dyn UserStore>) -> Self {
        // Made now, off the runtime, so the first login does not pay for it.
        std::thread::spawn(|| LazyLock::force(&DUMMY_HASH));
        Self { repo }
    }

    /// The user whose mobile and password these are, or [`Error::BadCredentials`] for an
    /// unknown mobile and a wrong password alike: both cost one argon2 verification, so the
    /// answer's timing does not tell which. A hash made with older parameters is replaced
    /// with one made with today's on success. The returned user carries no hash.
    pub async fn verify(&self, mobile: &str, password: &str) -> Result<User> {
        let mobile = validate_mobile(mobile)?;
        let password = validate_password(password)?;
        let mut user = self.repo.by_mobile(mobile).await?;
        let stored = user.as_mut().and_then(|u| u.password_hash.take());
        let (candidate, phc) = (password.to_owned(), stored.clone());
        let matches = tokio::task::spawn_blocking(move || {
            let phc = phc.as_deref().unwrap_or(&DUMMY_HASH);
            PasswordHash::new(phc).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(candidate.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .map_err(|e| Error::Internal(e.into()))?;
        let (Some(user), Some(stored), true) = (user, stored, matches) else {
            return Err(Error::BadCredentials);
        };
        if needs_rehash(&stored) {
            match hash_password(password).await {
                Ok(fresh) => {
                    if let Err(e) = self.repo.set_password_hash(user.id, &fresh).await {
                        tracing::warn!(user = user.id, error = %e, "could not store the re-made password hash");
                    }
                }
                Err(e) => {
                    tracing::warn!(user = user.id, error = %e, "could not re-make the password hash")
                }
            }
        }
        Ok(user)
    }

    /// The total number of users and one page of them, ordered by id.
    pub async fn list(&self, page: Page) -> Result<(i64, Vec<User>)> {
        self.repo.page(page).await
    }

    pub async fn by_id(&self, id: i64) -> Result<User> {
        let id = validate_id(id)?;
        self.repo.by_id(id).await?.ok_or(Error::NotFound)
    }

    pub async fn by_mobile(&self, mobile: &str) -> Result<User> {
        let mobile = validate_mobile(mobile)?;
        self.repo.by_mobile(mobile).await?.ok_or(Error::NotFound)
    }

    /// Creates a plain user. A duplicate mobile is caught by the unique constraint (a
    /// pre-check would race with a concurrent create) and reported as [`Error::MobileTaken`].
    pub async fn create(&self, mobile: &str, password: &str, nick_name: &str) -> Result<User> {
        let mobile = validate_mobile(mobile)?;
        let password = validate_password(password)?;
        let nick_name = if nick_name.is_empty() {
            mobile
        } else {
            validate_nick_name(nick_name)?
        };
        let user = NewUser {
            mobile: mobile.to_owned(),
            password_hash: hash_password(password).await?,
            nick_name: nick_name.to_owned(),
            role: Role::User,
            gender: Gender::Male,
            birthday: None,
        };
        self.repo.insert(&user).await
    }

    pub async fn update(&self, id: i64, changes: UserChanges) -> Result<()> {
        let id = validate_id(id)?;
        if let Some(nick_name) = &changes.nick_name {
            validate_nick_name(nick_name)?;
        }
        if self.repo.update(id, &changes).await? {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobile_must_be_eleven_digits_starting_with_one() {
        assert!(validate_mobile("13800000001").is_ok());
        for bad in [
            "",
            "23800000001",
            "1380000000",
            "138000000012",
            "1380000000a",
            "１3800000001",
        ] {
            let err = validate_mobile(bad).expect_err(bad);
            assert!(
                matches!(
                    err,
                    Error::InvalidArgument {
                        field: "mobile",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn password_and_nick_name_bounds_count_characters() {
        assert!(validate_password("密码密码密码").is_ok());
        assert!(validate_password("12345").is_err());
        assert!(validate_password(&"x".repeat(65)).is_err());
        assert!(validate_nick_name("   ").is_err());
        assert!(validate_nick_name(&"名".repeat(32)).is_ok());
        assert!(validate_nick_name(&"名".repeat(33)).is_err());
    }

    #[test]
    fn gender_accepts_only_the_two_stored_values() {
        assert_eq!("female".parse::<Gender>().ok(), Some(Gender::Female));
        assert!("Male".parse::<Gender>().is_err());
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() -> Result<()> {
        let phc = hash_password("correct horse").await?;
        assert!(phc.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&phc).map_err(|e| Error::Internal(e.to_string().into()))?;
        let argon2 = Argon2::default();
        assert!(argon2.verify_password(b"correct horse", &parsed).is_ok());
        assert!(argon2.verify_password(b"wrong horse", &parsed).is_err());
        Ok(())
    }
}

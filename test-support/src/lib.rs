//! Helpers every service's tests share: [`eventually`] (wait on a condition with a deadline,
//! never a sleep), [`skip`] (say `skipped`, or fail when CI should have had what was
//! missing), and [`TestDb`] (a throw-away SQLite file, or a fresh database on the PostgreSQL
//! server named by `TEST_DATABASE_URL`).

mod agent;
pub mod load;
pub mod otlp;

use std::{future::Future, time::Duration};

pub use agent::Agent;

use sqlx::{Connection, Executor};

/// Polls `check` every 10 ms until it holds; panics with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A test that cannot run here: prints `skipped: <why>` and returns, except under `CI=true`,
/// where what is missing should have been provided, and the test fails.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true, but this test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// Keeps the SQLite file's directory alive for the test.
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// `None` (after [`skip`]) when PostgreSQL is asked for but `TEST_DATABASE_URL` is not
    /// set; under `CI=true` that is a failure, never a silent skip.
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Some(Self {
                    backend,
                    url,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let admin = match std::env::var("TEST_DATABASE_URL") {
                    Ok(url) if !url.is_empty() => url,
                    _ => {
                        skip("set TEST_DATABASE_URL to run the PostgreSQL tests (make test does)");
                        return None;
                    }
                };
                sqlx::any::install_default_drivers();
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::AnyConnection::connect(&admin)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                Some(Self {
                    backend,
                    url: with_database(&admin, &name),
                    _dir: None,
                })
            }
        }
    }

    /// A plain connection, for tests that look at the tables directly.
    pub async fn connect(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

/// `postgres://u@h:p/admin?x` with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    format!("{root}/{db}{query}")
}

/// Reads the address a server wrote to its `--ready-file`, waiting up to `within`.
pub async fn ready_address(file: &std::path::Path, within: Duration) -> std::net::SocketAddr {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(addr) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return addr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no address in {} after {within:?}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_swaps_only_the_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
    }
}

//! Opens the database chosen by URL at run time on sqlx's native driver for it (SQLite or
//! PostgreSQL), applies the matching migration set from `migrations/`, and hands out the
//! [`UserStore`] over it.

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    ConnectOptions, Connection, PgPool, SqliteConnection,
    migrate::Migrator,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::DatabaseSettings,
    domain::UserStore,
    repo::{Connections, SqlStore},
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The SQL dialect behind a URL; it decides the driver, the migration set and the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl FromStr for Dialect {
    type Err = DbError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => Err(DbError::UnsupportedUrl(scheme.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL scheme {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// An open database: SQLite connections or a PostgreSQL pool. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(Arc<SqliteConnections>),
    Postgres(PgPool),
}

impl Db {
    /// Connects (creating the default SQLite data directory if needed) and, when
    /// `migrate_on_start` is set, applies pending migrations.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, DbError> {
        let db = Self::open(settings).await?;
        if settings.migrate_on_start {
            db.migrate().await?;
        }
        Ok(db)
    }

    /// Connects without touching the schema.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, DbError> {
        let url = settings.effective_url();
        let dialect: Dialect = url.parse()?;
        if settings.url.is_none() {
            std::fs::create_dir_all(&settings.data_dir).map_err(|source| DbError::DataDir {
                path: settings.data_dir.display().to_string(),
                source,
            })?;
        }
        match dialect {
            Dialect::Sqlite => {
                // WAL lets readers run beside a writer, so several instances (and the seed
                // command) can share one file without "database is locked".
                let options = SqliteConnectOptions::from_str(&url)
                    .map_err(DbError::Url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal);
                let set = Arc::new(SqliteConnections::new(
                    options,
                    settings.max_connections.unwrap_or(2),
                    settings.acquire_timeout,
                ));
                // Open one now, so a bad path fails at start rather than on the first call.
                drop(set.acquire().await.map_err(DbError::Connect)?);
                Ok(Self::Sqlite(set))
            }
            Dialect::Postgres => {
                let options = PgConnectOptions::from_str(&url).map_err(DbError::Url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections.unwrap_or(16))
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(DbError::Connect)?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The users table on this database.
    pub fn store(&self) -> Arc<dyn UserStore> {
        match self {
            Self::Sqlite(set) => Arc::new(SqlStore::new(Arc::clone(set))),
            Self::Postgres(pool) => Arc::new(SqlStore::new(pool.clone())),
        }
    }

    /// Applies pending migrations (on PostgreSQL sqlx serialises concurrent runs with a lock).
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(set) => {
                let mut conn = set.acquire().await.map_err(DbError::Connect)?;
                SQLITE_MIGRATIONS.run(&mut *conn).await?;
            }
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// One round trip, to tell "the database answers" before the service reports SERVING.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(set) => set.acquire().await?.ping().await,
            Self::Postgres(pool) => pool.acquire().await?.ping().await,
        }
    }
}

/// SQLite connections kept by user-srv itself rather than in an `sqlx::Pool`. Each sqlx
/// SQLite connection runs on a thread of its own and every command is a round trip to it;
/// the pool adds two more per call (a ping when a connection is taken and another when it
/// is given back), which for an embedded database check nothing. Here a call costs one.
/// Connections open lazily up to `max`, and one whose worker died is dropped and replaced.
#[derive(Debug)]
pub struct SqliteConnections {
    options: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

impl SqliteConnections {
    fn new(options: SqliteConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        let max = usize::try_from(max.max(1)).unwrap_or(1);
        Self {
            options,
            idle: Mutex::new(Vec::with_capacity(max)),
            permits: Arc::new(Semaphore::new(max)),
            acquire_timeout,
        }
    }

    fn take_idle(&self) -> Option<SqliteConnection> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }
}

/// A SQLite connection lent for one call; it returns to the set when dropped.
#[derive(Debug)]
pub struct SqliteLease {
    conn: Option<SqliteConnection>,
    set: Arc<SqliteConnections>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for SqliteLease {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl std::ops::DerefMut for SqliteLease {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for SqliteLease {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.set.idle.lock()) {
            idle.push(conn);
        }
    }
}

impl Connections for Arc<SqliteConnections> {
    type Database = sqlx::Sqlite;
    type Lease = SqliteLease;

    async fn acquire(&self) -> Result<SqliteLease, sqlx::Error> {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(
                self.acquire_timeout,
                Arc::clone(&self.permits).acquire_owned(),
            )
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?,
        };
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        Ok(SqliteLease {
            conn: Some(conn),
            set: Arc::clone(self),
            _permit: permit,
        })
    }

    fn discard(mut lease: SqliteLease) {
        // Not returned to the set: its permit frees a slot for a fresh connection.
        lease.conn = None;
    }
}

impl Connections for PgPool {
    type Database = sqlx::Postgres;
    type Lease = PoolConnection<sqlx::Postgres>;

    async fn acquire(&self) -> Result<Self::Lease, sqlx::Error> {
        PgPool::acquire(self).await
    }

    fn discard(mut lease: Self::Lease) {
        lease.close_on_drop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_follows_the_url_scheme() {
        assert_eq!(
            "sqlite://x.db".parse::<Dialect>().ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            "postgres://h/db".parse::<Dialect>().ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            "postgresql://h/db".parse::<Dialect>().ok(),
            Some(Dialect::Postgres)
        );
        let err = "mysql://h/db"
            .parse::<Dialect>()
            .expect_err("mysql is not supported");
        assert!(err.to_string().contains("mysql"));
    }
}

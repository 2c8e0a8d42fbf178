//! Opens the database chosen by URL at run time (SQLite or PostgreSQL) through sqlx's Any
//! driver and applies the matching migration set from `migrations/`.

use std::str::FromStr;

use sqlx::{
    Executor,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::Migrator,
};

use crate::config::DatabaseSettings;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The SQL dialect behind a URL; it decides the migration set and a few connection settings.
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

/// A pool plus the dialect it speaks.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: sqlx::AnyPool,
    pub dialect: Dialect,
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
        install_default_drivers();
        let max_connections = settings.max_connections.unwrap_or(match dialect {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 16,
        });
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside a writer, so several instances (and the
                        // seed command) can share one file without "database is locked".
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(DbError::Connect)?;
        Ok(Self { pool, dialect })
    }

    /// Applies pending migrations (sqlx serialises concurrent runs with a lock).
    pub async fn migrate(&self) -> Result<(), DbError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// One round trip, to tell "the database answers" before the service reports SERVING.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
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

//! A service's database, chosen by URL at run time: SQLite (embedded, the default) or
//! PostgreSQL, each on sqlx's native driver. It applies the service's migration set for that
//! dialect, answers pings for readiness, and lends connections one statement at a time
//! through [`Connections`], which a store is written against once for both dialects.

use std::{
    fmt,
    future::Future,
    ops::DerefMut,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sqlx::{
    ConnectOptions, Connection, Database, PgPool, SqliteConnection,
    migrate::Migrator,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where a service's data lives and how it is reached. `Debug` shows the URL with its
/// password redacted.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…`. Unset: the SQLite file `file` in `data_dir`.
    pub url: Option<String>,
    /// Where the default SQLite file lives; created if missing.
    pub data_dir: PathBuf,
    /// The default SQLite file's name (each service has its own).
    pub file: String,
    /// Connections at most. Unset: 2 for SQLite (one writer at a time; each connection is a
    /// thread, and more of them only add context switches) and 16 for PostgreSQL.
    pub max_connections: Option<u32>,
    /// Bounds the wait for a free connection (and, on PostgreSQL, for opening one), so a
    /// database that is down or saturated shows up as a quick `UNAVAILABLE` rather than a
    /// hung call: well under the gateways' first-attempt and call deadlines.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long start-up waits for the database to answer its first connection. It may
    /// still be starting beside the service (compose, a pod's first seconds) or be slow on a
    /// loaded host; after this the service exits with the error. A refused login or a bad
    /// database name fails at once.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Apply pending migrations when serving starts. Turn off where a separate `migrate`
    /// step runs them once for many replicas.
    pub migrate_on_start: bool,
    /// How often the database is pinged while serving; a failed ping turns health
    /// NOT_SERVING (and so the Consul check critical) until one succeeds again.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("data"),
            file: "data.db".to_owned(),
            max_connections: None,
            acquire_timeout: Duration::from_millis(500),
            start_timeout: Duration::from_secs(30),
            migrate_on_start: true,
            check_interval: Duration::from_secs(5),
        }
    }
}

/// `scheme://user:password@host/…` with the password replaced by `[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:[redacted]")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("data_dir", &self.data_dir)
            .field("file", &self.file)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("start_timeout", &self.start_timeout)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

impl DatabaseSettings {
    /// The URL to connect to: the configured one, or the default SQLite file.
    pub fn effective_url(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(&self.file).display()
            ),
        }
    }
}

/// A service's migration sets, one per dialect (`sqlx::migrate!` of
/// `migrations/<service>/sqlite` and `…/postgres`).
#[derive(Debug)]
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

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
    #[error("the database does not answer: {0}")]
    Ping(#[source] sqlx::Error),
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
    /// Connects (creating the default SQLite data directory if needed), applies pending
    /// migrations when `migrate_on_start` is set, and checks the database answers.
    pub async fn connect(
        settings: &DatabaseSettings,
        migrations: &Migrations,
    ) -> Result<Self, DbError> {
        let db = Self::open(settings).await?;
        if settings.migrate_on_start {
            db.migrate(migrations).await?;
        }
        db.ping().await.map_err(DbError::Ping)?;
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
                drop(first_connection(settings.start_timeout, || set.acquire()).await?);
                Ok(Self::Sqlite(set))
            }
            Dialect::Postgres => {
                let options = PgConnectOptions::from_str(&url).map_err(DbError::Url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections.unwrap_or(16))
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_lazy_with(options);
                drop(first_connection(settings.start_timeout, || pool.acquire()).await?);
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

    /// Applies pending migrations (on PostgreSQL sqlx serialises concurrent runs with a lock).
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), DbError> {
        match self {
            Self::Sqlite(set) => {
                let mut conn = set.acquire().await.map_err(DbError::Connect)?;
                migrations.sqlite.run(&mut *conn).await?;
            }
            Self::Postgres(pool) => migrations.postgres.run(pool).await?,
        }
        Ok(())
    }

    /// Connections (in use, idle) right now, for metrics.
    pub fn pool_stats(&self) -> (usize, usize) {
        match self {
            Self::Sqlite(set) => {
                let idle = set.idle.lock().map_or(0, |i| i.len());
                (
                    set.max.saturating_sub(set.permits.available_permits()),
                    idle,
                )
            }
            Self::Postgres(pool) => {
                let idle = pool.num_idle();
                let size = usize::try_from(pool.size()).unwrap_or(usize::MAX);
                (size.saturating_sub(idle), idle)
            }
        }
    }

    /// One round trip: "the database answers".
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(set) => set.acquire().await?.ping().await,
            Self::Postgres(pool) => pool.acquire().await?.ping().await,
        }
    }
}

/// A source of connections for one statement at a time.
pub trait Connections: Send + Sync + fmt::Debug + 'static {
    type Database: Database;
    /// OpenTelemetry's `db.system` name of the database (`sqlite`, `postgresql`).
    const SYSTEM: &'static str;
    /// A connection held for one call; dropping it gives it back.
    type Lease: DerefMut<Target = <Self::Database as Database>::Connection> + Send;

    fn acquire(&self) -> impl Future<Output = Result<Self::Lease, sqlx::Error>> + Send;

    /// Drops a connection that failed in a way that may have broken it, instead of reusing it.
    fn discard(lease: Self::Lease);
}

/// A span for one store call (`db.system`, `db.operation`), a child of the RPC's span, for
/// traces; `Span::none()` when traces are off, so the call costs nothing extra.
pub fn span(system: &'static str, operation: &'static str) -> tracing::Span {
    if bootstrap::telemetry::enabled() {
        tracing::info_span!(
            "db",
            db.system = system,
            db.operation = operation,
            otel.kind = "client"
        )
    } else {
        tracing::Span::none()
    }
}

/// One store call on a pooled connection, written once for every store: a connection from
/// `$connections` (of [`Connections`] type `$c`), `$statement` on it (a future of
/// `sqlx::Result`, which may run several statements), the connection given back through
/// [`settle`], the error mapped by `$map_err`, all inside the call's [`span`] named
/// `$operation`. A macro, because the statement borrows the connection it is given.
///
/// ```ignore
/// let row = kit::on_connection!(C, &self.connections, "by_id", db_error, |conn| {
///     sqlx::query_as::<_, Row>(BY_ID_SQL).bind(id).fetch_optional(conn)
/// })?;
/// ```
#[macro_export]
macro_rules! on_connection {
    ($c:ty, $connections:expr, $operation:literal, $map_err:expr, |$conn:ident| $statement:expr) => {
        $crate::db::in_span(
            $crate::db::span(<$c as $crate::db::Connections>::SYSTEM, $operation),
            async {
                let mut lease = <$c as $crate::db::Connections>::acquire($connections)
                    .await
                    .map_err($map_err)?;
                let $conn = &mut *lease;
                let outcome = $statement.await;
                $crate::db::settle::<$c, _>(lease, outcome).map_err($map_err)
            },
        )
        .await
    };
}

/// `future`, run inside `span` (for [`on_connection!`]).
pub async fn in_span<F: Future>(span: tracing::Span, future: F) -> F::Output {
    tracing::Instrument::instrument(future, span).await
}

/// A statement's outcome, with its connection given back; a connection the failure may
/// have left unusable (its worker gone, its socket broken) is dropped rather than reused.
pub fn settle<C: Connections, T>(lease: C::Lease, outcome: sqlx::Result<T>) -> sqlx::Result<T> {
    if let Err(e) = &outcome {
        count_error(e);
    }
    if let Err(sqlx::Error::WorkerCrashed | sqlx::Error::Io(_)) = &outcome {
        C::discard(lease);
    }
    outcome
}

/// Woken when a statement finds the database out of reach, so that the server's readiness
/// check runs at once instead of at its next interval.
static TROUBLE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Resolves when a statement next finds the database out of reach (or already has since the
/// last call).
pub async fn trouble() {
    TROUBLE.notified().await;
}

/// Database errors of this process by kind: unavailable, constraint, other.
static ERRORS: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];

fn count_error(e: &sqlx::Error) {
    let kind = if is_unavailable(e) {
        TROUBLE.notify_one();
        0
    } else if matches!(e, sqlx::Error::Database(d) if d.is_unique_violation() || d.is_foreign_key_violation() || d.is_check_violation())
    {
        1
    } else {
        2
    };
    ERRORS[kind].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Database errors so far in this process: [unavailable, constraint, other] (for metrics).
pub fn error_totals() -> [u64; 3] {
    ERRORS
        .each_ref()
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
}

/// Now in unix seconds, as every table here stores its timestamps (`created_at`,
/// `updated_at`: BIGINT in both dialects).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether a failure is the database being out of reach (worth a retry elsewhere or later)
/// rather than a problem with the statement.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// SQLite connections kept by the service itself rather than in an `sqlx::Pool`. Each sqlx
/// SQLite connection runs on a thread of its own and every command is a round trip to it;
/// the pool adds two more per call (a ping when a connection is taken and another when it
/// is given back), which for an embedded database check nothing. Here a call costs one.
/// The first connection, tried again while the database is merely not there yet (refused,
/// reset, or slower than `acquire_timeout`) until `patience` runs out. Serving keeps the
/// short `acquire_timeout` for quick `UNAVAILABLE`s; start-up must not give up that fast.
async fn first_connection<C, Fut>(
    patience: Duration,
    mut acquire: impl FnMut() -> Fut,
) -> Result<C, DbError>
where
    Fut: Future<Output = Result<C, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(50);
    loop {
        match acquire().await {
            Ok(conn) => return Ok(conn),
            Err(error)
                if not_there_yet(&error) && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::warn!(%error, retry_in = ?pause, "the database does not answer yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(error) => return Err(DbError::Connect(error)),
        }
    }
}

/// Refused, reset, slower than `acquire_timeout`, or PostgreSQL's "the database system is
/// starting up" (57P03): what a database that is on its way looks like.
fn not_there_yet(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// Connections open lazily up to `max`, and one whose worker died is dropped and replaced.
#[derive(Debug)]
pub struct SqliteConnections {
    options: SqliteConnectOptions,
    max: usize,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

impl SqliteConnections {
    fn new(options: SqliteConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        let max = usize::try_from(max.max(1)).unwrap_or(1);
        Self {
            options,
            max,
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
    const SYSTEM: &'static str = "sqlite";

    async fn acquire(&self) -> Result<SqliteLease, sqlx::Error> {
        self.lease().await.inspect_err(count_error)
    }

    fn discard(mut lease: SqliteLease) {
        // Not returned to the set: its permit frees a slot for a fresh connection.
        lease.conn = None;
    }
}

impl SqliteConnections {
    async fn lease(self: &Arc<Self>) -> Result<SqliteLease, sqlx::Error> {
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
}

impl Connections for PgPool {
    type Database = sqlx::Postgres;
    type Lease = PoolConnection<sqlx::Postgres>;
    const SYSTEM: &'static str = "postgresql";

    async fn acquire(&self) -> Result<Self::Lease, sqlx::Error> {
        PgPool::acquire(self).await.inspect_err(count_error)
    }

    fn discard(mut lease: Self::Lease) {
        lease.close_on_drop();
    }
}

/// Builds a store over whichever connections `db` has: `SqlStore::new` for both dialects.
#[macro_export]
macro_rules! store_over {
    ($db:expr, $store:ident) => {
        match $db {
            $crate::db::Db::Sqlite(set) => {
                ::std::sync::Arc::new($store::new(::std::sync::Arc::clone(set))) as _
            }
            $crate::db::Db::Postgres(pool) => ::std::sync::Arc::new($store::new(pool.clone())) as _,
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// `first_connection` over a stand-in acquire that fails `failures` times with `error`.
    async fn first_after(
        failures: u32,
        error: fn() -> sqlx::Error,
        patience: Duration,
    ) -> (Result<u32, DbError>, u32) {
        let calls = AtomicU32::new(0);
        let result = first_connection(patience, || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { if n > failures { Ok(n) } else { Err(error()) } }
        })
        .await;
        (result, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn start_up_waits_for_a_database_that_is_not_there_yet() {
        let refused = || sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        let (result, calls) = first_after(3, refused, Duration::from_secs(30)).await;
        assert_eq!((result.ok(), calls), (Some(4), 4));
        let slow = || sqlx::Error::PoolTimedOut;
        let (result, _) = first_after(2, slow, Duration::from_secs(30)).await;
        assert_eq!(result.ok(), Some(3));
    }

    #[tokio::test]
    async fn start_up_gives_up_after_its_patience_and_at_once_on_a_refusal() {
        let slow = || sqlx::Error::PoolTimedOut;
        let (result, calls) = first_after(u32::MAX, slow, Duration::from_millis(300)).await;
        assert!(
            matches!(result, Err(DbError::Connect(sqlx::Error::PoolTimedOut))),
            "{result:?}"
        );
        assert!((2..10).contains(&calls), "tried {calls} times in 300 ms");
        // A refused login is not a database on its way: no second try.
        let refused_login = || sqlx::Error::Protocol("password authentication failed".into());
        let (result, calls) = first_after(u32::MAX, refused_login, Duration::from_secs(30)).await;
        assert!(matches!(
            result,
            Err(DbError::Connect(sqlx::Error::Protocol(_)))
        ));
        assert_eq!(calls, 1);
    }

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

    #[test]
    fn passwords_in_urls_are_redacted_in_debug() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/users?sslmode=require"),
            "postgres://u:[redacted]@db:5432/users?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@db/users"), "postgres://u@db/users");
        assert_eq!(
            redact_url("sqlite://data/x.db?mode=rwc"),
            "sqlite://data/x.db?mode=rwc"
        );
        let settings = DatabaseSettings {
            url: Some("postgres://u:s3cret@db/users".into()),
            ..DatabaseSettings::default()
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn the_default_url_is_the_service_file_in_the_data_dir() {
        let settings = DatabaseSettings {
            file: "goods.db".into(),
            ..DatabaseSettings::default()
        };
        assert_eq!(settings.effective_url(), "sqlite://data/goods.db?mode=rwc");
    }
}

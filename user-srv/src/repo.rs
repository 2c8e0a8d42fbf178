//! SQL for the users table, written once for both dialects (`$n` placeholders, portable
//! types) and run through sqlx's Any driver. Maps database failures to domain errors.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AnyPool, FromRow};

use crate::{
    db::Db,
    domain::{Error, NewUser, Page, Result, User, UserChanges},
};

/// The user columns, as a macro so queries can be `concat!`-ed at compile time.
macro_rules! columns {
    () => {
        "id, mobile, password, nick_name, birthday, gender, role"
    };
}
const COLUMNS: &str = columns!();
const PAGE_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    ", (SELECT COUNT(*) FROM users WHERE deleted = 0) AS total ",
    "FROM users WHERE deleted = 0 ORDER BY id LIMIT $1 OFFSET $2"
);

#[derive(Debug, Clone)]
pub struct UserRepo {
    pool: AnyPool,
}

#[derive(FromRow)]
struct UserRow {
    id: i64,
    mobile: String,
    password: String,
    nick_name: String,
    birthday: Option<i64>,
    gender: String,
    role: i64,
}

impl TryFrom<UserRow> for User {
    type Error = Error;

    fn try_from(r: UserRow) -> Result<Self> {
        Ok(User {
            id: r.id,
            mobile: r.mobile,
            password_hash: r.password,
            nick_name: r.nick_name,
            birthday: r.birthday,
            gender: r
                .gender
                .parse()
                .map_err(|_| Error::Internal(format!("unknown gender {:?}", r.gender).into()))?,
            role: r.role.try_into()?,
        })
    }
}

/// Connection trouble is `Unavailable` (worth a retry); a duplicate mobile is `MobileTaken`;
/// everything else is `Internal`.
fn db_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::MobileTaken,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Error::Unavailable(e.into()),
        e => Error::Internal(e.into()),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl UserRepo {
    pub fn new(db: &Db) -> Self {
        Self {
            pool: db.pool.clone(),
        }
    }

    pub async fn count(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE deleted = 0")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    /// One page and the total in one round trip: the uncorrelated count subquery runs once
    /// per statement. A page past the end has no row to carry the total, so it costs a
    /// second query.
    pub async fn page(&self, page: Page) -> Result<(i64, Vec<User>)> {
        #[derive(FromRow)]
        struct PageRow {
            #[sqlx(flatten)]
            user: UserRow,
            total: i64,
        }
        let rows = sqlx::query_as::<_, PageRow>(PAGE_SQL)
            .bind(i64::from(page.size))
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let total = match rows.first() {
            Some(row) => row.total,
            None => self.count().await?,
        };
        let users = rows
            .into_iter()
            .map(|r| User::try_from(r.user))
            .collect::<Result<_>>()?;
        Ok((total, users))
    }

    pub async fn by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1 AND deleted = 0");
        self.fetch_optional(sqlx::query_as(&sql).bind(id)).await
    }

    pub async fn by_mobile(&self, mobile: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE mobile = $1 AND deleted = 0");
        self.fetch_optional(sqlx::query_as(&sql).bind(mobile)).await
    }

    async fn fetch_optional<'q>(
        &self,
        query: sqlx::query::QueryAs<'q, sqlx::Any, UserRow, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Option<User>> {
        query
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .map(User::try_from)
            .transpose()
    }

    pub async fn insert(&self, user: &NewUser) -> Result<User> {
        let sql = format!(
            "INSERT INTO users (mobile, password, nick_name, birthday, gender, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {COLUMNS}"
        );
        self.bind_new(&sql, user)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?
            .try_into()
    }

    /// Every registered mobile (deleted users included): seeding skips these up front, so a
    /// second run does not even advance the id sequence.
    pub async fn mobiles(&self) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT mobile FROM users")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().collect())
    }

    /// Inserts unless the mobile exists; `true` when a row was added. For idempotent seeding.
    pub async fn insert_if_absent(&self, user: &NewUser) -> Result<bool> {
        let sql = format!(
            "INSERT INTO users (mobile, password, nick_name, birthday, gender, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (mobile) DO NOTHING RETURNING {COLUMNS}"
        );
        let row = self
            .bind_new(&sql, user)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    fn bind_new<'q>(
        &self,
        sql: &'q str,
        u: &NewUser,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, UserRow, sqlx::any::AnyArguments<'q>> {
        sqlx::query_as(sql)
            .bind(u.mobile.clone())
            .bind(u.password_hash.clone())
            .bind(u.nick_name.clone())
            .bind(u.birthday)
            .bind(u.gender.as_str())
            .bind(u.role as i64)
            .bind(now())
    }

    /// Sets only the fields present in `changes`; `false` when no such user exists.
    pub async fn update(&self, id: i64, changes: &UserChanges) -> Result<bool> {
        let mut sets = vec!["updated_at = $1".to_owned()];
        let mut n = 1;
        let mut column = |name: &str| {
            n += 1;
            sets.push(format!("{name} = ${n}"));
        };
        if changes.nick_name.is_some() {
            column("nick_name");
        }
        if changes.gender.is_some() {
            column("gender");
        }
        if changes.birthday.is_some() {
            column("birthday");
        }
        let sql = format!(
            "UPDATE users SET {} WHERE id = ${} AND deleted = 0",
            sets.join(", "),
            n + 1
        );
        let mut query = sqlx::query(&sql).bind(now());
        if let Some(nick_name) = &changes.nick_name {
            query = query.bind(nick_name.clone());
        }
        if let Some(gender) = changes.gender {
            query = query.bind(gender.as_str());
        }
        if let Some(birthday) = changes.birthday {
            query = query.bind(birthday);
        }
        let done = query.bind(id).execute(&self.pool).await.map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}

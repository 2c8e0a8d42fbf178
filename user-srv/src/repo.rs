//! [`SqlStore`]: the domain's [`UserStore`] in SQL, written once for both dialects (`$n`
//! placeholders, portable types) and run on sqlx's native driver of each, so rows decode
//! straight into Rust types and prepared statements stay cached per connection. Where a
//! statement's connection comes from is the kit's [`Connections`]' business.

use std::{collections::HashSet, sync::Arc};

use kit::db::{Connections, Db, Migrations, is_unavailable, unix_now};
use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Type, query::QueryAs};

use crate::domain::{Error, NewUser, Page, Result, User, UserChanges, UserStore};

const SET_PASSWORD_SQL: &str =
    "UPDATE users SET password = $1, updated_at = $2 WHERE id = $3 AND deleted = 0 RETURNING id";

/// Every partial update in one statement, so one prepared statement serves them all: a field
/// left out (NULL) keeps its value, except the birthday, which NULL clears, so `$5` says
/// whether one was given. `RETURNING id` tells "no such user" apart in both dialects
/// (rows-affected counts are driver-specific).
const UPDATE_SQL: &str = "UPDATE users SET updated_at = $1, nick_name = COALESCE($2, nick_name), \
     gender = COALESCE($3, gender), birthday = CASE WHEN $5 = 1 THEN $4 ELSE birthday END \
     WHERE id = $6 AND deleted = 0 RETURNING id";

/// The users schema, per dialect (`migrations/user/`).
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../migrations/user/sqlite"),
    postgres: sqlx::migrate!("../migrations/user/postgres"),
};

/// The users table on `db`.
pub fn store(db: &Db) -> Arc<dyn UserStore> {
    kit::store_over!(db, SqlStore)
}

/// The user columns, as a macro so queries can be `concat!`-ed at compile time.
macro_rules! columns {
    () => {
        "id, mobile, password, nick_name, birthday, gender, role"
    };
}
/// One page and its total in one statement. The total is the trigger-kept `user_stats` row
/// (migration 0003), read in the same statement and so the same snapshot as the page: exact,
/// without counting the table on every call. Lists never read password hashes.
const PAGE_SQL: &str = concat!(
    "SELECT id, mobile, nick_name, birthday, gender, role, ",
    "(SELECT live FROM user_stats WHERE id = 1) AS total ",
    "FROM users WHERE deleted = 0 ORDER BY id LIMIT $1 OFFSET $2"
);
const COUNT_SQL: &str = "SELECT live FROM user_stats WHERE id = 1";
const BY_ID_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM users WHERE id = $1 AND deleted = 0"
);
const BY_MOBILE_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM users WHERE mobile = $1 AND deleted = 0"
);
const INSERT_SQL: &str = concat!(
    "INSERT INTO users (mobile, password, nick_name, birthday, gender, role, created_at, updated_at) ",
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING ",
    columns!()
);
const INSERT_IF_ABSENT_SQL: &str = concat!(
    "INSERT INTO users (mobile, password, nick_name, birthday, gender, role, created_at, updated_at) ",
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (mobile) DO NOTHING RETURNING id"
);

#[derive(FromRow)]
struct UserRow {
    id: i64,
    mobile: String,
    /// Absent from the page query.
    #[sqlx(default)]
    password: Option<String>,
    nick_name: String,
    birthday: Option<i64>,
    gender: String,
    role: i64,
}

#[derive(FromRow)]
struct PageRow {
    #[sqlx(flatten)]
    user: UserRow,
    total: i64,
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
        e if is_unavailable(&e) => Error::Unavailable(e.into()),
        e => Error::Internal(e.into()),
    }
}

/// The users table over any [`Connections`] whose driver speaks the types below.
#[derive(Debug, Clone)]
pub struct SqlStore<C> {
    connections: C,
}

impl<C: Connections> SqlStore<C> {
    pub fn new(connections: C) -> Self {
        Self { connections }
    }
}

/// Binds `$1`..`$7` of the insert statements.
fn bind_new<'q, DB, O>(
    query: QueryAs<'q, DB, O, DB::Arguments<'q>>,
    u: &NewUser,
) -> QueryAs<'q, DB, O, DB::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB>,
{
    query
        .bind(u.mobile.clone())
        .bind(u.password_hash.clone())
        .bind(u.nick_name.clone())
        .bind(u.birthday)
        .bind(u.gender.as_str().to_owned())
        .bind(u.role as i64)
        .bind(unix_now())
}

#[async_trait::async_trait]
impl<C, DB> UserStore for SqlStore<C>
where
    C: Connections<Database = DB>,
    DB: Database,
    // What sqlx's SQLite and PostgreSQL drivers both provide for the statements here.
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> UserRow: FromRow<'r, DB::Row>,
    for<'r> PageRow: FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
{
    async fn page(&self, page: Page) -> Result<(i64, Vec<User>)> {
        let (total, rows) =
            kit::on_connection!(C, &self.connections, "page", db_error, |conn| async {
                let rows = sqlx::query_as::<_, PageRow>(PAGE_SQL)
                    .bind(i64::from(page.size))
                    .bind(page.offset())
                    .fetch_all(&mut *conn)
                    .await?;
                // A page past the end has no row to carry the total.
                let total = match rows.first() {
                    Some(row) => row.total,
                    None => {
                        sqlx::query_as::<_, (i64,)>(COUNT_SQL)
                            .fetch_one(&mut *conn)
                            .await?
                            .0
                    }
                };
                Ok((total, rows))
            })?;
        let users = rows
            .into_iter()
            .map(|r| User::try_from(r.user))
            .collect::<Result<_>>()?;
        Ok((total, users))
    }

    async fn by_id(&self, id: i64) -> Result<Option<User>> {
        let row = kit::on_connection!(C, &self.connections, "by_id", db_error, |conn| {
            sqlx::query_as::<_, UserRow>(BY_ID_SQL)
                .bind(id)
                .fetch_optional(conn)
        })?;
        row.map(User::try_from).transpose()
    }

    async fn by_mobile(&self, mobile: &str) -> Result<Option<User>> {
        let row = kit::on_connection!(C, &self.connections, "by_mobile", db_error, |conn| {
            sqlx::query_as::<_, UserRow>(BY_MOBILE_SQL)
                .bind(mobile.to_owned())
                .fetch_optional(conn)
        })?;
        row.map(User::try_from).transpose()
    }

    async fn insert(&self, u: &NewUser) -> Result<User> {
        let row = kit::on_connection!(C, &self.connections, "insert", db_error, |conn| {
            bind_new(sqlx::query_as::<_, UserRow>(INSERT_SQL), u).fetch_one(conn)
        })?;
        row.try_into()
    }

    async fn insert_if_absent(&self, u: &NewUser) -> Result<bool> {
        let row =
            kit::on_connection!(C, &self.connections, "insert_if_absent", db_error, |conn| {
                bind_new(sqlx::query_as::<_, (i64,)>(INSERT_IF_ABSENT_SQL), u).fetch_optional(conn)
            })?;
        Ok(row.is_some())
    }

    async fn mobiles(&self) -> Result<HashSet<String>> {
        let rows = kit::on_connection!(C, &self.connections, "mobiles", db_error, |conn| {
            sqlx::query_as::<_, (String,)>("SELECT mobile FROM users").fetch_all(conn)
        })?;
        Ok(rows.into_iter().map(|(m,)| m).collect())
    }

    async fn update(&self, id: i64, changes: &UserChanges) -> Result<bool> {
        let row = kit::on_connection!(C, &self.connections, "update", db_error, |conn| {
            sqlx::query_as::<_, (i64,)>(UPDATE_SQL)
                .bind(unix_now())
                .bind(changes.nick_name.clone())
                .bind(changes.gender.map(|g| g.as_str().to_owned()))
                .bind(changes.birthday.flatten())
                .bind(i64::from(changes.birthday.is_some()))
                .bind(id)
                .fetch_optional(conn)
        })?;
        Ok(row.is_some())
    }

    async fn set_password_hash(&self, id: i64, hash: &str) -> Result<bool> {
        let row = kit::on_connection!(
            C,
            &self.connections,
            "set_password_hash",
            db_error,
            |conn| {
                sqlx::query_as::<_, (i64,)>(SET_PASSWORD_SQL)
                    .bind(hash.to_owned())
                    .bind(unix_now())
                    .bind(id)
                    .fetch_optional(conn)
            }
        )?;
        Ok(row.is_some())
    }
}

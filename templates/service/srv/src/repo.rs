//! [`SqlStore`]: the domain's [`Store`] in SQL, written once for both dialects (`$n`
//! placeholders, portable types) and run on sqlx's native driver of each. Where a statement's
//! connection comes from is the kit's [`Connections`]' business.

use std::sync::Arc;

use kit::db::{Connections, Db, Migrations, is_unavailable, unix_now};
use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};

use crate::domain::{Error, Item, NewItem, Page, Result, Store};

/// The schema, per dialect (`migrations/@name@/`).
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("../migrations/@name@/sqlite"),
    postgres: sqlx::migrate!("../migrations/@name@/postgres"),
};

/// The items table on `db`.
pub fn store(db: &Db) -> Arc<dyn Store> {
    kit::store_over!(db, SqlStore)
}

const PAGE_SQL: &str = "SELECT id, name, price, created_at, COUNT(*) OVER () AS total \
     FROM @snake@_items ORDER BY id LIMIT $1 OFFSET $2";
const COUNT_SQL: &str = "SELECT COUNT(*) FROM @snake@_items";
const BY_ID_SQL: &str = "SELECT id, name, price, created_at FROM @snake@_items WHERE id = $1";
const INSERT_SQL: &str = "INSERT INTO @snake@_items (name, price, created_at) VALUES ($1, $2, $3) \
     RETURNING id, name, price, created_at";

#[derive(FromRow)]
struct ItemRow {
    id: i64,
    name: String,
    price: i64,
    created_at: i64,
}

#[derive(FromRow)]
struct PageRow {
    #[sqlx(flatten)]
    item: ItemRow,
    total: i64,
}

impl From<ItemRow> for Item {
    fn from(r: ItemRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            price: r.price,
            created_at: r.created_at,
        }
    }
}

/// Connection trouble is `Unavailable` (worth a retry); a duplicate name is `NameTaken`;
/// everything else is `Internal`.
fn db_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::NameTaken,
        e if is_unavailable(&e) => Error::Unavailable(e.into()),
        e => Error::Internal(e.into()),
    }
}

/// The items table over any [`Connections`] whose driver speaks the types below.
#[derive(Debug, Clone)]
pub struct SqlStore<C> {
    connections: C,
}

impl<C: Connections> SqlStore<C> {
    pub fn new(connections: C) -> Self {
        Self { connections }
    }
}

#[async_trait::async_trait]
impl<C, DB> Store for SqlStore<C>
where
    C: Connections<Database = DB>,
    DB: Database,
    // What sqlx's SQLite and PostgreSQL drivers both provide for the statements here.
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> ItemRow: FromRow<'r, DB::Row>,
    for<'r> PageRow: FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    async fn page(&self, page: Page) -> Result<(i64, Vec<Item>)> {
        // Each call is a `db` span under the RPC when traces are on.
        let (total, rows) = kit::on_connection!(C, &self.connections, "page", db_error, |conn| async {
            let rows = sqlx::query_as::<_, PageRow>(PAGE_SQL)
                .bind(i64::from(page.size))
                .bind(page.offset())
                .fetch_all(&mut *conn)
                .await?;
            // A page past the end has no row to carry the total.
            let total = match rows.first() {
                Some(row) => row.total,
                None => sqlx::query_as::<_, (i64,)>(COUNT_SQL).fetch_one(&mut *conn).await?.0,
            };
            Ok((total, rows))
        })?;
        Ok((total, rows.into_iter().map(|r| r.item.into()).collect()))
    }

    async fn by_id(&self, id: i64) -> Result<Option<Item>> {
        let row = kit::on_connection!(C, &self.connections, "by_id", db_error, |conn| {
            sqlx::query_as::<_, ItemRow>(BY_ID_SQL).bind(id).fetch_optional(conn)
        })?;
        Ok(row.map(Item::from))
    }

    async fn insert(&self, item: &NewItem) -> Result<Item> {
        let row = kit::on_connection!(C, &self.connections, "insert", db_error, |conn| {
            sqlx::query_as::<_, ItemRow>(INSERT_SQL)
                .bind(item.name.clone())
                .bind(item.price)
                .bind(unix_now())
                .fetch_one(conn)
        })?;
        Ok(row.into())
    }
}

//! The database: SQLite by default, PostgreSQL for `postgres://` URLs, and the schema both share.
//!
//! Queries are plain SQL strings written once; [`on_pool!`] expands a body for each backend so it
//! type-checks against both drivers. The only backend-specific SQL is the DDL and the
//! `FOR UPDATE SKIP LOCKED` of job and outbox claims (SQLite serialises writers, so a single
//! `UPDATE ... WHERE id = (SELECT ...)` statement is already an atomic claim there).

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ColumnIndex, Decode, PgPool, Row, SqlitePool, Type};

use crate::config::Variant;
use crate::error::StartupError;

/// A pool on one of the two supported backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// An SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of `$db`.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Db {
    /// Opens a pool for `url` and checks that the database answers.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Db, StartupError> {
        let fail = |source| StartupError::Database {
            url: redact(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(fail)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(fail)?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(fail)?;
            let pool = PgPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(fail)?;
            Ok(Db::Postgres(pool))
        } else {
            Err(StartupError::Config(format!(
                "unsupported database URL {:?}: use sqlite:PATH or postgres://...",
                redact(url)
            )))
        }
    }

    /// Whether claims need `FOR UPDATE SKIP LOCKED`.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// Checks out a connection and back, returning how long it waited: the seed's "database
    /// wait" signal, which rises under pool pressure.
    pub async fn ping(&self) -> Result<Duration, sqlx::Error> {
        let started = Instant::now();
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(started.elapsed())
    }

    /// Creates the tables every variant uses and, for `fixed`, the unique index that moves the
    /// invariant to the database. Safe to run from several replicas at once.
    pub async fn migrate(&self, variant: Variant) -> Result<(), StartupError> {
        let fail = |e: sqlx::Error| StartupError::Migration(e.to_string());
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(fail)?;
                for stmt in SQLITE_SCHEMA {
                    sqlx::query(stmt).execute(&mut *tx).await.map_err(fail)?;
                }
                for stmt in GALLERY_SCHEMA {
                    let stmt = stmt.replace("{id}", SQLITE_ID);
                    sqlx::query(&stmt).execute(&mut *tx).await.map_err(fail)?;
                }
                // The index in the same transaction, on the same connection, as the tables:
                // SQLite compiles `ON CONFLICT (account_id, period)` against a connection's
                // cached schema, and a pooled connection that read the schema before another
                // one added the index rejects it ("ON CONFLICT clause does not match any ...
                // UNIQUE constraint") without reading it again.
                if variant == Variant::Fixed {
                    sqlx::query(UNIQUE_INDEX)
                        .execute(&mut *tx)
                        .await
                        .map_err(unique_index_failed)?;
                }
                tx.commit().await.map_err(fail)?;
                return Ok(());
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(fail)?;
                // Concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's catalog;
                // replicas starting together take turns.
                sqlx::query("SELECT pg_advisory_xact_lock(7020251125)")
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                for stmt in POSTGRES_SCHEMA {
                    sqlx::query(stmt).execute(&mut *tx).await.map_err(fail)?;
                }
                for stmt in GALLERY_SCHEMA {
                    let stmt = stmt.replace("{id}", POSTGRES_ID);
                    sqlx::query(&stmt).execute(&mut *tx).await.map_err(fail)?;
                }
                tx.commit().await.map_err(fail)?;
            }
        }
        if variant == Variant::Fixed {
            let created =
                on_pool!(self, pool => sqlx::query(UNIQUE_INDEX).execute(pool).await.map(|_| ()));
            created.map_err(unique_index_failed)?;
        }
        Ok(())
    }
}

/// Why the unique index could not be made, in words.
fn unique_index_failed(e: sqlx::Error) -> StartupError {
    let duplicates = matches!(&e, sqlx::Error::Database(d)
        if d.kind() == sqlx::error::ErrorKind::UniqueViolation
            || d.message().contains("UNIQUE"));
    StartupError::Migration(if duplicates {
        "cannot create the unique index on invoices (account_id, period): the \
         database already holds duplicate invoices, probably from a naive run; \
         start the fixed variant on a fresh database"
            .to_string()
    } else {
        e.to_string()
    })
}

/// The statement that makes (account_id, period) a durable invariant (the seed's fix).
const UNIQUE_INDEX: &str = "CREATE UNIQUE INDEX IF NOT EXISTS invoices_account_period_key ON invoices (account_id, period)";

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS invoices (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        total_cents INTEGER NOT NULL,
        status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        service_version TEXT NOT NULL,
        trace_id TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS invoices_account_period_idx ON invoices (account_id, period)",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (
        key TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        invoice_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        invoice_id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        total_cents INTEGER NOT NULL,
        traceparent TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        next_attempt_at_ms INTEGER NOT NULL,
        leased_until_ms INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        sent_at_ms INTEGER,
        last_error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (next_attempt_at_ms) WHERE sent_at_ms IS NULL",
    "CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        traceparent TEXT NOT NULL,
        enqueued_at_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER NOT NULL,
        leased_until_ms INTEGER,
        finished_at_ms INTEGER,
        invoice_id TEXT,
        last_error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS jobs_state_idx ON jobs (state, next_attempt_at_ms)",
];

const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS invoices (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        total_cents BIGINT NOT NULL,
        status TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        service_version TEXT NOT NULL,
        trace_id TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS invoices_account_period_idx ON invoices (account_id, period)",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (
        key TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        invoice_id TEXT NOT NULL,
        status BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        invoice_id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        total_cents BIGINT NOT NULL,
        traceparent TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        next_attempt_at_ms BIGINT NOT NULL,
        leased_until_ms BIGINT,
        attempts BIGINT NOT NULL DEFAULT 0,
        sent_at_ms BIGINT,
        last_error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (next_attempt_at_ms) WHERE sent_at_ms IS NULL",
    "CREATE TABLE IF NOT EXISTS jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        traceparent TEXT NOT NULL,
        enqueued_at_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at_ms BIGINT NOT NULL,
        leased_until_ms BIGINT,
        finished_at_ms BIGINT,
        invoice_id TEXT,
        last_error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS jobs_state_idx ON jobs (state, next_attempt_at_ms)",
];

/// The gallery's tables (credits, plans, sends, payments, receipts), the same on both backends
/// but for the generated key, which replaces `{id}`.
const GALLERY_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS balances (account_id TEXT PRIMARY KEY, cents BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plans (
        account_id TEXT PRIMARY KEY,
        price_cents BIGINT NOT NULL,
        version BIGINT NOT NULL,
        changed_at_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS charges (
        id {id},
        account_id TEXT NOT NULL,
        price_cents BIGINT NOT NULL,
        plan_version BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        served_by TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS documents (
        account_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        sent_at_ms BIGINT,
        voided_at_ms BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS payments (
        id {id},
        account_id TEXT NOT NULL,
        amount BIGINT NOT NULL,
        amount_cents BIGINT,
        charged_cents BIGINT NOT NULL,
        release TEXT NOT NULL,
        paid_at_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS refunds (
        id {id},
        payment_id BIGINT NOT NULL,
        account_id TEXT NOT NULL,
        refunded_cents BIGINT NOT NULL,
        release TEXT NOT NULL,
        refunded_at_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS receipts (
        id {id},
        account_id TEXT NOT NULL,
        period TEXT NOT NULL,
        total_cents BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL
    )",
];

/// A generated integer key, per backend.
const SQLITE_ID: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";
const POSTGRES_ID: &str = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY";

/// An invoice as stored and as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// `inv_` and 32 hex digits.
    pub id: String,
    /// The account billed.
    pub account_id: String,
    /// `YYYY-MM`.
    pub period: String,
    /// From the usage dependency.
    pub total_cents: i64,
    /// Always `created` for now.
    pub status: String,
}

/// Columns to select for [`Invoice::from_row`].
pub const INVOICE_COLUMNS: &str = "id, account_id, period, total_cents, status";

impl Invoice {
    /// Reads the [`INVOICE_COLUMNS`] of a row from either backend.
    pub fn from_row<'r, R>(row: &'r R) -> Result<Invoice, sqlx::Error>
    where
        R: Row,
        &'r str: ColumnIndex<R>,
        String: Decode<'r, R::Database> + Type<R::Database>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(Invoice {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            period: row.try_get("period")?,
            total_cents: row.try_get("total_cents")?,
            status: row.try_get("status")?,
        })
    }
}

/// `url` with any password replaced by `***`, for error messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }
}

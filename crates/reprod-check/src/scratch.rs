//! Scratch PostgreSQL databases for the demo and for trials: created under a unique name,
//! dropped afterwards, nothing else touched.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// Why a scratch database could not be made or dropped, and on which side.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The URL given is not one reprod can use (the user's side).
    #[error("{0}")]
    BadUrl(String),
    /// The server could not be reached (the database's side).
    #[error("cannot reach PostgreSQL at {url}: {source}")]
    Unreachable {
        /// The server, password masked.
        url: String,
        /// The error.
        source: sqlx::Error,
    },
    /// The server refused (privileges, a name taken, ...).
    #[error("cannot {verb} database {name}: {source}")]
    Refused {
        /// `create` or `drop`.
        verb: &'static str,
        /// The database.
        name: String,
        /// The server's answer.
        source: sqlx::Error,
    },
    /// reprod's own name for the database would not be safe to quote (a bug, never user input).
    #[error("{0:?} is not a safe scratch database name")]
    UnsafeName(String),
}

/// Creates database `name` on the server `admin_url` points at; returns its URL.
pub async fn create(admin_url: &str, name: &str) -> Result<String, ScratchError> {
    create_from(admin_url, name, None).await
}

/// [`create`], as a copy of database `template` when given (`CREATE DATABASE ... TEMPLATE`).
pub async fn create_from(
    admin_url: &str,
    name: &str,
    template: Option<&str>,
) -> Result<String, ScratchError> {
    let sql = match template {
        Some(t) if t.is_empty() || t.contains('"') || t.contains('\0') => {
            return Err(ScratchError::BadUrl(format!(
                "{t:?} cannot be a template database's name"
            )));
        }
        Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
        None => format!("CREATE DATABASE \"{name}\""),
    };
    administer(admin_url, name, "create", &sql).await?;
    let mut url = url::Url::parse(admin_url)
        .map_err(|e| ScratchError::BadUrl(format!("bad database URL: {e}")))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops database `name` (and the connections still open to it).
pub async fn drop(admin_url: &str, name: &str) -> Result<(), ScratchError> {
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    administer(admin_url, name, "drop", &sql).await
}

/// Checks `name`, then runs `sql` (which does `verb` to database `name`) on its own connection.
async fn administer(
    admin_url: &str,
    name: &str,
    verb: &'static str,
    sql: &str,
) -> Result<(), ScratchError> {
    check_name(name)?;
    let mut conn = connect(admin_url).await?;
    let done = sqlx::query(sql)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|source| ScratchError::Refused {
            verb,
            name: name.to_string(),
            source,
        });
    let _ = conn.close().await;
    done
}

async fn connect(admin_url: &str) -> Result<PgConnection, ScratchError> {
    if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
        return Err(ScratchError::BadUrl(format!(
            "{admin_url:?} is not a postgres:// URL; write it like postgres://user@127.0.0.1:5432/postgres"
        )));
    }
    PgConnectOptions::from_str(admin_url)
        .map_err(|e| ScratchError::BadUrl(format!("bad database URL: {e}")))?
        .connect()
        .await
        .map_err(|source| ScratchError::Unreachable {
            url: redact(admin_url),
            source,
        })
}

fn check_name(name: &str) -> Result<(), ScratchError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(ScratchError::UnsafeName(name.to_string()))
    }
}

/// The server's maintenance database (`postgres`) at the same address and user as `url`:
/// scratch databases are made through it, so the database `url` names need not exist.
pub fn maintenance_url(url: &str) -> Result<String, ScratchError> {
    let mut u =
        url::Url::parse(url).map_err(|e| ScratchError::BadUrl(format!("bad database URL: {e}")))?;
    u.set_path("/postgres");
    Ok(u.to_string())
}

/// Runs the SQL file `path` (a schema, seed data, a reset: several statements) in the database
/// at `url`, PostgreSQL or SQLite (`what` names the file in messages: "schema", "reset").
pub async fn apply_sql(
    url: String,
    path: std::path::PathBuf,
    what: &'static str,
) -> Result<(), ScratchError> {
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ScratchError::BadUrl(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })?;
    let refused = |source| ScratchError::Refused {
        verb: match what {
            "reset" => "run the reset file in",
            _ => "run the schema file in",
        },
        name: path.display().to_string(),
        source,
    };
    if url.starts_with("sqlite:") {
        let mut conn: sqlx::SqliteConnection = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .map_err(|e| ScratchError::BadUrl(format!("bad database URL: {e}")))?
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| {
                ScratchError::BadUrl(format!("cannot open the SQLite database {url}: {e}"))
            })?;
        // SQLite runs every statement of a query string in turn.
        let done = sqlx::Executor::execute(&mut conn, text.as_str())
            .await
            .map(|_| ())
            .map_err(refused);
        let _ = conn.close().await;
        return done;
    }
    let mut conn = connect(&url).await?;
    // A query without arguments goes over PostgreSQL's simple protocol, which runs every
    // statement of the file.
    let done = sqlx::Executor::execute(&mut conn, text.as_str())
        .await
        .map(|_| ())
        .map_err(refused);
    let _ = conn.close().await;
    done
}

/// A scratch database name for `run_id` under `prefix`: lower case, `[a-z0-9_]`, at most 63
/// bytes (PostgreSQL's limit).
pub fn scratch_name(prefix: &str, run_id: &str) -> String {
    let mut name: String = format!("{prefix}{run_id}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(63);
    name
}

/// `url` with its password masked.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

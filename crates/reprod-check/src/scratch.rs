//! Scratch PostgreSQL databases for the demo and for trials: created under a unique name,
//! dropped afterwards, nothing else touched.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// Creates database `name` on the server `admin_url` points at; returns its URL.
pub async fn create(admin_url: &str, name: &str) -> Result<String, String> {
    let sql = format!("CREATE DATABASE \"{name}\"");
    administer(admin_url, name, "create", &sql).await?;
    let mut url = url::Url::parse(admin_url).map_err(|e| format!("bad database URL: {e}"))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops database `name` (and the connections still open to it).
pub async fn drop(admin_url: &str, name: &str) -> Result<(), String> {
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    administer(admin_url, name, "drop", &sql).await
}

/// Checks `name`, then runs `sql` (which does `verb` to database `name`) on its own connection.
async fn administer(admin_url: &str, name: &str, verb: &str, sql: &str) -> Result<(), String> {
    check_name(name)?;
    let mut conn = connect(admin_url).await?;
    let done = sqlx::query(sql)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot {verb} database {name}: {e}"));
    let _ = conn.close().await;
    done
}

async fn connect(admin_url: &str) -> Result<PgConnection, String> {
    if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
        return Err(format!("{admin_url:?} is not a postgres:// URL"));
    }
    PgConnectOptions::from_str(admin_url)
        .map_err(|e| format!("bad database URL: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {}: {e}", redact(admin_url)))
}

fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(format!("{name:?} is not a safe scratch database name"))
    }
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

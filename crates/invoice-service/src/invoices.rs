//! Invoice creation, the code path the API and the reconciliation worker share.
//!
//! `naive` is the seed's first handler, literally: find, read usage, insert, send the email. The
//! find and the insert are two separate decisions, so two callers that overlap inside the usage
//! call both create an invoice. Nothing here simulates that race; it happens or it does not.
//!
//! `fixed` moves the invariant to the database: a unique index on (account_id, period) and an
//! insert-on-conflict that hands every racing caller the same row; the email goes through a
//! transactional outbox in the same transaction; an `Idempotency-Key` replays the first answer.

use std::time::Instant;

use serde_json::json;
use sqlx::Connection as _;

use crate::App;
use crate::config::Variant;
use crate::db::{INVOICE_COLUMNS, Invoice, on_pool};
use crate::deps::Email;
use crate::error::RequestError;
use crate::log::{OpContext, now_ms, traced};
use crate::trace::{TraceContext, random_hex};

/// What creating an invoice came to.
#[derive(Debug)]
pub enum Outcome {
    /// This call created the invoice (201).
    Created(Invoice),
    /// The invoice already existed (200).
    Existing(Invoice),
    /// An earlier request with the same `Idempotency-Key` created or found it; its status is
    /// replayed.
    Replayed(Invoice, u16),
}

impl Outcome {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Created(_) => 201,
            Outcome::Existing(_) => 200,
            Outcome::Replayed(_, status) => *status,
        }
    }

    /// The invoice, whichever way it was reached.
    pub fn invoice(&self) -> &Invoice {
        match self {
            Outcome::Created(i) | Outcome::Existing(i) | Outcome::Replayed(i, _) => i,
        }
    }
}

/// Longest account id accepted.
pub const MAX_ACCOUNT_ID_BYTES: usize = 200;

/// Checks an account id: non-empty, at most [`MAX_ACCOUNT_ID_BYTES`], no control characters.
pub fn validate_account_id(account_id: &str) -> Result<(), RequestError> {
    if account_id.trim().is_empty() {
        return Err(RequestError::BadRequest(
            "account_id must be a non-empty string".to_string(),
        ));
    }
    if account_id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(RequestError::BadRequest(format!(
            "account_id is {} bytes long; at most {MAX_ACCOUNT_ID_BYTES} are accepted",
            account_id.len()
        )));
    }
    if account_id.chars().any(char::is_control) {
        return Err(RequestError::BadRequest(
            "account_id must not contain control characters".to_string(),
        ));
    }
    Ok(())
}

/// Checks a billing period: `YYYY-MM` with a month from 01 to 12.
pub fn validate_period(period: &str) -> Result<(), RequestError> {
    let b = period.as_bytes();
    let shaped = b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_digit);
    let month_ok = shaped
        && matches!(
            &period[5..],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if !month_ok {
        return Err(RequestError::BadRequest(format!(
            "period must look like YYYY-MM with a month from 01 to 12 (for example 2026-01), got {period:?}"
        )));
    }
    Ok(())
}

/// Creates the invoice for `account_id` and `period` with the process's variant.
pub async fn create(
    app: &App,
    ctx: &mut OpContext,
    trace: &TraceContext,
    account_id: &str,
    period: &str,
    idempotency_key: Option<&str>,
) -> Result<Outcome, RequestError> {
    match app.config.variant {
        Variant::Naive => create_naive(app, ctx, trace, account_id, period).await,
        Variant::Fixed => create_fixed(app, ctx, trace, account_id, period, idempotency_key).await,
    }
}

/// The seed's first handler. Its `Idempotency-Key` handling is: none.
async fn create_naive(
    app: &App,
    ctx: &mut OpContext,
    trace: &TraceContext,
    account_id: &str,
    period: &str,
) -> Result<Outcome, RequestError> {
    if let Some(existing) = find_first(app, ctx, account_id, period).await? {
        app.log.decision(
            ctx,
            "invoice.found_existing",
            json!({"invoice_id": existing.id}),
        );
        return Ok(Outcome::Existing(existing));
    }
    app.log.decision(ctx, "invoice.none_found", json!({}));

    let total_cents = app.usage.read(ctx, trace, account_id, period).await?;

    let invoice = Invoice {
        id: new_invoice_id(),
        account_id: account_id.to_string(),
        period: period.to_string(),
        total_cents,
        status: "created".to_string(),
    };
    let insert = format!(
        "INSERT INTO invoices ({INVOICE_COLUMNS}, created_at_ms, created_by, service_version, trace_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    );
    let started = Instant::now();
    let inserted = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query(&traced(&insert, ctx)).persistent(false)
            .bind(&invoice.id)
            .bind(&invoice.account_id)
            .bind(&invoice.period)
            .bind(invoice.total_cents)
            .bind(&invoice.status)
            .bind(now_ms())
            .bind(ctx.caller)
            .bind(&app.config.version)
            .bind(&trace.trace_id)
            .execute(&mut *conn)
            .await
            .map(|_| ())
    });
    if let Err(e) = inserted {
        app.log.decision(
            ctx,
            "invoice.insert_failed",
            json!({"error": e.to_string()}),
        );
        return Err(e.into());
    }
    app.log.decision(
        ctx,
        "invoice.inserted",
        json!({"invoice_id": invoice.id, "total_cents": total_cents}),
    );

    let email = Email {
        invoice_id: &invoice.id,
        account_id,
        period,
        total_cents,
    };
    let span = trace.child();
    match app.email.send(&email, &span, None).await {
        Ok(status) => app.log.decision(
            ctx,
            "email.sent",
            json!({"invoice_id": invoice.id, "status": status.as_u16(), "email_span_id": span.span_id}),
        ),
        Err(detail) => {
            app.log.decision(ctx, "email.failed", json!({"invoice_id": invoice.id, "error": detail}));
            return Err(RequestError::DependencyFailed {
                dependency: "email",
                detail: format!("{detail} (invoice {} was created)", invoice.id),
            });
        }
    }
    Ok(Outcome::Created(invoice))
}

/// The seed's fix, with idempotency keys and a transactional outbox.
async fn create_fixed(
    app: &App,
    ctx: &mut OpContext,
    trace: &TraceContext,
    account_id: &str,
    period: &str,
    idempotency_key: Option<&str>,
) -> Result<Outcome, RequestError> {
    if let Some(key) = idempotency_key
        && let Some(record) = find_key(app, ctx, key).await?
    {
        let invoice = replay(app, ctx, &record, account_id, period).await?;
        return Ok(Outcome::Replayed(invoice, record.status));
    }
    // A cheap early answer for retries and repeats; the unique index below is what guarantees
    // the invariant, not this read.
    if idempotency_key.is_none()
        && let Some(existing) = find_first(app, ctx, account_id, period).await?
    {
        app.log.decision(
            ctx,
            "invoice.found_existing",
            json!({"invoice_id": existing.id}),
        );
        return Ok(Outcome::Existing(existing));
    }

    let total_cents = app.usage.read(ctx, trace, account_id, period).await?;

    let candidate = Invoice {
        id: new_invoice_id(),
        account_id: account_id.to_string(),
        period: period.to_string(),
        total_cents,
        status: "created".to_string(),
    };
    let insert = format!(
        "INSERT INTO invoices ({INVOICE_COLUMNS}, created_at_ms, created_by, service_version, trace_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (account_id, period) DO NOTHING RETURNING {INVOICE_COLUMNS}"
    );
    let select_existing = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE account_id = $1 AND period = $2 \
         ORDER BY created_at_ms, id LIMIT 1"
    );
    let now = now_ms();
    let started = Instant::now();
    let written: Result<(Invoice, u16), RequestError> = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        let mut tx = conn.begin().await?;
        let inserted = sqlx::query(&traced(&insert, ctx)).persistent(false)
            .bind(&candidate.id)
            .bind(account_id)
            .bind(period)
            .bind(total_cents)
            .bind(&candidate.status)
            .bind(now)
            .bind(ctx.caller)
            .bind(&app.config.version)
            .bind(&trace.trace_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (invoice, status) = match inserted {
            Some(row) => {
                let invoice = Invoice::from_row(&row)?;
                sqlx::query(&traced(
                    "INSERT INTO outbox (invoice_id, account_id, period, total_cents, traceparent, \
                     created_at_ms, next_attempt_at_ms, attempts) VALUES ($1, $2, $3, $4, $5, $6, $6, 0)",
                    ctx,
                )).persistent(false)
                .bind(&invoice.id)
                .bind(account_id)
                .bind(period)
                .bind(total_cents)
                .bind(trace.header())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (invoice, 201)
            }
            None => {
                let row = sqlx::query(&traced(&select_existing, ctx)).persistent(false)
                    .bind(account_id)
                    .bind(period)
                    .fetch_one(&mut *tx)
                    .await?;
                (Invoice::from_row(&row)?, 200)
            }
        };
        let mut reused = None;
        if let Some(key) = idempotency_key {
            sqlx::query(&traced(
                "INSERT INTO idempotency_keys (key, account_id, period, invoice_id, status, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
                ctx,
            )).persistent(false)
            .bind(key)
            .bind(account_id)
            .bind(period)
            .bind(&invoice.id)
            .bind(i64::from(status))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(&traced(
                "SELECT account_id, period FROM idempotency_keys WHERE key = $1",
                ctx,
            )).persistent(false)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            let owner_account: String = sqlx::Row::try_get(&row, "account_id")?;
            let owner_period: String = sqlx::Row::try_get(&row, "period")?;
            if owner_account != account_id || owner_period != period {
                reused = Some(key_reused(key, &owner_account, &owner_period));
            }
        }
        match reused {
            None => {
                tx.commit().await?;
                Ok((invoice, status))
            }
            Some(error) => {
                tx.rollback().await?;
                Err(error)
            }
        }
    });
    let (invoice, status) = written?;
    if status == 201 {
        app.relay_wake.notify_one();
        app.log.decision(
            ctx,
            "invoice.inserted",
            json!({"invoice_id": invoice.id, "total_cents": total_cents, "outbox": true}),
        );
        Ok(Outcome::Created(invoice))
    } else {
        app.log.decision(
            ctx,
            "invoice.conflict_returned_existing",
            json!({"invoice_id": invoice.id, "discarded_total_cents": total_cents}),
        );
        Ok(Outcome::Existing(invoice))
    }
}

/// A stored idempotency key.
#[derive(Debug)]
struct KeyRecord {
    account_id: String,
    period: String,
    invoice_id: String,
    status: u16,
}

async fn find_key(
    app: &App,
    ctx: &mut OpContext,
    key: &str,
) -> Result<Option<KeyRecord>, RequestError> {
    let started = Instant::now();
    let row = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        let row = sqlx::query(&traced(
            "SELECT account_id, period, invoice_id, status FROM idempotency_keys WHERE key = $1",
            ctx,
        )).persistent(false)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| -> Result<KeyRecord, sqlx::Error> {
            use sqlx::Row as _;
            Ok(KeyRecord {
                account_id: r.try_get("account_id")?,
                period: r.try_get("period")?,
                invoice_id: r.try_get("invoice_id")?,
                status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(200),
            })
        })
        .transpose()?
    });
    Ok(row)
}

async fn replay(
    app: &App,
    ctx: &mut OpContext,
    record: &KeyRecord,
    account_id: &str,
    period: &str,
) -> Result<Invoice, RequestError> {
    if record.account_id != account_id || record.period != period {
        let key = ctx.idempotency_key.clone().unwrap_or_default();
        app.log.decision(
            ctx,
            "idempotency.key_reused",
            json!({"owner_account_id": record.account_id, "owner_period": record.period}),
        );
        return Err(key_reused(&key, &record.account_id, &record.period));
    }
    let select = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1");
    let started = Instant::now();
    let invoice = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        let row = sqlx::query(&traced(&select, ctx))
            .persistent(false)
            .bind(&record.invoice_id)
            .fetch_one(&mut *conn)
            .await?;
        Invoice::from_row(&row)?
    });
    app.log.decision(
        ctx,
        "idempotency.replayed",
        json!({"invoice_id": invoice.id, "replayed_status": record.status}),
    );
    Ok(invoice)
}

fn key_reused(key: &str, owner_account: &str, owner_period: &str) -> RequestError {
    RequestError::Unprocessable(format!(
        "Idempotency-Key {key:?} was already used for account {owner_account:?} and period \
         {owner_period:?}; use a new key for a different request"
    ))
}

/// The oldest invoice for an account and period, if any.
async fn find_first(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
    period: &str,
) -> Result<Option<Invoice>, RequestError> {
    let select = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE account_id = $1 AND period = $2 \
         ORDER BY created_at_ms, id LIMIT 1"
    );
    let started = Instant::now();
    let found = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query(&traced(&select, ctx)).persistent(false)
            .bind(account_id)
            .bind(period)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| Invoice::from_row(&row))
            .transpose()?
    });
    Ok(found)
}

/// Every invoice for an account and period, duplicates included, oldest first.
pub async fn list(app: &App, account_id: &str, period: &str) -> Result<Vec<Invoice>, RequestError> {
    let select = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE account_id = $1 AND period = $2 \
         ORDER BY created_at_ms, id"
    );
    let invoices = on_pool!(&app.db, pool => {
        sqlx::query(&select)
            .bind(account_id)
            .bind(period)
            .fetch_all(pool)
            .await?
            .iter()
            .map(Invoice::from_row)
            .collect::<Result<Vec<_>, _>>()?
    });
    Ok(invoices)
}

fn new_invoice_id() -> String {
    format!("inv_{}", random_hex(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        for ok in ["2026-01", "1999-12", "0001-10"] {
            assert!(validate_period(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2026-1",
            "2026-00",
            "2026-13",
            "2026/01",
            "26-01",
            "2026-01-01",
            "２０２６-01",
        ] {
            assert!(validate_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_ids() {
        assert!(validate_account_id("acct_123").is_ok());
        assert!(validate_account_id("").is_err());
        assert!(validate_account_id("   ").is_err());
        assert!(validate_account_id("a\nb").is_err());
        assert!(validate_account_id(&"x".repeat(MAX_ACCOUNT_ID_BYTES + 1)).is_err());
    }
}

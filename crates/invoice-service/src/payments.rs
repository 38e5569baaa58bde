//! Payments and refunds across a rollout: the gallery's mixed versions (the seed's "mixed
//! deployment state").
//!
//! Release v1 stores a payment's `amount` in whole dollars; release v2 counts in cents. `naive`
//! v2 simply writes cents into `amount`, so a v1 replica that refunds a payment v2 took reads
//! cents as dollars (and v2 reads v1's dollars as cents). `fixed` rolls out backward-compatibly
//! (expand, migrate, contract): v2 writes the new `amount_cents` column beside the old
//! `amount` in dollars, reads `amount_cents` when it is there, and v1, which knows only
//! `amount`, keeps reading what it wrote. Every payment also records what the customer was
//! charged (`charged_cents`, the provider's figure), which is how an invariant can judge a
//! refund. Nothing here simulates the misread; it happens or it does not.

use std::time::Instant;

use serde_json::json;

use crate::App;
use crate::config::{Release, Variant};
use crate::db::on_pool;
use crate::error::RequestError;
use crate::log::{OpContext, now_ms, traced};

/// Largest payment, in whole dollars.
pub const MAX_DOLLARS: i64 = 1_000_000;

/// Takes a payment of `dollars` from `account_id`.
pub async fn pay(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
    dollars: i64,
) -> Result<(), RequestError> {
    let release = app.config.release;
    let (amount, amount_cents) = match (release, app.config.variant) {
        (Release::V1, _) => (dollars, None),
        // The new format in the old column: what v1 cannot read.
        (Release::V2, Variant::Naive) => (dollars * 100, None),
        // Expand: the old column keeps its meaning, the new one holds cents.
        (Release::V2, Variant::Fixed) => (dollars, Some(dollars * 100)),
    };
    let started = Instant::now();
    let insert = "INSERT INTO payments (account_id, amount, amount_cents, charged_cents, release, paid_at_ms) \
                  VALUES ($1, $2, $3, $4, $5, $6)";
    on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query(&traced(insert, ctx)).persistent(false)
            .bind(account_id)
            .bind(amount)
            .bind(amount_cents)
            .bind(dollars * 100)
            .bind(release_name(release))
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map(|_| ())?
    });
    app.log.decision(
        ctx,
        "payment.stored",
        json!({"amount": amount, "amount_cents": amount_cents, "release": release_name(release)}),
    );
    Ok(())
}

/// Refunds `account_id`'s latest payment in full; the cents refunded (`None`: no payment).
pub async fn refund(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
) -> Result<Option<i64>, RequestError> {
    let release = app.config.release;
    let started = Instant::now();
    let read = "SELECT id, amount, amount_cents FROM payments WHERE account_id = $1 \
                ORDER BY id DESC LIMIT 1";
    let row: Option<(i64, i64, Option<i64>)> = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query_as(&traced(read, ctx)).persistent(false)
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?
    });
    let Some((payment_id, amount, amount_cents)) = row else {
        app.log.decision(ctx, "refund.no_payment", json!({}));
        return Ok(None);
    };
    let cents = match (release, app.config.variant) {
        // v1 knows one format: dollars.
        (Release::V1, _) => amount * 100,
        // Naive v2 believes every amount is in cents.
        (Release::V2, Variant::Naive) => amount,
        // Fixed v2 prefers the new column and falls back to the old one's dollars.
        (Release::V2, Variant::Fixed) => amount_cents.unwrap_or(amount * 100),
    };
    app.log.decision(
        ctx,
        "payment.read",
        json!({"amount": amount, "amount_cents": amount_cents, "release": release_name(release), "refund_cents": cents}),
    );
    let insert = "INSERT INTO refunds (payment_id, account_id, refunded_cents, release, refunded_at_ms) \
                  VALUES ($1, $2, $3, $4, $5)";
    on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        sqlx::query(&traced(insert, ctx)).persistent(false)
            .bind(payment_id)
            .bind(account_id)
            .bind(cents)
            .bind(release_name(release))
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map(|_| ())?
    });
    app.log
        .decision(ctx, "refund.stored", json!({"refund_cents": cents}));
    Ok(Some(cents))
}

fn release_name(release: Release) -> &'static str {
    match release {
        Release::V1 => "v1",
        Release::V2 => "v2",
    }
}

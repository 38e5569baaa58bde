//! Account credits: the gallery's lost update (the seed's "overlapping updates").
//!
//! `naive` reads the balance and writes the balance it computed — a read-modify-write in two
//! statements, so two credits on one account that both read before either writes lose one of
//! the two. `fixed` lets the database add: one `INSERT ... ON CONFLICT DO UPDATE SET cents =
//! balances.cents + excluded.cents`, which no interleaving can split. Nothing here simulates the
//! race; it happens or it does not.

use std::time::Instant;

use serde_json::json;

use crate::App;
use crate::config::Variant;
use crate::db::on_pool;
use crate::error::RequestError;
use crate::log::{OpContext, traced};

/// Most cents one credit may add.
pub const MAX_CREDIT_CENTS: i64 = 1_000_000_000;

/// Adds `cents` to `account_id`'s balance; the balance after.
pub async fn credit(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
    cents: i64,
) -> Result<i64, RequestError> {
    let started = Instant::now();
    let balance = match app.config.variant {
        Variant::Naive => {
            let read = "SELECT cents FROM balances WHERE account_id = $1";
            let current: Option<i64> = on_pool!(&app.db, pool => {
                let mut conn = pool.acquire().await?;
                ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
                sqlx::query_scalar(&traced(read, ctx)).persistent(false)
                    .bind(account_id)
                    .fetch_optional(&mut *conn)
                    .await?
            });
            let current = current.unwrap_or(0);
            app.log
                .decision(ctx, "balance.read", json!({"cents": current}));
            let balance = current + cents;
            let write = "INSERT INTO balances (account_id, cents) VALUES ($1, $2) \
                         ON CONFLICT (account_id) DO UPDATE SET cents = excluded.cents";
            on_pool!(&app.db, pool => {
                let mut conn = pool.acquire().await?;
                sqlx::query(&traced(write, ctx)).persistent(false)
                    .bind(account_id)
                    .bind(balance)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())?
            });
            balance
        }
        Variant::Fixed => {
            let add = "INSERT INTO balances (account_id, cents) VALUES ($1, $2) \
                       ON CONFLICT (account_id) DO UPDATE SET cents = balances.cents + excluded.cents \
                       RETURNING cents";
            on_pool!(&app.db, pool => {
                let mut conn = pool.acquire().await?;
                ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
                sqlx::query_scalar(&traced(add, ctx)).persistent(false)
                    .bind(account_id)
                    .bind(cents)
                    .fetch_one(&mut *conn)
                    .await?
            })
        }
    };
    app.log.decision(
        ctx,
        "balance.written",
        json!({"cents": balance, "credit": cents}),
    );
    Ok(balance)
}

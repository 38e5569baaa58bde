//! Usage receipts: the gallery's pool pressure (the seed's "resource contention").
//!
//! `POST /receipts {"account_id", "period"}` reads the account's usage and stores a receipt.
//! `naive` takes a pooled database connection first and holds it across the usage call, so
//! with a small pool requests queue for connections behind slow usage calls, clients time out
//! and retry, and every abandoned request still stores its receipt when it finally gets a
//! connection: duplicates. `fixed` keeps the critical section short — the usage call first,
//! then a connection for the one insert. In both, the work runs to its end even when the
//! client has stopped waiting (the handler spawns it), as in most servers.

use std::time::Instant;

use serde_json::json;

use crate::App;
use crate::config::Variant;
use crate::db::on_pool;
use crate::error::RequestError;
use crate::log::{OpContext, now_ms, traced};
use crate::trace::TraceContext;

const INSERT: &str =
    "INSERT INTO receipts (account_id, period, total_cents, created_at_ms) VALUES ($1, $2, $3, $4)";

/// Stores a receipt for `account_id`'s usage in `period`; the total.
pub async fn store(
    app: &App,
    ctx: &mut OpContext,
    trace: &TraceContext,
    account_id: &str,
    period: &str,
) -> Result<i64, RequestError> {
    let started = Instant::now();
    let total = match app.config.variant {
        Variant::Naive => on_pool!(&app.db, pool => {
            // The connection is taken here and held across the usage call below.
            let mut conn = pool.acquire().await?;
            ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
            app.log.decision(ctx, "receipt.connection_taken", json!({"db_wait_ms": ctx.db_wait_ms}));
            let total = app.usage.read(ctx, trace, account_id, period).await?;
            sqlx::query(&traced(INSERT, ctx)).persistent(false)
                .bind(account_id)
                .bind(period)
                .bind(total)
                .bind(now_ms())
                .execute(&mut *conn)
                .await
                .map(|_| ())?;
            total
        }),
        Variant::Fixed => {
            let total = app.usage.read(ctx, trace, account_id, period).await?;
            let started = Instant::now();
            on_pool!(&app.db, pool => {
                let mut conn = pool.acquire().await?;
                ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
                sqlx::query(&traced(INSERT, ctx)).persistent(false)
                    .bind(account_id)
                    .bind(period)
                    .bind(total)
                    .bind(now_ms())
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())?
            });
            total
        }
    };
    app.log.decision(
        ctx,
        "receipt.stored",
        json!({"total_cents": total, "db_wait_ms": ctx.db_wait_ms}),
    );
    Ok(total)
}

//! The fixed variant's outbox relay: delivers each invoice-created email after the invoice's
//! transaction committed, with the invoice id as `Idempotency-Key`.
//!
//! Delivery is at-least-once. A relay claims rows with a lease, sends, then marks them sent; a
//! relay that dies between the send and the mark leaves the lease to run out, and the next relay
//! sends again with the same key, which the email provider deduplicates. That window is real and
//! can be exercised with `--fault-crash-after-email-send`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::App;
use crate::db::on_pool;
use crate::deps::Email;
use crate::log::{OpContext, now_ms, traced};
use crate::trace::TraceContext;

/// Rows one claim takes.
const BATCH: i64 = 16;

/// Exit code of the injected crash, so a test can tell it from any other exit.
pub const CRASH_EXIT_CODE: i32 = 86;

/// A claimed outbox row.
#[derive(Debug)]
struct Pending {
    id: i64,
    invoice_id: String,
    account_id: String,
    period: String,
    total_cents: i64,
    traceparent: String,
    attempts: i64,
}

/// Runs until `shutdown` turns true, finishing the batch in hand.
pub async fn run_relay(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        match claim(&app).await {
            Ok(batch) if !batch.is_empty() => deliver(&app, batch).await,
            Ok(_) => {
                tokio::select! {
                    _ = app.relay_wake.notified() => {}
                    _ = tokio::time::sleep(app.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                app.log.event(
                    "error",
                    "relay.claim_failed",
                    json!({"error": e.to_string()}),
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

async fn claim(app: &App) -> Result<Vec<Pending>, sqlx::Error> {
    let now = now_ms();
    let lease_until = now + app.config.lease.as_millis() as i64;
    let lock = if app.db.is_postgres() {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE outbox SET leased_until_ms = $1 \
         WHERE id IN (SELECT id FROM outbox \
                      WHERE sent_at_ms IS NULL AND next_attempt_at_ms <= $2 \
                        AND (leased_until_ms IS NULL OR leased_until_ms < $2) \
                      ORDER BY id LIMIT {BATCH} {lock}) \
         RETURNING id, invoice_id, account_id, period, total_cents, traceparent, attempts"
    );
    on_pool!(&app.db, pool => {
        let rows = sqlx::query(&sql).bind(lease_until).bind(now).fetch_all(pool).await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row as _;
                Ok(Pending {
                    id: r.try_get("id")?,
                    invoice_id: r.try_get("invoice_id")?,
                    account_id: r.try_get("account_id")?,
                    period: r.try_get("period")?,
                    total_cents: r.try_get("total_cents")?,
                    traceparent: r.try_get("traceparent")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    })
}

async fn deliver(app: &Arc<App>, batch: Vec<Pending>) {
    let mut sends = JoinSet::new();
    for pending in batch {
        let app = Arc::clone(app);
        sends.spawn(async move { deliver_one(&app, pending).await });
    }
    while sends.join_next().await.is_some() {}
}

async fn deliver_one(app: &App, pending: Pending) {
    let trace = TraceContext::continue_from(Some(&pending.traceparent));
    let ctx = OpContext {
        operation: "relay_email",
        caller: "relay",
        correlation_id: trace.trace_id.clone(),
        span_id: trace.span_id.clone(),
        idempotency_key: Some(pending.invoice_id.clone()),
        account_id: Some(pending.account_id.clone()),
        period: Some(pending.period.clone()),
        retry_attempt: Some(pending.attempts + 1),
        ..OpContext::default()
    };
    let email = Email {
        invoice_id: &pending.invoice_id,
        account_id: &pending.account_id,
        period: &pending.period,
        total_cents: pending.total_cents,
    };
    let sent = app
        .email
        .send(&email, &trace, Some(&pending.invoice_id))
        .await;
    let now = now_ms();
    let update = match &sent {
        Ok(status) => {
            app.log.decision(
                &ctx,
                "email.sent",
                json!({"invoice_id": pending.invoice_id, "status": status.as_u16(), "outbox_id": pending.id}),
            );
            if app.config.crash_after_email_send {
                app.log.event(
                    "warn",
                    "fault.crash_after_email_send",
                    json!({"outbox_id": pending.id, "exit_code": CRASH_EXIT_CODE}),
                );
                std::process::exit(CRASH_EXIT_CODE);
            }
            on_pool!(&app.db, pool => sqlx::query(&traced(
                "UPDATE outbox SET sent_at_ms = $1, attempts = attempts + 1, leased_until_ms = NULL, \
                 last_error = NULL WHERE id = $2",
                &ctx,
            )).persistent(false)
            .bind(now)
            .bind(pending.id)
            .execute(pool)
            .await
            .map(|_| ()))
        }
        Err(detail) => {
            let retry_in_ms = (100_i64 << pending.attempts.clamp(0, 8)).min(30_000);
            let retry_in_ms = fastrand::i64(retry_in_ms / 2..=retry_in_ms);
            app.log.decision(
                &ctx,
                "email.failed",
                json!({"invoice_id": pending.invoice_id, "error": detail, "retry_in_ms": retry_in_ms}),
            );
            on_pool!(&app.db, pool => sqlx::query(&traced(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = $1, \
                 leased_until_ms = NULL, last_error = $2 WHERE id = $3",
                &ctx,
            )).persistent(false)
            .bind(now + retry_in_ms)
            .bind(detail)
            .bind(pending.id)
            .execute(pool)
            .await
            .map(|_| ()))
        }
    };
    if let Err(e) = update {
        app.log.event(
            "error",
            "relay.update_failed",
            json!({"outbox_id": pending.id, "error": e.to_string()}),
        );
    }
}

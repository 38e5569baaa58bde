//! The database-backed reconciliation queue and the worker that drains it.
//!
//! `POST /reconcile` enqueues one job per account, each carrying the enqueuing request's
//! `traceparent` so the worker continues that trace. Workers claim one job at a time with a
//! lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, a single atomic `UPDATE` on SQLite); a job whose
//! worker died is taken again once its lease runs out. Jobs create invoices through the same
//! [`invoices::create`] the API uses, which is exactly how the seed's API and worker overlap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection as _;
use tokio::sync::watch;

use crate::App;
use crate::db::on_pool;
use crate::error::RequestError;
use crate::invoices;
use crate::log::{OpContext, now_ms, traced};
use crate::trace::TraceContext;

/// Attempts a job gets before it is marked `failed`.
pub const MAX_JOB_ATTEMPTS: i64 = 5;

/// Most accounts one `POST /reconcile` may enqueue.
pub const MAX_ACCOUNTS_PER_RECONCILE: usize = 10_000;

/// Enqueues one job per account; returns the job ids in order.
pub async fn enqueue(
    app: &App,
    ctx: &mut OpContext,
    trace: &TraceContext,
    period: &str,
    account_ids: &[String],
) -> Result<Vec<i64>, RequestError> {
    let now = now_ms();
    let traceparent = trace.header();
    let started = Instant::now();
    let ids = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        let mut tx = conn.begin().await?;
        let mut ids = Vec::with_capacity(account_ids.len());
        for account_id in account_ids {
            let row = sqlx::query(&traced(
                "INSERT INTO jobs (account_id, period, traceparent, enqueued_at_ms, state, attempts, \
                 next_attempt_at_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $4) RETURNING id",
                ctx,
            )).persistent(false)
            .bind(account_id)
            .bind(period)
            .bind(&traceparent)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(sqlx::Row::try_get::<i64, _>(&row, "id")?);
        }
        tx.commit().await?;
        ids
    });
    app.worker_wake.notify_waiters();
    app.log.decision(
        ctx,
        "reconcile.enqueued",
        json!({"jobs": ids.len(), "first_job_id": ids.first(), "last_job_id": ids.last()}),
    );
    Ok(ids)
}

/// A claimed job.
#[derive(Debug)]
struct Job {
    id: i64,
    account_id: String,
    period: String,
    traceparent: String,
    enqueued_at_ms: i64,
    attempts: i64,
}

/// One worker loop; the service runs `worker_concurrency` of them. Returns when `shutdown`
/// turns true, after finishing the job in hand.
pub async fn run_worker(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        match claim(&app).await {
            Ok(Some(job)) => process(&app, job).await,
            Ok(None) => {
                tokio::select! {
                    _ = app.worker_wake.notified() => {}
                    _ = tokio::time::sleep(app.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                app.log.event(
                    "error",
                    "worker.claim_failed",
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

async fn claim(app: &App) -> Result<Option<Job>, sqlx::Error> {
    let now = now_ms();
    let lease_until = now + app.config.lease.as_millis() as i64;
    let lock = if app.db.is_postgres() {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, leased_until_ms = $1 \
         WHERE id = (SELECT id FROM jobs \
                     WHERE (state = 'queued' AND next_attempt_at_ms <= $2) \
                        OR (state = 'running' AND leased_until_ms < $2) \
                     ORDER BY id LIMIT 1 {lock}) \
         RETURNING id, account_id, period, traceparent, enqueued_at_ms, attempts"
    );
    on_pool!(&app.db, pool => {
        let row = sqlx::query(&sql).bind(lease_until).bind(now).fetch_optional(pool).await?;
        row.map(|r| {
            use sqlx::Row as _;
            Ok(Job {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                period: r.try_get("period")?,
                traceparent: r.try_get("traceparent")?,
                enqueued_at_ms: r.try_get("enqueued_at_ms")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .transpose()
    })
}

async fn process(app: &App, job: Job) {
    let trace = TraceContext::continue_from(Some(&job.traceparent));
    let mut ctx = OpContext {
        operation: "reconcile",
        caller: "worker",
        correlation_id: trace.trace_id.clone(),
        span_id: trace.span_id.clone(),
        account_id: Some(job.account_id.clone()),
        period: Some(job.period.clone()),
        retry_attempt: Some(job.attempts),
        queue_enqueued_at_ms: Some(job.enqueued_at_ms),
        ..OpContext::default()
    };
    app.log
        .decision(&ctx, "job.claimed", json!({"job_id": job.id}));
    let result = invoices::create(app, &mut ctx, &trace, &job.account_id, &job.period, None).await;
    let now = now_ms();
    let update = match &result {
        Ok(outcome) => {
            let invoice_id = outcome.invoice().id.clone();
            app.log.decision(
                &ctx,
                "job.done",
                json!({"job_id": job.id, "invoice_id": invoice_id, "status": outcome.status()}),
            );
            on_pool!(&app.db, pool => sqlx::query(&traced(
                "UPDATE jobs SET state = 'done', finished_at_ms = $1, invoice_id = $2, \
                 leased_until_ms = NULL WHERE id = $3",
                &ctx,
            )).persistent(false)
            .bind(now)
            .bind(invoice_id)
            .bind(job.id)
            .execute(pool)
            .await
            .map(|_| ()))
        }
        Err(error) => {
            let give_up = job.attempts >= MAX_JOB_ATTEMPTS;
            let retry_in_ms = (100_i64 << job.attempts.clamp(0, 10)).min(10_000);
            app.log.decision(
                &ctx,
                if give_up {
                    "job.failed"
                } else {
                    "job.retry_scheduled"
                },
                json!({"job_id": job.id, "error": error.to_string(), "error_kind": error.kind(),
                       "retry_in_ms": (!give_up).then_some(retry_in_ms)}),
            );
            on_pool!(&app.db, pool => sqlx::query(&traced(
                "UPDATE jobs SET state = $1, next_attempt_at_ms = $2, last_error = $3, \
                 finished_at_ms = $4, leased_until_ms = NULL WHERE id = $5",
                &ctx,
            )).persistent(false)
            .bind(if give_up { "failed" } else { "queued" })
            .bind(now + retry_in_ms)
            .bind(error.to_string())
            .bind(give_up.then_some(now))
            .bind(job.id)
            .execute(pool)
            .await
            .map(|_| ()))
        }
    };
    if let Err(e) = update {
        // The lease runs out and another worker takes the job again: at-least-once, which the
        // fixed variant absorbs and the naive one does not.
        app.log.event(
            "error",
            "job.update_failed",
            json!({"job_id": job.id, "error": e.to_string()}),
        );
    }
}

//! Queued sends of a document: the gallery's stale work (the seed's "queue delay").
//!
//! `POST /sends {"account_id"}` is what a queue consumer calls for a send job enqueued earlier;
//! `POST /voids {"account_id"}` voids the account's document. `naive` sends whatever the job
//! says, so a job that waited in the queue past a void emails a voided document. `fixed` makes
//! the send a state transition — open to sent, in one statement that does nothing once the
//! document is voided — and sends the email only when the transition happened (a durable
//! state machine and a stale-work check before the side effect).

use std::time::Instant;

use serde_json::json;

use crate::App;
use crate::config::Variant;
use crate::db::on_pool;
use crate::deps::Email;
use crate::error::RequestError;
use crate::log::{OpContext, now_ms, traced};
use crate::trace::TraceContext;

/// What a send job came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The email went out.
    Sent,
    /// The document was voided before the job ran: nothing sent (fixed only).
    SkippedVoided,
}

/// Voids `account_id`'s document.
pub async fn void(app: &App, ctx: &mut OpContext, account_id: &str) -> Result<(), RequestError> {
    let started = Instant::now();
    let upsert = "INSERT INTO documents (account_id, status, voided_at_ms) VALUES ($1, 'voided', $2) \
                  ON CONFLICT (account_id) DO UPDATE SET status = 'voided', voided_at_ms = excluded.voided_at_ms";
    on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query(&traced(upsert, ctx)).persistent(false)
            .bind(account_id)
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map(|_| ())?
    });
    app.log.decision(ctx, "document.voided", json!({}));
    Ok(())
}

/// Runs a send job for `account_id`'s document.
pub async fn send(
    app: &App,
    ctx: &mut OpContext,
    trace: &TraceContext,
    account_id: &str,
) -> Result<Sent, RequestError> {
    let started = Instant::now();
    let sql = match app.config.variant {
        // Records the send whatever the document's state.
        Variant::Naive => {
            "INSERT INTO documents (account_id, status, sent_at_ms) VALUES ($1, 'sent', $2) \
             ON CONFLICT (account_id) DO UPDATE SET status = 'sent', sent_at_ms = excluded.sent_at_ms"
        }
        // Open (or new) to sent; a voided document stays voided and nothing is affected.
        Variant::Fixed => {
            "INSERT INTO documents (account_id, status, sent_at_ms) VALUES ($1, 'sent', $2) \
             ON CONFLICT (account_id) DO UPDATE SET status = 'sent', sent_at_ms = excluded.sent_at_ms \
             WHERE documents.status <> 'voided'"
        }
    };
    let affected = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query(&traced(sql, ctx)).persistent(false)
            .bind(account_id)
            .bind(now_ms())
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    if affected == 0 {
        app.log.decision(
            ctx,
            "send.skipped_voided",
            json!({"stale_work_check": true}),
        );
        return Ok(Sent::SkippedVoided);
    }
    let document = format!("doc_{account_id}");
    let email = Email {
        invoice_id: &document,
        account_id,
        period: "-",
        total_cents: 0,
    };
    let span = trace.child();
    match app.email.send(&email, &span, None).await {
        Ok(status) => {
            app.log.decision(
                ctx,
                "send.sent",
                json!({"document": document, "status": status.as_u16()}),
            );
            Ok(Sent::Sent)
        }
        Err(detail) => Err(RequestError::DependencyFailed {
            dependency: "email",
            detail,
        }),
    }
}

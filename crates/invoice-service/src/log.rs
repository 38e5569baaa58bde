//! One JSON line per decision, on stderr, with the seed's diagnostic fields.
//!
//! The seed asks for a timeline rather than more logs: every line carries the correlation id
//! (trace id), idempotency key, account, operation, retry attempt, deployment version, queue
//! enqueue time and age, dependency latency and database wait, so one `grep` on a trace id gives
//! the story of one operation. stdout is kept for the `listening on` line alone.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::config::{Role, Variant};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the service knows about the operation a decision belongs to.
#[derive(Clone, Debug, Default)]
pub struct OpContext {
    /// `create_invoice`, `reconcile`, `relay_email`...
    pub operation: &'static str,
    /// `api` or `worker`: who entered the invoice code path.
    pub caller: &'static str,
    /// Trace id of the operation (the correlation id).
    pub correlation_id: String,
    /// Our span id for this request or job.
    pub span_id: String,
    /// `Idempotency-Key` of the request, if any.
    pub idempotency_key: Option<String>,
    /// Account the decision is about.
    pub account_id: Option<String>,
    /// Billing period the decision is about.
    pub period: Option<String>,
    /// Client retry attempt from `X-Retry-Attempt` (1 = first try), or the job attempt.
    pub retry_attempt: Option<i64>,
    /// When a queued job was enqueued (ms since epoch).
    pub queue_enqueued_at_ms: Option<i64>,
    /// Milliseconds spent in usage calls so far.
    pub dependency_latency_ms: Option<f64>,
    /// Milliseconds spent waiting for database connections so far.
    pub db_wait_ms: f64,
}

/// `sql` with a sqlcommenter comment carrying the operation's `traceparent`, so a proxy or
/// the database's own logs can tie each statement to the operation that sent it.
pub fn traced(sql: &str, ctx: &OpContext) -> String {
    if ctx.correlation_id.is_empty() || ctx.span_id.is_empty() {
        return sql.to_string();
    }
    format!(
        "{sql} /*traceparent='00-{}-{}-01'*/",
        ctx.correlation_id, ctx.span_id
    )
}

/// Writes decision lines. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Logger {
    variant: Variant,
    version: String,
    role: Role,
}

impl Logger {
    /// A logger that stamps every line with the process's variant, version and role.
    pub fn new(variant: Variant, version: &str, role: Role) -> Logger {
        Logger {
            variant,
            version: version.to_string(),
            role,
        }
    }

    /// Logs a decision about an operation, with `extra` fields merged in.
    pub fn decision(&self, ctx: &OpContext, event: &str, extra: Value) {
        let now = now_ms();
        let mut line = self.base("info", event, now);
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                line.insert(k.to_string(), v);
            }
        };
        put("operation", json!(ctx.operation));
        put("caller", json!(ctx.caller));
        put("correlation_id", json!(ctx.correlation_id));
        put("span_id", json!(ctx.span_id));
        put("idempotency_key", json!(ctx.idempotency_key));
        put("account_id", json!(ctx.account_id));
        put("period", json!(ctx.period));
        put("retry_attempt", json!(ctx.retry_attempt));
        put("queue_enqueued_at_ms", json!(ctx.queue_enqueued_at_ms));
        put(
            "queue_age_ms",
            json!(ctx.queue_enqueued_at_ms.map(|t| now - t)),
        );
        put(
            "dependency_latency_ms",
            json!(ctx.dependency_latency_ms.map(round1)),
        );
        put("db_wait_ms", json!(round1(ctx.db_wait_ms)));
        merge(&mut line, extra);
        let msg = describe(event, &line);
        line.insert("msg".into(), json!(msg));
        emit(line);
    }

    /// Logs something that belongs to no operation (start-up, shutdown, background loops).
    pub fn event(&self, level: &str, event: &str, extra: Value) {
        let mut line = self.base(level, event, now_ms());
        merge(&mut line, extra);
        emit(line);
    }

    fn base(&self, level: &str, event: &str, now: i64) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("ts_ms".into(), json!(now));
        line.insert("level".into(), json!(level));
        line.insert("event".into(), json!(event));
        line.insert("variant".into(), json!(self.variant.as_str()));
        line.insert("version".into(), json!(self.version));
        line.insert("role".into(), json!(self.role.as_str()));
        line
    }
}

/// The decision in words, for people reading a timeline (`msg`); the fields stay for tools.
fn describe(event: &str, line: &Map<String, Value>) -> String {
    let text = |k: &str| match line.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".to_string(),
        Some(other) => other.to_string(),
    };
    // JSON as written: `null` stays `null` (a column the release left empty).
    let raw = |k: &str| {
        line.get(k)
            .map_or_else(|| "null".to_string(), Value::to_string)
    };
    let what = match line.get("period") {
        Some(Value::String(period)) => format!("{}/{period}", text("account_id")),
        _ => text("account_id"),
    };
    match event {
        "request.received" => format!(
            "received {} for {what} (attempt {})",
            text("operation"),
            text("retry_attempt")
        ),
        "request.done" if line.contains_key("invoice_id") => {
            format!("answered {} ({})", text("status"), text("invoice_id"))
        }
        "request.done" if line.contains_key("price_cents") => {
            format!(
                "answered {} (price {})",
                text("status"),
                text("price_cents")
            )
        }
        "request.done" if line.contains_key("sent") => {
            format!("answered {} (sent: {})", text("status"), text("sent"))
        }
        "request.done" if line.contains_key("voided") => {
            format!("answered {} (voided)", text("status"))
        }
        "request.done" if line.contains_key("refunded_cents") => format!(
            "answered {} (refunded {} cents)",
            text("status"),
            text("refunded_cents")
        ),
        "request.done" if line.contains_key("total_cents") => format!(
            "answered {} (receipt of {} cents)",
            text("status"),
            text("total_cents")
        ),
        "request.done" if line.contains_key("paid") => {
            format!(
                "answered {} (paid {} dollars)",
                text("status"),
                text("paid")
            )
        }
        "request.done" => format!("answered {} (balance {})", text("status"), text("cents")),
        "document.voided" => format!("voided the document of {what}"),
        "payment.stored" => format!(
            "stored a payment of {what} ({}): amount {}, amount_cents {}",
            text("release"),
            text("amount"),
            raw("amount_cents")
        ),
        "payment.read" => format!(
            "read the latest payment of {what} ({}): amount {}, amount_cents {} → refund {} cents",
            text("release"),
            text("amount"),
            raw("amount_cents"),
            text("refund_cents")
        ),
        "refund.stored" => format!("refunded {what} {} cents", text("refund_cents")),
        "receipt.connection_taken" => format!(
            "took a database connection for {what} after waiting {:.0} ms, and holds it",
            line.get("db_wait_ms")
                .and_then(Value::as_f64)
                .unwrap_or_default()
        ),
        "receipt.stored" => format!("stored a receipt for {what}: {} cents", text("total_cents")),
        "refund.no_payment" => format!("{what} has no payment to refund"),
        "send.sent" => format!("sent {} by email ({})", text("document"), text("status")),
        "send.skipped_voided" => {
            format!("the document of {what} is voided: the send job is stale, nothing sent")
        }
        "plan.changed" => format!(
            "changed the plan of {what}: {} cents (version {})",
            text("price_cents"),
            text("plan_version")
        ),
        "plan.cached" => format!(
            "plan of {what} from this process's cache: {} cents (version {})",
            text("price_cents"),
            text("plan_version")
        ),
        "plan.read" => format!(
            "read the plan of {what}: {} cents (version {})",
            text("price_cents"),
            text("plan_version")
        ),
        "charge.billed" => format!(
            "billed {what} {} cents (plan version {})",
            text("price_cents"),
            text("plan_version")
        ),
        "balance.read" => format!("read the balance of {what}: {} cents", text("cents")),
        "balance.written" => format!(
            "wrote the balance of {what}: {} cents (credit {})",
            text("cents"),
            text("credit")
        ),
        "request.failed" => format!("answered {}: {}", text("status"), text("error")),
        "invoice.none_found" => format!("find invoice {what}: none"),
        "invoice.found_existing" => format!("find invoice {what}: {}", text("invoice_id")),
        "usage.read" => format!(
            "usage {what}: {} cents in {:.0} ms",
            text("total_cents"),
            line.get("call_latency_ms")
                .and_then(Value::as_f64)
                .unwrap_or_default()
        ),
        "usage.failed" => format!("usage call failed: {}", text("error")),
        "invoice.inserted" => format!("inserted invoice {} for {what}", text("invoice_id")),
        "invoice.insert_failed" => format!("insert for {what} failed: {}", text("error")),
        "invoice.conflict_returned_existing" => format!(
            "insert for {what} hit the unique index: kept {}",
            text("invoice_id")
        ),
        "email.sent" => format!(
            "sent the email for {} ({})",
            text("invoice_id"),
            text("status")
        ),
        "email.failed" => format!("email for {} failed: {}", text("invoice_id"), text("error")),
        "idempotency.replayed" => format!("replayed the answer for {}", text("invoice_id")),
        "idempotency.key_reused" => "idempotency key reused for another account".to_string(),
        "job.claimed" => format!(
            "job {} claimed, queued {} ms",
            text("job_id"),
            text("queue_age_ms")
        ),
        "job.done" => format!("job {} done: {}", text("job_id"), text("invoice_id")),
        "job.failed" | "job.retry_scheduled" => {
            format!("job {} {}: {}", text("job_id"), &event[4..], text("error"))
        }
        "reconcile.enqueued" => format!("enqueued {} job(s)", text("jobs")),
        other => other.to_string(),
    }
}

/// Rounds to 0.1 ms: finer digits are noise in a log line.
fn round1(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

fn merge(line: &mut Map<String, Value>, extra: Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            line.insert(k, v);
        }
    }
}

fn emit(line: Map<String, Value>) {
    let mut buf = Value::Object(line).to_string();
    buf.push('\n');
    // One write per line so concurrent lines never interleave; a closed stderr is not our
    // problem to report.
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

//! The HTTP interface: routes, request parsing into typed values, and admission control.
//!
//! Bodies are parsed by hand rather than with axum's `Json` extractor so that every malformed
//! request gets the same 400 with `{"error": ...}` naming the field and what to send instead.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::App;
use crate::error::RequestError;
use crate::invoices::{self, validate_account_id, validate_period};
use crate::log::OpContext;
use crate::queue::{self, MAX_ACCOUNTS_PER_RECONCILE};
use crate::trace::TraceContext;
use crate::{credits, payments, plans, receipts, sends};

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The router for a process's role: `/health` always, the invoice API when the role serves it.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new().route("/health", get(health));
    if app.config.role.serves_api() {
        let api = Router::new()
            .route("/invoices", post(create_invoice).get(list_invoices))
            .route("/reconcile", post(reconcile))
            .route("/credits", post(credit))
            .route("/plans", post(change_plan))
            .route("/charges", post(charge))
            .route("/sends", post(send))
            .route("/voids", post(void))
            .route("/payments", post(pay))
            .route("/refunds", post(refund))
            .route("/receipts", post(receipt))
            .route_layer(middleware::from_fn_with_state(Arc::clone(&app), admit));
        router = router.merge(api);
    }
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .with_state(app)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Admission control: past `max_in_flight` concurrent requests, answer 503 with `Retry-After`
/// at once instead of queueing work the service cannot finish in time.
async fn admit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(limit) = &app.admission else {
        return next.run(request).await;
    };
    match Arc::clone(limit).try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            app.log.event(
                "warn",
                "admission.rejected",
                json!({"path": request.uri().path(), "max_in_flight": app.config.max_in_flight}),
            );
            RequestError::Overloaded(format!(
                "more than {} requests in flight; retry later",
                app.config.max_in_flight.unwrap_or(0)
            ))
            .into_response()
        }
    }
}

/// The operation context of an incoming request, from its headers.
fn request_context(operation: &'static str, headers: &HeaderMap) -> (OpContext, TraceContext) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::continue_from(header("traceparent"));
    let ctx = OpContext {
        operation,
        caller: "api",
        correlation_id: trace.trace_id.clone(),
        span_id: trace.span_id.clone(),
        idempotency_key: header("idempotency-key").map(str::to_string),
        retry_attempt: header("x-retry-attempt").and_then(|v| v.trim().parse().ok()),
        ..OpContext::default()
    };
    (ctx, trace)
}

/// Attaches the correlation id so a client can find the service's log lines for its request.
fn with_correlation(mut response: Response, trace: &TraceContext) -> Response {
    if let Ok(value) = HeaderValue::from_str(&trace.trace_id) {
        response.headers_mut().insert("x-correlation-id", value);
    }
    response
}

/// Logs a failed request and renders it.
fn fail(app: &App, ctx: &OpContext, trace: &TraceContext, error: RequestError) -> Response {
    app.log.decision(
        ctx,
        "request.failed",
        json!({"status": error.status().as_u16(), "error_kind": error.kind(), "error": error.to_string()}),
    );
    with_correlation(error.into_response(), trace)
}

fn parse_json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RequestError::BadRequest(
            "the body must be a JSON object".to_string(),
        )),
        Err(e) => Err(RequestError::BadRequest(format!(
            "malformed JSON body: {e}"
        ))),
    }
}

fn string_field<'a>(
    body: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, RequestError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(RequestError::BadRequest(format!(
            "field {name:?} must be a string, got {other}"
        ))),
        None => Err(RequestError::BadRequest(format!("missing field {name:?}"))),
    }
}

fn parse_create(
    body: &[u8],
    idempotency_key: Option<&str>,
) -> Result<(String, String), RequestError> {
    let body = parse_json_object(body)?;
    let account_id = string_field(&body, "account_id")?;
    let period = string_field(&body, "period")?;
    validate_account_id(account_id)?;
    validate_period(period)?;
    if let Some(key) = idempotency_key
        && (key.trim().is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
    {
        return Err(RequestError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        )));
    }
    Ok((account_id.to_string(), period.to_string()))
}

/// `POST /invoices {"account_id", "period"}` → 201 created, 200 existing, 400 bad input.
async fn create_invoice(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("create_invoice", &headers);
    let (account_id, period) = match parse_create(&body, ctx.idempotency_key.as_deref()) {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    ctx.period = Some(period.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    let key = ctx.idempotency_key.clone();
    match invoices::create(&app, &mut ctx, &trace, &account_id, &period, key.as_deref()).await {
        Ok(outcome) => {
            let status = StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::OK);
            app.log.decision(
                &ctx,
                "request.done",
                json!({"status": status.as_u16(), "invoice_id": outcome.invoice().id}),
            );
            with_correlation((status, Json(outcome.invoice())).into_response(), &trace)
        }
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `POST /credits {"account_id", "cents"}` → 200 `{"account_id", "cents"}` with the balance
/// after the credit; 400 bad input.
async fn credit(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("credit", &headers);
    let parsed = parse_json_object(&body).and_then(|body| {
        let account_id = string_field(&body, "account_id")?.to_string();
        validate_account_id(&account_id)?;
        let cents = match body.get("cents").and_then(Value::as_i64) {
            Some(c) if (1..=credits::MAX_CREDIT_CENTS).contains(&c) => c,
            _ => {
                return Err(RequestError::BadRequest(format!(
                    "field \"cents\" must be an integer from 1 to {}",
                    credits::MAX_CREDIT_CENTS
                )));
            }
        };
        Ok((account_id, cents))
    });
    let (account_id, cents) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log
        .decision(&ctx, "request.received", json!({"cents": cents}));
    match credits::credit(&app, &mut ctx, &account_id, cents).await {
        Ok(balance) => {
            app.log.decision(
                &ctx,
                "request.done",
                json!({"status": 200, "cents": balance}),
            );
            with_correlation(
                Json(json!({"account_id": account_id, "cents": balance})).into_response(),
                &trace,
            )
        }
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `POST /plans {"account_id", "price_cents"}` → 200 `{"account_id", "price_cents",
/// "plan_version"}`; 400 bad input.
async fn change_plan(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("change_plan", &headers);
    let parsed = parse_json_object(&body).and_then(|body| {
        let account_id = string_field(&body, "account_id")?.to_string();
        validate_account_id(&account_id)?;
        match body.get("price_cents").and_then(Value::as_i64) {
            Some(p) if (0..=plans::MAX_PRICE_CENTS).contains(&p) => Ok((account_id, p)),
            _ => Err(RequestError::BadRequest(format!(
                "field \"price_cents\" must be an integer from 0 to {}",
                plans::MAX_PRICE_CENTS
            ))),
        }
    });
    let (account_id, price) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    let result = plans::change(&app, &mut ctx, &account_id, price).await;
    plan_answer(&app, &ctx, &trace, &account_id, result)
}

/// `POST /charges {"account_id"}` → 200 `{"account_id", "price_cents", "plan_version"}`: the
/// plan the charge was billed at; 400 bad input.
async fn charge(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("charge", &headers);
    let parsed = parse_json_object(&body).and_then(|body| {
        let account_id = string_field(&body, "account_id")?.to_string();
        validate_account_id(&account_id)?;
        Ok(account_id)
    });
    let account_id = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    let result = plans::charge(&app, &mut ctx, &account_id).await;
    plan_answer(&app, &ctx, &trace, &account_id, result)
}

/// The `account_id` of a body that has only that.
fn account_only(body: &[u8]) -> Result<String, RequestError> {
    let body = parse_json_object(body)?;
    let account_id = string_field(&body, "account_id")?.to_string();
    validate_account_id(&account_id)?;
    Ok(account_id)
}

/// `POST /sends {"account_id"}` (a queued send job) → 200 `{"sent": true}`, or 409
/// `{"sent": false, "reason": "voided"}` when the fixed service's stale-work check skipped it.
async fn send(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("send", &headers);
    let account_id = match account_only(&body) {
        Ok(a) => a,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    match sends::send(&app, &mut ctx, &trace, &account_id).await {
        Ok(outcome) => {
            let (status, body) = match outcome {
                sends::Sent::Sent => (StatusCode::OK, json!({"sent": true})),
                sends::Sent::SkippedVoided => (
                    StatusCode::CONFLICT,
                    json!({"sent": false, "reason": "voided"}),
                ),
            };
            app.log.decision(
                &ctx,
                "request.done",
                json!({"status": status.as_u16(), "sent": body["sent"]}),
            );
            with_correlation((status, Json(body)).into_response(), &trace)
        }
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `POST /voids {"account_id"}` → 200 `{"voided": true}`.
async fn void(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("void", &headers);
    let account_id = match account_only(&body) {
        Ok(a) => a,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    match sends::void(&app, &mut ctx, &account_id).await {
        Ok(()) => {
            app.log
                .decision(&ctx, "request.done", json!({"status": 200, "voided": true}));
            with_correlation(Json(json!({"voided": true})).into_response(), &trace)
        }
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `POST /payments {"account_id", "dollars"}` → 200 `{"paid": true}`; 400 bad input.
async fn pay(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("pay", &headers);
    let parsed = parse_json_object(&body).and_then(|body| {
        let account_id = string_field(&body, "account_id")?.to_string();
        validate_account_id(&account_id)?;
        match body.get("dollars").and_then(Value::as_i64) {
            Some(d) if (1..=payments::MAX_DOLLARS).contains(&d) => Ok((account_id, d)),
            _ => Err(RequestError::BadRequest(format!(
                "field \"dollars\" must be an integer from 1 to {}",
                payments::MAX_DOLLARS
            ))),
        }
    });
    let (account_id, dollars) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    match payments::pay(&app, &mut ctx, &account_id, dollars).await {
        Ok(()) => {
            app.log.decision(
                &ctx,
                "request.done",
                json!({"status": 200, "paid": dollars}),
            );
            with_correlation(Json(json!({"paid": true})).into_response(), &trace)
        }
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `POST /refunds {"account_id"}` → 200 `{"refunded_cents"}` for the latest payment, 404 when
/// the account has none.
async fn refund(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("refund", &headers);
    let account_id = match account_only(&body) {
        Ok(a) => a,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    match payments::refund(&app, &mut ctx, &account_id).await {
        Ok(Some(cents)) => {
            app.log.decision(
                &ctx,
                "request.done",
                json!({"status": 200, "refunded_cents": cents}),
            );
            with_correlation(
                Json(json!({"refunded_cents": cents})).into_response(),
                &trace,
            )
        }
        Ok(None) => fail(
            &app,
            &ctx,
            &trace,
            RequestError::NotFound(format!("account {account_id:?} has no payment to refund")),
        ),
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `POST /receipts {"account_id", "period"}` → 201 `{"total_cents"}`; 400 bad input.
async fn receipt(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("receipt", &headers);
    let parsed = parse_json_object(&body).and_then(|body| {
        let account_id = string_field(&body, "account_id")?.to_string();
        let period = string_field(&body, "period")?.to_string();
        validate_account_id(&account_id)?;
        validate_period(&period)?;
        Ok((account_id, period))
    });
    let (account_id, period) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.account_id = Some(account_id.clone());
    ctx.period = Some(period.clone());
    app.log.decision(&ctx, "request.received", json!({}));
    // The work runs to its end even when the client gives up and disconnects (as it does in
    // most servers; hyper would otherwise drop the handler): a receipt a client stopped
    // waiting for is still stored.
    let work = {
        let (app, trace, mut ctx) = (Arc::clone(&app), trace.clone(), ctx.clone());
        tokio::spawn(async move {
            let stored = receipts::store(&app, &mut ctx, &trace, &account_id, &period).await;
            (stored, ctx)
        })
    };
    let stored = match work.await {
        Ok((stored, done)) => {
            ctx = done;
            stored
        }
        Err(e) => Err(RequestError::Overloaded(format!(
            "the receipt's work failed: {e}"
        ))),
    };
    match stored {
        Ok(total) => {
            app.log.decision(
                &ctx,
                "request.done",
                json!({"status": 201, "total_cents": total}),
            );
            with_correlation(
                (StatusCode::CREATED, Json(json!({"total_cents": total}))).into_response(),
                &trace,
            )
        }
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

fn plan_answer(
    app: &App,
    ctx: &OpContext,
    trace: &TraceContext,
    account_id: &str,
    result: Result<plans::Plan, RequestError>,
) -> Response {
    match result {
        Ok(plan) => {
            app.log.decision(
                ctx,
                "request.done",
                json!({"status": 200, "price_cents": plan.price_cents}),
            );
            with_correlation(
                Json(json!({
                    "account_id": account_id,
                    "price_cents": plan.price_cents,
                    "plan_version": plan.version,
                }))
                .into_response(),
                trace,
            )
        }
        Err(e) => fail(app, ctx, trace, e),
    }
}

/// `GET /invoices?account_id=&period=` → every matching invoice, duplicates included.
async fn list_invoices(
    State(app): State<Arc<App>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return RequestError::BadRequest(format!("malformed query string: {e}"))
                .into_response();
        }
    };
    let parsed = (|| {
        let field = |name: &str| {
            query.get(name).map(String::as_str).ok_or_else(|| {
                RequestError::BadRequest(format!("missing query parameter {name:?}"))
            })
        };
        let (account_id, period) = (field("account_id")?, field("period")?);
        validate_account_id(account_id)?;
        validate_period(period)?;
        Ok::<_, RequestError>((account_id, period))
    })();
    let result = match parsed {
        Ok((account_id, period)) => invoices::list(&app, account_id, period).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(invoices) => Json(invoices).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /reconcile {"period", "account_ids": [...]}` → 202 with the enqueued job ids.
async fn reconcile(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut ctx, trace) = request_context("reconcile", &headers);
    let parsed = parse_json_object(&body).and_then(|body| {
        let period = string_field(&body, "period")?.to_string();
        validate_period(&period)?;
        let ids = match body.get("account_ids") {
            Some(Value::Array(ids)) => ids,
            Some(other) => {
                return Err(RequestError::BadRequest(format!(
                    "field \"account_ids\" must be an array of strings, got {other}"
                )));
            }
            None => {
                return Err(RequestError::BadRequest(
                    "missing field \"account_ids\"".to_string(),
                ));
            }
        };
        if ids.is_empty() || ids.len() > MAX_ACCOUNTS_PER_RECONCILE {
            return Err(RequestError::BadRequest(format!(
                "account_ids must hold 1 to {MAX_ACCOUNTS_PER_RECONCILE} accounts, got {}",
                ids.len()
            )));
        }
        let mut accounts = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let Value::String(id) = id else {
                return Err(RequestError::BadRequest(format!(
                    "account_ids[{i}] must be a string, got {id}"
                )));
            };
            validate_account_id(id)
                .map_err(|e| RequestError::BadRequest(format!("account_ids[{i}]: {e}")))?;
            accounts.push(id.clone());
        }
        Ok((period, accounts))
    });
    let (period, accounts) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return fail(&app, &ctx, &trace, e),
    };
    ctx.period = Some(period.clone());
    match queue::enqueue(&app, &mut ctx, &trace, &period, &accounts).await {
        Ok(job_ids) => with_correlation(
            (
                StatusCode::ACCEPTED,
                Json(json!({"enqueued": job_ids.len(), "job_ids": job_ids})),
            )
                .into_response(),
            &trace,
        ),
        Err(e) => fail(&app, &ctx, &trace, e),
    }
}

/// `GET /health` → 200 when the database answers, 503 otherwise.
async fn health(State(app): State<Arc<App>>) -> Response {
    let config = &app.config;
    match app.db.ping().await {
        Ok(took) => Json(json!({
            "status": "ok",
            "variant": config.variant.as_str(),
            "version": config.version,
            "role": config.role.as_str(),
            "db_ping_ms": took.as_secs_f64() * 1e3,
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("database unavailable: {e}"),
        ),
    }
}

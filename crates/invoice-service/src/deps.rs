//! Outgoing HTTP: the usage dependency and the email endpoint.
//!
//! One keep-alive client per process. Every call has a deadline and carries a child
//! `traceparent`, so reprod's fault layer can join it back to the operation that caused it.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::config::{Config, Variant};
use crate::error::RequestError;
use crate::log::{Logger, OpContext};
use crate::trace::TraceContext;

/// Largest dependency response body we read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How one call ended, short of a usable answer.
#[derive(Debug)]
pub enum CallError {
    /// No complete answer before the deadline.
    Timeout(Duration),
    /// Connecting or exchanging failed.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            CallError::Transport(e) => f.write_str(e),
        }
    }
}

/// A keep-alive HTTP/1 client for the service's dependencies.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A client with no proxy and no TLS: dependencies are plain HTTP URLs.
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// Sends one request and reads the whole answer, all within `timeout`.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), CallError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| CallError::Transport(format!("bad URL {url:?}: {e}")))?;
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Transport(describe_client_error(&e)))?;
            let (parts, body) = response.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| CallError::Transport(format!("reading the response: {e}")))?
                .to_bytes();
            Ok((parts.status, parts.headers, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }
}

impl Default for Http {
    fn default() -> Http {
        Http::new()
    }
}

fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes one URL path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads usage for an account and period: one attempt with a library-default timeout in the naive
/// variant; per-attempt timeouts and bounded retries with exponential backoff and full jitter in
/// the fixed one.
#[derive(Clone, Debug)]
pub struct UsageClient {
    http: Http,
    base_url: String,
    timeout: Duration,
    attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    log: Logger,
}

impl UsageClient {
    /// A client configured from `config` (the variant decides the retry policy).
    pub fn new(http: Http, config: &Config, log: Logger) -> UsageClient {
        UsageClient {
            http,
            base_url: config.usage_url.trim_end_matches('/').to_string(),
            timeout: config.usage_timeout,
            attempts: match config.variant {
                Variant::Naive => 1,
                Variant::Fixed => config.usage_attempts.max(1),
            },
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(1_000),
            log,
        }
    }

    /// `GET {usage}/usage/{account}/{period}` → `totalCents`. Adds the time spent to
    /// `ctx.dependency_latency_ms`.
    pub async fn read(
        &self,
        ctx: &mut OpContext,
        trace: &TraceContext,
        account_id: &str,
        period: &str,
    ) -> Result<i64, RequestError> {
        let url = format!(
            "{}/usage/{}/{}",
            self.base_url,
            encode_segment(account_id),
            encode_segment(period)
        );
        let mut last_error = String::new();
        let mut timed_out = false;
        for attempt in 1..=self.attempts {
            let span = trace.child();
            let started = Instant::now();
            let result = self
                .http
                .call(
                    Method::GET,
                    &url,
                    &[("traceparent", span.header())],
                    None,
                    self.timeout,
                )
                .await;
            let latency_ms = started.elapsed().as_secs_f64() * 1e3;
            *ctx.dependency_latency_ms.get_or_insert(0.0) += latency_ms;
            let (retryable, retry_after) = match result {
                Ok((status, _, body)) if status.is_success() => match parse_total_cents(&body) {
                    Some(total) => {
                        self.log.decision(
                            ctx,
                            "usage.read",
                            json!({"usage_attempt": attempt, "call_latency_ms": latency_ms,
                                       "status": status.as_u16(), "total_cents": total,
                                       "dependency_span_id": span.span_id}),
                        );
                        return Ok(total);
                    }
                    None => {
                        last_error = format!(
                            "answered {} without a numeric totalCents: {}",
                            status.as_u16(),
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        );
                        timed_out = false;
                        (false, None)
                    }
                },
                Ok((status, headers, _)) => {
                    last_error = format!("answered {}", status.as_u16());
                    timed_out = false;
                    let retryable =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    (retryable, retry_after_of(&headers))
                }
                Err(CallError::Timeout(d)) => {
                    last_error = CallError::Timeout(d).to_string();
                    timed_out = true;
                    (true, None)
                }
                Err(e) => {
                    last_error = e.to_string();
                    timed_out = false;
                    (true, None)
                }
            };
            let more = retryable && attempt < self.attempts;
            self.log.decision(
                ctx,
                "usage.failed",
                json!({"usage_attempt": attempt, "call_latency_ms": latency_ms,
                       "error": last_error, "will_retry": more,
                       "dependency_span_id": span.span_id}),
            );
            if !more {
                break;
            }
            tokio::time::sleep(self.backoff(attempt, retry_after)).await;
        }
        let detail = format!("{last_error} (after {} attempt(s))", self.attempts);
        Err(if timed_out {
            RequestError::DependencyTimeout {
                dependency: "usage",
                detail,
            }
        } else {
            RequestError::DependencyFailed {
                dependency: "usage",
                detail,
            }
        })
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], or the dependency's own
    /// `Retry-After` when it gave one within the cap.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after.filter(|d| *d <= self.backoff_cap) {
            return d;
        }
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.backoff_cap);
        ceiling.mul_f64(fastrand::f64())
    }
}

fn parse_total_cents(body: &[u8]) -> Option<i64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("totalCents")?.as_i64()
}

fn retry_after_of(headers: &hyper::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// An invoice-created email, as the email endpoint receives it.
#[derive(Debug)]
pub struct Email<'a> {
    /// Invoice id; the fixed variant also sends it as `Idempotency-Key`.
    pub invoice_id: &'a str,
    /// Account billed.
    pub account_id: &'a str,
    /// Billing period.
    pub period: &'a str,
    /// Invoice total.
    pub total_cents: i64,
}

/// Sends invoice-created emails to `POST {email}/emails`.
#[derive(Clone, Debug)]
pub struct EmailClient {
    http: Http,
    url: String,
    timeout: Duration,
}

impl EmailClient {
    /// A client for the configured email endpoint.
    pub fn new(http: Http, config: &Config) -> EmailClient {
        EmailClient {
            http,
            url: format!("{}/emails", config.email_url.trim_end_matches('/')),
            timeout: config.email_timeout,
        }
    }

    /// Delivers one email; `Ok` only for a 2xx answer.
    pub async fn send(
        &self,
        email: &Email<'_>,
        trace: &TraceContext,
        idempotency_key: Option<&str>,
    ) -> Result<StatusCode, String> {
        let body = json!({
            "invoiceId": email.invoice_id,
            "accountId": email.account_id,
            "period": email.period,
            "totalCents": email.total_cents,
        });
        let mut headers = vec![("traceparent", trace.header())];
        if let Some(key) = idempotency_key {
            headers.push(("idempotency-key", key.to_string()));
        }
        match self
            .http
            .call(
                Method::POST,
                &self.url,
                &headers,
                Some(body.to_string().into_bytes()),
                self.timeout,
            )
            .await
        {
            Ok((status, _, _)) if status.is_success() => Ok(status),
            Ok((status, _, _)) => Err(format!("email endpoint answered {}", status.as_u16())),
            Err(e) => Err(format!("email endpoint: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_segment("acct_1"), "acct_1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn parses_usage_answers() {
        assert_eq!(parse_total_cents(br#"{"totalCents": 4200}"#), Some(4200));
        assert_eq!(parse_total_cents(br#"{"totalCents": "4200"}"#), None);
        assert_eq!(parse_total_cents(b"not json"), None);
    }
}

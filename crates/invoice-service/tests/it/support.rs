//! Test harness: stub dependencies on port 0, fresh databases, and the real `invoice-service`
//! binary driven only through its documented interface (flags, stdout line, HTTP).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// A unique lowercase name for a temporary directory or database.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique_name("invoice_service_it"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of one backend; dropped with the test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    admin_url: Option<String>,
    name: String,
    _dir: TempDir,
}

impl TestDb {
    /// A fresh database, or `None` (with a plain message) when PostgreSQL is asked for and
    /// `DATABASE_URL` does not point at one.
    pub async fn fresh(backend: Backend) -> Option<TestDb> {
        let dir = TempDir::new();
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!("sqlite:{}", dir.path().join("invoices.db").display()),
                admin_url: None,
                name: String::new(),
                _dir: dir,
            }),
            Backend::Postgres => {
                let admin_url = match std::env::var("DATABASE_URL") {
                    Ok(url) if url.starts_with("postgres") => url,
                    _ => {
                        assert!(
                            std::env::var_os("REPROD_CI").is_none(),
                            "REPROD_CI is set, so the PostgreSQL halves must run: set DATABASE_URL"
                        );
                        eprintln!(
                            "SKIPPED (PostgreSQL half): DATABASE_URL is not set to a postgres:// URL"
                        );
                        return None;
                    }
                };
                let name = unique_name("invoice_it");
                let admin = sqlx::PgPool::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("DATABASE_URL is set but unreachable: {e}"));
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&admin)
                    .await
                    .expect("create test database");
                admin.close().await;
                let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
                url.set_path(&format!("/{name}"));
                Some(TestDb {
                    url: url.to_string(),
                    admin_url: Some(admin_url),
                    name,
                    _dir: dir,
                })
            }
        }
    }

    /// Runs a read query on the database directly and returns the first column as i64.
    pub async fn count(&self, sql: &str) -> i64 {
        if self.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.url)
                .await
                .expect("open sqlite");
            let n: i64 = sqlx::query_scalar(sql)
                .fetch_one(&pool)
                .await
                .expect("query");
            pool.close().await;
            n
        } else {
            let pool = sqlx::PgPool::connect(&self.url)
                .await
                .expect("open postgres");
            let n: i64 = sqlx::query_scalar(sql)
                .fetch_one(&pool)
                .await
                .expect("query");
            pool.close().await;
            n
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin_url) = self.admin_url.clone() else {
            return;
        };
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; a helper thread gets
        // its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&admin)
                            .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// One email the stub received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub invoice_id: String,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
}

/// One usage call the stub received.
#[derive(Clone, Debug)]
pub struct UsageCall {
    pub account_id: String,
    pub period: String,
    pub traceparent: Option<String>,
}

#[derive(Debug, Default)]
struct StubState {
    usage_delay_ms: AtomicU64,
    /// The next this-many usage calls answer 500.
    usage_failures_left: AtomicUsize,
    usage_calls: Mutex<Vec<UsageCall>>,
    deliveries: Mutex<Vec<Delivery>>,
}

/// The usage dependency and the email endpoint, served by the test on a port of its own.
#[derive(Debug)]
pub struct Stubs {
    pub url: String,
    state: Arc<StubState>,
    server: tokio::task::JoinHandle<()>,
}

impl Stubs {
    /// Starts both stubs; usage answers `{"totalCents": 4200}` after `usage_delay`.
    pub async fn start(usage_delay: Duration) -> Stubs {
        let state = Arc::new(StubState::default());
        state
            .usage_delay_ms
            .store(usage_delay.as_millis() as u64, Ordering::SeqCst);
        let app = Router::new()
            .route("/usage/{account}/{period}", get(usage))
            .route("/emails", post(email))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stubs");
        let addr: SocketAddr = listener.local_addr().expect("stub addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stubs {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }

    /// Makes the next `n` usage calls answer 500.
    pub fn fail_usage(&self, n: usize) {
        self.state.usage_failures_left.store(n, Ordering::SeqCst);
    }

    pub fn set_usage_delay(&self, delay: Duration) {
        self.state
            .usage_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn usage_calls(&self) -> Vec<UsageCall> {
        self.state.usage_calls.lock().expect("lock").clone()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().expect("lock").clone()
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn usage(
    State(state): State<Arc<StubState>>,
    UrlPath((account_id, period)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    state.usage_calls.lock().expect("lock").push(UsageCall {
        account_id,
        period,
        traceparent: header(&headers, "traceparent"),
    });
    let delay = state.usage_delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let failing = state
        .usage_failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "injected"})),
        );
    }
    (StatusCode::OK, axum::Json(json!({"totalCents": 4200})))
}

async fn email(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    state.deliveries.lock().expect("lock").push(Delivery {
        invoice_id: body["invoiceId"].as_str().unwrap_or_default().to_string(),
        idempotency_key: header(&headers, "idempotency-key"),
        traceparent: header(&headers, "traceparent"),
    });
    StatusCode::ACCEPTED
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A running `invoice-service` process, killed on drop.
#[derive(Debug)]
pub struct Service {
    pub url: String,
    child: Child,
    pub log_path: PathBuf,
    _dir: TempDir,
}

/// How to start a service.
#[derive(Clone, Debug)]
pub struct Launch {
    pub variant: &'static str,
    pub database_url: String,
    pub deps_url: String,
    pub extra: Vec<String>,
}

impl Launch {
    pub fn new(variant: &'static str, db: &TestDb, stubs: &Stubs) -> Launch {
        Launch {
            variant,
            database_url: db.url.clone(),
            deps_url: stubs.url.clone(),
            extra: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: &str) -> Launch {
        self.extra.push(arg.to_string());
        self
    }

    fn command(&self, log: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_invoice-service"));
        cmd.args([
            "--variant",
            self.variant,
            "--database",
            &self.database_url,
            "--listen",
            "127.0.0.1:0",
            "--usage-url",
            &self.deps_url,
            "--email-url",
            &self.deps_url,
        ])
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"));
        cmd
    }

    /// Starts the service and waits for its `listening on` line.
    pub fn start(&self) -> Service {
        let dir = TempDir::new();
        let log_path = dir.path().join("service.log");
        let mut child = self
            .command(&log_path)
            .spawn()
            .expect("spawn invoice-service");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "invoice-service did not start; first stdout line {line:?}; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        Service {
            url: url.to_string(),
            child,
            log_path,
            _dir: dir,
        }
    }

    /// Runs the service expecting it to fail at start; returns (exit code, stderr).
    pub fn start_failure(&self) -> (Option<i32>, String) {
        let dir = TempDir::new();
        let log_path = dir.path().join("service.log");
        let output = self
            .command(&log_path)
            .output()
            .expect("run invoice-service");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            !stdout.contains("listening on"),
            "expected a start-up failure, got {stdout:?}"
        );
        (
            output.status.code(),
            std::fs::read_to_string(&log_path).unwrap_or_default(),
        )
    }
}

impl Service {
    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("invoice-service did not exit within {within:?}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

/// A minimal HTTP/1 JSON client.
#[derive(Clone, Debug)]
pub struct Http(Client<HttpConnector, Full<Bytes>>);

impl Http {
    pub fn new() -> Http {
        Http(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.0.request(request))
            .await
            .expect("response within 30 s")
            .expect("response");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{} {url}: body is not JSON: {:?}",
                parts.status,
                String::from_utf8_lossy(&bytes)
            )
        });
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn create(&self, service: &str, account: &str, period: &str) -> Reply {
        self.create_with(service, account, period, &[]).await
    }

    pub async fn create_with(
        &self,
        service: &str,
        account: &str,
        period: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let body = json!({"account_id": account, "period": period}).to_string();
        self.send(
            Method::POST,
            &format!("{service}/invoices"),
            headers,
            Some(&body),
        )
        .await
    }

    pub async fn list(&self, service: &str, account: &str, period: &str) -> Vec<Value> {
        let reply = self
            .send(
                Method::GET,
                &format!("{service}/invoices?account_id={account}&period={period}"),
                &[],
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body.as_array().expect("array").clone()
    }

    pub async fn reconcile(&self, service: &str, period: &str, accounts: &[&str]) -> Reply {
        let body = json!({"period": period, "account_ids": accounts}).to_string();
        self.send(
            Method::POST,
            &format!("{service}/reconcile"),
            &[],
            Some(&body),
        )
        .await
    }
}

/// Polls `check` until it returns true or `within` passes; returns the last answer.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Declares `sqlite` and `postgres` tests for an `async fn(Backend)`; the PostgreSQL one says
/// plainly when it skips.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::support::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(crate::support::Backend::Postgres).await
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

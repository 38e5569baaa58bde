//! The seed's invoice service: a monthly invoice endpoint and a background reconciliation worker
//! that can both create an invoice for an account and billing period.
//!
//! It is reprod's reference system and depends on no reprod crate. Two variants share one
//! process layout: `naive` is the seed's first handler, whose find-then-insert races under
//! overlap; `fixed` is the seed's fix plus what it says a real billing flow needs. See
//! `invoices` for both code paths, `queue` for the worker, `relay` for the outbox.
//!
//! [`start`] opens the database, prepares the schema, binds the listener and spawns the
//! background loops; the returned [`Running`] stops them all.

#![deny(missing_docs)]

mod api;
pub mod config;
mod credits;
mod db;
mod deps;
mod error;
mod invoices;
mod log;
mod payments;
mod plans;
mod queue;
mod receipts;
mod relay;
mod sends;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

pub use config::{Config, DEFAULT_MAX_IN_FLIGHT, Role, Variant};
pub use error::StartupError;
pub use relay::CRASH_EXIT_CODE;
pub use trace::TraceContext;

use db::Db;
use deps::{EmailClient, Http, UsageClient};
use log::Logger;

/// Shared state of one service process.
#[derive(Debug)]
struct App {
    config: Config,
    db: Db,
    usage: UsageClient,
    email: EmailClient,
    log: Logger,
    /// Each account's plan as this process last saw it.
    plans: plans::PlanCache,
    admission: Option<Arc<Semaphore>>,
    relay_wake: Notify,
    worker_wake: Notify,
}

/// A started service: serving HTTP and running its background loops.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    app: Arc<App>,
}

/// How long [`Running::shutdown`] waits for in-flight work before abandoning it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts the service described by `config`.
pub async fn start(config: Config) -> Result<Running, StartupError> {
    check_config(&config)?;
    let log = Logger::new(config.variant, &config.version, config.role);
    let db = Db::connect(&config.database_url, config.pool_size).await?;
    db.migrate(config.variant).await?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
    let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: config.listen.clone(),
        source,
    })?;

    let http = Http::new();
    let app = Arc::new(App {
        usage: UsageClient::new(http.clone(), &config, log.clone()),
        email: EmailClient::new(http, &config),
        admission: config.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
        relay_wake: Notify::new(),
        worker_wake: Notify::new(),
        plans: plans::PlanCache::default(),
        log,
        db,
        config,
    });

    let (shutdown, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if app.config.role.runs_worker() {
        for _ in 0..app.config.worker_concurrency {
            tasks.spawn(queue::run_worker(Arc::clone(&app), stop.clone()));
        }
    }
    if app.config.variant == Variant::Fixed {
        tasks.spawn(relay::run_relay(Arc::clone(&app), stop.clone()));
    }
    let mut server_stop = stop.clone();
    let router = api::router(Arc::clone(&app));
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    app.log.event(
        "info",
        "service.started",
        json!({"listen": local_addr.to_string(), "database": db::redact(&app.config.database_url),
               "max_in_flight": app.config.max_in_flight, "pool_size": app.config.pool_size,
               "worker_concurrency": app.config.worker_concurrency}),
    );
    Ok(Running {
        local_addr,
        shutdown,
        tasks,
        server,
        app,
    })
}

fn check_config(config: &Config) -> Result<(), StartupError> {
    let bad = |msg: String| Err(StartupError::Config(msg));
    for (flag, url) in [
        ("--usage-url", &config.usage_url),
        ("--email-url", &config.email_url),
    ] {
        match url.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
            _ => {
                return bad(format!(
                    "{flag} must be an http:// URL with a host, got {url:?}"
                ));
            }
        }
    }
    if config.pool_size == 0 {
        return bad("--pool-size must be at least 1".to_string());
    }
    if config.max_in_flight == Some(0) {
        return bad("--max-in-flight must be at least 1".to_string());
    }
    if config.worker_concurrency == 0 {
        return bad("--worker-concurrency must be at least 1".to_string());
    }
    if config.version.trim().is_empty() {
        return bad("--version must not be empty".to_string());
    }
    Ok(())
}

impl Running {
    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves when the HTTP server stopped on its own (an accept error); never otherwise.
    pub async fn failed(&mut self) -> std::io::Error {
        match (&mut self.server).await {
            Ok(Ok(())) => std::io::Error::other("the HTTP server stopped"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e.to_string()),
        }
    }

    /// Stops accepting requests, lets in-flight requests, jobs and email sends finish for up to
    /// five seconds, then closes the database pool.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
            let _ = (&mut self.server).await;
        })
        .await;
        if drained.is_err() {
            self.app.log.event(
                "warn",
                "service.shutdown_timeout",
                json!({"grace_ms": SHUTDOWN_GRACE.as_millis() as u64}),
            );
            self.tasks.abort_all();
            self.server.abort();
        }
        self.app.db.close().await;
        self.app.log.event("info", "service.stopped", json!({}));
    }
}

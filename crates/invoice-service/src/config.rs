//! Start-up configuration: what the command line sets, as a plain value the rest of the crate reads.
//!
//! `main.rs` maps flags onto [`Config`]; tests build it directly. Nothing here does I/O.

use std::fmt;
use std::time::Duration;

/// Which invoice-creation code path the service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The seed's first handler: find, read usage, insert, send the email. Races under overlap.
    Naive,
    /// The seed's fix plus what it says a real billing flow needs: unique index with
    /// insert-on-conflict, idempotency keys, a transactional outbox, a careful usage client and
    /// admission control.
    Fixed,
}

impl Variant {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Naive => "naive",
            Variant::Fixed => "fixed",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which parts of the service a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// HTTP API only (`/invoices`, `/reconcile`, `/health`).
    Api,
    /// The reconciliation worker only; `/health` is still served for readiness probes.
    Worker,
    /// Both, in one process.
    Both,
}

impl Role {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Both => "both",
        }
    }

    /// Whether this role serves the invoice API routes.
    pub fn serves_api(self) -> bool {
        matches!(self, Role::Api | Role::Both)
    }

    /// Whether this role runs the reconciliation worker.
    pub fn runs_worker(self) -> bool {
        matches!(self, Role::Worker | Role::Both)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the service needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The invoice-creation code path.
    pub variant: Variant,
    /// `sqlite:` or `postgres://` URL.
    pub database_url: String,
    /// Address to bind, such as `127.0.0.1:0`.
    pub listen: String,
    /// Base URL of the usage dependency (`GET {usage_url}/usage/{account}/{period}`).
    pub usage_url: String,
    /// Base URL of the email endpoint (`POST {email_url}/emails`).
    pub email_url: String,
    /// Which parts run in this process.
    pub role: Role,
    /// Deployment version label, logged on every decision and stored on every invoice.
    pub version: String,
    /// Maximum database connections in the pool.
    pub pool_size: u32,
    /// Admission limit on concurrent invoice/reconcile requests; `None` means unlimited.
    pub max_in_flight: Option<usize>,
    /// Reconciliation jobs processed concurrently by the worker.
    pub worker_concurrency: usize,
    /// Per-attempt timeout of usage calls.
    pub usage_timeout: Duration,
    /// Usage call attempts (1 = no retry). The naive variant always makes one.
    pub usage_attempts: u32,
    /// Timeout of one email delivery.
    pub email_timeout: Duration,
    /// How long a claimed outbox row or job is reserved before another process may take it.
    pub lease: Duration,
    /// How often the relay and the worker look for work when nothing woke them.
    pub poll_interval: Duration,
    /// Fault injection for tests of the outbox: exit the process right after the first email
    /// was accepted and before the outbox row is marked sent.
    pub crash_after_email_send: bool,
    /// Which release of the payments code this process runs (`v1` or `v2`): during a rollout,
    /// replicas run different ones.
    pub release: Release,
}

/// A release of the payments code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Amounts in whole dollars.
    V1,
    /// Amounts in cents.
    V2,
}

impl Config {
    /// A configuration with the documented defaults for the given variant and endpoints.
    pub fn new(variant: Variant, database_url: &str, usage_url: &str, email_url: &str) -> Config {
        Config {
            variant,
            database_url: database_url.to_string(),
            listen: "127.0.0.1:0".to_string(),
            usage_url: usage_url.to_string(),
            email_url: email_url.to_string(),
            role: Role::Both,
            version: "dev".to_string(),
            pool_size: 10,
            max_in_flight: match variant {
                Variant::Naive => None,
                Variant::Fixed => Some(DEFAULT_MAX_IN_FLIGHT),
            },
            worker_concurrency: 4,
            usage_timeout: match variant {
                // A typical HTTP client library default: the naive client never chose one.
                Variant::Naive => Duration::from_secs(30),
                Variant::Fixed => Duration::from_millis(1_000),
            },
            usage_attempts: match variant {
                Variant::Naive => 1,
                Variant::Fixed => 3,
            },
            email_timeout: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(50),
            crash_after_email_send: false,
            release: Release::V1,
        }
    }
}

/// Admission limit of the fixed variant when `--max-in-flight` is not given.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

//! `invoice-service`: the command line over [`invoice_service::start`].
//!
//! Prints `listening on http://HOST:PORT` as the first stdout line once it serves, logs JSON
//! lines on stderr, and stops cleanly on Ctrl-C or SIGTERM. Start-up errors exit 1 with the
//! reason; bad flags exit 2.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use invoice_service::{Config, Role, Variant};

/// The seed's invoice service: POST /invoices, GET /invoices, POST /reconcile, GET /health.
#[derive(Debug, Parser)]
// `--version` is the deployment label (the interface contract), so clap's own is off.
#[command(name = "invoice-service", disable_version_flag = true)]
struct Args {
    /// Invoice-creation code path: the seed's racy handler or its fix.
    #[arg(long, value_enum)]
    variant: VariantArg,
    /// sqlite:PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, default_value = "sqlite:invoice-service.db")]
    database: String,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Base URL of the usage dependency.
    #[arg(long)]
    usage_url: String,
    /// Base URL of the email endpoint.
    #[arg(long)]
    email_url: String,
    /// Which parts to run in this process.
    #[arg(long, value_enum, default_value = "both")]
    role: RoleArg,
    /// Deployment version label, logged and stored with every invoice.
    #[arg(long = "version", id = "version_label", default_value = "dev")]
    version_label: String,
    /// Database connections in the pool.
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
    /// Admission limit on concurrent invoice/reconcile requests (503 + Retry-After beyond it).
    /// Default: 64 for fixed, unlimited for naive.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Reconciliation jobs the worker processes at once.
    #[arg(long, default_value_t = 4)]
    worker_concurrency: usize,
    /// Per-attempt usage timeout in ms. Default: 30000 for naive, 1000 for fixed.
    #[arg(long)]
    usage_timeout_ms: Option<u64>,
    /// Usage attempts in the fixed variant (the naive one always makes one).
    #[arg(long, default_value_t = 3)]
    usage_attempts: u32,
    /// Lease on a claimed job or outbox row, in ms; work held longer is taken again.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// Fault injection: exit right after the first email is accepted and before the outbox row
    /// is marked sent (tests at-least-once delivery).
    #[arg(long, hide = true)]
    fault_crash_after_email_send: bool,
    /// Which release of the payments code to run: v1 (amounts in dollars) or v2 (in cents).
    #[arg(long, value_enum, default_value = "v1")]
    release: ReleaseArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReleaseArg {
    V1,
    V2,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VariantArg {
    Naive,
    Fixed,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    Api,
    Worker,
    Both,
}

impl Args {
    fn into_config(self) -> Config {
        let variant = match self.variant {
            VariantArg::Naive => Variant::Naive,
            VariantArg::Fixed => Variant::Fixed,
        };
        let mut config = Config::new(variant, &self.database, &self.usage_url, &self.email_url);
        config.listen = self.listen;
        config.role = match self.role {
            RoleArg::Api => Role::Api,
            RoleArg::Worker => Role::Worker,
            RoleArg::Both => Role::Both,
        };
        config.version = self.version_label;
        config.pool_size = self.pool_size;
        if self.max_in_flight.is_some() {
            config.max_in_flight = self.max_in_flight;
        }
        config.worker_concurrency = self.worker_concurrency;
        if let Some(ms) = self.usage_timeout_ms {
            config.usage_timeout = Duration::from_millis(ms);
        }
        config.usage_attempts = self.usage_attempts;
        config.lease = Duration::from_millis(self.lease_ms);
        config.crash_after_email_send = self.fault_crash_after_email_send;
        config.release = match self.release {
            ReleaseArg::V1 => invoice_service::config::Release::V1,
            ReleaseArg::V2 => invoice_service::config::Release::V2,
        };
        config
    }
}

fn main() -> ExitCode {
    let config = Args::parse().into_config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("invoice-service: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let mut running = match invoice_service::start(config).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("invoice-service: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{}", running.local_addr());
    let _ = stdout.flush();
    drop(stdout);

    let outcome = tokio::select! {
        _ = stop_signal() => ExitCode::SUCCESS,
        e = running.failed() => {
            eprintln!("invoice-service: error: the HTTP server stopped: {e}");
            ExitCode::FAILURE
        }
    };
    running.shutdown().await;
    outcome
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}

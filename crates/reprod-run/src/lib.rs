//! reprod's runs as library calls. [`session::perform`] runs one scenario in phases and returns
//! its typed outcome (status, verdict, summary, explanation); [`isolate::isolate`] runs the
//! trials of `reprod isolate` and returns its answers. Nothing here prints: notes, problems and
//! progress go to an [`Observer`] the caller supplies, and a stop is asked for through an
//! [`Interrupt`]. The binary parses arguments, calls these, renders, and maps the verdict to an
//! exit code.

#![deny(missing_docs)]

pub mod export;
pub mod isolate;
pub mod session;
pub mod setup;
pub mod time;

use std::path::PathBuf;

use tokio::sync::watch;

pub use session::{Finished, perform};

/// Where a run's words go: the CLI prints them, a test collects them, a trial of `isolate`
/// keeps only the problems.
pub trait Observer: Send + Sync {
    /// A note on the run's progress through its phases.
    fn note(&self, text: &str);
    /// Something the user must see even when notes are off.
    fn problem(&self, text: &str);
    /// Where the load is, twice a second while it runs.
    fn progress(&self, progress: &Progress);
    /// The load ended; no more progress follows.
    fn progress_done(&self) {}
}

/// A snapshot of the load while it runs.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Seconds since the load started.
    pub elapsed_s: f64,
    /// Seconds the load is planned for.
    pub planned_s: f64,
    /// Operations ended.
    pub done: u64,
    /// ... ok.
    pub ok: u64,
    /// ... failed.
    pub failed: u64,
    /// ... ambiguous.
    pub ambiguous: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Operations ended per second since the last snapshot.
    pub rate_per_s: f64,
    /// p99 latency of the operations ended since the last snapshot.
    pub p99_ms: Option<f64>,
}

/// A request to stop, shared by everything a command runs: once asked, every run in progress
/// ends as interrupted, and every later one at once.
#[derive(Clone, Debug)]
pub struct Interrupt(watch::Receiver<bool>);

impl Interrupt {
    /// An interrupt and the handle that asks for it.
    pub fn new() -> (watch::Sender<bool>, Interrupt) {
        let (tx, rx) = watch::channel(false);
        (tx, Interrupt(rx))
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is asked for (at once when it already was); pending forever when
    /// nobody can ask any more.
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a run could not even be set up: nothing ran, and no summary exists.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run directory could not be created.
    #[error("cannot create the run directory under {}: {source}", under.display())]
    RunDir {
        /// Where it was to go.
        under: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The history could not be created.
    #[error(transparent)]
    History(#[from] reprod_history::HistoryError),
    /// The database URL could not be filled in.
    #[error("{0}")]
    DatabaseUrl(String),
    /// A scratch database for a trial could not be made.
    #[error(transparent)]
    Scratch(#[from] reprod_check::scratch::ScratchError),
}

//! What a run says on stderr while it goes: phase notes and problems, and progress — one
//! rewritten line on a terminal that takes control sequences, a plain line every five seconds
//! otherwise (CI logs, `NO_COLOR`, `TERM=dumb`). `--quiet` keeps only problems.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reprod_run::{Observer, Progress};

/// The CLI's [`Observer`]: stderr.
#[derive(Debug)]
pub struct Console {
    quiet: bool,
    /// Whether the progress line may be rewritten in place.
    rewrite: bool,
    last_plain: Mutex<Option<Instant>>,
}

/// A plain progress line at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Console {
    /// A console that prints notes unless `quiet`.
    pub fn new(quiet: bool) -> Console {
        Console {
            quiet,
            rewrite: control_sequences_allowed(),
            last_plain: Mutex::new(None),
        }
    }
}

/// Whether stderr is a terminal that takes `\r` and `ESC [2K`: not with `NO_COLOR` set, not with
/// `TERM=dumb`, not when stderr is a file or a pipe.
fn control_sequences_allowed() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

impl Observer for Console {
    fn note(&self, text: &str) {
        if !self.quiet {
            errln!("{text}");
        }
    }

    fn problem(&self, text: &str) {
        if self.rewrite && !self.quiet {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
        errln!("{text}");
    }

    fn progress(&self, p: &Progress) {
        if self.quiet {
            return;
        }
        let line = line(p);
        let mut err = std::io::stderr().lock();
        if self.rewrite {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let mut last = self.last_plain.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < PLAIN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn progress_done(&self) {
        if self.rewrite && !self.quiet {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

fn line(p: &Progress) -> String {
    let p99 = p
        .p99_ms
        .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
    format!(
        "[{:5.1}s/{:.0}s] ops {} ({} ok, {} failed, {} ambiguous)  {:.0}/s  p99 {p99}  retries {}",
        p.elapsed_s, p.planned_s, p.done, p.ok, p.failed, p.ambiguous, p.rate_per_s, p.retries,
    )
}

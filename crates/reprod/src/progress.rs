//! Progress while load runs, on stderr: one rewritten line on a terminal, a plain line every few
//! seconds otherwise (CI logs).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reprod_engine::{Histogram, Live};
use reprod_history::RunClock;
use tokio::sync::watch;

/// Prints progress until `done` turns true.
pub async fn show(
    live: Arc<Live>,
    clock: RunClock,
    load_start_us: i64,
    planned_s: f64,
    mut done: watch::Receiver<bool>,
    quiet: bool,
) {
    if quiet {
        let _ = done.changed().await;
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut last_done = 0;
    let mut last_at = 0.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.changed() => break,
        }
        let now = (clock.now_us() - load_start_us) as f64 / 1e6;
        let finished = live.done.load(Ordering::Relaxed);
        let rate = (finished - last_done) as f64 / (now - last_at).max(1e-3);
        (last_done, last_at) = (finished, now);
        let window = live.take_window();
        let line = line(&live, &window, now, planned_s, rate);
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    if terminal {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

fn line(live: &Live, window: &Histogram, now: f64, planned_s: f64, rate: f64) -> String {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let p99 = if window.count() == 0 {
        "-".to_string()
    } else {
        format!("{:.1} ms", window.quantile(0.99) as f64 / 1e3)
    };
    format!(
        "[{now:5.1}s/{planned_s:.0}s] ops {} ({} ok, {} failed, {} ambiguous)  {rate:.0}/s  p99 {p99}  retries {}",
        get(&live.done),
        get(&live.ok),
        get(&live.failed),
        get(&live.ambiguous),
        get(&live.retries),
    )
}

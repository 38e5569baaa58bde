//! `reprod run`: the phases of one run, in order — prepare the run directory and history, start
//! the fault layer and the services, drive load, drain, stop everything, check, report.
//! Whatever happens after the history exists, the history is finished and a summary written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reprod_engine::{Histogram, Live, Stats};
use reprod_faults::FaultLayer;
use reprod_history::{History, Recorder, RunClock, RunInfo};
use reprod_report::{
    AttemptCounts, DependencyResult, Lag, Latency, OpCounts, Summary, ThresholdResult,
};
use reprod_scenario::{Latency as Shape, Scenario, Var};
use reprod_services::{Bindings, Services};
use tokio::sync::watch;

use crate::RunArgs;

/// Set while `isolate` runs trials: phase notes and the progress line stay quiet (problems are
/// still reported).
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A progress note on stderr, unless [`QUIET`].
macro_rules! note {
    ($($arg:tt)*) => {
        if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*);
        }
    };
}
use crate::exit;

/// Why a run could not complete.
enum Incomplete {
    Interrupted,
    Failed(String),
}

/// Applies the command line's overrides to the loaded scenario.
fn adjust(scenario: &mut Scenario, args: &RunArgs) {
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(duration) = args.duration {
        scenario.duration = duration;
    }
    if args.staging {
        scenario.keep_only(&[]);
    } else if !args.only.is_empty() {
        scenario.keep_only(&args.only);
    }
    for c in &args.without {
        scenario.neutralize(*c);
    }
}

pub fn main(args: RunArgs) -> u8 {
    let Some(mut scenario) = crate::load(&args.scenario) else {
        return exit::USAGE;
    };
    adjust(&mut scenario, &args);
    on_runtime(async move { execute(&scenario, &args).await })
}

/// Runs `work` as one task on a multi-thread runtime and returns its exit code. One task on the
/// workers rather than a future polled by `block_on` on the main thread: every operation it
/// spawns would otherwise cost a cross-thread wake-up. Background tasks (servers, pumps) end
/// with the runtime.
pub fn on_runtime(work: impl std::future::Future<Output = u8> + Send + 'static) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reprod: cannot start the async runtime: {e}");
            return exit::INCOMPLETE;
        }
    };
    let code =
        runtime.block_on(async move { tokio::spawn(work).await.unwrap_or(exit::INCOMPLETE) });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn create_run_dir(out: &Path, scenario: &Scenario) -> std::io::Result<(String, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let base = format!(
        "{}-{}-s{}",
        scenario.name,
        crate::time::compact_now(),
        scenario.seed
    );
    for n in 0..1000 {
        let run_id = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = out.join(&run_id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((run_id, std::fs::canonicalize(&dir)?)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many runs with the same id"))
}

/// What a finished (or failed) run left behind.
pub struct Finished {
    /// The exit code the run earns.
    pub code: u8,
    /// Its summary (also in `summary.json`).
    pub summary: Summary,
    /// The explanation of its violations, when it has any.
    pub explanation: Option<reprod_check::explain::Explanation>,
    /// Its run directory.
    pub run_dir: PathBuf,
}

async fn execute(scenario: &Scenario, args: &RunArgs) -> u8 {
    let shown = args.scenario.scenario.display().to_string();
    let finished = match perform(scenario, &shown, &args.out).await {
        Ok(finished) => finished,
        Err(code) => return code,
    };
    if args.json {
        println!("{}", finished.summary.to_json());
    } else {
        print!("{}", report_text(&finished));
        println!("run directory: {}", finished.run_dir.display());
    }
    finished.code
}

/// The text of `report.txt` and of `reprod run` without `--json`.
pub fn report_text(finished: &Finished) -> String {
    let mut text = finished.summary.to_text();
    if let Some(explanation) = &finished.explanation {
        text.push('\n');
        text.push_str(&explanation.to_text());
    }
    text
}

/// Runs `scenario` into a new run directory under `out` and writes its summary and report.
/// `Err` carries the exit code when the run could not even be set up (it says why on stderr).
pub async fn perform(scenario: &Scenario, scenario_path: &str, out: &Path) -> Result<Finished, u8> {
    let (run_id, run_dir) = create_run_dir(out, scenario).map_err(|e| {
        eprintln!(
            "reprod: cannot create the run directory under {}: {e}",
            out.display()
        );
        exit::INCOMPLETE
    })?;
    let conditions: Vec<String> = scenario
        .active_conditions()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let info = RunInfo {
        run_id: run_id.clone(),
        scenario: scenario.name.clone(),
        scenario_path: scenario_path.to_string(),
        seed: scenario.seed,
        started_at: crate::time::rfc3339_now(),
        conditions: conditions.join(","),
        params: scenario
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let history_path = run_dir.join("history.sqlite");
    let clock = RunClock::start();
    let (history, recorder) = History::create(&history_path, &info).map_err(|e| {
        eprintln!("reprod: {e}");
        exit::INCOMPLETE
    })?;
    note!("reprod: run {run_id} in {}", run_dir.display());
    let database_url = database_url(scenario, &run_dir).map_err(|e| {
        eprintln!("reprod: {e}");
        exit::INCOMPLETE
    })?;
    let result = drive(scenario, &run_dir, database_url.clone(), clock, recorder).await;
    let end_us = clock.now_us();
    let status = match &result {
        Ok(_) => "completed".to_string(),
        Err(Incomplete::Interrupted) => "interrupted".to_string(),
        Err(Incomplete::Failed(reason)) => format!("failed: {reason}"),
    };
    if let Err(e) = history
        .finish(status.split(':').next().unwrap_or("failed"), end_us)
        .await
    {
        eprintln!("reprod: {e}");
    }
    let stats = match &result {
        Ok((stats, _)) => stats.clone(),
        Err(_) => Stats::default(),
    };
    let mut summary = summarize(scenario, &run_id, &run_dir, &conditions, &stats, &status);
    summary.dependencies = dependency_results(scenario, &history_path);
    if result.is_ok() && !scenario.invariants.is_empty() {
        note!(
            "reprod: checking {} invariant(s)",
            scenario.invariants.len()
        );
        let ok_keys = reprod_history::read::ok_keys(&history_path).unwrap_or_default();
        let checked = reprod_check::check_all(
            scenario,
            database_url.as_deref(),
            &history_path,
            &ok_keys,
            result
                .as_ref()
                .map(|(_, first)| first)
                .unwrap_or(&reprod_check::FirstSeen::new()),
            clock.now_us(),
        )
        .await;
        if let Err(e) = reprod_history::read::append_violations(&history_path, &checked.violations)
        {
            eprintln!("reprod: cannot record violations: {e}");
        }
        summary.invariants = checked.results;
    }
    summary.decide();
    let explanation = if summary
        .invariants
        .iter()
        .any(|i| !i.held && i.error.is_none())
    {
        match reprod_check::explain::explain(&run_dir, None) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("reprod: cannot explain the run: {e}");
                None
            }
        }
    } else {
        None
    };
    summary.explanation = explanation
        .as_ref()
        .and_then(|e| serde_json::to_value(e).ok());
    let code = match &result {
        Err(Incomplete::Interrupted) => {
            eprintln!(
                "reprod: interrupted; the history so far is in {}",
                history_path.display()
            );
            exit::INCOMPLETE
        }
        Err(Incomplete::Failed(reason)) => {
            eprintln!("reprod: the run could not complete: {reason}");
            exit::INCOMPLETE
        }
        Ok(_) if summary.invariants.iter().any(|i| i.error.is_some()) => {
            for i in summary.invariants.iter().filter(|i| i.error.is_some()) {
                eprintln!(
                    "reprod: invariant {:?} could not be checked: {}",
                    i.name,
                    i.error.as_deref().unwrap_or_default()
                );
            }
            exit::INCOMPLETE
        }
        Ok(_) if summary.verdict == "pass" => exit::PASS,
        Ok(_) => exit::VIOLATED,
    };
    let finished = Finished {
        code,
        summary,
        explanation,
        run_dir,
    };
    if let Err(e) = write_outputs(&finished) {
        eprintln!("reprod: cannot write the report: {e}");
    }
    Ok(finished)
}

/// The scenario's database URL with `{run_dir}` filled in.
fn database_url(scenario: &Scenario, run_dir: &Path) -> Result<Option<String>, String> {
    let Some(db) = &scenario.database else {
        return Ok(None);
    };
    db.url
        .render(|var, out| {
            if *var == Var::RunDir {
                out.push_str(&run_dir.display().to_string());
                true
            } else {
                false
            }
        })
        .map(Some)
        .map_err(|v| format!("cannot fill {v} in the database URL"))
}

/// Fault layer, services, load, drain; always stops what it started.
async fn drive(
    scenario: &Scenario,
    run_dir: &Path,
    database_url: Option<String>,
    clock: RunClock,
    recorder: Recorder,
) -> Result<(Stats, reprod_check::FirstSeen), Incomplete> {
    let faults = FaultLayer::start(scenario, clock, recorder.clone())
        .await
        .map_err(|e| Incomplete::Failed(e.to_string()))?;
    let bindings = Bindings {
        run_dir: run_dir.to_path_buf(),
        database_url: database_url.clone(),
        dependency_urls: scenario
            .dependencies
            .iter()
            .filter_map(|d| Some((d.name.clone(), faults.dependency_url(&d.name)?.to_string())))
            .collect(),
        sink_urls: scenario
            .sinks
            .iter()
            .filter_map(|s| Some((s.name.clone(), faults.sink_url(&s.name)?.to_string())))
            .collect(),
    };
    note!("reprod: starting services");
    let mut services = tokio::select! {
        started = Services::start(scenario, &bindings, clock, &recorder) => match started {
            Ok(services) => services,
            Err(e) => {
                faults.stop().await;
                return Err(Incomplete::Failed(e.to_string()));
            }
        },
        _ = interrupt() => {
            faults.stop().await;
            return Err(Incomplete::Interrupted);
        }
    };
    // Invariants that ask for it are checked while load runs, to learn when each violation
    // first appeared; the watcher stops when load and drain are over.
    let (watch_stop, watch_stopped) = watch::channel(false);
    let watcher = reprod_check::watch(
        scenario,
        database_url.as_deref(),
        move || clock.now_us(),
        watch_stopped,
    );
    let load_then_stop = async {
        let outcome = load(scenario, &mut services, clock, recorder).await;
        let _ = watch_stop.send(true);
        outcome
    };
    let (outcome, first_seen) = tokio::join!(load_then_stop, watcher);
    let outcome = outcome.map(|stats| (stats, first_seen));
    services.stop().await;
    faults.stop().await;
    outcome
}

async fn load(
    scenario: &Scenario,
    services: &mut Services,
    clock: RunClock,
    recorder: Recorder,
) -> Result<Stats, Incomplete> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_done, progress_rx) = watch::channel(false);
    let live = Arc::new(Live::default());
    let progress = tokio::spawn(crate::progress::show(
        Arc::clone(&live),
        clock,
        scenario.duration.as_secs_f64(),
        progress_rx,
        QUIET.load(std::sync::atomic::Ordering::Relaxed),
    ));
    let targets = services.all_targets().to_vec();
    note!(
        "reprod: load for up to {:?} (at most {} operations), conditions: {}",
        scenario.duration,
        scenario.max_ops,
        names(scenario)
    );
    let engine = reprod_engine::run(reprod_engine::Input {
        scenario,
        targets: &targets,
        clock,
        recorder,
        live,
        stop: stop_rx,
    });
    tokio::pin!(engine);
    let mut problem = None;
    let stats = loop {
        tokio::select! {
            stats = &mut engine => break stats,
            death = services.died(), if problem.is_none() => {
                problem = Some(Incomplete::Failed(death.to_string()));
                let _ = stop_tx.send(true);
            }
            _ = interrupt(), if problem.is_none() => {
                problem = Some(Incomplete::Interrupted);
                let _ = stop_tx.send(true);
            }
        }
    };
    let _ = progress_done.send(true);
    let _ = progress.await;
    if let Some(problem) = problem {
        return Err(problem);
    }
    // Background work the load caused (workers, outbox relays) gets `drain` to finish.
    if !scenario.drain.is_zero() {
        note!(
            "reprod: load done ({} operations); draining for {:?}",
            stats.ops,
            scenario.drain
        );
        tokio::select! {
            _ = tokio::time::sleep(scenario.drain) => {}
            death = services.died() => return Err(Incomplete::Failed(death.to_string())),
            _ = interrupt() => return Err(Incomplete::Interrupted),
        }
    }
    Ok(stats)
}

fn names(scenario: &Scenario) -> String {
    let active: Vec<&str> = scenario
        .active_conditions()
        .iter()
        .map(|c| c.name())
        .collect();
    if active.is_empty() {
        "none (staging)".to_string()
    } else {
        active.join(", ")
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupt() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn summarize(
    scenario: &Scenario,
    run_id: &str,
    run_dir: &Path,
    conditions: &[String],
    stats: &Stats,
    status: &str,
) -> Summary {
    let duration_s = (stats.load_end_us as f64 / 1e6).max(1e-6);
    let offered_window = (stats.last_intended_us - stats.first_intended_us) as f64 / 1e6;
    let lat: &Histogram = &stats.latency;
    Summary {
        run_id: run_id.to_string(),
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        conditions: conditions.to_vec(),
        params: scenario
            .params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
        status: status.to_string(),
        duration_s,
        ops: OpCounts {
            total: stats.ops,
            ok: stats.ok,
            failed: stats.failed,
            ambiguous: stats.ambiguous,
            unsent: stats.unsent,
        },
        attempts: AttemptCounts {
            total: stats.attempts,
            retries: stats.retries,
        },
        retry_amplification: if stats.ops == 0 {
            0.0
        } else {
            stats.attempts as f64 / stats.ops as f64
        },
        offered_rps: if offered_window > 0.0 {
            (stats.ops.saturating_sub(1)) as f64 / offered_window
        } else {
            0.0
        },
        throughput_rps: stats.ops as f64 / duration_s,
        goodput_rps: stats.ok as f64 / duration_s,
        latency_ms: Latency {
            p50: ms(lat.quantile(0.5)),
            p95: ms(lat.quantile(0.95)),
            p99: ms(lat.quantile(0.99)),
            p999: ms(lat.quantile(0.999)),
            max: ms(lat.max()),
        },
        schedule_lag_ms: Lag {
            p99: ms(stats.lag.quantile(0.99)),
            max: ms(stats.lag.max()),
        },
        dependencies: Vec::new(),
        invariants: Vec::new(),
        thresholds: thresholds(scenario, stats, duration_s),
        verdict: String::new(),
        explanation: None,
        run_dir: run_dir.display().to_string(),
    }
}

fn thresholds(scenario: &Scenario, stats: &Stats, duration_s: f64) -> Vec<ThresholdResult> {
    let t = &scenario.thresholds;
    let mut out = Vec::new();
    if let Some(p99) = t.p99 {
        let actual = ms(stats.latency.quantile(0.99));
        let limit = p99.as_secs_f64() * 1e3;
        out.push(ThresholdResult {
            name: "p99_ms".into(),
            limit,
            actual,
            held: actual <= limit,
        });
    }
    if let Some(limit) = t.error_rate {
        let actual = if stats.ops == 0 {
            0.0
        } else {
            (stats.failed + stats.ambiguous) as f64 / stats.ops as f64
        };
        out.push(ThresholdResult {
            name: "error_rate".into(),
            limit,
            actual,
            held: actual <= limit,
        });
    }
    if let Some(limit) = t.min_goodput_rps {
        let actual = stats.ok as f64 / duration_s;
        out.push(ThresholdResult {
            name: "min_goodput_rps".into(),
            limit,
            actual,
            held: actual >= limit,
        });
    }
    out
}

fn dependency_results(scenario: &Scenario, history: &Path) -> Vec<DependencyResult> {
    let delays = reprod_history::read::dependency_delays(history).unwrap_or_default();
    scenario
        .dependencies
        .iter()
        .map(|d| {
            let mut requested = serde_json::Map::new();
            let put = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: f64| {
                m.insert(k.to_string(), serde_json::json!((v * 10.0).round() / 10.0));
            };
            match &d.latency {
                Some(Shape::Percentiles {
                    p50,
                    p95,
                    p99,
                    p999,
                }) => {
                    put(&mut requested, "p50", p50.as_secs_f64() * 1e3);
                    for (k, v) in [("p95", p95), ("p99", p99), ("p999", p999)] {
                        if let Some(v) = v {
                            put(&mut requested, k, v.as_secs_f64() * 1e3);
                        }
                    }
                }
                Some(Shape::Fixed(v)) => put(&mut requested, "fixed", v.as_secs_f64() * 1e3),
                Some(Shape::Uniform { min, max }) => {
                    put(&mut requested, "min", min.as_secs_f64() * 1e3);
                    put(&mut requested, "max", max.as_secs_f64() * 1e3);
                }
                None => {}
            }
            let samples = delays.get(&d.name).cloned().unwrap_or_default();
            let mut hist = Histogram::default();
            for s in &samples {
                hist.record((*s).max(0) as u64);
            }
            let mut achieved = serde_json::Map::new();
            if !samples.is_empty() {
                for (k, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)] {
                    put(&mut achieved, k, ms(hist.quantile(q)));
                }
            }
            DependencyResult {
                name: d.name.clone(),
                calls: samples.len() as u64,
                requested_ms: requested,
                achieved_ms: achieved,
            }
        })
        .collect()
}

fn write_outputs(finished: &Finished) -> std::io::Result<()> {
    let dir = &finished.run_dir;
    std::fs::write(dir.join("summary.json"), finished.summary.to_json() + "\n")?;
    std::fs::write(dir.join("report.txt"), report_text(finished))
}

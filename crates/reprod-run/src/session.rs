//! One run as a library call, in phases: prepare the run directory and history → start the
//! fault layer and the services → start the load clock → drive load → drain → stop everything →
//! finish the history → check → explain → decide the verdict → write `summary.json` and
//! `report.txt`. Whatever happens after the history exists, the history is finished and a
//! summary is written that says how the run really ended.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reprod_engine::{Histogram, Live, Stats};
use reprod_faults::FaultLayer;
use reprod_history::{Event, History, Recorder, RunClock, RunInfo};
use reprod_report::{
    AttemptCounts, DependencyResult, InvariantResult, Lag, Latency, OpCounts, Status, Summary,
    ThresholdResult, Verdict, Warning,
};
use reprod_scenario::{Latency as Shape, Scenario, Var};
use reprod_services::{Bindings, Services};
use tokio::sync::watch;

use crate::{Interrupt, Observer, Progress, RunError};

/// How the phases before the checks ended.
#[derive(Debug)]
enum Ended {
    Completed,
    Interrupted,
    ServiceFailed(String),
    StartFailed(String),
    HistoryFailed(String),
    EngineFailed(String),
    /// `--stop-at-violation`: the mid-run check saw (invariant, µs since the load started).
    StoppedAtViolation(String, i64),
}

impl Ended {
    fn status(&self) -> (Status, Option<String>) {
        match self {
            Ended::Completed => (Status::Completed, None),
            Ended::Interrupted => (
                Status::Interrupted,
                Some("interrupted (Ctrl-C or SIGTERM)".to_string()),
            ),
            Ended::ServiceFailed(r) => (Status::ServiceFailed, Some(r.clone())),
            Ended::StartFailed(r) => (Status::StartFailed, Some(r.clone())),
            Ended::HistoryFailed(r) => (Status::HistoryFailed, Some(r.clone())),
            Ended::EngineFailed(r) => (Status::EngineFailed, Some(r.clone())),
            Ended::StoppedAtViolation(invariant, at_us) => (
                Status::StoppedAtViolation,
                Some(format!(
                    "a mid-run check found {invariant:?} violated {:.1} s into the load, and --stop-at-violation stopped the load there",
                    *at_us as f64 / 1e6
                )),
            ),
        }
    }
}

/// What driving the run (services, load, drain) left for the checks.
struct Driven {
    ended: Ended,
    /// What the engine measured, when load ran at all.
    stats: Option<Stats>,
    first_seen: reprod_check::FirstSeen,
    /// When the load started (run clock µs), when it did.
    load_start_us: Option<i64>,
    /// Replica output lines cut at the line bound.
    cut_lines: u64,
    /// Per service with `logs`: what became of its lines.
    service_logs: Vec<reprod_report::ServiceLogCounts>,
    /// What the OTLP receiver took in, when a service used `{otlp.url}`.
    otlp: Option<reprod_report::OtlpSummary>,
    /// What the database proxy saw, when it ran.
    db_proxy: Option<reprod_report::DbProxySummary>,
    /// SQL invariants already violated when the load started, with their key counts.
    stale: Vec<(String, usize)>,
    /// What setup did.
    setup: reprod_report::SetupSummary,
}

impl Driven {
    fn before_load(ended: Ended) -> Driven {
        Driven {
            ended,
            stats: None,
            first_seen: reprod_check::FirstSeen::new(),
            load_start_us: None,
            cut_lines: 0,
            service_logs: Vec::new(),
            otlp: None,
            db_proxy: None,
            stale: Vec::new(),
            setup: reprod_report::SetupSummary::default(),
        }
    }
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
#[derive(Debug)]
pub struct Finished {
    /// Its summary (also in `summary.json`).
    pub summary: Summary,
    /// The explanation of its violations, when it has any.
    pub explanation: Option<reprod_check::explain::Explanation>,
    /// Its run directory.
    pub run_dir: PathBuf,
    /// The run over time as the engine counted it (empty when the load never ran, or for a
    /// stored run: then the plots are read from the history).
    pub series: Vec<reprod_engine::SeriesPoint>,
}

impl Finished {
    /// The text of `report.txt` and of `reprod run` without `--json`.
    pub fn report_text(&self) -> String {
        reprod_report::render(
            &self.summary,
            reprod_report::Format::Text,
            &reprod_report::html::Page::default(),
        )
    }
}

/// Runs `scenario` into a new run directory under `out` and writes its summary and report.
/// `Err` when the run could not even be set up (no run directory, no history). Whatever happens
/// once the history exists, the history is finished, the invariants that can be checked are,
/// and a summary is written that says how the run really ended.
pub async fn perform(
    scenario: &Scenario,
    scenario_path: &str,
    out: &Path,
    obs: &dyn Observer,
    interrupt: &Interrupt,
) -> Result<Finished, RunError> {
    let (run_id, run_dir) = create_run_dir(out, scenario).map_err(|source| RunError::RunDir {
        under: out.to_path_buf(),
        source,
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
            .shown_params()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        dimensions: scenario.dimensions.join(","),
        callers: scenario
            .callers
            .iter()
            .map(|c| format!("{}\t{}", c.name, c.operation()))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let history_path = run_dir.join("history.sqlite");
    let clock = RunClock::start();
    let (history, recorder) = History::create(&history_path, &info)?;
    obs.note(&format!("reprod: run {run_id} in {}", run_dir.display()));
    let database_url = match database_url(scenario, &run_dir) {
        Ok(url) => url,
        Err(e) => {
            let _ = history
                .finish(Status::StartFailed.as_str(), clock.now_us())
                .await;
            return Err(RunError::DatabaseUrl(e));
        }
    };
    let failure = history.failure();
    let cx = Cx { obs, interrupt };
    // A fresh database of the run's own, when the scenario asks for one: services and
    // invariants use it, and it is dropped after the checks.
    let mut database_url = database_url;
    let mut scratch = None;
    let mut start_failure = None;
    let fresh = scenario.database.as_ref().and_then(|d| d.fresh.clone());
    if let (Some(fresh), Some(url)) = (fresh, database_url.clone()) {
        match make_scratch(fresh, url, run_id.clone()).await {
            Ok((admin, name, scratch_url)) => {
                obs.note(&format!("reprod: a fresh database for this run: {name}"));
                database_url = Some(scratch_url);
                scratch = Some((admin, name));
            }
            Err(e) => start_failure = Some(format!("cannot make the run's fresh database: {e}")),
        }
    }
    let mut driven = match start_failure {
        Some(reason) => Driven::before_load(Ended::StartFailed(reason)),
        None => {
            drive(
                &cx,
                scenario,
                &run_dir,
                database_url.clone(),
                clock,
                recorder,
                failure,
            )
            .await
        }
    };
    let end_us = clock.now_us();
    let (status, _) = driven.ended.status();
    if let Err(e) = history.finish(status.as_str(), end_us).await
        && !matches!(driven.ended, Ended::HistoryFailed(_))
    {
        driven.ended = Ended::HistoryFailed(e.to_string());
    }
    let (status, status_reason) = driven.ended.status();
    if let Some(reason) = &status_reason
        && status != Status::StoppedAtViolation
    {
        obs.problem(&format!(
            "reprod: the run did not complete ({}): {reason}",
            status.as_str()
        ));
    }
    let stats = driven.stats.clone().unwrap_or_default();
    let load_start_us = driven.load_start_us.unwrap_or(end_us);
    let mut summary = summarize(
        scenario,
        &run_id,
        &run_dir,
        &conditions,
        &stats,
        load_start_us,
    );
    summary.status = status;
    summary.status_reason = status_reason;
    summary.setup = driven.setup.clone();
    summary.service_logs = driven.service_logs.clone();
    summary.otlp = driven.otlp.clone();
    summary.db_proxy = driven.db_proxy.clone();
    match overlap_landings(scenario, &history_path) {
        Ok(o) => summary.overlap = o,
        Err(e) => obs.problem(&format!(
            "reprod: cannot measure how the overlap groups landed: {e}"
        )),
    }
    if let Some(p) = summary.db_proxy.as_mut() {
        match conflicts(&history_path) {
            Ok(c) => p.conflicts = c,
            Err(e) => obs.problem(&format!(
                "reprod: cannot count the duplicate key conflicts: {e}"
            )),
        }
    }
    summary.dependencies = dependency_results(scenario, &history_path);
    check(
        obs,
        scenario,
        database_url.as_deref(),
        &history_path,
        &driven,
        clock,
        &mut summary,
    )
    .await;
    if let Some((admin, name)) = scratch {
        let dropped = reprod_check::scratch::drop(&admin, &name).await;
        if let Err(e) = dropped {
            obs.problem(&format!(
                "reprod: cannot drop the run's fresh database {name}: {e}"
            ));
        }
    }
    match reprod_check::explain::exercised(&history_path) {
        Ok(e) => summary.exercised = e,
        Err(e) => obs.problem(&format!(
            "reprod: cannot count the same-key concurrency the load reached: {e}"
        )),
    }
    summary.warnings = warnings(scenario, &stats, &driven, &history_path, summary.warnings);
    summary.decide();
    if let Some(w) = never_raced(scenario, &summary) {
        summary.warnings.push(w);
    }
    let explanation = if summary.violated() {
        match reprod_check::explain::explain(&run_dir, None) {
            Ok(e) => Some(e),
            Err(e) => {
                obs.problem(&format!("reprod: cannot explain the run: {e}"));
                None
            }
        }
    } else {
        None
    };
    summary.explanation = explanation.clone();
    for i in summary.invariants.iter().filter(|i| i.error.is_some()) {
        obs.problem(&format!(
            "reprod: invariant {:?} could not be checked: {}",
            i.name,
            i.error.as_deref().unwrap_or_default()
        ));
    }
    if status == Status::Interrupted {
        obs.problem(&format!(
            "reprod: interrupted; the history so far is in {}",
            history_path.display()
        ));
    }
    let finished = Finished {
        summary,
        explanation,
        run_dir,
        series: stats.series.clone(),
    };
    if let Err(e) = write_outputs(&finished) {
        obs.problem(&format!(
            "reprod: cannot write summary.json and report.txt in {}: {e}",
            finished.run_dir.display()
        ));
    }
    Ok(finished)
}

/// Checks every invariant it can and puts the results in `summary`. After a run that did not
/// complete, each result is marked partial; when the history could not be written, the
/// invariants that read it are reported unchecked instead of judged on what little it kept; when
/// the load never started, nothing is checked.
async fn check(
    obs: &dyn Observer,
    scenario: &Scenario,
    database_url: Option<&str>,
    history_path: &Path,
    driven: &Driven,
    clock: RunClock,
    summary: &mut Summary,
) {
    let completed = matches!(driven.ended, Ended::Completed);
    // Thresholds judge the load itself: checked whether or not there are invariants.
    if completed {
        summary.thresholds = thresholds(scenario, &driven.stats.clone().unwrap_or_default());
    }
    if scenario.invariants.is_empty() {
        return;
    }
    let Some(load_start_us) = driven.load_start_us else {
        summary.invariants = scenario
            .invariants
            .iter()
            .map(|i| InvariantResult {
                name: i.name.clone(),
                error: Some("the load never started".to_string()),
                ..InvariantResult::default()
            })
            .collect();
        return;
    };
    obs.note(&format!(
        "reprod: checking {} invariant(s)",
        scenario.invariants.len()
    ));
    let ok_keys = reprod_history::read::ok_keys(history_path).unwrap_or_default();
    let mut checked = reprod_check::check_all(
        scenario,
        database_url,
        history_path,
        &ok_keys,
        &driven.first_seen,
        clock.now_us(),
        load_start_us,
    )
    .await;
    let history_lost = matches!(driven.ended, Ended::HistoryFailed(_));
    for (result, invariant) in checked.results.iter_mut().zip(&scenario.invariants) {
        let reads_history = !matches!(invariant.kind, reprod_scenario::InvariantKind::Sql { .. });
        if history_lost && reads_history {
            *result = InvariantResult {
                name: result.name.clone(),
                error: Some(
                    "the history could not be written in full, and this invariant is judged from it"
                        .to_string(),
                ),
                ..InvariantResult::default()
            };
        } else if !completed && result.error.is_none() {
            result.partial = true;
        }
    }
    if history_lost {
        checked.violations.retain(|v| {
            scenario.invariants.iter().any(|i| {
                i.name == v.invariant
                    && matches!(i.kind, reprod_scenario::InvariantKind::Sql { .. })
            })
        });
    }
    if let Err(e) = reprod_history::write_violations(history_path, &checked.violations) {
        obs.problem(&format!(
            "reprod: cannot record violations in the history: {e}"
        ));
    }
    summary.invariants = checked.results;
    summary
        .warnings
        .extend(checked.notes.into_iter().map(|message| Warning {
            kind: "invariant_privileges".to_string(),
            subject: None,
            message,
        }));
}

/// What a reader must know about what the run did not exercise, first lines of the report.
fn warnings(
    scenario: &Scenario,
    stats: &Stats,
    driven: &Driven,
    history: &Path,
    mut out: Vec<Warning>,
) -> Vec<Warning> {
    if driven.load_start_us.is_some() && stats.ops == 0 {
        out.push(Warning {
            kind: "no_operations".to_string(),
            subject: None,
            message: "the run sent no operation, so it tested nothing (check the callers' rates, start times and the duration)".to_string(),
        });
    }
    if stats.ops > 0 && stats.ok == 0 {
        out.push(Warning {
            kind: "no_successful_operations".to_string(),
            subject: None,
            message: format!(
                "none of the {} operations succeeded, so nothing the service did was tested",
                stats.ops
            ),
        });
    }
    for caller in &scenario.callers {
        let start = caller.first_arrival();
        if start >= scenario.duration {
            out.push(Warning {
                kind: "caller_after_load".to_string(),
                subject: Some(caller.name.clone()),
                message: format!(
                    "caller {} starts at {}, when the load ({}) is already over: it sent nothing",
                    caller.name,
                    reprod_scenario::format_duration(start),
                    reprod_scenario::format_duration(scenario.duration)
                ),
            });
        }
    }
    for c in &stats.callers {
        let not_ok = c.ops - c.ok;
        if c.ops == 0 || (not_ok as f64) < 0.9 * c.ops as f64 {
            continue;
        }
        let why = match reprod_history::read::commonest_failure(history, &c.name) {
            Ok(Some(reprod_history::read::Failing {
                status,
                error,
                count: n,
                response,
            })) => {
                let ending = match (status, error) {
                    (Some(s), _) => format!("answered {s}"),
                    (None, Some(e)) => e,
                    (None, None) => "ended without an answer".to_string(),
                };
                let body = response
                    .filter(|b| !b.trim().is_empty())
                    .map(|b| format!(": {}", snippet(&b, 160)))
                    .unwrap_or_default();
                format!("; the commonest: {n} {ending}{body}")
            }
            _ => String::new(),
        };
        out.push(Warning {
            kind: "caller_failing".to_string(),
            subject: Some(c.name.clone()),
            message: format!(
                "{} of caller {}'s {} operations did not succeed{why}: a race cannot show in requests the service refuses",
                not_ok, c.name, c.ops
            ),
        });
    }
    for (invariant, keys) in &driven.stale {
        out.push(Warning {
            kind: "state_before_load".to_string(),
            subject: Some(invariant.clone()),
            message: format!(
                "invariant {invariant:?} was already violated for {keys} key(s) before the load started: the database held state from before this run (an earlier run?), so some violations may not be this run's; give [database] fresh = true, put a SQLite file under {{run_dir}}, or give a url service a reset"
            ),
        });
    }
    for logs in &driven.service_logs {
        let service = &logs.service;
        if logs.dropped > 0 {
            out.push(Warning {
                kind: "service_logs_dropped".to_string(),
                subject: Some(service.clone()),
                message: format!(
                    "{} of service {service:?}'s log lines were not recorded in the history ({} kept): past logs.max_lines, or written faster than the history could take them; the log files keep every line, and logs.max_lines raises the bound",
                    logs.dropped, logs.kept
                ),
            });
        }
        if logs.kept == 0 && logs.unparsable > 0 {
            out.push(Warning {
                kind: "service_logs_unread".to_string(),
                subject: Some(service.clone()),
                message: format!(
                    "none of service {service:?}'s {} output line(s) could be read as its logs.format says, so the timeline has none of its lines: look at services/{service}-0.log and fix logs.format (json, logfmt, or regex with a pattern)",
                    logs.unparsable
                ),
            });
        }
    }
    if let Some(proxy) = &driven.db_proxy {
        if proxy.dropped > 0 {
            out.push(Warning {
                kind: "db_statements_dropped".to_string(),
                subject: None,
                message: format!(
                    "{} statement(s) passed through the database proxy without being recorded ({} recorded): past {} per run, or faster than the history could take them",
                    proxy.dropped,
                    proxy.statements,
                    reprod_dbproxy::MAX_STATEMENTS
                ),
            });
        }
        if proxy.upstream_failures > 0 {
            out.push(Warning {
                kind: "db_proxy_upstream_failed".to_string(),
                subject: None,
                message: format!(
                    "{} connection(s) through the database proxy could not reach the server; the last: {}",
                    proxy.upstream_failures,
                    proxy.last_upstream_failure.as_deref().unwrap_or("?")
                ),
            });
        }
    }
    if let Some(otlp) = &driven.otlp {
        if otlp.rejected > 0 {
            out.push(Warning {
                kind: "otlp_rejected".to_string(),
                subject: None,
                message: format!(
                    "the OTLP receiver refused {} request(s); the last: {}",
                    otlp.rejected,
                    otlp.last_rejection.as_deref().unwrap_or("?")
                ),
            });
        }
        if otlp.dropped > 0 {
            out.push(Warning {
                kind: "otlp_dropped".to_string(),
                subject: None,
                message: format!(
                    "{} span(s) or log record(s) sent to the OTLP receiver were not recorded (past {} per run, without a trace id, or faster than the history could take them)",
                    otlp.dropped,
                    reprod_otlp::MAX_RECORDS
                ),
            });
        }
        if otlp.spans + otlp.logs + otlp.rejected == 0 && driven.stats.is_some() {
            out.push(Warning {
                kind: "otlp_silent".to_string(),
                subject: None,
                message: "a service was given {otlp.url} but nothing arrived there: set OTEL_EXPORTER_OTLP_ENDPOINT = \"{otlp.url}\" and OTEL_EXPORTER_OTLP_PROTOCOL = \"http/protobuf\" in its env (reprod serves OTLP over HTTP, not gRPC), and a short OTEL_BSP_SCHEDULE_DELAY so spans leave before the run ends".to_string(),
            });
        }
    }
    if driven.cut_lines > 0 {
        out.push(Warning {
            kind: "service_output_cut".to_string(),
            subject: None,
            message: format!(
                "{} line(s) of service output were longer than {} bytes and were cut where reprod reads them (the log files keep every byte)",
                driven.cut_lines,
                reprod_services::MAX_LINE_BYTES
            ),
        });
    }
    out
}

/// Starts the database proxy in front of `url`; the URL the services get instead.
async fn start_db_proxy(
    scenario: &Scenario,
    url: &str,
    clock: RunClock,
    recorder: &Recorder,
) -> Result<(reprod_dbproxy::DbProxy, String), String> {
    use reprod_scenario::DatabasePart;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "[database] proxy = true needs a postgres:// URL, and the database is {url}: SQLite runs inside the service, so there is no connection to sit on; write proxy = \"auto\" or read the service's own lines with logs = {{ format = \"json\" }}"
        ));
    }
    let host = DatabasePart::Host.of(url).unwrap_or_default();
    if host.is_empty() || host.starts_with('/') {
        return Err(
            "the database proxy connects to the server over TCP, and the [database] URL names no TCP host (a Unix socket?): give it a host and port, for example postgres://user@127.0.0.1:5432/app"
                .to_string(),
        );
    }
    let port = DatabasePart::Port
        .of(url)
        .unwrap_or_else(|| "5432".to_string());
    let db = scenario.database.as_ref();
    let config = reprod_dbproxy::ProxyConfig {
        upstream: format!("{host}:{port}"),
        key: db.and_then(|d| d.key.clone()),
        faults: db.map(|d| d.faults.clone()).unwrap_or_default(),
        seed: scenario.seed,
        port: db.and_then(|d| d.proxy_port),
    };
    let port = config.port;
    let proxy = reprod_dbproxy::DbProxy::start(config, clock, recorder.clone())
        .await
        .map_err(|e| match port {
            Some(port) => format!(
                "the database proxy could not listen on 127.0.0.1:{port} ([database] proxy_port): {e}; is another run or program using it?"
            ),
            None => format!("the database proxy could not listen on loopback: {e}"),
        })?;
    let proxied = reprod_dbproxy::proxied_url(url, proxy.port()).ok_or_else(|| {
        "cannot point the services at the database proxy: the [database] URL is not a postgres:// URL reprod can rewrite".to_string()
    })?;
    Ok((proxy, proxied))
}

/// A pass whose load never put two requests on one key in flight together tested no same-key
/// race at all: said, so a bare PASS is not read as "no race".
fn never_raced(scenario: &Scenario, summary: &Summary) -> Option<Warning> {
    let requests = summary.exercised.iter().find(|e| e.place == "requests")?;
    if summary.verdict != reprod_report::Verdict::Pass || requests.overlapped_keys > 0 {
        return None;
    }
    let shared = scenario.callers.iter().enumerate().any(|(i, a)| {
        scenario.callers[i + 1..]
            .iter()
            .any(|b| b.keys.prefix == a.keys.prefix)
    });
    let advice = if shared {
        "give a caller overlap = { k = 2, sync = \"last_byte\" }, or have the callers that share these keys send at the same time"
    } else {
        "give a caller overlap = { k = 2, sync = \"last_byte\" } or a second caller on the same keys"
    };
    Some(Warning {
        kind: "never_raced".to_string(),
        subject: None,
        message: format!(
            "no two requests on one key were ever in flight together ({} keys): this run exercised no same-key race, so its pass says nothing about one; {advice}",
            requests.keys
        ),
    })
}

/// Per caller with `overlap`, how its groups landed, from the finished history.
fn overlap_landings(
    scenario: &Scenario,
    history: &Path,
) -> Result<Vec<reprod_report::OverlapLanding>, reprod_history::HistoryError> {
    let reader = reprod_history::query::Reader::open(history)?;
    let groups = reader.overlap_groups()?;
    let reach = reader.overlap_reach()?;
    Ok(scenario
        .callers
        .iter()
        .filter(|c| c.overlap.k > 1)
        .map(|c| {
            let mine: Vec<_> = groups.iter().filter(|g| g.caller == c.name).collect();
            let together: Vec<i64> = mine
                .iter()
                .map(|g| g.together_us)
                .filter(|t| *t > 0)
                .collect();
            reprod_report::OverlapLanding {
                caller: c.name.clone(),
                sync: match c.overlap.sync {
                    reprod_scenario::OverlapSync::Window => "window",
                    reprod_scenario::OverlapSync::LastByte => "last_byte",
                }
                .to_string(),
                groups: mine.len() as u64,
                spread_us: reprod_report::Spread::of(mine.iter().map(|g| g.spread_us).collect()),
                together: together.len() as u64,
                together_us: reprod_report::Spread::of(together),
                reached: reached(&reach, &c.name),
            }
        })
        .collect())
}

/// Per place, how tightly `caller`'s overlap groups reached it.
fn reached(
    reach: &[reprod_history::query::GroupReach],
    caller: &str,
) -> Vec<reprod_report::OverlapReach> {
    let mut places: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for r in reach.iter().filter(|r| r.caller == caller) {
        places.entry(&r.place).or_default().push(r.spread_us);
    }
    places
        .into_iter()
        .map(|(place, spreads)| reprod_report::OverlapReach {
            place: place.to_string(),
            groups: spreads.len() as u64,
            spread_us: reprod_report::Spread::of(spreads),
        })
        .collect()
}

/// Keys shown with their duplicate key conflicts in the summary.
const CONFLICT_KEYS_SHOWN: usize = 5;

/// The duplicate key conflicts the proxy recorded, from the finished history.
fn conflicts(history: &Path) -> Result<reprod_report::DbConflicts, reprod_history::HistoryError> {
    let per_key = reprod_history::query::Reader::open(history)?.duplicate_conflicts()?;
    Ok(reprod_report::DbConflicts {
        unique_violations: per_key.iter().map(|k| k.unique_violations).sum(),
        noop_inserts: per_key.iter().map(|k| k.noop_inserts).sum(),
        keys: per_key.iter().filter(|k| k.key.is_some()).count() as u64,
        top: per_key
            .into_iter()
            .take(CONFLICT_KEYS_SHOWN)
            .map(|k| reprod_report::KeyConflict {
                key: k.key,
                unique_violations: k.unique_violations,
                noop_inserts: k.noop_inserts,
            })
            .collect(),
    })
}

fn db_proxy_summary(counts: &reprod_dbproxy::ProxyCounts) -> reprod_report::DbProxySummary {
    use std::sync::atomic::Ordering::Relaxed;
    reprod_report::DbProxySummary {
        replicas: counts
            .per_replica
            .lock()
            .map(|all| {
                all.iter()
                    .map(|(replica, r)| reprod_report::DbReplicaConnections {
                        replica: replica.clone(),
                        connections: r.connections,
                        max_open: r.max_open,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        conflicts: reprod_report::DbConflicts::default(),
        connections: counts.connections.load(Relaxed),
        max_open: counts.max_open.load(Relaxed).max(0) as u64,
        statements: counts.statements.load(Relaxed),
        dropped: counts.dropped.load(Relaxed),
        faults: counts.faults.load(Relaxed),
        upstream_failures: counts.upstream_failures.load(Relaxed),
        last_upstream_failure: counts
            .last_upstream_failure
            .lock()
            .ok()
            .and_then(|l| l.clone()),
    }
}

fn otlp_summary(counts: &reprod_otlp::OtlpCounts) -> reprod_report::OtlpSummary {
    use std::sync::atomic::Ordering::Relaxed;
    reprod_report::OtlpSummary {
        spans: counts.spans.load(Relaxed),
        logs: counts.logs.load(Relaxed),
        dropped: counts.dropped.load(Relaxed),
        rejected: counts.rejected.load(Relaxed),
        last_rejection: counts.last_rejection.lock().ok().and_then(|l| l.clone()),
    }
}

/// At most `max` characters of `text` on one line.
fn snippet(text: &str, max: usize) -> String {
    reprod_history::bounded(&text.replace(['\n', '\r'], " "), max)
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

/// Resolves with the reason once the history writer failed; pending while it works.
async fn history_failed(failure: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = failure.borrow_and_update().clone() {
            return format!("the history could not be written: {reason}");
        }
        if failure.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The engine's view of the services' replicas.
fn engine_targets(services: &Services) -> Vec<Vec<reprod_engine::Target>> {
    services
        .replicas()
        .iter()
        .map(|replicas| {
            replicas
                .iter()
                .map(|r| reprod_engine::Target {
                    url: r.url.clone(),
                    instance: r.instance.clone(),
                    version: r.version.clone(),
                })
                .collect()
        })
        .collect()
}

/// Makes the run's scratch database on the server `url` names, through its maintenance database
/// (so the named one need not exist): a copy of `fresh.template`, or empty, then `fresh.schema`
/// run in it. Returns (maintenance URL, name, the scratch database's URL).
async fn make_scratch(
    fresh: reprod_scenario::FreshDatabase,
    url: String,
    run_id: String,
) -> Result<(String, String, String), reprod_check::scratch::ScratchError> {
    use reprod_check::scratch;
    let admin = scratch::maintenance_url(&url)?;
    let name = scratch::scratch_name(&fresh.prefix, &run_id);
    let created = scratch::create_from(&admin, &name, fresh.template.as_deref()).await?;
    // The scratch database keeps the user, password and query of the URL given.
    let mut scratch_url = url::Url::parse(&url)
        .map_err(|e| scratch::ScratchError::BadUrl(format!("bad database URL: {e}")))?;
    scratch_url.set_path(&format!("/{name}"));
    let _ = created;
    if let Some(schema) = fresh.schema {
        let applied = scratch::apply_sql(scratch_url.to_string(), schema, "schema").await;
        if let Err(e) = applied {
            let _ = scratch::drop(&admin, &name).await;
            return Err(e);
        }
    }
    Ok((admin, name, scratch_url.to_string()))
}

/// What the phases share: where notes go, and the stop request.
struct Cx<'a> {
    obs: &'a dyn Observer,
    interrupt: &'a Interrupt,
}

/// Fault layer, services, load, drain; always stops what it started.
async fn drive(
    cx: &Cx<'_>,
    scenario: &Scenario,
    run_dir: &Path,
    database_url: Option<String>,
    clock: RunClock,
    recorder: Recorder,
    mut failure: watch::Receiver<Option<String>>,
) -> Driven {
    let obs = cx.obs;
    let faults = match FaultLayer::start(scenario, clock, recorder.clone()).await {
        Ok(faults) => faults,
        Err(e) => return Driven::before_load(Ended::StartFailed(e.to_string())),
    };
    // Dropped on every way out of here, which stops it; the normal end stops it after the
    // services, whose exporters send what they hold as they shut down.
    let otlp = if scenario.uses_otlp() {
        let versions = scenario
            .services
            .iter()
            .flat_map(|s| {
                (0..s.replicas).map(move |r| {
                    (
                        (s.name.clone(), i64::from(r)),
                        s.versions[r as usize % s.versions.len()].clone(),
                    )
                })
            })
            .collect();
        match reprod_otlp::Receiver::start(versions, clock, recorder.clone()).await {
            Ok(receiver) => Some(receiver),
            Err(e) => {
                faults.stop().await;
                return Driven::before_load(Ended::StartFailed(format!(
                    "the OTLP receiver for {{otlp.url}} could not listen on loopback: {e}"
                )));
            }
        }
    } else {
        None
    };
    // The services reach a PostgreSQL database through the proxy; the checks read it
    // directly. Dropped on every way out, which stops it.
    let proxied = scenario
        .database
        .as_ref()
        .is_some_and(|db| db.proxy == reprod_scenario::ProxyMode::On);
    let (db_proxy, service_database_url) = match (&database_url, proxied) {
        (Some(url), true) => match start_db_proxy(scenario, url, clock, &recorder).await {
            Ok((proxy, proxied_url)) => (Some(proxy), Some(proxied_url)),
            Err(why) => {
                faults.stop().await;
                return Driven::before_load(Ended::StartFailed(why));
            }
        },
        _ => (None, database_url.clone()),
    };
    let bindings = Bindings {
        otlp_url: otlp.as_ref().map(|r| r.url().to_string()),
        database_proxied: db_proxy.is_some(),
        run_dir: run_dir.to_path_buf(),
        database_url: service_database_url,
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
    // A service reprod does not start has its state reset first, so this run's verdict is about
    // this run (its reset command runs with the services, below).
    for service in &scenario.services {
        if let Some(reprod_scenario::Reset::Sql(path)) = &service.reset {
            let Some(url) = database_url.clone() else {
                continue;
            };
            obs.note(&format!(
                "reprod: resetting {} with {}",
                service.name,
                path.display()
            ));
            if let Err(e) = reprod_check::scratch::apply_sql(url, path.clone(), "reset").await {
                faults.stop().await;
                return Driven::before_load(Ended::StartFailed(format!(
                    "service {}: its reset_sql failed: {e}",
                    service.name
                )));
            }
        }
    }
    obs.note("reprod: starting services");
    let started = tokio::select! {
        started = Services::start(scenario, &bindings, clock, &recorder) => started.map_err(|e| Ended::StartFailed(e.to_string())),
        _ = cx.interrupt.requested() => Err(Ended::Interrupted),
        reason = history_failed(&mut failure) => Err(Ended::HistoryFailed(reason)),
    };
    let mut services = match started {
        Ok(services) => services,
        Err(ended) => {
            faults.stop().await;
            return Driven::before_load(ended);
        }
    };
    let targets = engine_targets(&services);
    // Setup steps, with every replica ready and before the load clock starts.
    let setup = if scenario.setup.is_empty() {
        let done = crate::setup::SetupDone {
            values: crate::setup::key_file_values(scenario),
            requests: 0,
        };
        Ok((done, 0.0))
    } else {
        obs.note(&format!("reprod: setup: {} step(s)", scenario.setup.len()));
        let started = clock.now_us();
        let ran = tokio::select! {
            done = crate::setup::run(scenario, &targets, clock, &recorder) => done.map_err(Ended::StartFailed),
            _ = cx.interrupt.requested() => Err(Ended::Interrupted),
            reason = history_failed(&mut failure) => Err(Ended::HistoryFailed(reason)),
            death = services.died() => Err(Ended::ServiceFailed(death.to_string())),
        };
        if let Ok(done) = &ran {
            obs.note(&format!(
                "reprod: setup done: {} request(s) in {:.1} s",
                done.requests,
                (clock.now_us() - started) as f64 / 1e6
            ));
        }
        ran.map(|done| (done, (clock.now_us() - started) as f64 / 1e6))
    };
    let (setup, setup_summary) = match setup {
        Ok((done, seconds)) => (
            Arc::new(done.values),
            reprod_report::SetupSummary {
                requests: done.requests,
                seconds,
            },
        ),
        Err(ended) => {
            services.stop().await;
            faults.stop().await;
            return Driven::before_load(ended);
        }
    };
    // What the database already holds against the invariants is not this run's doing.
    let stale = tokio::select! {
        stale = reprod_check::violated_before_load(
            scenario,
            database_url.as_deref(),
            std::time::Duration::from_secs(10),
        ) => stale,
        _ = cx.interrupt.requested() => {
            services.stop().await;
            faults.stop().await;
            return Driven::before_load(Ended::Interrupted);
        }
    };
    // The load clock starts now, with every replica ready and set up: nothing is planned
    // inside the time the services took to start, so nothing is released late in a burst.
    let load_start_us = clock.now_us();
    faults.set_load_start(load_start_us);
    if let Some(proxy) = &db_proxy {
        proxy.set_load_start(load_start_us);
    }
    recorder.record(Event::LoadStarted(load_start_us)).await;
    // Invariants that ask for it are checked while load runs, to learn when each violation
    // first appeared; the watcher stops when load and drain are over.
    let (watch_stop, watch_stopped) = watch::channel(false);
    let (found_tx, found) = watch::channel(None);
    let watcher = reprod_check::watch(
        scenario,
        database_url.as_deref(),
        move || clock.now_us(),
        watch_stopped,
        found_tx,
    );
    let load_then_stop = async {
        let plan = LoadPlan {
            targets,
            setup,
            load_start_us,
            found,
        };
        let outcome = load(
            cx,
            scenario,
            &mut services,
            clock,
            recorder,
            plan,
            &mut failure,
        )
        .await;
        let _ = watch_stop.send(true);
        outcome
    };
    let ((ended, stats), first_seen) = tokio::join!(load_then_stop, watcher);
    services.stop().await;
    let otlp = match otlp {
        Some(receiver) => Some(otlp_summary(&*receiver.stop().await)),
        None => None,
    };
    let db_proxy = match db_proxy {
        Some(proxy) => Some(db_proxy_summary(&*proxy.stop().await)),
        None => None,
    };
    faults.stop().await;
    Driven {
        otlp,
        db_proxy,
        ended,
        stats: Some(stats),
        first_seen,
        load_start_us: Some(load_start_us),
        cut_lines: services
            .output()
            .cut_lines
            .load(std::sync::atomic::Ordering::Relaxed),
        service_logs: services
            .log_counts()
            .iter()
            .map(|c| {
                let n =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                reprod_report::ServiceLogCounts {
                    service: c.service.clone(),
                    kept: n(&c.kept),
                    dropped: n(&c.dropped),
                    unparsable: n(&c.unparsable),
                }
            })
            .collect(),
        stale,
        setup: setup_summary,
    }
}

/// What the load runs against, from the phases before it.
struct LoadPlan {
    targets: Vec<Vec<reprod_engine::Target>>,
    setup: Arc<reprod_engine::SetupValues>,
    load_start_us: i64,
    /// The first violation a mid-run check found: (invariant, µs since the run started).
    found: watch::Receiver<Option<(String, i64)>>,
}

async fn load(
    cx: &Cx<'_>,
    scenario: &Scenario,
    services: &mut Services,
    clock: RunClock,
    recorder: Recorder,
    plan: LoadPlan,
    failure: &mut watch::Receiver<Option<String>>,
) -> (Ended, Stats) {
    let LoadPlan {
        targets,
        setup,
        load_start_us,
        mut found,
    } = plan;
    let stop_at_violation = scenario.stop_at_violation;
    let obs = cx.obs;
    let (stop_tx, stop_rx) = watch::channel(false);
    let live = Arc::new(Live::default());
    obs.note(&format!(
        "reprod: load for up to {} (at most {} operations), conditions: {}",
        reprod_scenario::format_duration(scenario.duration),
        scenario.max_ops,
        names(scenario)
    ));
    let engine = reprod_engine::run(reprod_engine::Input {
        scenario,
        targets: &targets,
        clock,
        recorder,
        live: Arc::clone(&live),
        stop: stop_rx,
        load_start_us,
        setup,
    });
    tokio::pin!(engine);
    let mut problem = None;
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut window = Window::default();
    let stats = loop {
        tokio::select! {
            stats = &mut engine => break stats,
            _ = ticks.tick() => obs.progress(&window.snapshot(&live, clock, load_start_us, scenario.duration.as_secs_f64())),
            death = services.died(), if problem.is_none() => {
                problem = Some(Ended::ServiceFailed(death.to_string()));
                let _ = stop_tx.send(true);
            }
            _ = cx.interrupt.requested(), if problem.is_none() => {
                problem = Some(Ended::Interrupted);
                let _ = stop_tx.send(true);
            }
            reason = history_failed(failure), if problem.is_none() => {
                problem = Some(Ended::HistoryFailed(reason));
                let _ = stop_tx.send(true);
            }
            Ok(seen) = found.wait_for(Option::is_some), if stop_at_violation && problem.is_none() => {
                if let Some((invariant, at_us)) = seen.clone() {
                    obs.note(&format!("reprod: {invariant:?} is violated; stopping the load (--stop-at-violation)"));
                    problem = Some(Ended::StoppedAtViolation(invariant, at_us - load_start_us));
                    let _ = stop_tx.send(true);
                }
            }
        }
    };
    obs.progress_done();
    if let Some(failure) = &stats.engine_failure {
        return (Ended::EngineFailed(failure.clone()), stats);
    }
    if let Some(problem) = problem {
        return (problem, stats);
    }
    // Background work the load caused (workers, outbox relays) gets `drain` to finish.
    if !scenario.drain.is_zero() {
        obs.note(&format!(
            "reprod: load done ({} operations); draining for {}",
            stats.ops,
            reprod_scenario::format_duration(scenario.drain)
        ));
        let ended = tokio::select! {
            _ = tokio::time::sleep(scenario.drain) => Ended::Completed,
            death = services.died() => Ended::ServiceFailed(death.to_string()),
            _ = cx.interrupt.requested() => Ended::Interrupted,
            reason = history_failed(failure) => Ended::HistoryFailed(reason),
        };
        return (ended, stats);
    }
    (Ended::Completed, stats)
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

/// How often the observer hears of the load's progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the progress line needs between two snapshots.
#[derive(Default)]
struct Window {
    done: u64,
    at_s: f64,
}

impl Window {
    fn snapshot(
        &mut self,
        live: &Live,
        clock: RunClock,
        load_start_us: i64,
        planned_s: f64,
    ) -> Progress {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (clock.now_us() - load_start_us) as f64 / 1e6;
        let done = live.done.load(Relaxed);
        let rate = (done - self.done) as f64 / (now - self.at_s).max(1e-3);
        (self.done, self.at_s) = (done, now);
        let window = live.take_window();
        Progress {
            elapsed_s: now,
            planned_s,
            done,
            ok: live.ok.load(Relaxed),
            failed: live.failed.load(Relaxed),
            ambiguous: live.ambiguous.load(Relaxed),
            retries: live.retries.load(Relaxed),
            rate_per_s: rate,
            p99_ms: (window.count() > 0).then(|| window.quantile(0.99) as f64 / 1e3),
        }
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
    load_start_us: i64,
) -> Summary {
    let duration_s = ((stats.load_end_us - load_start_us).max(0) as f64 / 1e6).max(1e-6);
    let offered_window = (stats.last_intended_us - stats.first_intended_us) as f64 / 1e6;
    let lat: &Histogram = &stats.latency;
    Summary {
        run_id: run_id.to_string(),
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        conditions: conditions.to_vec(),
        params: scenario
            .shown_params()
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        status: Status::Completed,
        status_reason: None,
        load_started_s: load_start_us as f64 / 1e6,
        duration_s,
        setup: reprod_report::SetupSummary::default(),
        service_logs: Vec::new(),
        otlp: None,
        db_proxy: None,
        overlap: Vec::new(),
        exercised: Vec::new(),
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
        thresholds: Vec::new(),
        verdict: Verdict::Incomplete,
        warnings: Vec::new(),
        explanation: None,
        run_dir: run_dir.display().to_string(),
    }
}

fn thresholds(scenario: &Scenario, stats: &Stats) -> Vec<ThresholdResult> {
    reprod_check::thresholds(
        &scenario.thresholds,
        &reprod_check::LoadFigures {
            p99_ms: ms(stats.latency.quantile(0.99)),
            ops: stats.ops,
            ok: stats.ok,
            not_ok: stats.failed + stats.ambiguous,
            duration_s: (stats.load_end_us - stats.first_intended_us).max(1) as f64 / 1e6,
        },
    )
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
    use reprod_report::Format;
    let dir = &finished.run_dir;
    let plain = reprod_report::html::Page::default();
    for (file, format) in [
        ("summary.json", Format::Json),
        ("report.txt", Format::Text),
        ("junit.xml", Format::Junit),
    ] {
        write_whole(
            &dir.join(file),
            &reprod_report::render(&finished.summary, format, &plain),
        )?;
    }
    write_whole(&dir.join("report.html"), &html(finished))
}

/// Most intervals a plot over time has: the interval grows with the run.
const MAX_PLOT_POINTS: usize = 300;

/// `report.html`: the summary and explanation, and the run over time — as the engine counted
/// it, or read back from the history for a stored run.
pub fn html(finished: &Finished) -> String {
    let history = finished.run_dir.join("history.sqlite");
    let load_start_us = (finished.summary.load_started_s * 1e6) as i64;
    let buckets = if finished.series.is_empty() {
        reprod_history::read::time_series(&history, load_start_us, MAX_PLOT_POINTS)
            .unwrap_or_default()
    } else {
        finished.series.clone()
    };
    let mut series: Vec<reprod_report::html::TimePoint> = buckets
        .into_iter()
        .map(|b| reprod_report::html::TimePoint {
            start_s: b.start_s,
            offered: b.offered,
            done: b.done,
            ok: b.ok,
            not_ok: b.not_ok,
            retries: b.retries,
            p50_ms: b.p50_ms,
            p99_ms: b.p99_ms,
            violations_seen: 0,
        })
        .collect();
    let (seen, final_only) = reprod_history::read::violation_times(&history).unwrap_or_default();
    if let Some(width_s) = series.get(1).map(|p| p.start_s - series[0].start_s)
        && width_s > 0.0
    {
        for at in seen {
            let i = (((at - load_start_us).max(0) as f64 / 1e6) / width_s) as usize;
            let last = series.len() - 1;
            series[i.min(last)].violations_seen += 1;
        }
    } else if let Some(first) = series.first_mut() {
        first.violations_seen += seen.len() as u64;
    }
    reprod_report::html::render(
        &finished.summary,
        &reprod_report::html::Page {
            series: &series,
            final_only_violations: final_only,
        },
    )
}

/// Writes `text` to `path` whole or not at all: a full disk leaves no half-written file that a
/// CI script would read as an empty summary.
pub fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

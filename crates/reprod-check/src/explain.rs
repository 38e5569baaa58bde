//! Explanation: for a violating key, the joined timeline in the seed's style; for the run, the
//! seed's "compare a failing request with a successful one" step — violating keys against clean
//! keys along every dimension production load changes, ranked by how well each separates them.
//!
//! Reads only the history file, so it works on any run directory, including one whose run was
//! interrupted (it says so).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

pub use reprod_report::{Dimension, EntryKind, Explanation, Lane, Span, TimelineEvent};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// Why a run directory could not be explained.
#[derive(Debug)]
pub struct ExplainError(pub String);

impl std::fmt::Display for ExplainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExplainError {}

/// Longest timeline shown.
const MAX_TIMELINE: usize = 60;

/// Explains the run in `run_dir`, with the timeline of `key` (default: the first violating
/// key).
pub fn explain(run_dir: &Path, key: Option<&str>) -> Result<Explanation, ExplainError> {
    let history = run_dir.join("history.sqlite");
    if !run_dir.is_dir() {
        return Err(ExplainError(format!(
            "{} is not a directory",
            run_dir.display()
        )));
    }
    if !history.exists() {
        let present: Vec<String> = std::fs::read_dir(run_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        return Err(ExplainError(format!(
            "{} has no history.sqlite, so it is not a reprod run directory (it holds: {})",
            run_dir.display(),
            if present.is_empty() {
                "nothing".to_string()
            } else {
                present.join(", ")
            }
        )));
    }
    // The timelines read by key and trace id. A history that cannot be written (a read-only
    // copy) is read without indexes: the same answers, found more slowly.
    let _ = reprod_history::read::index(&history);
    let conn = Connection::open_with_flags(&history, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| ExplainError(format!("cannot open {}: {e}", history.display())))?;
    let q = |e: rusqlite::Error| ExplainError(format!("reading {}: {e}", history.display()));
    let (run_id, status): (String, String) = conn
        .query_row("SELECT run_id, status FROM run", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(q)?;

    let mut invariants = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT invariant, COUNT(DISTINCT key) FROM violations GROUP BY invariant ORDER BY MIN(rowid)")
            .map_err(q)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(q)?;
        for row in rows {
            invariants.push(row.map_err(q)?);
        }
    }
    let key = match key {
        Some(k) => Some(k.to_string()),
        // The violating key with the fewest operations tells its story with the least noise.
        None => conn
            .query_row(
                "SELECT v.key FROM violations v LEFT JOIN ops o ON o.key = v.key
                 GROUP BY v.key ORDER BY COUNT(o.op_id), MIN(v.rowid) LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(q)?,
    };
    let (timeline, swimlanes) = match &key {
        Some(k) => timeline(&conn, k).map_err(q)?,
        None => (Vec::new(), Vec::new()),
    };
    let (violating_keys, clean_keys, comparison) = compare(&conn).map_err(q)?;
    Ok(Explanation {
        run_id,
        status,
        invariants,
        key,
        timeline,
        swimlanes,
        violating_keys,
        clean_keys,
        comparison,
    })
}

/// Swimlanes by name, in order of first appearance.
#[derive(Default)]
struct Lanes(Vec<Lane>);

impl Lanes {
    fn push(&mut self, lane: &str, span: Span) {
        match self.0.iter_mut().find(|l| l.name == lane) {
            Some(l) => l.spans.push(span),
            None => self.0.push(Lane {
                name: lane.to_string(),
                spans: vec![span],
            }),
        }
    }
}

fn timeline(conn: &Connection, key: &str) -> rusqlite::Result<(Vec<TimelineEvent>, Vec<Lane>)> {
    let mut raw: Vec<(i64, EntryKind, String)> = Vec::new();
    let mut lanes = Lanes::default();
    let mut traces: HashMap<String, (String, i64)> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT o.op_id, o.caller, o.trace_id, a.n, a.instance, a.version, a.sent_us, a.done_us, a.status, a.error,
                a.idempotency_key
         FROM ops o JOIN attempts a ON a.op_id = o.op_id WHERE o.key = ?1 ORDER BY a.sent_us",
    )?;
    let rows = stmt.query_map(params![key], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, Option<i64>>(8)?,
            r.get::<_, Option<String>>(9)?,
            r.get::<_, Option<String>>(10)?,
        ))
    })?;
    for row in rows {
        let (op, caller, trace, n, instance, version, sent, done, status, error, idem) = row?;
        traces.insert(trace, (caller.clone(), op));
        let idem = idem
            .map(|k| format!(", Idempotency-Key {}", short(&k)))
            .unwrap_or_default();
        raw.push((
            sent,
            EntryKind::Attempt,
            format!("{caller} op {op} attempt {n} sent to {instance} ({version}){idem}"),
        ));
        let answer = match (status, error) {
            (Some(s), _) => format!("answered {s}"),
            (None, Some(e)) => format!("failed: {e}"),
            (None, None) => "no answer".to_string(),
        };
        lanes.push(
            &format!("{caller} → {instance}"),
            Span {
                start_us: sent,
                end_us: done,
                kind: EntryKind::Attempt,
                label: format!("op {op} attempt {n}: {answer}"),
            },
        );
        raw.push((
            done,
            EntryKind::Response,
            format!(
                "{caller} op {op} attempt {n} {answer} after {:.0} ms",
                (done - sent) as f64 / 1e3
            ),
        ));
    }
    let label = |trace: &Option<String>| match trace.as_ref().and_then(|t| traces.get(t)) {
        Some((caller, op)) => format!("{caller} op {op}"),
        None => "an operation on another key".to_string(),
    };
    let mut stmt = conn.prepare(
        "SELECT dependency, trace_id, received_us, delay_us, fault, status, done_us, path FROM dependency_calls
         WHERE key = ?1 OR trace_id IN (SELECT trace_id FROM ops WHERE key = ?1) ORDER BY received_us",
    )?;
    let rows = stmt.query_map(params![key], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    for row in rows {
        let (dep, trace, received, delay, fault, status, done, path) = row?;
        let fault = fault.map(|f| format!(", fault {f}")).unwrap_or_default();
        lanes.push(
            &dep,
            Span {
                start_us: received,
                end_us: done,
                kind: EntryKind::Dependency,
                label: format!(
                    "{}: delay {:.0} ms{fault}",
                    label(&trace),
                    delay as f64 / 1e3
                ),
            },
        );
        raw.push((
            received,
            EntryKind::Dependency,
            format!(
                "{dep} called by {} ({path}), injected delay {:.0} ms{fault}",
                label(&trace),
                delay as f64 / 1e3
            ),
        ));
        if let Some(s) = status {
            raw.push((
                done,
                EntryKind::Dependency,
                format!("{dep} answered {s} to {}", label(&trace)),
            ));
        }
    }
    let mut stmt = conn.prepare(
        "SELECT sink, trace_id, received_us, idempotency_key FROM sink_deliveries
         WHERE key = ?1 OR trace_id IN (SELECT trace_id FROM ops WHERE key = ?1) ORDER BY received_us",
    )?;
    let rows = stmt.query_map(params![key], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (sink, trace, received, idem) = row?;
        let idem = idem
            .map(|k| format!(" with Idempotency-Key {}", short(&k)))
            .unwrap_or_else(|| " without an idempotency key".to_string());
        lanes.push(
            &sink,
            Span {
                start_us: received,
                end_us: received,
                kind: EntryKind::Delivery,
                label: format!("caused by {}{idem}", label(&trace)),
            },
        );
        raw.push((
            received,
            EntryKind::Delivery,
            format!("{sink} delivery caused by {}{idem}", label(&trace)),
        ));
    }
    // Histories written before `found_by` existed say nothing of who found a violation.
    let mut stmt = conn
        .prepare(
            "SELECT invariant, detail, found_us, found_by = 'mid_run' FROM violations
             WHERE key = ?1 ORDER BY found_us, rowid",
        )
        .or_else(|_| {
            conn.prepare(
                "SELECT invariant, detail, found_us, 0 FROM violations WHERE key = ?1
                 ORDER BY found_us, rowid",
            )
        })?;
    let rows = stmt.query_map(params![key], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, bool>(3)?,
        ))
    })?;
    let mut seen_during = Vec::new();
    let mut found_after = Vec::new();
    for row in rows {
        let (inv, detail, found, mid_run) = row?;
        lanes.push(
            "violations",
            Span {
                start_us: found,
                end_us: found,
                kind: EntryKind::Violation,
                label: if mid_run {
                    format!("{inv}: first seen by the check during the run")
                } else {
                    format!("{inv}: found by the final check")
                },
            },
        );
        if mid_run {
            seen_during.push((
                found,
                EntryKind::Violation,
                format!("violated {inv:?}, first seen by the check during the run: {detail}"),
            ));
        } else {
            found_after.push((
                found,
                EntryKind::Violation,
                format!("violated {inv:?} (found by the final check): {detail}"),
            ));
        }
    }
    raw.sort_by_key(|(t, _, _)| *t);
    if raw.len() > MAX_TIMELINE {
        let more = raw.len() - MAX_TIMELINE;
        raw.truncate(MAX_TIMELINE);
        let last = raw.last().map_or(0, |(t, _, _)| *t);
        raw.push((last, EntryKind::More, format!("… {more} more events")));
    }
    // A violation seen during the run takes its place in time; one found only by the check
    // after the run closes the timeline, at the check's time (after everything else).
    raw.extend(seen_during);
    raw.sort_by_key(|(t, _, _)| *t);
    let end = raw.last().map_or(0, |(t, _, _)| *t);
    raw.extend(
        found_after
            .into_iter()
            .map(|(t, k, text)| (t.max(end), k, text)),
    );
    let start = raw.first().map_or(0, |(t, _, _)| *t);
    let events = raw
        .into_iter()
        .map(|(t, kind, text)| TimelineEvent {
            at_us: t,
            t_ms: ((t - start).max(0)) as f64 / 1e3,
            kind,
            text,
        })
        .collect();
    Ok((events, lanes.0))
}

fn short(key: &str) -> String {
    if key.len() > 13 {
        format!("{}…", &key[..12])
    } else {
        key.to_string()
    }
}

/// Per key: what production-load dimensions it saw.
#[derive(Default)]
struct KeyFacts {
    callers: BTreeSet<String>,
    ops: u64,
    intervals: Vec<(i64, i64)>,
    retried: bool,
    instances: BTreeSet<String>,
    versions: BTreeSet<String>,
    queue_delay: bool,
    max_dependency_delay_us: i64,
    fault: bool,
}

fn compare(conn: &Connection) -> rusqlite::Result<(usize, usize, Vec<Dimension>)> {
    let mut facts: HashMap<String, KeyFacts> = HashMap::new();
    let mut trace_key: HashMap<String, String> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT key, caller, started_us, done_us, attempts, queue_delay_us, trace_id FROM ops",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key: String = r.get(0)?;
            let f = facts.entry(key.clone()).or_default();
            f.callers.insert(r.get(1)?);
            f.ops += 1;
            f.intervals.push((r.get(2)?, r.get(3)?));
            f.retried |= r.get::<_, i64>(4)? > 1;
            f.queue_delay |= r.get::<_, i64>(5)? > 0;
            trace_key.insert(r.get(6)?, key);
        }
    }
    {
        let mut stmt = conn.prepare(
            "SELECT o.key, a.instance, a.version FROM attempts a JOIN ops o ON o.op_id = a.op_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            if let Some(f) = facts.get_mut(&r.get::<_, String>(0)?) {
                f.instances.insert(r.get(1)?);
                f.versions.insert(r.get(2)?);
            }
        }
    }
    {
        let mut stmt =
            conn.prepare("SELECT key, trace_id, delay_us, fault FROM dependency_calls")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key: Option<String> = r.get(0)?;
            let trace: Option<String> = r.get(1)?;
            let key = key
                .filter(|k| facts.contains_key(k))
                .or_else(|| trace.and_then(|t| trace_key.get(&t).cloned()));
            if let Some(f) = key.and_then(|k| facts.get_mut(&k)) {
                f.max_dependency_delay_us = f.max_dependency_delay_us.max(r.get(2)?);
                f.fault |= r
                    .get::<_, Option<String>>(3)?
                    .is_some_and(|x| x != "caller_gone");
            }
        }
    }
    let violating: BTreeSet<String> = {
        let mut stmt = conn.prepare("SELECT DISTINCT key FROM violations")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<BTreeSet<_>, _>>()?
            .into_iter()
            .filter(|k| facts.contains_key(k))
            .collect()
    };
    let clean: Vec<&String> = facts.keys().filter(|k| !violating.contains(*k)).collect();
    if violating.is_empty() || clean.is_empty() {
        return Ok((violating.len(), clean.len(), Vec::new()));
    }
    // Hot = in the top tenth of keys by operation count.
    let mut counts: Vec<u64> = facts.values().map(|f| f.ops).collect();
    counts.sort_unstable();
    let hot_threshold = counts[(counts.len() * 9) / 10].max(2);
    let mut slow_delays: Vec<i64> = facts
        .values()
        .map(|f| f.max_dependency_delay_us)
        .filter(|d| *d > 0)
        .collect();
    slow_delays.sort_unstable();
    let slow_threshold = slow_delays
        .get(slow_delays.len() / 2)
        .copied()
        .unwrap_or(i64::MAX)
        .max(1);
    let caller_names: BTreeSet<String> = facts
        .values()
        .flat_map(|f| f.callers.iter().cloned())
        .collect();

    type Pred = Box<dyn Fn(&KeyFacts) -> bool>;
    let mut dims: Vec<(String, String, Pred)> = vec![
        (
            "overlap".into(),
            "had 2+ overlapping operations".into(),
            Box::new(|f: &KeyFacts| max_concurrency(&f.intervals) >= 2),
        ),
        (
            "retries".into(),
            "had a retried operation".into(),
            Box::new(|f: &KeyFacts| f.retried),
        ),
        (
            "instances".into(),
            "were served by 2+ replicas".into(),
            Box::new(|f: &KeyFacts| f.instances.len() >= 2),
        ),
        (
            "mixed_versions".into(),
            "were served by 2+ versions".into(),
            Box::new(|f: &KeyFacts| f.versions.len() >= 2),
        ),
        (
            "queue_delay".into(),
            "had a queue-delayed operation".into(),
            Box::new(|f: &KeyFacts| f.queue_delay),
        ),
        (
            "dependency_faults".into(),
            "saw an injected dependency fault".into(),
            Box::new(|f: &KeyFacts| f.fault),
        ),
        (
            "hot_keys".into(),
            format!("were hot ({hot_threshold}+ operations)"),
            Box::new(move |f: &KeyFacts| f.ops >= hot_threshold),
        ),
    ];
    if slow_threshold != i64::MAX {
        dims.push((
            "slow_dependency".into(),
            format!(
                "saw a dependency delay of {:.0}+ ms",
                slow_threshold as f64 / 1e3
            ),
            Box::new(move |f: &KeyFacts| f.max_dependency_delay_us >= slow_threshold),
        ));
    }
    if caller_names.len() >= 2 {
        dims.push((
            "caller_mix".into(),
            format!(
                "were touched by 2+ callers ({})",
                caller_names.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            Box::new(|f: &KeyFacts| f.callers.len() >= 2),
        ));
    }
    let mut out = Vec::new();
    for (name, phrase, pred) in dims {
        let v =
            violating.iter().filter(|k| pred(&facts[*k])).count() as f64 / violating.len() as f64;
        let c = clean.iter().filter(|k| pred(&facts[**k])).count() as f64 / clean.len() as f64;
        out.push(Dimension {
            sentence: format!(
                "{:.0}% of violating keys {phrase}, {:.0}% of clean keys did",
                v * 100.0,
                c * 100.0
            ),
            name,
            violating_share: v,
            clean_share: c,
            separation: (v - c).abs(),
        });
    }
    out.sort_by(|a, b| b.separation.total_cmp(&a.separation));
    Ok((violating.len(), clean.len(), out))
}

/// The most operations on one key in flight at once.
fn max_concurrency(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::with_capacity(intervals.len() * 2);
    for (start, end) in intervals {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    // Ends before starts at the same instant: touching is not overlapping.
    edges.sort_unstable();
    let (mut now, mut best) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        best = best.max(now);
    }
    best as usize
}

#[cfg(test)]
mod tests {
    use super::max_concurrency;

    #[test]
    fn concurrency_counts_true_overlap_only() {
        assert_eq!(max_concurrency(&[]), 0);
        assert_eq!(
            max_concurrency(&[(0, 10), (10, 20)]),
            1,
            "touching is not overlapping"
        );
        assert_eq!(max_concurrency(&[(0, 10), (5, 20), (6, 7)]), 3);
        assert_eq!(max_concurrency(&[(0, 10), (20, 30), (25, 40)]), 2);
    }
}

//! Explanation: for a violating key, the joined timeline in the seed's style; for the run, the
//! seed's "compare a failing request with a successful one" step — violating keys against clean
//! keys along every dimension production load changes, ranked by how well each separates them.
//!
//! Reads only the history file, so it works on any run directory, including one whose run was
//! interrupted (it says so).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use reprod_history::HistoryError;
use reprod_history::query::{FieldValue, Reader};
pub use reprod_report::{
    Dimension, DimensionStatus, EntryKind, Explanation, Lane, Span, TimelineEvent,
};

/// Why a run directory could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The path is not a run directory: the user named the wrong thing.
    #[error("{0}")]
    NotARun(String),
    /// The history could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// Longest timeline shown.
const MAX_TIMELINE: usize = 80;
/// Log lines shown per operation and replica; the rest are counted in one line.
const MAX_LOG_LINES_PER_OP: usize = 8;

/// Explains the run in `run_dir`, with the timeline of `key` (default: the first violating
/// key).
pub fn explain(run_dir: &Path, key: Option<&str>) -> Result<Explanation, ExplainError> {
    let history = run_dir.join("history.sqlite");
    if !run_dir.is_dir() {
        return Err(ExplainError::NotARun(format!(
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
        return Err(ExplainError::NotARun(format!(
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
    let reader = Reader::open(&history)?;
    let run = reader.run()?;
    let (run_id, status) = (run.run_id, run.status);
    let invariants = reader.violations_per_invariant()?;
    let key = match key {
        Some(k) => Some(k.to_string()),
        None => reader.quietest_violating_key()?,
    };
    let (timeline, swimlanes) = match &key {
        Some(k) => timeline(&reader, k)?,
        None => (Vec::new(), Vec::new()),
    };
    let (violating_keys, clean_keys, unrelated_keys, comparison) = compare(&reader)?;
    Ok(Explanation {
        run_id,
        status,
        invariants,
        key,
        timeline,
        swimlanes,
        violating_keys,
        clean_keys,
        unrelated_keys,
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

fn timeline(reader: &Reader, key: &str) -> Result<(Vec<TimelineEvent>, Vec<Lane>), HistoryError> {
    let mut raw: Vec<(i64, EntryKind, String)> = Vec::new();
    let mut lanes = Lanes::default();
    let mut traces: HashMap<String, (String, i64)> = HashMap::new();
    // Each attempt's (sent, done, "caller op N"), to place statements that carry no trace.
    let mut in_flight: Vec<(i64, i64, String)> = Vec::new();
    for a in reader.attempts_of_key(key)? {
        let reprod_history::query::KeyAttempt {
            op_id: op,
            caller,
            trace_id: trace,
            n,
            instance,
            version,
            sent_us: sent,
            done_us: done,
            status,
            error,
            idempotency_key: idem,
            response,
            queue_delay_us,
        } = a;
        traces.insert(trace, (caller.clone(), op));
        in_flight.push((sent, done, format!("{caller} op {op}")));
        let idem = idem
            .map(|k| format!(", Idempotency-Key {}", short(&k)))
            .unwrap_or_default();
        // The seed's "queue enqueue time": how old the work was when it reached the service.
        let queued = if n == 1 && queue_delay_us > 0 {
            format!(", after {:.0} ms in the queue", queue_delay_us as f64 / 1e3)
        } else {
            String::new()
        };
        raw.push((
            sent,
            EntryKind::Attempt,
            format!("{caller} op {op} attempt {n} sent to {instance} ({version}){idem}{queued}"),
        ));
        // The answer's own words: both racing creates answered 201, with different ids.
        let body = response
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| format!(": {}", clip(&b.replace(['\n', '\r'], " "), 80)))
            .unwrap_or_default();
        let answer = match (status, &error) {
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
        let took = (done - sent) as f64 / 1e3;
        raw.push((
            done,
            EntryKind::Response,
            match (status, error) {
                // "failed after 1002 ms: timeout after 1000 ms", not "failed: ... after ...".
                (None, Some(e)) => {
                    format!("{caller} op {op} attempt {n} failed after {took:.0} ms: {e}")
                }
                _ => format!("{caller} op {op} attempt {n} {answer} after {took:.0} ms{body}"),
            },
        ));
    }
    let label = |trace: &Option<String>| match trace.as_ref().and_then(|t| traces.get(t)) {
        Some((caller, op)) => format!("{caller} op {op}"),
        None => "an operation on another key".to_string(),
    };
    let for_op = |trace: &Option<String>| match trace {
        Some(_) => format!(" for {}", label(trace)),
        None => String::new(),
    };
    for c in reader.calls_of_key(key)? {
        let reprod_history::query::KeyCall {
            dependency: dep,
            trace_id: trace,
            received_us: received,
            delay_us: delay,
            fault,
            status,
            done_us: done,
            path,
        } = c;
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
    for d in reader.deliveries_of_key(key)? {
        let reprod_history::query::KeyDelivery {
            sink,
            trace_id: trace,
            received_us: received,
            idempotency_key: idem,
        } = d;
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
    // The services' own lines, each labelled with the replica, its version and the operation
    // whose trace it carries; past a few lines per operation and replica, one line counts the
    // rest.
    let mut fold = Fold::default();
    for l in reader.logs_of_key(key)? {
        let reprod_history::query::KeyLog {
            service,
            replica,
            version,
            at_us: at,
            trace_id: trace,
            level,
            message,
        } = l;
        // A log record sent over OTLP without a replica's own {otlp.url} names no replica.
        let instance = if replica < 0 {
            service.clone()
        } else {
            format!("{service}/{replica}")
        };
        let who = match &trace {
            Some(_) => format!(", {}", label(&trace)),
            None => String::new(),
        };
        let shown = fold.show((trace.clone(), instance.clone()), at, || Folded {
            kind: EntryKind::Log,
            what: "line(s)",
            place: instance.clone(),
            who: for_op(&trace),
            source: format!("services/{service}-{replica}.log"),
        });
        if !shown {
            continue;
        }
        let level = match level.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some(l @ ("error" | "warn" | "warning" | "fatal" | "critical")) => {
                format!("{}: ", l.to_ascii_uppercase())
            }
            _ => String::new(),
        };
        lanes.push(
            &format!("{instance} log"),
            Span {
                start_us: at,
                end_us: at,
                kind: EntryKind::Log,
                label: format!("{}: {level}{message}", label(&trace)),
            },
        );
        raw.push((
            at,
            EntryKind::Log,
            format!("{instance} ({version}){who}: {level}{message}"),
        ));
    }
    for sp in reader.spans_of_key(key)? {
        let reprod_history::query::KeySpan {
            service,
            replica,
            version,
            trace_id,
            name,
            kind,
            start_us,
            end_us,
            status,
            detail,
            rows,
        } = sp;
        let instance = match replica {
            Some(r) => format!("{service}/{r}"),
            None => service,
        };
        let trace = Some(trace_id);
        let shown = fold.show((trace.clone(), instance.clone()), start_us, || Folded {
            kind: EntryKind::Log,
            what: "line(s) and span(s)",
            place: instance.clone(),
            who: for_op(&trace),
            source: "the history's service_logs and spans".to_string(),
        });
        if !shown {
            continue;
        }
        let detail = detail
            .filter(|d| *d != name)
            .map(|d| format!(": {}", clip(&d, 120)))
            .unwrap_or_default();
        let rows = match rows {
            Some(1) => " → 1 row".to_string(),
            Some(n) => format!(" → {n} rows"),
            None => String::new(),
        };
        let failed = if status.as_deref() == Some("error") {
            ", ERROR"
        } else {
            ""
        };
        let took = (end_us - start_us).max(0) as f64 / 1e3;
        lanes.push(
            &format!("{instance} spans"),
            Span {
                start_us,
                end_us: end_us.max(start_us),
                kind: EntryKind::Log,
                label: format!("{}: {name}{detail}", label(&trace)),
            },
        );
        let version = if version.is_empty() {
            String::new()
        } else {
            format!(" ({version})")
        };
        raw.push((
            start_us,
            EntryKind::Log,
            format!(
                "{instance}{version}, {}: span {name:?} ({kind}, {took:.1} ms{failed}){detail}{rows}",
                label(&trace)
            ),
        ));
    }
    // Database statements, labelled with the operation whose trace their comment carries or,
    // failing that, the operation of the key whose attempt was in flight when they arrived.
    let mut statement_fold = Fold::default();
    for st in reader.statements_of_key(key)? {
        let at = st.received_us;
        let who = match &st.trace_id {
            Some(_) => label(&st.trace_id),
            None => {
                let during: BTreeSet<String> = in_flight
                    .iter()
                    .filter(|(sent, done, _)| *sent <= at && at <= *done)
                    .map(|(_, _, who)| who.clone())
                    .collect();
                match during.len() {
                    0 => "no operation in flight".to_string(),
                    1 => during.into_iter().next().unwrap_or_default(),
                    _ => during.into_iter().collect::<Vec<_>>().join(" or "),
                }
            }
        };
        let place = st
            .replica
            .clone()
            .unwrap_or_else(|| format!("conn {}", st.conn));
        let shown = statement_fold.show((who.clone(), place.clone()), at, || Folded {
            kind: EntryKind::Statement,
            what: "statement(s)",
            place: place.clone(),
            who: format!(" for {who}"),
            source: "the history's db_statements".to_string(),
        });
        if !shown {
            continue;
        }
        let text = statement_words(&st);
        lanes.push(
            &format!("{place} database"),
            Span {
                start_us: at,
                end_us: st.done_us.max(at),
                kind: EntryKind::Statement,
                label: format!("{who}: {text}"),
            },
        );
        raw.push((at, EntryKind::Statement, format!("{place}, {who}: {text}")));
    }
    raw.extend(fold.rest().chain(statement_fold.rest()));
    let mut seen_during = Vec::new();
    let mut found_after = Vec::new();
    for v in reader.violations_of_key(key)? {
        let reprod_history::query::KeyViolation {
            invariant: inv,
            detail,
            found_us: found,
            mid_run,
        } = v;
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

/// A statement in the timeline's words: `SELECT invoices → 0 rows`,
/// `INSERT invoices → ERROR 23505: duplicate key ...`, `INSERT invoices → INSERT 0 0 (nothing
/// inserted)`, with the transaction and any injected fault.
fn statement_words(st: &reprod_history::query::KeyStatement) -> String {
    let verb = st.kind.to_ascii_uppercase();
    let what = match (&st.table, st.kind.as_str()) {
        (Some(t), _) => format!("{verb} {t}"),
        (None, "other") => clip(&st.normalized, 60),
        (None, _) => verb,
    };
    let outcome = match (&st.sqlstate, &st.error, st.rows, &st.tag) {
        (Some(code), error, _, _) => format!(
            " → ERROR {code}: {}",
            clip(error.as_deref().unwrap_or(""), 100)
        ),
        (None, Some(error), _, _) => format!(" → {}", clip(error, 100)),
        (None, None, Some(0), Some(tag)) if st.kind == "insert" => {
            format!(" → {tag} (nothing inserted)")
        }
        (None, None, Some(1), _) => " → 1 row".to_string(),
        (None, None, Some(n), _) => format!(" → {n} rows"),
        (None, None, None, _) => String::new(),
    };
    let tx = st
        .tx
        .map(|t| format!(" [conn {} tx {t}]", st.conn))
        .unwrap_or_default();
    let fault = match st.fault.as_deref() {
        Some("latency") => format!(
            ", held {:.0} ms by a slow_database fault",
            st.delay_us as f64 / 1e3
        ),
        Some(f) => format!(", {f} injected by a database fault"),
        None => String::new(),
    };
    format!("{what}{outcome}{tx}{fault}")
}

/// The lines of one operation at one place that a timeline does not show, past
/// [`MAX_LOG_LINES_PER_OP`].
struct Folded {
    /// Where they come from.
    kind: EntryKind,
    /// `line(s)`, `statement(s)`.
    what: &'static str,
    /// The replica.
    place: String,
    /// ` for api op 3`, or nothing.
    who: String,
    /// Where they are.
    source: String,
}

/// Counts a timeline's lines per operation and place: the first [`MAX_LOG_LINES_PER_OP`] of
/// each are shown, the rest counted in one line.
struct Fold<K> {
    groups: HashMap<K, (usize, i64, Option<Folded>)>,
}

impl<K> Default for Fold<K> {
    fn default() -> Self {
        Fold {
            groups: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Fold<K> {
    /// Whether a line of `group` at `at` is shown; `folded` describes the rest, asked for once
    /// when the first one is not.
    fn show(&mut self, group: K, at: i64, folded: impl FnOnce() -> Folded) -> bool {
        let (n, last, rest) = self.groups.entry(group).or_insert((0, at, None));
        *n += 1;
        *last = at;
        if *n == MAX_LOG_LINES_PER_OP + 1 {
            *rest = Some(folded());
        }
        *n <= MAX_LOG_LINES_PER_OP
    }

    /// One counting line per group that had more than it showed, at the time of its last.
    fn rest(self) -> impl Iterator<Item = (i64, EntryKind, String)> {
        self.groups.into_values().filter_map(|(n, last, rest)| {
            let Folded {
                kind,
                what,
                place,
                who,
                source,
            } = rest?;
            Some((
                last,
                kind,
                format!(
                    "… {} more {what} from {place}{who} ({source})",
                    n - MAX_LOG_LINES_PER_OP
                ),
            ))
        })
    }
}

/// At most `max` characters of `text`, on one line.
fn clip(text: &str, max: usize) -> String {
    reprod_history::bounded(&text.split_whitespace().collect::<Vec<_>>().join(" "), max)
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
    /// Arrivals (overlap groups): the operations of one group count once.
    arrivals: BTreeSet<i64>,
    intervals: Vec<(i64, i64)>,
    retried: bool,
    instances: BTreeSet<String>,
    versions: BTreeSet<String>,
    queue_delay: bool,
    max_dependency_delay_us: i64,
    fault: bool,
    /// Largest injected statement delay.
    max_statement_delay_us: i64,
    statement_fault: bool,
    /// Largest time one operation's statements spent at the database (through the proxy).
    max_db_wait_us: i64,
    /// Per `dimensions` field, what the key's log lines said.
    logged: Vec<Logged>,
}

/// What one key's log lines said of one field.
#[derive(Clone, Default)]
struct Logged {
    /// The largest number.
    max: Option<f64>,
    /// Every other value, as text.
    texts: BTreeSet<String>,
}

/// Distinct values of a text field tried as the comparison's split.
const MAX_FIELD_VALUES: usize = 20;
/// Clean keys a stratum needs before a dimension is said to come with another: with fewer,
/// "no further separation" would only mean "too few keys to tell".
const MIN_STRATUM_CLEAN: usize = 5;

/// The median of the positive values (`None` when there are none).
fn median_positive(values: impl Iterator<Item = i64>) -> Option<i64> {
    let mut v: Vec<i64> = values.filter(|d| *d > 0).collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

type Pred = Box<dyn Fn(&KeyFacts) -> bool>;

/// One candidate dimension: its name, the condition it measures, its phrase, its test.
struct Candidate {
    name: String,
    condition: Option<&'static str>,
    phrase: String,
    pred: Pred,
}

impl Candidate {
    fn new(
        name: &str,
        condition: Option<&'static str>,
        phrase: impl Into<String>,
        pred: impl Fn(&KeyFacts) -> bool + 'static,
    ) -> Candidate {
        Candidate {
            name: name.to_string(),
            condition,
            phrase: phrase.into(),
            pred: Box::new(pred),
        }
    }
}

/// The comparison: (violating keys, clean keys, keys left out as unrelated, dimensions).
fn compare(reader: &Reader) -> Result<(usize, usize, usize, Vec<Dimension>), HistoryError> {
    let active: BTreeSet<String> = reader.run()?.conditions.into_iter().collect();
    let mut facts: HashMap<String, KeyFacts> = HashMap::new();
    let mut trace_key: HashMap<String, String> = HashMap::new();
    reader.for_each_op(|op| {
        let f = facts.entry(op.key.to_string()).or_default();
        f.callers.insert(op.caller.to_string());
        f.ops += 1;
        f.arrivals.insert(op.group_id);
        f.intervals.push((op.started_us, op.done_us));
        f.retried |= op.attempts > 1;
        f.queue_delay |= op.queue_delay_us > 0;
        trace_key.insert(op.trace_id.to_string(), op.key.to_string());
    })?;
    reader.for_each_attempt_replica(|key, instance, version| {
        if let Some(f) = facts.get_mut(key) {
            f.instances.insert(instance.to_string());
            f.versions.insert(version.to_string());
        }
    })?;
    // A record names its key, or carries the trace of one of the key's operations.
    let owner = |facts: &HashMap<String, KeyFacts>, key: Option<&str>, trace: Option<&str>| {
        key.filter(|k| facts.contains_key(*k))
            .map(str::to_string)
            .or_else(|| trace.and_then(|t| trace_key.get(t).cloned()))
    };
    reader.for_each_dependency_call(|key, trace, delay, fault| {
        if let Some(k) = owner(&facts, key, trace)
            && let Some(f) = facts.get_mut(&k)
        {
            f.max_dependency_delay_us = f.max_dependency_delay_us.max(delay);
            f.fault |= fault.is_some_and(|x| x != "caller_gone");
        }
    })?;
    let mut waits: HashMap<String, i64> = HashMap::new();
    reader.for_each_statement(|st| {
        if let Some(k) = owner(&facts, st.key, st.trace_id)
            && let Some(f) = facts.get_mut(&k)
        {
            f.max_statement_delay_us = f.max_statement_delay_us.max(st.delay_us);
            f.statement_fault |= st.fault.is_some();
        }
        // The wait of an operation: the statements its trace carried.
        if let Some(t) = st.trace_id.filter(|t| trace_key.contains_key(*t)) {
            *waits.entry(t.to_string()).or_default() += (st.done_us - st.received_us).max(0);
        }
    })?;
    for (trace, wait) in waits {
        if let Some(f) = trace_key.get(&trace).and_then(|k| facts.get_mut(k)) {
            f.max_db_wait_us = f.max_db_wait_us.max(wait);
        }
    }
    let fields = reader.dimensions()?;
    for (i, name) in fields.iter().enumerate() {
        reader.for_each_log_field(name, |key, trace, value| {
            if let Some(k) = owner(&facts, key, trace)
                && let Some(f) = facts.get_mut(&k)
            {
                if f.logged.len() <= i {
                    f.logged.resize(fields.len(), Logged::default());
                }
                let logged = &mut f.logged[i];
                match value {
                    FieldValue::Number(n) => logged.max = Some(logged.max.map_or(n, |m| m.max(n))),
                    FieldValue::Text(t) => {
                        logged.texts.insert(t);
                    }
                }
            }
        })?;
    }
    let violating: BTreeSet<String> = reader
        .violating_keys()?
        .into_iter()
        .filter(|k| facts.contains_key(k))
        .collect();
    // Only the key space of the violation: the callers that touched a violating key, and the
    // callers that send the same operation on other keys (the control a user sets up). An
    // unrelated caller's keys differ in everything that caller does, which says nothing about
    // the violation.
    let mut related: BTreeSet<String> = violating
        .iter()
        .flat_map(|k| facts[k].callers.iter().cloned())
        .collect();
    let operations = reader.caller_operations()?;
    let related_ops: BTreeSet<&String> = related.iter().filter_map(|c| operations.get(c)).collect();
    related.extend(
        operations
            .iter()
            .filter(|(_, op)| related_ops.contains(op))
            .map(|(c, _)| c.clone()),
    );
    let before = facts.len();
    facts.retain(|_, f| f.callers.iter().any(|c| related.contains(c)));
    let unrelated = before - facts.len();
    let clean: Vec<&String> = facts.keys().filter(|k| !violating.contains(*k)).collect();
    if violating.is_empty() || clean.is_empty() {
        return Ok((violating.len(), clean.len(), unrelated, Vec::new()));
    }
    // Hot = in the top tenth of keys by arrivals, so a double-submitting caller's key is no
    // hotter than a single submitter's.
    let mut counts: Vec<usize> = facts.values().map(|f| f.arrivals.len()).collect();
    counts.sort_unstable();
    let hot_threshold = counts[(counts.len() * 9) / 10].max(2);
    let caller_names: BTreeSet<String> = facts
        .values()
        .flat_map(|f| f.callers.iter().cloned())
        .collect();

    let mut dims: Vec<Candidate> = vec![
        Candidate::new(
            "overlap",
            Some("overlap"),
            "had 2+ overlapping operations",
            |f| max_concurrency(&f.intervals) >= 2,
        ),
        Candidate::new("retries", Some("retries"), "had a retried operation", |f| {
            f.retried
        }),
        Candidate::new(
            "instances",
            Some("instances"),
            "were served by 2+ replicas",
            |f| f.instances.len() >= 2,
        ),
        Candidate::new(
            "mixed_versions",
            Some("mixed_versions"),
            "were served by 2+ versions",
            |f| f.versions.len() >= 2,
        ),
        Candidate::new(
            "queue_delay",
            Some("queue_delay"),
            "had a queue-delayed operation",
            |f| f.queue_delay,
        ),
        Candidate::new(
            "dependency_faults",
            Some("dependency_faults"),
            "saw an injected dependency fault",
            |f| f.fault,
        ),
        Candidate::new(
            "hot_keys",
            Some("hot_keys"),
            format!("were hot ({hot_threshold}+ arrivals)"),
            move |f| f.arrivals.len() >= hot_threshold,
        ),
    ];
    if let Some(t) = median_positive(facts.values().map(|f| f.max_dependency_delay_us)) {
        dims.push(Candidate::new(
            "slow_dependency",
            Some("slow_dependency"),
            format!("saw a dependency delay of {}+ ms", ms(t)),
            move |f| f.max_dependency_delay_us >= t,
        ));
    }
    if let Some(t) = median_positive(facts.values().map(|f| f.max_statement_delay_us)) {
        dims.push(Candidate::new(
            "slow_database",
            Some("slow_database"),
            format!("saw a statement delay of {}+ ms", ms(t)),
            move |f| f.max_statement_delay_us >= t,
        ));
    }
    if facts.values().any(|f| f.statement_fault) {
        dims.push(Candidate::new(
            "database_faults",
            Some("database_faults"),
            "saw an injected statement fault",
            |f| f.statement_fault,
        ));
    }
    if let Some(t) = median_positive(facts.values().map(|f| f.max_db_wait_us)) {
        dims.push(Candidate::new(
            "db_wait",
            None,
            format!(
                "had an operation whose statements took {}+ ms at the database",
                ms(t)
            ),
            move |f| f.max_db_wait_us >= t,
        ));
    }
    if caller_names.len() >= 2 {
        dims.push(Candidate::new(
            "caller_mix",
            None,
            format!(
                "were touched by 2+ callers ({})",
                caller_names.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            |f| f.callers.len() >= 2,
        ));
    }
    for (i, name) in fields.iter().enumerate() {
        let logged = move |f: &KeyFacts| f.logged.get(i).cloned().unwrap_or_default();
        let all: Vec<Logged> = facts.values().map(logged).collect();
        let texts: BTreeMap<&String, usize> =
            all.iter()
                .flat_map(|l| l.texts.iter())
                .fold(BTreeMap::new(), |mut m, t| {
                    *m.entry(t).or_insert(0) += 1;
                    m
                });
        if texts.is_empty() {
            let mut maxima: Vec<f64> = all.iter().filter_map(|l| l.max).collect();
            if maxima.is_empty() {
                dims.push(Candidate::new(
                    name,
                    None,
                    format!("logged {name} (no log line of a touched key carried it)"),
                    |_| false,
                ));
                continue;
            }
            maxima.sort_by(f64::total_cmp);
            let positive: Vec<f64> = maxima.iter().copied().filter(|m| *m > 0.0).collect();
            let threshold = positive
                .get(positive.len() / 2)
                .copied()
                .unwrap_or(maxima[maxima.len() / 2]);
            dims.push(Candidate::new(
                name,
                None,
                format!("logged {name} of {}+", number(threshold)),
                move |f| logged(f).max.is_some_and(|m| m >= threshold),
            ));
        } else {
            // A text field: split on the value that tells the groups apart best.
            let mut values: Vec<(&String, usize)> = texts.into_iter().collect();
            values.sort_by_key(|v| std::cmp::Reverse(v.1));
            values.truncate(MAX_FIELD_VALUES);
            let share = |keys: &mut dyn Iterator<Item = &KeyFacts>, value: &str, n: usize| {
                keys.filter(|f| logged(f).texts.contains(value)).count() as f64 / n.max(1) as f64
            };
            let best = values
                .iter()
                .map(|(value, _)| {
                    let v = share(
                        &mut violating.iter().map(|k| &facts[k]),
                        value,
                        violating.len(),
                    );
                    let c = share(&mut clean.iter().map(|k| &facts[*k]), value, clean.len());
                    ((v - c).abs(), (*value).clone())
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, value)| value)
                .unwrap_or_default();
            dims.push(Candidate::new(
                name,
                None,
                format!("logged {name}={best}"),
                move |f| logged(f).texts.contains(&best),
            ));
        }
    }
    // Counts of (violating, clean) keys among `keys` for which `pred` holds.
    let tally = |pred: &Pred, within: &dyn Fn(&KeyFacts) -> bool| {
        let count = |keys: &mut dyn Iterator<Item = &KeyFacts>| {
            let (mut k, mut n) = (0u64, 0u64);
            for f in keys.filter(|f| within(f)) {
                n += 1;
                k += u64::from(pred(f));
            }
            (k, n)
        };
        (
            count(&mut violating.iter().map(|k| &facts[k])),
            count(&mut clean.iter().map(|k| &facts[*k])),
        )
    };
    let mut out: Vec<(Dimension, Pred)> = Vec::new();
    for c in dims {
        let ((kv, nv), (kc, nc)) = tally(&c.pred, &|_| true);
        let (v, cl) = (kv as f64 / nv as f64, kc as f64 / nc as f64);
        let ci = reprod_report::newcombe(kv, nv, kc, nc);
        let status = match c.condition {
            Some(cond) if !active.contains(cond) => DimensionStatus::Inactive,
            _ if ci.0 <= 0.0 && ci.1 >= 0.0 => DimensionStatus::DoesNotSeparate,
            _ => DimensionStatus::Separates,
        };
        out.push((
            Dimension {
                sentence: format!(
                    "{:.0}% of violating keys {}, {:.0}% of clean keys did",
                    v * 100.0,
                    c.phrase,
                    cl * 100.0
                ),
                name: c.name,
                condition: c.condition.map(str::to_string),
                violating_share: v,
                clean_share: cl,
                separation: (v - cl).abs(),
                difference_ci: ci,
                status,
                goes_with: None,
                within: None,
            },
            c.pred,
        ));
    }
    let rank = |d: &Dimension| match d.status {
        DimensionStatus::Separates | DimensionStatus::GoesWith => 0,
        DimensionStatus::DoesNotSeparate => 1,
        DimensionStatus::Inactive => 2,
    };
    out.sort_by(|(a, _), (b, _)| {
        rank(a)
            .cmp(&rank(b))
            .then(b.separation.total_cmp(&a.separation))
    });
    // Confounders: a dimension that separates no further among the keys that had the best
    // separator comes with it (two replicas serve most overlapping requests).
    if let Some(((top, top_pred), rest)) = out
        .split_first_mut()
        .filter(|((d, _), _)| d.status == DimensionStatus::Separates)
    {
        for (d, pred) in rest
            .iter_mut()
            .filter(|(d, _)| d.status == DimensionStatus::Separates)
        {
            let ((kv, nv), (kc, nc)) = tally(pred, &|f| top_pred(f));
            if nv == 0 || (nc as usize) < MIN_STRATUM_CLEAN {
                continue;
            }
            let (lo, hi) = reprod_report::newcombe(kv, nv, kc, nc);
            if lo <= 0.0 && hi >= 0.0 {
                d.status = DimensionStatus::GoesWith;
                d.goes_with = Some(top.name.clone());
                d.within = Some(format!(
                    "among keys that also had {}, {:.0}% of {nv} violating and {:.0}% of {nc} clean keys did",
                    top.name,
                    100.0 * kv as f64 / nv as f64,
                    100.0 * kc as f64 / nc as f64
                ));
            }
        }
    }
    Ok((
        violating.len(),
        clean.len(),
        unrelated,
        out.into_iter().map(|(d, _)| d).collect(),
    ))
}

/// µs as milliseconds to a tenth: `21.4`, `3`.
fn ms(us: i64) -> String {
    number((us as f64 / 100.0).round() / 10.0)
}

/// A threshold as a person writes it: `12`, `0.5`, `37.4`.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        let text = format!("{n:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The most operations on one key in flight at once.
/// What a run's load exercised: per place (the requests, each dependency, the database), how
/// many keys had two or more of their requests, calls or statements in flight at once, and for
/// how long. A pass means something only where this is not zero.
pub fn exercised(history: &Path) -> Result<Vec<reprod_report::Exercised>, HistoryError> {
    let reader = Reader::open(history)?;
    // (place, key) → intervals; place 0 is the requests.
    let mut places: Vec<String> = vec!["requests".to_string()];
    let mut intervals: HashMap<(usize, String), Vec<(i64, i64)>> = HashMap::new();
    let mut trace_key: HashMap<String, String> = HashMap::new();
    reader.for_each_op(|op| {
        intervals
            .entry((0, op.key.to_string()))
            .or_default()
            .push((op.started_us, op.done_us));
        trace_key.insert(op.trace_id.to_string(), op.key.to_string());
    })?;
    let key_of = |key: Option<&str>, trace: Option<&str>| {
        key.map(str::to_string)
            .or_else(|| trace.and_then(|t| trace_key.get(t).cloned()))
    };
    let place = |name: &str, places: &mut Vec<String>| match places.iter().position(|p| p == name) {
        Some(i) => i,
        None => {
            places.push(name.to_string());
            places.len() - 1
        }
    };
    let mut calls = Vec::new();
    reader.for_each_call_interval(|dependency, key, trace, from, to| {
        if let Some(k) = key_of(key, trace) {
            calls.push((place(dependency, &mut places), k, from, to));
        }
    })?;
    reader.for_each_statement(|st| {
        if let Some(k) = key_of(st.key, st.trace_id) {
            calls.push((
                place("database", &mut places),
                k,
                st.received_us,
                st.done_us,
            ));
        }
    })?;
    for (p, k, from, to) in calls {
        intervals.entry((p, k)).or_default().push((from, to));
    }
    let mut out: Vec<(u64, Vec<i64>)> = vec![(0, Vec::new()); places.len()];
    for ((p, _), spans) in &intervals {
        out[*p].0 += 1;
        let together = together_us(spans);
        if together > 0 {
            out[*p].1.push(together);
        }
    }
    Ok(places
        .into_iter()
        .zip(out)
        .map(|(place, (keys, together))| reprod_report::Exercised {
            place,
            keys,
            overlapped_keys: together.len() as u64,
            together_us: reprod_report::Spread::of(together),
        })
        .collect())
}

/// How long two or more of `intervals` were under way at once, µs.
fn together_us(intervals: &[(i64, i64)]) -> i64 {
    if intervals.len() < 2 {
        return 0;
    }
    let mut edges: Vec<(i64, i32)> = Vec::with_capacity(intervals.len() * 2);
    for (start, end) in intervals {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    edges.sort_unstable();
    let (mut now, mut since, mut total) = (0i32, 0i64, 0i64);
    for (at, d) in edges {
        if now >= 2 {
            total += at - since;
        }
        now += d;
        since = at;
    }
    total
}

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
    use super::{EntryKind, Fold, Folded, MAX_LOG_LINES_PER_OP, max_concurrency, together_us};

    #[test]
    fn together_counts_only_time_with_two_under_way() {
        assert_eq!(together_us(&[(0, 10)]), 0);
        assert_eq!(
            together_us(&[(0, 10), (10, 20)]),
            0,
            "touching is not overlapping"
        );
        assert_eq!(together_us(&[(0, 10), (4, 20)]), 6);
        // Three at once counts once; gaps with one under way do not count.
        assert_eq!(
            together_us(&[(0, 10), (2, 8), (5, 30), (40, 50), (45, 60)]),
            5 + 3 + 5
        );
    }

    #[test]
    fn folding_shows_the_first_lines_of_a_group_and_counts_the_rest() {
        let mut fold = Fold::default();
        let folded = || Folded {
            kind: EntryKind::Log,
            what: "line(s)",
            place: "api/0".to_string(),
            who: " for c op 1".to_string(),
            source: "services/api-0.log".to_string(),
        };
        let shown: Vec<bool> = (0..MAX_LOG_LINES_PER_OP as i64 + 2)
            .map(|t| fold.show("op 1", t, folded))
            .collect();
        assert!(shown[..MAX_LOG_LINES_PER_OP].iter().all(|s| *s));
        assert!(!shown[MAX_LOG_LINES_PER_OP] && !shown[MAX_LOG_LINES_PER_OP + 1]);
        assert!(fold.show("op 2", 0, folded), "each group counts on its own");
        let rest: Vec<_> = fold.rest().collect();
        assert_eq!(
            rest,
            [(
                MAX_LOG_LINES_PER_OP as i64 + 1,
                EntryKind::Log,
                "… 2 more line(s) from api/0 for c op 1 (services/api-0.log)".to_string()
            )]
        );
    }

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

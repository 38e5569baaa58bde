//! Invariants: what must hold after the run.
//!
//! SQL invariants run against the service's real database, read-only (`query_only` on SQLite, a
//! `READ ONLY` transaction on PostgreSQL), and every returned row is a violation naming a key.
//! Sink invariants count the deliveries the history recorded per extracted key. A check that
//! cannot run is reported with its reason, never silently passed.

#![deny(missing_docs)]

pub mod explain;
pub mod scratch;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use reprod_history::ViolationRecord;
use reprod_report::{InvariantResult, ThresholdResult};
use reprod_scenario::{Invariant, InvariantKind, RetryOn, Scenario, SinkRule};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Column, ConnectOptions, Connection, Row};

/// Examples kept per invariant in the summary.
const EXAMPLES: usize = 5;
/// Deadline of one invariant query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of checking every invariant.
#[derive(Debug, Default)]
pub struct Checked {
    /// One per invariant, scenario order.
    pub results: Vec<InvariantResult>,
    /// Every violating key, for the history.
    pub violations: Vec<ViolationRecord>,
    /// What the reader should know about how the checks ran (once each): privileges that could
    /// not be dropped, for example.
    pub notes: BTreeSet<String>,
}

/// A violating row or key.
#[derive(Debug)]
struct Violation {
    key: String,
    detail: String,
    /// The row's cells as (column, value), when it came from a query.
    cells: Vec<(String, String)>,
}

/// When each (invariant, key) violation was first seen during the run, µs since its start.
pub type FirstSeen = HashMap<(String, String), i64>;

/// Runs the SQL invariants that ask for it (`every`) while the run goes, until `stop` turns
/// true; returns when each violating key was first seen, and tells `found` of the first
/// (invariant, when). A check that fails mid-run (a busy database) is skipped: the check after
/// the run is the one that decides.
pub async fn watch(
    scenario: &Scenario,
    database_url: Option<&str>,
    now_us: impl Fn() -> i64,
    mut stop: tokio::sync::watch::Receiver<bool>,
    found: tokio::sync::watch::Sender<Option<(String, i64)>>,
) -> FirstSeen {
    let mut first = FirstSeen::new();
    let watched: Vec<(&Invariant, &str, &str, Duration)> = scenario
        .invariants
        .iter()
        .filter_map(|i| match &i.kind {
            InvariantKind::Sql {
                query,
                key_column,
                every: Some(every),
            } => Some((i, query.as_str(), key_column.as_str(), *every)),
            _ => None,
        })
        .collect();
    let (Some(url), Some(period)) = (database_url, watched.iter().map(|w| w.3).min()) else {
        let _ = stop.wait_for(|s| *s).await;
        return first;
    };
    let mut next_due: Vec<Duration> = watched.iter().map(|w| w.3).collect();
    let mut elapsed = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return first,
        }
        elapsed += period;
        for (i, (invariant, query, key_column, every)) in watched.iter().enumerate() {
            if elapsed < next_due[i] {
                continue;
            }
            next_due[i] = elapsed + *every;
            if let Ok((violations, _)) = sql(url, query, key_column).await {
                let at = now_us();
                if !violations.is_empty() && found.borrow().is_none() {
                    found.send_replace(Some((invariant.name.clone(), at)));
                }
                for v in violations {
                    first.entry((invariant.name.clone(), v.key)).or_insert(at);
                }
            }
        }
    }
}

/// The SQL invariants already violated before the load started, with how many keys each: state
/// an earlier run (or the database's owner) left, which this run's verdict must not claim. Each
/// query is bounded by `limit`; one that fails or runs over is left out (the final check
/// reports it).
pub async fn violated_before_load(
    scenario: &Scenario,
    database_url: Option<&str>,
    limit: Duration,
) -> Vec<(String, usize)> {
    let Some(url) = database_url else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for invariant in &scenario.invariants {
        if let InvariantKind::Sql {
            query, key_column, ..
        } = &invariant.kind
            && let Ok(Ok((violations, _))) =
                tokio::time::timeout(limit, sql(url, query, key_column)).await
            && !violations.is_empty()
        {
            out.push((invariant.name.clone(), violations.len()));
        }
    }
    out
}

/// Checks every invariant of `scenario`. `database_url` is the rendered database URL (if the
/// scenario has one); `history` is the finished history file; `found_us` stamps the records.
pub async fn check_all(
    scenario: &Scenario,
    database_url: Option<&str>,
    history: &Path,
    ok_keys: &BTreeSet<String>,
    first_seen: &FirstSeen,
    found_us: i64,
    load_start_us: i64,
) -> Checked {
    let mut checked = Checked::default();
    for invariant in &scenario.invariants {
        let outcome = match &invariant.kind {
            InvariantKind::Sql {
                query, key_column, ..
            } => match database_url {
                Some(url) => sql(url, query, key_column).await.map(|(rows, note)| {
                    checked.notes.extend(note);
                    rows
                }),
                None => Err("the scenario has no [database]".to_string()),
            },
            InvariantKind::Sink {
                sink,
                rule,
                same_idempotency_key_once,
            } => {
                let name = &scenario.sinks[*sink].name;
                sink_rule(history, name, *rule, *same_idempotency_key_once, ok_keys)
            }
            InvariantKind::Counter {
                query,
                key_column,
                caller,
            } => match database_url {
                Some(url) => counter(url, query, key_column, history, caller.as_deref()).await,
                None => Err("the scenario has no [database]".to_string()),
            },
            InvariantKind::ResponsesAgree { pointer, caller } => {
                responses_agree(history, pointer, caller.as_deref())
            }
            InvariantKind::NoStatus { statuses, caller } => {
                no_status(history, statuses, caller.as_deref())
            }
        };
        record(
            &mut checked,
            invariant,
            outcome,
            first_seen,
            (found_us, load_start_us),
        );
    }
    checked
}

fn record(
    checked: &mut Checked,
    invariant: &Invariant,
    outcome: Result<Vec<Violation>, String>,
    first_seen: &FirstSeen,
    (found_us, load_start_us): (i64, i64),
) {
    let seen = |key: &str| {
        first_seen
            .get(&(invariant.name.clone(), key.to_string()))
            .copied()
    };
    match outcome {
        Ok(violations) => {
            let first_violation_s = violations
                .iter()
                .filter_map(|v| seen(&v.key))
                .min()
                .map(|us| (us - load_start_us) as f64 / 1e6);
            checked.results.push(InvariantResult {
                name: invariant.name.clone(),
                held: violations.is_empty(),
                violations: violations.len() as u64,
                examples: violations
                    .iter()
                    .take(EXAMPLES)
                    .map(|v| format!("{}: {}", v.key, v.detail))
                    .collect(),
                error: None,
                first_violation_s,
                partial: false,
            });
            checked
                .violations
                .extend(violations.into_iter().map(|v| ViolationRecord {
                    invariant: invariant.name.clone(),
                    found_us: seen(&v.key).unwrap_or(found_us),
                    seen_mid_run: seen(&v.key).is_some(),
                    key: v.key,
                    detail: v.detail,
                }));
        }
        Err(error) => checked.results.push(InvariantResult {
            name: invariant.name.clone(),
            held: false,
            violations: 0,
            examples: Vec::new(),
            error: Some(error),
            first_violation_s: None,
            partial: false,
        }),
    }
}

/// What a run's thresholds are judged on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadFigures {
    /// p99 latency from intended start, ms.
    pub p99_ms: f64,
    /// Operations that ended.
    pub ops: u64,
    /// ... ok.
    pub ok: u64,
    /// ... failed or ambiguous.
    pub not_ok: u64,
    /// Seconds from the first intended start to the load's end.
    pub duration_s: f64,
}

/// Judges a completed run's figures against the scenario's thresholds.
pub fn thresholds(t: &reprod_scenario::Thresholds, load: &LoadFigures) -> Vec<ThresholdResult> {
    let mut out = Vec::new();
    if let Some(p99) = t.p99 {
        let limit = p99.as_secs_f64() * 1e3;
        out.push(ThresholdResult {
            name: "p99_ms".into(),
            limit,
            actual: load.p99_ms,
            held: load.p99_ms <= limit,
        });
    }
    if let Some(limit) = t.error_rate {
        let actual = if load.ops == 0 {
            0.0
        } else {
            load.not_ok as f64 / load.ops as f64
        };
        out.push(ThresholdResult {
            name: "error_rate".into(),
            limit,
            actual,
            held: actual <= limit,
        });
    }
    if let Some(limit) = t.min_goodput_rps {
        let actual = load.ok as f64 / load.duration_s.max(1e-6);
        out.push(ThresholdResult {
            name: "min_goodput_rps".into(),
            limit,
            actual,
            held: actual >= limit,
        });
    }
    out
}

/// Runs `query` read-only; every row is a violation keyed by `key_column`. Returns the rows
/// and, on PostgreSQL, a note when privileges could not be dropped.
///
/// Layers, each of which alone stops what it can: the query must parse as one read statement
/// (`reprod_scenario::sql_guard`, checked when the scenario loaded and again here); SQLite opens
/// the file read-only with `query_only`; PostgreSQL runs it in a `READ ONLY` transaction as the
/// least privileged role the server offers (`pg_read_all_data`, when the user may take it) with
/// a server-side `statement_timeout`, and a query still running at reprod's deadline is
/// cancelled on the server, not left behind.
async fn sql(
    url: &str,
    query: &str,
    key_column: &str,
) -> Result<(Vec<Violation>, Option<String>), String> {
    reprod_scenario::sql_guard::check_read_only(
        query,
        reprod_scenario::sql_guard::Backend::of_url(url),
    )?;
    if url.starts_with("sqlite:") {
        let run = async {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| format!("bad database URL: {e}"))?
                .read_only(true)
                .create_if_missing(false);
            let mut conn: SqliteConnection = options
                .connect()
                .await
                .map_err(|e| format!("cannot open the database: {e}"))?;
            sqlx::query("PRAGMA query_only = ON")
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let rows = sqlx::query(query)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| format!("the query failed: {e}"))?;
            let _ = conn.close().await;
            rows.iter()
                .map(|r| violation(cells(r), key_column))
                .collect::<Result<Vec<_>, _>>()
        };
        return match tokio::time::timeout(QUERY_TIMEOUT, run).await {
            Ok(result) => result.map(|rows| (rows, None)),
            Err(_) => Err(format!("the query did not finish within {QUERY_TIMEOUT:?}")),
        };
    }
    postgres_sql(url, query, key_column).await
}

/// [`sql`] on PostgreSQL.
async fn postgres_sql(
    url: &str,
    query: &str,
    key_column: &str,
) -> Result<(Vec<Violation>, Option<String>), String> {
    let options = PgConnectOptions::from_str(url).map_err(|e| format!("bad database URL: {e}"))?;
    let mut conn: PgConnection = tokio::time::timeout(QUERY_TIMEOUT, options.connect())
        .await
        .map_err(|_| format!("cannot reach the database within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot reach the database: {e}"))?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let timeout_ms = QUERY_TIMEOUT.as_millis();
    let run = async {
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        for setup in [
            "SET TRANSACTION READ ONLY".to_string(),
            format!("SET LOCAL statement_timeout = {timeout_ms}"),
            "SAVEPOINT reprod_role".to_string(),
        ] {
            sqlx::query(&setup)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        let note = match sqlx::query("SET LOCAL ROLE pg_read_all_data")
            .execute(&mut *tx)
            .await
        {
            Ok(_) => None,
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT reprod_role")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                Some(format!(
                    "invariant queries ran with the connecting user's own privileges (in a read-only transaction): it may not take the read-only role pg_read_all_data ({e}); grant it with GRANT pg_read_all_data TO <user> for least privilege"
                ))
            }
        };
        let rows = sqlx::query(query)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| format!("the query failed: {e}"))?;
        let _ = tx.rollback().await;
        rows.iter()
            .map(|r| violation(cells(r), key_column))
            .collect::<Result<Vec<_>, _>>()
            .map(|rows| (rows, note))
    };
    // A little past the server's own timeout: the server normally ends the query itself.
    let deadline = QUERY_TIMEOUT + Duration::from_secs(2);
    match tokio::time::timeout(deadline, run).await {
        Ok(result) => {
            let _ = conn.close().await;
            result
        }
        Err(_) => {
            cancel(url, pid).await;
            Err(format!(
                "the query did not finish within {QUERY_TIMEOUT:?}; it was cancelled on the server"
            ))
        }
    }
}

/// Cancels backend `pid`'s running query, from a connection of its own.
async fn cancel(url: &str, pid: i32) {
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return;
    };
    if let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(5), options.connect()).await
    {
        let _ = sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

/// A returned row as a violation, keyed by its `key_column`.
fn violation(cells: Vec<(String, String)>, key_column: &str) -> Result<Violation, String> {
    let key = cells
        .iter()
        .find(|(name, _)| name == key_column)
        .map(|(_, v)| v.clone());
    let key = key.ok_or_else(|| {
        let names: Vec<&str> = cells.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "the query returns no column {key_column:?} (key_column); it returns: {}",
            names.join(", ")
        )
    })?;
    let detail = cells
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Violation { key, detail, cells })
}

/// Every column of a row as (name, value as text), on either backend.
fn cells<R>(row: &R) -> Vec<(String, String)>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |i: usize| -> String {
        let shown = |v: Option<String>| v.unwrap_or_else(|| "NULL".to_string());
        if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            return shown(v);
        }
        if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            return shown(v.map(|v| v.to_string()));
        }
        if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            return shown(v.map(|v| v.to_string()));
        }
        if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
            return shown(v.map(|v| v.to_string()));
        }
        "?".to_string()
    };
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| (column.name().to_string(), text(i)))
        .collect()
}

/// Counts deliveries per key. With `same_idempotency_key_once`, deliveries that carry the same
/// idempotency key count once (a provider deduplicates them); deliveries without one always
/// count. `exactly_once` also requires a delivery for every key an operation completed ok for.
fn sink_rule(
    history: &Path,
    sink: &str,
    rule: SinkRule,
    same_idempotency_key_once: bool,
    ok_keys: &BTreeSet<String>,
) -> Result<Vec<Violation>, String> {
    let deliveries =
        reprod_history::read::sink_deliveries(history, sink).map_err(|e| e.to_string())?;
    let mut per_key: BTreeMap<String, (u64, BTreeSet<String>, u64)> = BTreeMap::new();
    for d in deliveries {
        let Some(key) = d.key else { continue };
        let entry = per_key.entry(key).or_default();
        entry.2 += 1;
        match (&d.idempotency_key, same_idempotency_key_once) {
            (Some(k), true) => {
                entry.1.insert(k.clone());
            }
            _ => entry.0 += 1,
        }
    }
    let mut violations = Vec::new();
    for (key, (unkeyed, keys, raw)) in &per_key {
        let effective = unkeyed + keys.len() as u64;
        if effective > 1 && rule != SinkRule::AtLeastOnce {
            let detail = if same_idempotency_key_once {
                format!(
                    "{effective} distinct deliveries ({raw} received, {} idempotency key(s))",
                    keys.len()
                )
            } else {
                format!("{raw} deliveries")
            };
            violations.push(Violation {
                cells: Vec::new(),
                key: key.clone(),
                detail,
            });
        }
    }
    if rule != SinkRule::AtMostOnce {
        for key in ok_keys {
            if !per_key.contains_key(key) {
                violations.push(Violation {
                    cells: Vec::new(),
                    key: key.clone(),
                    detail: "no delivery for a key whose operation succeeded".to_string(),
                });
            }
        }
    }
    Ok(violations)
}

use reprod_history::query::{Answer, Reader};

/// Answered attempts of `caller`'s operations (all callers when `None`), only 2xx ones when
/// `only_success`.
fn responses(
    history: &Path,
    caller: Option<&str>,
    only_success: bool,
) -> Result<Vec<Answer>, String> {
    Reader::open(history)
        .and_then(|r| r.answers(caller, only_success))
        .map_err(|e| e.to_string())
}

/// Every successful response for one key carries the same value at `pointer`. Responses whose
/// body was cut (the history keeps 512 bytes) or is not JSON are left out, not guessed at.
fn responses_agree(
    history: &Path,
    pointer: &str,
    caller: Option<&str>,
) -> Result<Vec<Violation>, String> {
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for Answer { key, body, .. } in responses(history, caller, true)? {
        let Some(value) = body
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer(pointer).cloned())
        else {
            continue;
        };
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        values.entry(key).or_default().insert(text);
    }
    Ok(values
        .into_iter()
        .filter(|(_, seen)| seen.len() > 1)
        .map(|(key, seen)| Violation {
            cells: Vec::new(),
            key,
            detail: format!(
                "{} different values at {pointer}: {}",
                seen.len(),
                seen.into_iter().collect::<Vec<_>>().join(", ")
            ),
        })
        .collect())
}

/// No attempt answered a status in `statuses`.
fn no_status(
    history: &Path,
    statuses: &RetryOn,
    caller: Option<&str>,
) -> Result<Vec<Violation>, String> {
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for Answer {
        key, op, status, ..
    } in responses(history, caller, false)?
    {
        if statuses.status(status as u16) {
            per_key
                .entry(key)
                .or_default()
                .push(format!("op {op} answered {status}"));
        }
    }
    Ok(per_key
        .into_iter()
        .map(|(key, seen)| {
            let more = if seen.len() > 3 {
                format!(" and {} more", seen.len() - 3)
            } else {
                String::new()
            };
            Violation {
                cells: Vec::new(),
                detail: format!(
                    "{}{more}",
                    seen.into_iter().take(3).collect::<Vec<_>>().join(", ")
                ),
                key,
            }
        })
        .collect())
}

/// Jepsen's counter check, per key: the value the database holds must lie between the number of
/// operations confirmed ok and the number attempted (ok + ambiguous). Ambiguous operations only
/// widen the bound; they are never a violation by themselves.
async fn counter(
    url: &str,
    query: &str,
    key_column: &str,
    history: &Path,
    caller: Option<&str>,
) -> Result<Vec<Violation>, String> {
    let bounds = Reader::open(history)
        .and_then(|r| r.counter_bounds(caller))
        .map_err(|e| e.to_string())?;
    let mut values: BTreeMap<String, i64> = BTreeMap::new();
    for row in sql(url, query, key_column).await?.0 {
        // The value column is the one that is not the key.
        let value = row
            .cells
            .iter()
            .find(|(col, _)| col != key_column)
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .ok_or_else(|| {
                format!(
                    "the counter query must return {key_column} and one integer column; got {}",
                    row.detail
                )
            })?;
        values.insert(row.key, value);
    }
    let mut violations = Vec::new();
    for (key, (confirmed, attempted)) in &bounds {
        let value = values.get(key).copied().unwrap_or(0);
        if value < *confirmed || value > *attempted {
            violations.push(Violation {
                cells: Vec::new(),
                key: key.clone(),
                detail: format!(
                    "value {value} outside [{confirmed}, {attempted}]: {confirmed} operation(s) confirmed ok, {attempted} possibly applied"
                ),
            });
        }
    }
    for (key, value) in values {
        if !bounds.contains_key(&key) && value != 0 {
            violations.push(Violation {
                cells: Vec::new(),
                detail: format!("value {value} for a key no operation touched"),
                key,
            });
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod threshold_tests {
    use super::*;

    #[test]
    fn thresholds_are_judged_against_their_limits() {
        let t = reprod_scenario::Thresholds {
            p99: Some(Duration::from_millis(100)),
            error_rate: Some(0.01),
            min_goodput_rps: Some(50.0),
        };
        let judged = thresholds(
            &t,
            &LoadFigures {
                p99_ms: 150.0,
                ops: 1000,
                ok: 995,
                not_ok: 5,
                duration_s: 10.0,
            },
        );
        let held: Vec<(&str, bool)> = judged.iter().map(|r| (r.name.as_str(), r.held)).collect();
        assert_eq!(
            held,
            [
                ("p99_ms", false),
                ("error_rate", true),
                ("min_goodput_rps", true)
            ]
        );
        assert!((judged[2].actual - 99.5).abs() < 1e-9);
    }
}

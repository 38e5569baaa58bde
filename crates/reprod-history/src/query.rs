//! The history's queries: the only SQL over `history.sqlite` outside the writer. Every query
//! returns typed rows; the ones over tables that can hold a million rows stream them to a
//! callback instead of loading them. Explanations, checks and exports read the history here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::HistoryError;

/// A history opened for reading.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

/// The `run` table's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    /// The run id.
    pub run_id: String,
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: i64,
    /// Wall-clock start, RFC 3339.
    pub started_at: String,
    /// `completed`, `interrupted`, ..., or `running` when the run never finished.
    pub status: String,
    /// The conditions the run had on (`overlap`, `retries`, ...).
    pub conditions: Vec<String>,
}

/// An attempt of an operation on one key, for that key's timeline.
#[derive(Clone, Debug)]
pub struct KeyAttempt {
    /// Operation id.
    pub op_id: i64,
    /// Its caller.
    pub caller: String,
    /// Its trace id.
    pub trace_id: String,
    /// 1 = first try.
    pub n: i64,
    /// Replica.
    pub instance: String,
    /// Its version label.
    pub version: String,
    /// Sent.
    pub sent_us: i64,
    /// Answered or abandoned.
    pub done_us: i64,
    /// HTTP status, if any.
    pub status: Option<i64>,
    /// Transport error or timeout.
    pub error: Option<String>,
    /// Idempotency key sent.
    pub idempotency_key: Option<String>,
    /// The start of the answer's body, as recorded.
    pub response: Option<String>,
    /// How long its operation waited in the caller's queue (`delay`) before its first attempt.
    pub queue_delay_us: i64,
}

/// A dependency call about one key (by extracted key or by trace).
#[derive(Clone, Debug)]
pub struct KeyCall {
    /// Dependency.
    pub dependency: String,
    /// Trace id of its `traceparent`.
    pub trace_id: Option<String>,
    /// Arrived.
    pub received_us: i64,
    /// Injected delay.
    pub delay_us: i64,
    /// Fault injected.
    pub fault: Option<String>,
    /// Status sent back.
    pub status: Option<i64>,
    /// Ended.
    pub done_us: i64,
    /// Path and query.
    pub path: String,
}

/// A sink delivery about one key.
#[derive(Clone, Debug)]
pub struct KeyDelivery {
    /// Sink.
    pub sink: String,
    /// Trace id of its `traceparent`.
    pub trace_id: Option<String>,
    /// Arrived.
    pub received_us: i64,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// A service's log line about one key (by its own key field or by trace).
#[derive(Clone, Debug)]
pub struct KeyLog {
    /// Service.
    pub service: String,
    /// Replica index.
    pub replica: i64,
    /// Its version label.
    pub version: String,
    /// When it happened: by the service's own time when the line has one, else when reprod
    /// read it.
    pub at_us: i64,
    /// Trace id it names.
    pub trace_id: Option<String>,
    /// Level.
    pub level: Option<String>,
    /// Message.
    pub message: String,
}

/// A statement about one key (by its key rule or by trace), through the database proxy.
#[derive(Clone, Debug)]
pub struct KeyStatement {
    /// The proxy's connection number.
    pub conn: i64,
    /// The replica its connection named.
    pub replica: Option<String>,
    /// Its transaction on that connection.
    pub tx: Option<i64>,
    /// `select`, `insert`, ...
    pub kind: String,
    /// The table it names first.
    pub table: Option<String>,
    /// Normalised text.
    pub normalized: String,
    /// Trace id of its sqlcommenter comment.
    pub trace_id: Option<String>,
    /// Its key.
    pub key: Option<String>,
    /// Command tag.
    pub tag: Option<String>,
    /// Rows returned or affected.
    pub rows: Option<i64>,
    /// SQLSTATE of its error.
    pub sqlstate: Option<String>,
    /// Its error.
    pub error: Option<String>,
    /// Received.
    pub received_us: i64,
    /// Answered.
    pub done_us: i64,
    /// Injected delay.
    pub delay_us: i64,
    /// Injected fault.
    pub fault: Option<String>,
}

/// A span a service sent, in the trace of an operation on one key.
#[derive(Clone, Debug)]
pub struct KeySpan {
    /// Service.
    pub service: String,
    /// Replica, when known.
    pub replica: Option<i64>,
    /// Version label.
    pub version: String,
    /// Trace id.
    pub trace_id: String,
    /// Name.
    pub name: String,
    /// `server`, `client`, `internal`, ...
    pub kind: String,
    /// Start.
    pub start_us: i64,
    /// End.
    pub end_us: i64,
    /// `error` or `ok`, when set.
    pub status: Option<String>,
    /// What it did, from the first attribute that says: the statement of a database span
    /// (`db.query.text`, `db.statement`), the queue of a messaging span, the route or URL of
    /// an HTTP one.
    pub detail: Option<String>,
    /// Rows a database span returned (`db.response.returned_rows`), when it says.
    pub rows: Option<i64>,
}

/// One statement, as the comparison and the exercised-concurrency count read it.
#[derive(Clone, Copy, Debug)]
pub struct StatementFacts<'a> {
    /// The key its rule named.
    pub key: Option<&'a str>,
    /// The trace id of its comment.
    pub trace_id: Option<&'a str>,
    /// Received from the service.
    pub received_us: i64,
    /// Answered.
    pub done_us: i64,
    /// Injected delay.
    pub delay_us: i64,
    /// Injected fault.
    pub fault: Option<&'a str>,
}

/// How one overlap group's first attempts landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLanding {
    /// The group's caller.
    pub caller: String,
    /// First member's send to the last's, µs.
    pub spread_us: i64,
    /// How long every member was in flight at once, µs (negative: never).
    pub together_us: i64,
}

/// How one overlap group reached one place inside the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupReach {
    /// The group's caller.
    pub caller: String,
    /// A dependency's name, or `database` (statements through the proxy).
    pub place: String,
    /// The first member's first call (statement) there to the last member's, µs.
    pub spread_us: i64,
}

/// One key's duplicate key conflicts at the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConflicts {
    /// The key (`None` when no key rule or trace tied the statements to one).
    pub key: Option<String>,
    /// Statements the server refused with a unique violation (23505).
    pub unique_violations: u64,
    /// Inserts that inserted nothing (`INSERT 0 0`, an `ON CONFLICT DO NOTHING` deciding).
    pub noop_inserts: u64,
}

/// One value of a log field named in `dimensions`, for the comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// A JSON number, or text that reads as one.
    Number(f64),
    /// Anything else, as text (`true`, `miss`, `v2`).
    Text(String),
}

/// A violation recorded for one key.
#[derive(Clone, Debug)]
pub struct KeyViolation {
    /// Invariant.
    pub invariant: String,
    /// Evidence.
    pub detail: String,
    /// When first seen.
    pub found_us: i64,
    /// Seen first by a check during the run (else by the final check).
    pub mid_run: bool,
}

/// One operation, as the comparison of keys reads it.
#[derive(Clone, Copy, Debug)]
pub struct OpFacts<'a> {
    /// Its key.
    pub key: &'a str,
    /// Its caller.
    pub caller: &'a str,
    /// Its arrival: the operations of one overlap group share it.
    pub group_id: i64,
    /// First attempt sent.
    pub started_us: i64,
    /// Ended.
    pub done_us: i64,
    /// Attempts made.
    pub attempts: i64,
    /// Queue delay planned.
    pub queue_delay_us: i64,
    /// Trace id.
    pub trace_id: &'a str,
}

/// One answered attempt, as response invariants read it.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The operation's key.
    pub key: String,
    /// The operation.
    pub op: i64,
    /// Status.
    pub status: i64,
    /// Start of the body.
    pub body: Option<String>,
}

impl Reader {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Reader, HistoryError> {
        Ok(Reader {
            conn: crate::read::open(path)?,
            path: path.to_path_buf(),
        })
    }

    fn fail(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The run's own row.
    pub fn run(&self) -> Result<RunRow, HistoryError> {
        self.conn
            .query_row(
                "SELECT run_id, scenario, seed, started_at, status, conditions FROM run",
                [],
                |r| {
                    Ok(RunRow {
                        run_id: r.get(0)?,
                        scenario: r.get(1)?,
                        seed: r.get(2)?,
                        started_at: r.get(3)?,
                        status: r.get(4)?,
                        conditions: r
                            .get::<_, String>(5)?
                            .split(',')
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect(),
                    })
                },
            )
            .map_err(|e| self.fail(e))
    }

    /// Whether the history has `table` (older histories lack the newer tables).
    fn has_table(&self, table: &str) -> Result<bool, HistoryError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![table],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.fail(e))
    }

    /// A text column of `run` added after the first schema: empty in a history written before
    /// it existed.
    fn later_run_column(&self, column: &str) -> Result<String, HistoryError> {
        let text: Option<String> = self
            .conn
            .query_row(&format!("SELECT {column} FROM run"), [], |r| r.get(0))
            .optional()
            .or_else(|e| match e {
                // Written before the column existed.
                rusqlite::Error::SqliteFailure(..) => Ok(None),
                e => Err(e),
            })
            .map_err(|e| self.fail(e))?;
        Ok(text.unwrap_or_default())
    }

    /// The log fields the scenario compared (`dimensions`); none in older histories.
    pub fn dimensions(&self) -> Result<Vec<String>, HistoryError> {
        Ok(self
            .later_run_column("dimensions")?
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Each caller's operation (`POST /orders/{}`), by caller name; empty for a history written
    /// before callers were recorded.
    pub fn caller_operations(&self) -> Result<BTreeMap<String, String>, HistoryError> {
        Ok(self
            .later_run_column("callers")?
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(name, op)| (name.to_string(), op.to_string()))
            .collect())
    }

    /// The services' log lines about `key` (their key field names it, or they carry the
    /// trace of one of its operations), in time order.
    pub fn logs_of_key(&self, key: &str) -> Result<Vec<KeyLog>, HistoryError> {
        if !self.has_table("service_logs")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT service, replica, version, COALESCE(at_us, received_us) AS t,
                        trace_id, level, message
                 FROM service_logs
                 WHERE key = ?1 OR trace_id IN (SELECT trace_id FROM ops WHERE key = ?1)
                 ORDER BY t, log_id",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeyLog {
                    service: r.get(0)?,
                    replica: r.get(1)?,
                    version: r.get(2)?,
                    at_us: r.get(3)?,
                    trace_id: r.get(4)?,
                    level: r.get(5)?,
                    message: r.get(6)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// The statements about `key` (its key rule names it, or its comment carries the trace of
    /// one of its operations), in time order.
    pub fn statements_of_key(&self, key: &str) -> Result<Vec<KeyStatement>, HistoryError> {
        if !self.has_table("db_statements")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT conn, replica, tx, kind, table_name, normalized, trace_id, key, tag, rows,
                        sqlstate, error, received_us, done_us, delay_us, fault
                 FROM db_statements
                 WHERE key = ?1 OR trace_id IN (SELECT trace_id FROM ops WHERE key = ?1)
                 ORDER BY received_us, statement_id",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeyStatement {
                    conn: r.get(0)?,
                    replica: r.get(1)?,
                    tx: r.get(2)?,
                    kind: r.get(3)?,
                    table: r.get(4)?,
                    normalized: r.get(5)?,
                    trace_id: r.get(6)?,
                    key: r.get(7)?,
                    tag: r.get(8)?,
                    rows: r.get(9)?,
                    sqlstate: r.get(10)?,
                    error: r.get(11)?,
                    received_us: r.get(12)?,
                    done_us: r.get(13)?,
                    delay_us: r.get(14)?,
                    fault: r.get(15)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// The spans in the traces of `key`'s operations, in time order.
    pub fn spans_of_key(&self, key: &str) -> Result<Vec<KeySpan>, HistoryError> {
        if !self.has_table("spans")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT service, replica, version, trace_id, name, kind, start_us, end_us, status,
                        COALESCE(json_extract(attributes, '$.\"db.query.text\"'),
                                 json_extract(attributes, '$.\"db.statement\"'),
                                 json_extract(attributes, '$.\"messaging.destination.name\"'),
                                 json_extract(attributes, '$.\"http.route\"'),
                                 json_extract(attributes, '$.\"url.full\"'),
                                 json_extract(attributes, '$.\"http.url\"')),
                        json_extract(attributes, '$.\"db.response.returned_rows\"')
                 FROM spans WHERE trace_id IN (SELECT trace_id FROM ops WHERE key = ?1)
                 ORDER BY start_us, rowid",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeySpan {
                    service: r.get(0)?,
                    replica: r.get(1)?,
                    version: r.get(2)?,
                    trace_id: r.get(3)?,
                    name: r.get(4)?,
                    kind: r.get(5)?,
                    start_us: r.get(6)?,
                    end_us: r.get(7)?,
                    status: r.get(8)?,
                    detail: r
                        .get::<_, Option<rusqlite::types::Value>>(9)?
                        .and_then(|v| match v {
                            rusqlite::types::Value::Text(t) => Some(t),
                            rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                            rusqlite::types::Value::Real(f) => Some(f.to_string()),
                            _ => None,
                        }),
                    rows: r.get::<_, Option<i64>>(10).ok().flatten(),
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Every log line's and span's (key, trace id, value) of the field `name` (a span's
    /// attribute), for those that have it, streamed.
    pub fn for_each_log_field(
        &self,
        name: &str,
        mut each: impl FnMut(Option<&str>, Option<&str>, FieldValue),
    ) -> Result<(), HistoryError> {
        let path = format!("$.\"{}\"", name.replace('"', "\\\""));
        // A log line's fields, and a span's attributes (a span has no key of its own).
        let mut sources = Vec::new();
        if self.has_table("service_logs")? {
            sources.push(
                "SELECT key, trace_id, json_type(fields, ?1), json_extract(fields, ?1)
                 FROM service_logs WHERE json_type(fields, ?1) IS NOT NULL",
            );
        }
        if self.has_table("spans")? {
            sources.push(
                "SELECT NULL, trace_id, json_type(attributes, ?1), json_extract(attributes, ?1)
                 FROM spans WHERE json_type(attributes, ?1) IS NOT NULL",
            );
        }
        if sources.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare(&sources.join(" UNION ALL "))
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query(params![path]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            let key: Option<String> = r.get(0).map_err(|e| self.fail(e))?;
            let trace: Option<String> = r.get(1).map_err(|e| self.fail(e))?;
            let kind: String = r.get(2).map_err(|e| self.fail(e))?;
            let value = match kind.as_str() {
                "integer" | "real" => FieldValue::Number(r.get(3).map_err(|e| self.fail(e))?),
                "true" | "false" | "null" => FieldValue::Text(kind),
                "text" => {
                    let text: String = r.get(3).map_err(|e| self.fail(e))?;
                    match text.trim().parse::<f64>() {
                        Ok(n) if n.is_finite() => FieldValue::Number(n),
                        _ => FieldValue::Text(text),
                    }
                }
                // Objects and arrays compare as their JSON text.
                _ => FieldValue::Text(r.get(3).map_err(|e| self.fail(e))?),
            };
            each(key.as_deref(), trace.as_deref(), value);
        }
        Ok(())
    }

    /// Violating keys per invariant, in the order the invariants were first violated.
    pub fn violations_per_invariant(&self) -> Result<Vec<(String, u64)>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT invariant, COUNT(DISTINCT key) FROM violations GROUP BY invariant
                 ORDER BY MIN(rowid)",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// The violating key with the fewest operations: it tells its story with the least noise.
    pub fn quietest_violating_key(&self) -> Result<Option<String>, HistoryError> {
        self.conn
            .query_row(
                "SELECT v.key FROM violations v LEFT JOIN ops o ON o.key = v.key
                 GROUP BY v.key ORDER BY COUNT(o.op_id), MIN(v.rowid) LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    /// Every attempt of every operation on `key`, in the order they were sent.
    pub fn attempts_of_key(&self, key: &str) -> Result<Vec<KeyAttempt>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT o.op_id, o.caller, o.trace_id, a.n, a.instance, a.version, a.sent_us,
                        a.done_us, a.status, a.error, a.idempotency_key, a.response,
                        o.queue_delay_us
                 FROM ops o JOIN attempts a ON a.op_id = o.op_id WHERE o.key = ?1
                 ORDER BY a.sent_us",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeyAttempt {
                    op_id: r.get(0)?,
                    caller: r.get(1)?,
                    trace_id: r.get(2)?,
                    n: r.get(3)?,
                    instance: r.get(4)?,
                    version: r.get(5)?,
                    sent_us: r.get(6)?,
                    done_us: r.get(7)?,
                    status: r.get(8)?,
                    error: r.get(9)?,
                    idempotency_key: r.get(10)?,
                    response: r.get(11)?,
                    queue_delay_us: r.get(12)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Dependency calls about `key`: extracted as its key, or caused by one of its operations.
    pub fn calls_of_key(&self, key: &str) -> Result<Vec<KeyCall>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT dependency, trace_id, received_us, delay_us, fault, status, done_us, path
                 FROM dependency_calls
                 WHERE key = ?1 OR trace_id IN (SELECT trace_id FROM ops WHERE key = ?1)
                 ORDER BY received_us",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeyCall {
                    dependency: r.get(0)?,
                    trace_id: r.get(1)?,
                    received_us: r.get(2)?,
                    delay_us: r.get(3)?,
                    fault: r.get(4)?,
                    status: r.get(5)?,
                    done_us: r.get(6)?,
                    path: r.get(7)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Sink deliveries about `key`, by extracted key or by the trace of one of its operations.
    pub fn deliveries_of_key(&self, key: &str) -> Result<Vec<KeyDelivery>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT sink, trace_id, received_us, idempotency_key FROM sink_deliveries
                 WHERE key = ?1 OR trace_id IN (SELECT trace_id FROM ops WHERE key = ?1)
                 ORDER BY received_us",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeyDelivery {
                    sink: r.get(0)?,
                    trace_id: r.get(1)?,
                    received_us: r.get(2)?,
                    idempotency_key: r.get(3)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// The violations of `key`, first seen first. Histories written before `found_by` existed
    /// say nothing of who found a violation: those read as found by the final check.
    pub fn violations_of_key(&self, key: &str) -> Result<Vec<KeyViolation>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT invariant, detail, found_us, found_by = 'mid_run' FROM violations
                 WHERE key = ?1 ORDER BY found_us, rowid",
            )
            .or_else(|_| {
                self.conn.prepare(
                    "SELECT invariant, detail, found_us, 0 FROM violations WHERE key = ?1
                     ORDER BY found_us, rowid",
                )
            })
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![key], |r| {
                Ok(KeyViolation {
                    invariant: r.get(0)?,
                    detail: r.get(1)?,
                    found_us: r.get(2)?,
                    mid_run: r.get(3)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Every operation, streamed.
    pub fn for_each_op(&self, mut each: impl FnMut(OpFacts<'_>)) -> Result<(), HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, caller, started_us, done_us, attempts, queue_delay_us, trace_id,
                        group_id
                 FROM ops",
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            let text = |i: usize| r.get_ref(i).map(|v| v.as_str().unwrap_or(""));
            each(OpFacts {
                key: text(0).map_err(|e| self.fail(e))?,
                caller: text(1).map_err(|e| self.fail(e))?,
                started_us: r.get(2).map_err(|e| self.fail(e))?,
                done_us: r.get(3).map_err(|e| self.fail(e))?,
                attempts: r.get(4).map_err(|e| self.fail(e))?,
                queue_delay_us: r.get(5).map_err(|e| self.fail(e))?,
                trace_id: text(6).map_err(|e| self.fail(e))?,
                group_id: r.get(7).map_err(|e| self.fail(e))?,
            });
        }
        Ok(())
    }

    /// Every attempt's (key of its operation, replica, version), streamed.
    pub fn for_each_attempt_replica(
        &self,
        mut each: impl FnMut(&str, &str, &str),
    ) -> Result<(), HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT o.key, a.instance, a.version FROM attempts a JOIN ops o ON o.op_id = a.op_id",
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            let text = |i: usize| r.get_ref(i).map(|v| v.as_str().unwrap_or("").to_string());
            let (key, instance, version) = (
                text(0).map_err(|e| self.fail(e))?,
                text(1).map_err(|e| self.fail(e))?,
                text(2).map_err(|e| self.fail(e))?,
            );
            each(&key, &instance, &version);
        }
        Ok(())
    }

    /// Every dependency call's (extracted key, trace id, injected delay, fault), streamed.
    pub fn for_each_dependency_call(
        &self,
        mut each: impl FnMut(Option<&str>, Option<&str>, i64, Option<&str>),
    ) -> Result<(), HistoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, trace_id, delay_us, fault FROM dependency_calls")
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            let key: Option<String> = r.get(0).map_err(|e| self.fail(e))?;
            let trace: Option<String> = r.get(1).map_err(|e| self.fail(e))?;
            let delay: i64 = r.get(2).map_err(|e| self.fail(e))?;
            let fault: Option<String> = r.get(3).map_err(|e| self.fail(e))?;
            each(key.as_deref(), trace.as_deref(), delay, fault.as_deref());
        }
        Ok(())
    }

    /// Every recorded statement, streamed; nothing when the run had no database proxy.
    pub fn for_each_statement(
        &self,
        mut each: impl FnMut(StatementFacts<'_>),
    ) -> Result<(), HistoryError> {
        if !self.has_table("db_statements")? {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, trace_id, received_us, done_us, delay_us, fault FROM db_statements",
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            let text = |i: usize| r.get_ref(i).map(|v| v.as_str().ok());
            each(StatementFacts {
                key: text(0).map_err(|e| self.fail(e))?,
                trace_id: text(1).map_err(|e| self.fail(e))?,
                received_us: r.get(2).map_err(|e| self.fail(e))?,
                done_us: r.get(3).map_err(|e| self.fail(e))?,
                delay_us: r.get(4).map_err(|e| self.fail(e))?,
                fault: text(5).map_err(|e| self.fail(e))?,
            });
        }
        Ok(())
    }

    /// Every dependency call's (dependency, key, trace id, received, answered), streamed.
    pub fn for_each_call_interval(
        &self,
        mut each: impl FnMut(&str, Option<&str>, Option<&str>, i64, i64),
    ) -> Result<(), HistoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT dependency, key, trace_id, received_us, done_us FROM dependency_calls")
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            let text = |i: usize| r.get_ref(i).map(|v| v.as_str().ok());
            each(
                text(0).map_err(|e| self.fail(e))?.unwrap_or(""),
                text(1).map_err(|e| self.fail(e))?,
                text(2).map_err(|e| self.fail(e))?,
                r.get(3).map_err(|e| self.fail(e))?,
                r.get(4).map_err(|e| self.fail(e))?,
            );
        }
        Ok(())
    }

    /// Every overlap group (an arrival of two or more operations) of every caller: how its first
    /// attempts landed — the time from the first member's send to the last's (for a
    /// synchronised group, the final bytes), and how long all of them were in flight together
    /// (negative: never all at once).
    pub fn overlap_groups(&self) -> Result<Vec<GroupLanding>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT o.caller, MAX(a.sent_us) - MIN(a.sent_us), MIN(a.done_us) - MAX(a.sent_us)
                 FROM attempts a JOIN ops o ON o.op_id = a.op_id
                 WHERE a.n = 1
                 GROUP BY o.caller, o.group_id HAVING COUNT(*) > 1",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(GroupLanding {
                    caller: r.get(0)?,
                    spread_us: r.get(1)?,
                    together_us: r.get(2)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// For every overlap group two or more of whose members reached a dependency (or the
    /// database, through the proxy): the time from the first member's first call there to the
    /// last member's — the spread the service side saw, beside the send spread.
    pub fn overlap_reach(&self) -> Result<Vec<GroupReach>, HistoryError> {
        let mut places = vec![
            "SELECT o.caller, o.group_id, o.op_id, d.dependency AS place, MIN(d.received_us) AS t
             FROM ops o JOIN dependency_calls d ON d.trace_id = o.trace_id
             GROUP BY o.op_id, d.dependency",
        ];
        if self.has_table("db_statements")? {
            places.push(
                "SELECT o.caller, o.group_id, o.op_id, 'database' AS place, MIN(s.received_us) AS t
                 FROM ops o JOIN db_statements s ON s.trace_id = o.trace_id
                 GROUP BY o.op_id",
            );
        }
        let sql = format!(
            "WITH grouped AS (SELECT caller, group_id FROM ops GROUP BY caller, group_id
                              HAVING COUNT(*) > 1),
                  firsts AS ({})
             SELECT f.caller, f.place, MAX(f.t) - MIN(f.t)
             FROM firsts f JOIN grouped g ON g.caller = f.caller AND g.group_id = f.group_id
             GROUP BY f.caller, f.group_id, f.place HAVING COUNT(*) > 1
             ORDER BY f.caller, f.place",
            places.join(" UNION ALL ")
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(GroupReach {
                    caller: r.get(0)?,
                    place: r.get(1)?,
                    spread_us: r.get(2)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// The seed's "duplicate key conflicts appear", per key (`None`: a statement neither its
    /// key rule nor a trace tied to a key): unique violations (SQLSTATE 23505) and inserts a
    /// unique index turned into no-ops (`INSERT 0 0`), most first.
    pub fn duplicate_conflicts(&self) -> Result<Vec<KeyConflicts>, HistoryError> {
        if !self.has_table("db_statements")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT COALESCE(s.key, (SELECT o.key FROM ops o WHERE o.trace_id = s.trace_id
                                         LIMIT 1)) AS k,
                        SUM(CASE WHEN s.sqlstate = '23505' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN s.sqlstate IS NULL THEN 1 ELSE 0 END)
                 FROM db_statements s
                 WHERE s.sqlstate = '23505'
                    OR (s.sqlstate IS NULL AND s.kind = 'insert' AND s.rows = 0)
                 GROUP BY k ORDER BY 2 + 3 DESC, k",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(KeyConflicts {
                    key: r.get(0)?,
                    unique_violations: r.get(1)?,
                    noop_inserts: r.get(2)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Every key with a violation.
    pub fn violating_keys(&self) -> Result<BTreeSet<String>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT key FROM violations")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Answered attempts of `caller`'s operations (all callers when `None`) in the order they
    /// were recorded; with `only_success`, only the attempt that ended each operation ok (so
    /// a caller's own `ok` statuses decide what a success is).
    pub fn answers(
        &self,
        caller: Option<&str>,
        only_success: bool,
    ) -> Result<Vec<Answer>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT o.key, o.op_id, a.status, a.response FROM attempts a
                 JOIN ops o ON o.op_id = a.op_id
                 WHERE a.status IS NOT NULL AND (?1 IS NULL OR o.caller = ?1)
                   AND (?2 = 0 OR (o.outcome = 'ok' AND a.n = o.attempts))
                 ORDER BY a.attempt_id",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![caller, only_success], |r| {
                Ok(Answer {
                    key: r.get(0)?,
                    op: r.get(1)?,
                    status: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Per key, (operations confirmed ok, operations possibly applied: ok + ambiguous), of
    /// `caller`'s operations (all callers when `None`): the bounds of Jepsen's counter check.
    pub fn counter_bounds(
        &self,
        caller: Option<&str>,
    ) -> Result<BTreeMap<String, (i64, i64)>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, SUM(outcome = 'ok'), SUM(outcome IN ('ok', 'ambiguous')) FROM ops
                 WHERE ?1 IS NULL OR caller = ?1 GROUP BY key",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![caller], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// The largest operation id (0 when there is none).
    pub fn max_op_id(&self) -> Result<i64, HistoryError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(op_id), 0) FROM ops", [], |r| r.get(0))
            .map_err(|e| self.fail(e))
    }

    /// Per operation id, the violations of the key it is the first operation on: (invariant,
    /// detail, found).
    pub fn violations_by_first_op(
        &self,
    ) -> Result<BTreeMap<i64, Vec<FirstOpViolation>>, HistoryError> {
        let mut out: BTreeMap<i64, Vec<FirstOpViolation>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT (SELECT MIN(op_id) FROM ops o WHERE o.key = v.key), invariant, detail,
                        found_us FROM violations v",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<i64>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.fail(e))?;
        for row in rows {
            let (op, invariant, detail, found) = row.map_err(|e| self.fail(e))?;
            if let Some(op) = op {
                out.entry(op).or_default().push((invariant, detail, found));
            }
        }
        Ok(out)
    }

    /// Streams the rows of `sql` (one of the export's chunk queries, bound to `from` and `to`)
    /// to `each`, as SQLite values.
    pub fn for_each_row_between(
        &self,
        sql: ChunkQuery,
        from: i64,
        to: i64,
        mut each: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), HistoryError> {
        let mut stmt = self.conn.prepare(sql.sql()).map_err(|e| self.fail(e))?;
        let mut rows = stmt.query(params![from, to]).map_err(|e| self.fail(e))?;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            each(r).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

/// A violation as [`Reader::violations_by_first_op`] gives it: (invariant, detail, found).
pub type FirstOpViolation = (String, String, i64);

/// The export's queries over a range of operation ids, `from <= op_id < to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkQuery {
    /// op_id, caller, key, intended_start_us, started_us, done_us, outcome, attempts, trace_id.
    Ops,
    /// op_id, n, traceparent, instance, version, sent_us, done_us, status, error,
    /// idempotency_key.
    Attempts,
    /// call_id, trace_id, dependency, received_us, done_us, status, fault, delay_us, key,
    /// "METHOD path".
    DependencyCalls,
    /// delivery_id, trace_id, sink, received_us, received_us, status, 'duplicate' or NULL, 0,
    /// key, idempotency key ('' when none).
    Deliveries,
}

impl ChunkQuery {
    fn sql(self) -> &'static str {
        match self {
            ChunkQuery::Ops => {
                "SELECT op_id, caller, key, intended_start_us, started_us, done_us, outcome,
                        attempts, trace_id
                 FROM ops WHERE op_id >= ?1 AND op_id < ?2 ORDER BY op_id"
            }
            ChunkQuery::Attempts => {
                "SELECT op_id, n, traceparent, instance, version, sent_us, done_us, status, error,
                        idempotency_key
                 FROM attempts WHERE op_id >= ?1 AND op_id < ?2 ORDER BY attempt_id"
            }
            ChunkQuery::DependencyCalls => {
                "SELECT d.call_id, d.trace_id, d.dependency, d.received_us, d.done_us, d.status,
                        d.fault, d.delay_us, d.key, d.method || ' ' || d.path
                 FROM dependency_calls d JOIN ops o ON o.trace_id = d.trace_id
                 WHERE o.op_id >= ?1 AND o.op_id < ?2"
            }
            ChunkQuery::Deliveries => {
                "SELECT d.delivery_id, d.trace_id, d.sink, d.received_us, d.received_us, d.status,
                        CASE WHEN d.duplicate THEN 'duplicate' END, 0, d.key,
                        COALESCE(d.idempotency_key, '')
                 FROM sink_deliveries d JOIN ops o ON o.trace_id = d.trace_id
                 WHERE o.op_id >= ?1 AND o.op_id < ?2"
            }
        }
    }
}

//! What recording costs: CPU per operation (one op row and one attempt row, the shape of a
//! load run with no retries) for the history writer, against a direct SQLite reference that
//! inserts the same rows with one prepared single-row statement per table in one transaction
//! per 4,096 rows, no channel and no thread.
//!
//! `cargo bench -p reprod-history --bench writer [-- OPS] [direct|history]` (default 500,000
//! operations, both writers; naming one runs only that one, e.g. under callgrind).
//! Times are process CPU (user + system, from /proc/self/stat), so sender, channel and writer
//! thread all count; each figure is split into recording (through `finish`) and indexing for
//! reads by key (`read::index`, which a run leaves to `reprod explain`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use reprod_history::{
    AttemptRecord, Event, History, OpRecord, Outcome, Recorder, RunInfo, Snippet, TraceId,
};

/// The allocator the `reprod` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let ops: i64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(500_000);
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| a.parse::<i64>().is_err())
        .collect();
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    let dir = std::env::temp_dir().join(format!("reprod-writer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("{ops} operations, one attempt each; CPU µs per operation\n");
    println!("| writer                 | record |  index | total | wall s |");
    println!("|------------------------|--------|--------|-------|--------|");
    let writers: [(&str, &str, Writer); 2] = [
        ("direct", "direct SQLite (ref)", direct),
        ("history", "reprod History", recorder),
    ];
    for (name, label, record) in writers {
        if wanted(name) {
            let path = dir.join(format!("{name}.sqlite"));
            let figures = measure(
                || record(&path, ops),
                || reprod_history::read::index(&path).expect("index"),
            );
            row(label, ops, figures);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `OPS` operations into a new file.
type Writer = fn(&Path, i64);

/// CPU seconds of recording, of indexing, and wall seconds of recording.
type Figures = (f64, f64, f64);

/// Runs `record` (which returns when the file is complete), then `index`.
fn measure(record: impl FnOnce(), index: impl FnOnce()) -> Figures {
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    record();
    let (cpu1, wall) = (cpu_seconds(), wall0.elapsed().as_secs_f64());
    index();
    (cpu1 - cpu0, cpu_seconds() - cpu1, wall)
}

fn row(name: &str, ops: i64, (record, index, wall): Figures) {
    let us = |s: f64| s / ops as f64 * 1e6;
    println!(
        "| {name:<22} | {:>6.2} | {:>6.2} | {:>5.2} | {wall:>6.2} |",
        us(record),
        us(index),
        us(record + index)
    );
}

/// Process CPU time (user + system) in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// The names an operation of the benchmark uses.
struct Names {
    caller: reprod_history::Name,
    prefix: reprod_history::Name,
    instance: reprod_history::Name,
    version: reprod_history::Name,
}

impl Names {
    fn register(recorder: &Recorder) -> Names {
        Names {
            caller: recorder.name(CALLER),
            prefix: recorder.name(PREFIX),
            instance: recorder.name(INSTANCE),
            version: recorder.name(""),
        }
    }
}

const CALLER: &str = "load";
const PREFIX: &str = "k";
const INSTANCE: &str = "target/0";
const RESPONSE: &str = "ok";

fn trace_id(i: i64) -> TraceId {
    TraceId::from_words(
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        (i as u64).wrapping_mul(0xf39c_c060_5ced_c834),
    )
}

fn span_id(i: i64) -> u64 {
    (i as u64).wrapping_mul(0x2545_f491) | 1
}

fn op(i: i64, names: &Names) -> OpRecord {
    OpRecord {
        op_id: i,
        caller: names.caller,
        key_prefix: names.prefix,
        key_index: (i % 1000) as u64,
        seq: i,
        group_id: i,
        intended_start_us: i * 10,
        queue_delay_us: 0,
        started_us: i * 10 + 3,
        done_us: i * 10 + 90,
        outcome: Outcome::Ok,
        attempts: 1,
        status: Some(200),
        trace_id: trace_id(i),
    }
}

fn attempt(o: &OpRecord, names: &Names) -> AttemptRecord {
    AttemptRecord {
        op_id: o.op_id,
        n: 1,
        trace_id: o.trace_id,
        span_id: span_id(o.op_id),
        instance: names.instance,
        version: names.version,
        idempotency_key: None,
        sent_us: o.started_us,
        done_us: o.done_us,
        status: Some(200),
        error: None,
        response: Some(Snippet::new(RESPONSE)),
    }
}

/// Records through reprod's `History`, as the engine does: an attempt, then its operation.
fn recorder(path: &Path, ops: i64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (history, recorder) = History::create(path, &info(path)).expect("history");
        let names = Names::register(&recorder);
        for i in 0..ops {
            let o = op(i, &names);
            recorder.record(Event::Attempt(attempt(&o, &names))).await;
            recorder.record(Event::Op(o)).await;
        }
        drop(recorder);
        history.finish("done", ops * 10).await.expect("finish");
    })
}

/// The reference: the same rows, text made with `format!`, straight into SQLite from this
/// thread with single-row statements, in the history's own schema.
fn direct(path: &Path, ops: i64) {
    // The schema, and nothing else, from a history made and closed at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (history, _recorder) = History::create(path, &info(path)).expect("history");
        history.finish("done", 0).await.expect("finish");
    });
    let conn = rusqlite::Connection::open(path).expect("open");
    // Journal mode is the file's; synchronous is the connection's, so set as the writer does.
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .expect("pragma");
    let mut op_insert = conn
        .prepare(
            "INSERT INTO ops (op_id, caller, key, seq, group_id, intended_start_us, queue_delay_us,
             started_us, done_us, outcome, attempts, status, trace_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .expect("prepare");
    let mut attempt_insert = conn
        .prepare(
            "INSERT INTO attempts (op_id, n, traceparent, instance, version, idempotency_key,
             sent_us, done_us, status, error, response)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .expect("prepare");
    for start in (0..ops).step_by(4096) {
        conn.execute_batch("BEGIN").expect("begin");
        for i in start..(start + 4096).min(ops) {
            let trace = trace_id(i).to_string();
            let traceparent = format!("00-{trace}-{:016x}-01", span_id(i));
            attempt_insert
                .execute(rusqlite::params![
                    i,
                    1,
                    traceparent,
                    INSTANCE,
                    "",
                    None::<String>,
                    i * 10 + 3,
                    i * 10 + 90,
                    200,
                    None::<String>,
                    RESPONSE
                ])
                .expect("attempt");
            op_insert
                .execute(rusqlite::params![
                    i,
                    CALLER,
                    format!("{PREFIX}{}", i % 1000),
                    i,
                    i,
                    i * 10,
                    0,
                    i * 10 + 3,
                    i * 10 + 90,
                    "ok",
                    1,
                    200,
                    trace
                ])
                .expect("op");
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
}

fn info(path: &Path) -> RunInfo {
    RunInfo {
        run_id: "bench".to_string(),
        scenario: "bench".to_string(),
        scenario_path: PathBuf::from(path).display().to_string(),
        seed: 1,
        started_at: "2026-01-01T00:00:00Z".to_string(),
        conditions: String::new(),
        params: String::new(),
        dimensions: String::new(),
        callers: String::new(),
    }
}

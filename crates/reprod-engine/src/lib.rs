//! The load engine: turns a scenario's callers into real, overlapping, retried HTTP operations
//! on the run's seeded schedule, and records every operation and attempt.
//!
//! Open model: an operation starts at its intended time whether or not earlier ones finished;
//! latency is measured from that intended start (no coordinated omission) and the gap between
//! intended and actual start is recorded as schedule lag. Everything random about an operation —
//! key, trace id, idempotency keys, body choices, retry jitter, replica choice — comes from an
//! RNG seeded by the run seed and the operation id, so it does not depend on timing.
//!
//! Operations run on long-lived runner tasks that take them from the schedule in turn
//! (`runner`), and wait on the run's stop through a flag rather than a channel (`stop`).
//!
//! The engine knows nothing of the fault layer; both only emit history events.

#![deny(missing_docs)]

mod hist;
mod keys;
mod runner;
mod schedule;
mod series;
mod stop;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprod_history::ids::{self, TraceId};
use reprod_history::{AttemptRecord, Event, Name, OpRecord, Outcome, Recorder, RunClock, Snippet};
use reprod_http as http;
use reprod_scenario::{Backoff, Balance, Caller, IdempotencyMode, Jitter, Scenario, Template, Var};
use tokio::sync::watch;

use runner::{Runner, Stopped};
use stop::StopSignal;

pub(crate) use contain_panic as contain;
pub use hist::Histogram;
pub use keys::KeySampler;
pub use schedule::{PlannedOp, Schedule};
pub use series::SeriesPoint;

/// Bytes of each response body kept in the history.
const KEPT_RESPONSE_BYTES: usize = 512;

pub use reprod_scenario::seed::mix;

/// Counters the progress display reads while the run goes.
#[derive(Debug, Default)]
pub struct Live {
    /// Operations that ended.
    pub done: AtomicU64,
    /// ... ok.
    pub ok: AtomicU64,
    /// ... failed.
    pub failed: AtomicU64,
    /// ... ambiguous.
    pub ambiguous: AtomicU64,
    /// Attempts sent.
    pub attempts: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Latency and lag of every operation, and the latencies since the display last took
    /// them: one lock per operation for all three.
    timings: Mutex<Timings>,
}

impl Live {
    /// The latencies recorded since the last call.
    pub fn take_window(&self) -> Histogram {
        std::mem::take(&mut self.lock_timings().window)
    }

    fn lock_timings(&self) -> std::sync::MutexGuard<'_, Timings> {
        lock(&self.timings)
    }
}

/// Locks `m`, using the data of a lock a panicking holder poisoned as it is: the engine's locks
/// guard counters, histograms and lists, and the panic itself reaches `run`'s caller.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the engine measured.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Operations dispatched.
    pub ops: u64,
    /// Ended ok.
    pub ok: u64,
    /// Ended failed.
    pub failed: u64,
    /// Ended ambiguous.
    pub ambiguous: u64,
    /// Attempts sent.
    pub attempts: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Operation latency from intended start, µs.
    pub latency: Histogram,
    /// Intended → actual first send, µs.
    pub lag: Histogram,
    /// Intended start of the first operation, µs.
    pub first_intended_us: i64,
    /// Intended start of the last operation, µs.
    pub last_intended_us: i64,
    /// When load generation ended (all operations done), µs.
    pub load_end_us: i64,
    /// Scheduled operations never sent because the run's time was up: the generator (or the
    /// `max_in_flight` bound) could not keep up with the schedule.
    pub unsent: u64,
    /// Per caller, scenario order.
    pub callers: Vec<CallerStats>,
    /// The engine itself failed (a contained panic while running an operation): the run
    /// stopped and cannot be trusted to have sent what it planned.
    pub engine_failure: Option<String>,
    /// The run over time, for the report's plots.
    pub series: Vec<SeriesPoint>,
}

/// What one caller's operations came to.
#[derive(Clone, Debug, Default)]
pub struct CallerStats {
    /// Caller name.
    pub name: String,
    /// Operations that ended.
    pub ops: u64,
    /// ... ok.
    pub ok: u64,
}

/// One replica a caller can send to: the engine's view of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Base URL, no trailing slash.
    pub url: String,
    /// `service/index`, as recorded on attempts.
    pub instance: String,
    /// Version label.
    pub version: String,
}

/// Inputs of one run of the engine.
#[derive(Debug)]
pub struct Input<'a> {
    /// The (condition-adjusted) scenario.
    pub scenario: &'a Scenario,
    /// Replicas per service, scenario order.
    pub targets: &'a [Vec<Target>],
    /// The run's clock.
    pub clock: RunClock,
    /// Where operations and attempts go.
    pub recorder: Recorder,
    /// Progress counters.
    pub live: Arc<Live>,
    /// Turns true to stop: no new operations, in-flight ones end as ambiguous.
    pub stop: watch::Receiver<bool>,
    /// When the load starts, in the run clock's microseconds: every intended time is this plus
    /// the schedule's offset, so nothing planned falls in the time services took to start.
    pub load_start_us: i64,
    /// What the setup steps captured.
    pub setup: Arc<SetupValues>,
}

/// With an overlap window narrower than this, operations start to the microsecond: tokio's
/// timer fires on millisecond ticks, which would send most members of a 2 ms window within
/// the same tick.
const PRECISE_BELOW: Duration = Duration::from_millis(20);

struct CallerRt {
    spec: Caller,
    /// The caller's and its key prefix's names in the history.
    name: Name,
    key_prefix: Name,
    /// With keys from a file, each key's name in the history (recorded whole, not as prefix
    /// and number).
    key_names: Vec<Name>,
    /// Each target's instance and version names in the history.
    target_names: Vec<(Name, Name)>,
    /// One connection pool per target, same order.
    pools: Vec<Arc<http::Pool>>,
    balance: Balance,
    /// Whether a request template uses `{uuid}`: drawing and formatting one per operation is
    /// skipped otherwise.
    uses_uuid: bool,
    /// Whether anything needs an operation's key as text (a template, balancing by key, key
    /// locks); the history records it as prefix and number.
    needs_key: bool,
    round_robin: AtomicUsize,
    ops_started: AtomicU64,
    retries_used: AtomicU64,
    ops_done: AtomicU64,
    ops_ok: AtomicU64,
}

struct Shared {
    seed: u64,
    setup: Arc<SetupValues>,
    callers: Vec<CallerRt>,
    clock: RunClock,
    recorder: Recorder,
    live: Arc<Live>,
    key_locks: Option<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The open gates of synchronised overlap groups (`overlap.sync = "last_byte"`), by group.
    gates: Mutex<HashMap<u64, Arc<Gate>>>,
    /// Whether operations start at their intended microsecond rather than at the timer's next
    /// millisecond tick: when a caller's overlap window is narrow enough that ticks would
    /// collapse it. Every operation then, since operations are released in order and one
    /// released late on a tick would hold back the next.
    precise: bool,
    pool: runner::Pool,
    /// The first contained panic of an operation, which stops the run.
    failure: Mutex<Option<String>>,
}

/// Runs every caller's schedule to its end (or until `stop`), then waits for in-flight
/// operations. Operations run on runners (the `runner` module), at most `max_in_flight` at
/// once.
pub async fn run(input: Input<'_>) -> Stats {
    let Input {
        scenario,
        targets,
        clock,
        recorder,
        live,
        mut stop,
        load_start_us,
        setup,
    } = input;
    let mut pools: HashMap<String, Arc<http::Pool>> = HashMap::new();
    for target in targets.iter().flatten() {
        if !pools.contains_key(&target.url) {
            pools.insert(
                target.url.clone(),
                Arc::new(http::Pool::for_url(&target.url).await),
            );
        }
    }
    // The run is bounded in wall-clock time too: an operation that could not be sent within a
    // second of the end of the schedule is not sent at all, and counted.
    let max_delay_us = scenario
        .callers
        .iter()
        .map(|c| c.delay.as_micros() as i64)
        .max()
        .unwrap_or(0);
    let signal = Arc::new(StopSignal::default());
    live.lock_timings().series = Some(series::Series::new(
        load_start_us,
        scenario.duration.as_micros() as i64 + max_delay_us,
    ));
    let shared = Arc::new(Shared {
        seed: scenario.seed,
        setup,
        callers: scenario
            .callers
            .iter()
            .map(|c| CallerRt {
                spec: c.clone(),
                name: recorder.name(&c.name),
                key_prefix: recorder.name(&c.keys.prefix),
                key_names: c.keys.file.as_ref().map_or_else(Vec::new, |f| {
                    recorder.names(f.keys.iter().map(String::as_str))
                }),
                target_names: targets[c.service]
                    .iter()
                    .map(|t| (recorder.name(&t.instance), recorder.name(&t.version)))
                    .collect(),
                pools: targets[c.service]
                    .iter()
                    .map(|t| Arc::clone(&pools[&t.url]))
                    .collect(),
                balance: scenario.services[c.service].balance,
                uses_uuid: c.request.uses(|v| *v == Var::Uuid),
                needs_key: c.request.uses(|v| matches!(v, Var::Key | Var::KeyValue(_)))
                    || scenario.services[c.service].balance == Balance::Key
                    || scenario.serialize_keys,
                round_robin: AtomicUsize::new(0),
                ops_started: AtomicU64::new(0),
                retries_used: AtomicU64::new(0),
                ops_done: AtomicU64::new(0),
                ops_ok: AtomicU64::new(0),
            })
            .collect(),
        clock,
        recorder,
        live,
        key_locks: scenario.serialize_keys.then(|| Mutex::new(HashMap::new())),
        gates: Mutex::new(HashMap::new()),
        precise: scenario.callers.iter().any(|c| {
            c.overlap.k > 1
                && c.overlap.sync == reprod_scenario::OverlapSync::Window
                && c.overlap.window < PRECISE_BELOW
        }),
        pool: runner::Pool::new(
            Schedule::new(scenario),
            load_start_us,
            load_start_us + scenario.duration.as_micros() as i64 + max_delay_us + 1_000_000,
            Arc::clone(&signal),
            scenario.max_in_flight,
        ),
        failure: Mutex::new(None),
    });
    // The caller's stop arrives on a watch channel; runners wait on the cheaper signal.
    let bridge = tokio::spawn({
        let signal = Arc::clone(&signal);
        async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
            signal.set();
        }
    });
    runner::Pool::start(&shared);
    if let Some(failure) = shared.pool.join().await {
        lock(&shared.failure).get_or_insert(failure);
    }
    bridge.abort();
    // The progress display keeps its window; the run's totals are taken.
    let (latency, lag, series) = {
        let mut t = shared.live.lock_timings();
        (
            std::mem::take(&mut t.latency),
            std::mem::take(&mut t.lag),
            t.series.take().map(|s| s.points()).unwrap_or_default(),
        )
    };
    let dispatched = shared.pool.dispatched();
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let live = &shared.live;
    Stats {
        ops: count(&live.done),
        ok: count(&live.ok),
        failed: count(&live.failed),
        ambiguous: count(&live.ambiguous),
        attempts: count(&live.attempts),
        retries: count(&live.retries),
        latency,
        lag,
        first_intended_us: dispatched.first_intended_us.unwrap_or(load_start_us),
        last_intended_us: dispatched.last_intended_us.max(load_start_us),
        load_end_us: clock.now_us(),
        unsent: dispatched.unsent,
        callers: shared
            .callers
            .iter()
            .map(|c| CallerStats {
                name: c.spec.name.clone(),
                ops: count(&c.ops_done),
                ok: count(&c.ops_ok),
            })
            .collect(),
        engine_failure: lock(&shared.failure).take(),
        series,
    }
}

/// The longest a synchronised group's members wait for the rest: a member that cannot be sent
/// (its connection failed, the schedule's operation cap cut the group) releases the others
/// after this.
const SYNC_WAIT: Duration = Duration::from_secs(1);

/// Where a synchronised overlap group's members wait, each with all of its request but the
/// final byte written, until all `k` have arrived.
struct Gate {
    k: u32,
    arrived: std::sync::atomic::AtomicU32,
    /// Members that took the gate: the last one removes it from [`Shared::gates`].
    taken: std::sync::atomic::AtomicU32,
    opened: std::sync::atomic::AtomicBool,
    open: tokio::sync::Notify,
}

impl Gate {
    fn new(k: u32) -> Gate {
        Gate {
            k,
            arrived: 0.into(),
            taken: 0.into(),
            opened: false.into(),
            open: tokio::sync::Notify::new(),
        }
    }

    /// Counts one member in; the last one opens the gate.
    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 >= self.k {
            self.opened.store(true, Ordering::SeqCst);
            self.open.notify_waiters();
        }
    }

    /// Arrives and waits until every member has (or [`SYNC_WAIT`] passed).
    async fn pass(&self) {
        let notified = self.open.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.arrive();
        if !self.opened.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(SYNC_WAIT, notified).await;
        }
    }
}

/// The gate of `op`'s group, when its first attempt is sent synchronised.
fn gate_of(shared: &Shared, caller: &CallerRt, op: &PlannedOp) -> Option<Arc<Gate>> {
    let overlap = &caller.spec.overlap;
    if overlap.sync != reprod_scenario::OverlapSync::LastByte
        || overlap.k < 2
        || shared.key_locks.is_some()
    {
        return None;
    }
    let mut gates = lock(&shared.gates);
    let gate = Arc::clone(
        gates
            .entry(op.group)
            .or_insert_with(|| Arc::new(Gate::new(overlap.k))),
    );
    if gate.taken.fetch_add(1, Ordering::Relaxed) + 1 >= overlap.k {
        gates.remove(&op.group);
    }
    Some(gate)
}

/// Records an operation whose run panicked as failed, with the message, and stops the run:
/// a bug in reprod must not pass for a finished run or take the history with it.
async fn contain_panic(shared: &Shared, op: &PlannedOp, panic: Box<dyn std::any::Any + Send>) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    let message = format!(
        "operation {} of caller {}: {message}",
        op.op_id, shared.callers[op.caller].spec.name
    );
    let now = shared.clock.now_us();
    let caller = &shared.callers[op.caller];
    shared
        .recorder
        .record(Event::EngineError(Box::new(
            reprod_history::EngineErrorRecord {
                op_id: op.op_id as i64,
                at_us: now,
                message: message.clone(),
            },
        )))
        .await;
    shared
        .recorder
        .record(Event::Op(op_record(
            caller,
            op,
            (now, now),
            (Outcome::Failed, 0, None),
            op_trace_id(shared.seed, op.op_id),
        )))
        .await;
    shared.live.done.fetch_add(1, Ordering::Relaxed);
    shared.live.failed.fetch_add(1, Ordering::Relaxed);
    caller.ops_done.fetch_add(1, Ordering::Relaxed);
    lock(&shared.failure).get_or_insert(message);
    shared.pool.stop_all();
}

/// The history record of a planned operation that ran from `started_us` to `done_us` and ended
/// with (outcome, attempts, last status).
fn op_record(
    caller: &CallerRt,
    op: &PlannedOp,
    (started_us, done_us): (i64, i64),
    (outcome, attempts, status): (Outcome, i64, Option<i64>),
    trace_id: TraceId,
) -> OpRecord {
    OpRecord {
        op_id: op.op_id as i64,
        caller: caller.name,
        key_prefix: caller
            .key_names
            .get(op.key_index as usize)
            .copied()
            .unwrap_or(caller.key_prefix),
        key_index: if caller.key_names.is_empty() {
            op.key_index
        } else {
            OpRecord::WHOLE_KEY
        },
        seq: op.seq as i64,
        group_id: op.group as i64,
        intended_start_us: op.at_us,
        queue_delay_us: op.queue_delay_us,
        started_us,
        done_us,
        outcome,
        attempts,
        status,
        trace_id,
    }
}

/// The seed of an operation's RNG.
fn op_seed(seed: u64, op_id: u64) -> u64 {
    mix(seed, op_id.wrapping_add(1 << 32))
}

/// The trace id of an operation: the first draw of its RNG.
fn op_trace_id(seed: u64, op_id: u64) -> TraceId {
    let mut rng = fastrand::Rng::with_seed(op_seed(seed, op_id));
    TraceId::from_words(rng.u64(..), rng.u64(..))
}

/// Per-operation timings, kept in fixed-size histograms.
#[derive(Debug, Default)]
struct Timings {
    latency: Histogram,
    lag: Histogram,
    window: Histogram,
    /// The run over time, once the load started.
    series: Option<series::Series>,
}

/// How one attempt ended.
enum AttemptEnd {
    Status(u16, Option<Duration>),
    Timeout,
    Connect(String),
    Transport(String),
    Stopped,
}

async fn run_op(shared: &Shared, op: PlannedOp, rt: &mut Runner) {
    let caller = &shared.callers[op.caller];
    let spec = &caller.spec;
    let key = if caller.needs_key {
        spec.keys.name(op.key_index)
    } else {
        String::new()
    };
    let _key_guard = match &shared.key_locks {
        Some(locks) => {
            let key_lock = Arc::clone(lock(locks).entry(key.clone()).or_default());
            Some(key_lock.lock_owned().await)
        }
        None => None,
    };
    let op_seed = op_seed(shared.seed, op.op_id);
    let mut rng = fastrand::Rng::with_seed(op_seed);
    let trace_id = TraceId::from_words(rng.u64(..), rng.u64(..));
    let op_uuid = if caller.uses_uuid {
        uuid(&mut rng)
    } else {
        String::new()
    };
    let op_idempotency = (spec.idempotency.mode == IdempotencyMode::PerOp).then(|| uuid(&mut rng));
    caller.ops_started.fetch_add(1, Ordering::Relaxed);

    let mut started_us = None;
    let mut done_us = 0;
    let mut outcome = Outcome::Failed;
    let mut ambiguous_seen = false;
    let mut last_status = None;
    let mut attempts = 0;
    let mut gate = gate_of(shared, caller, &op);
    for n in 1..=spec.retry.attempts {
        attempts = n;
        let target = pick(caller, &key, &mut rng);
        let pool = &caller.pools[target];
        // The span id, never all zeros.
        let span_id = rng.u64(..).max(1);
        let idempotency_key = match spec.idempotency.mode {
            IdempotencyMode::None => None,
            IdempotencyMode::PerOp => op_idempotency.clone(),
            IdempotencyMode::PerAttempt => Some(uuid(&mut rng)),
        };
        let vars = Vars {
            key: &key,
            op: op.op_id,
            attempt: n,
            uuid: &op_uuid,
            seq: op.seq,
            idempotency_key: idempotency_key.as_deref(),
            // Same choices on every attempt of an operation: a retry resends the same request.
            choice_seed: mix(op_seed, 7),
            setup: &shared.setup,
        };
        let request = build_request(spec, pool.host(), &vars, trace_id, span_id);
        let sent_us = shared.clock.now_us();
        started_us.get_or_insert(sent_us);
        shared.live.attempts.fetch_add(1, Ordering::Relaxed);
        if n > 1 {
            shared.live.retries.fetch_add(1, Ordering::Relaxed);
        }
        // A synchronised group's first attempts: the time their final byte went out.
        let released_us = std::sync::atomic::AtomicI64::new(0);
        let (end, response) = match request {
            Ok(request) => {
                // The timeout counts from the send time just read: no second clock read.
                let deadline = shared.clock.instant_at(sent_us) + spec.timeout;
                let head_only = spec.request.method == "HEAD";
                match gate.take().filter(|_| n == 1) {
                    Some(gate) => {
                        let arrived = std::sync::atomic::AtomicBool::new(false);
                        let pass = async {
                            arrived.store(true, Ordering::Relaxed);
                            gate.pass().await;
                            released_us.store(shared.clock.now_us(), Ordering::Relaxed);
                        };
                        let exchange = pool.exchange_gated(&request, head_only, pass);
                        let sent = finish(rt.within(deadline.into(), exchange).await);
                        // A member that failed before the gate still counts, so the others
                        // need not wait for it.
                        if !arrived.load(Ordering::Relaxed) {
                            gate.arrive();
                        }
                        sent
                    }
                    None => send(rt, pool, &request, head_only, deadline.into()).await,
                }
            }
            Err(e) => {
                if let Some(gate) = gate.take() {
                    gate.arrive();
                }
                (AttemptEnd::Transport(e), None)
            }
        };
        let sent_us = match released_us.load(Ordering::Relaxed) {
            0 => sent_us,
            released => released,
        };
        done_us = shared.clock.now_us();
        let (status, error) = match &end {
            AttemptEnd::Status(s, _) => (Some(i64::from(*s)), None),
            AttemptEnd::Timeout => (
                None,
                Some(format!("timeout after {} ms", spec.timeout.as_millis())),
            ),
            AttemptEnd::Connect(e) => (None, Some(format!("connect: {e}"))),
            AttemptEnd::Transport(e) => (None, Some(e.clone())),
            AttemptEnd::Stopped => (None, Some("interrupted".to_string())),
        };
        last_status = status;
        let (instance, version) = caller.target_names[target];
        if let Some(slot) = shared.recorder.reserve().await {
            slot.record(Event::Attempt(AttemptRecord {
                op_id: op.op_id as i64,
                n: i64::from(n),
                trace_id,
                span_id,
                instance,
                version,
                idempotency_key,
                sent_us,
                done_us,
                status,
                error,
                response,
            }));
        }
        let on = &spec.retry.on;
        let (retryable, retry_after) = match end {
            AttemptEnd::Status(s, _) if spec.ok.status(s) => {
                outcome = Outcome::Ok;
                break;
            }
            AttemptEnd::Status(s, retry_after) => {
                // 503 conventionally means "not processed"; other 5xx may have half-happened.
                if s >= 500 && s != 503 {
                    ambiguous_seen = true;
                }
                (on.status(s), retry_after)
            }
            AttemptEnd::Timeout => {
                ambiguous_seen = true;
                (on.timeout, None)
            }
            AttemptEnd::Connect(_) => (on.connect, None),
            AttemptEnd::Transport(_) => {
                ambiguous_seen = true;
                (on.connect, None)
            }
            AttemptEnd::Stopped => {
                ambiguous_seen = true;
                (false, None)
            }
        };
        if !retryable || n == spec.retry.attempts || rt.stop.is_set() || !budget_allows(caller) {
            break;
        }
        let wait = backoff(spec, n, retry_after, &mut rng);
        if rt
            .sleep_until(tokio::time::Instant::now() + wait)
            .await
            .is_err()
        {
            break;
        }
    }
    if outcome != Outcome::Ok && ambiguous_seen {
        outcome = Outcome::Ambiguous;
    }
    let started_us = started_us.unwrap_or(done_us);
    if let Some(slot) = shared.recorder.reserve().await {
        slot.record(Event::Op(op_record(
            caller,
            &op,
            (started_us, done_us),
            (outcome, i64::from(attempts), last_status),
            trace_id,
        )));
    }
    let latency_us = (done_us - op.at_us).max(0) as u64;
    let lag_us = (started_us - op.at_us).max(0) as u64;
    let live = &shared.live;
    live.done.fetch_add(1, Ordering::Relaxed);
    caller.ops_done.fetch_add(1, Ordering::Relaxed);
    if outcome == Outcome::Ok {
        caller.ops_ok.fetch_add(1, Ordering::Relaxed);
    }
    match outcome {
        Outcome::Ok => live.ok.fetch_add(1, Ordering::Relaxed),
        Outcome::Failed => live.failed.fetch_add(1, Ordering::Relaxed),
        Outcome::Ambiguous => live.ambiguous.fetch_add(1, Ordering::Relaxed),
    };
    let mut t = live.lock_timings();
    t.latency.record(latency_us);
    t.window.record(latency_us);
    t.lag.record(lag_us);
    if let Some(series) = &mut t.series {
        series.record(
            op.at_us,
            done_us,
            outcome == Outcome::Ok,
            u64::from(attempts.saturating_sub(1)),
        );
    }
}

/// Retries may not exceed `budget` per operation started (gRPC-style retry throttling), with a
/// floor of one so a small run can still retry.
fn budget_allows(caller: &CallerRt) -> bool {
    let Some(budget) = caller.spec.retry.budget else {
        return true;
    };
    let ops = caller.ops_started.load(Ordering::Relaxed) as f64;
    let allowed = (budget * ops).max(1.0) as u64;
    caller
        .retries_used
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            (used < allowed).then_some(used + 1)
        })
        .is_ok()
}

fn backoff(
    spec: &Caller,
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut fastrand::Rng,
) -> Duration {
    let r = &spec.retry;
    let raw = match r.backoff {
        Backoff::Constant => r.base,
        Backoff::Exponential => r.base.saturating_mul(1u32 << (attempt - 1).min(20)),
    }
    .min(r.max);
    let jittered = match r.jitter {
        Jitter::None => raw,
        Jitter::Full => raw.mul_f64(rng.f64()),
        Jitter::Equal => raw / 2 + (raw / 2).mul_f64(rng.f64()),
    };
    match retry_after {
        Some(ra) if r.respect_retry_after => jittered.max(ra.min(r.max)),
        _ => jittered,
    }
}

/// The index of the target (and pool) an attempt goes to.
fn pick(caller: &CallerRt, key: &str, rng: &mut fastrand::Rng) -> usize {
    let n = caller.pools.len();
    match caller.balance {
        Balance::RoundRobin => caller.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        Balance::Random => rng.usize(..n),
        Balance::Key => (fnv1a(key.as_bytes()) % n as u64) as usize,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Values of the request placeholders for one attempt.
#[derive(Debug)]
pub struct Vars<'a> {
    /// `{key}`.
    pub key: &'a str,
    /// `{op}`.
    pub op: u64,
    /// `{attempt}`.
    pub attempt: u32,
    /// `{uuid}`.
    pub uuid: &'a str,
    /// `{seq}`.
    pub seq: u64,
    /// `{idempotency_key}`.
    pub idempotency_key: Option<&'a str>,
    /// Seed of `{choice:...}` draws.
    pub choice_seed: u64,
    /// What the setup steps captured.
    pub setup: &'a SetupValues,
}

/// What the setup steps captured: `{setup.NAME}` once, `{key.NAME}` per key.
#[derive(Clone, Debug, Default)]
pub struct SetupValues {
    /// Captured by steps that ran once.
    pub once: HashMap<String, String>,
    /// Captured by per-key steps: key → name → value.
    pub per_key: HashMap<String, HashMap<String, String>>,
}

/// Renders a request template for one attempt.
pub fn render(t: &Template, vars: &Vars<'_>, choices: &mut fastrand::Rng) -> String {
    let mut out = String::new();
    render_into(&mut out, t, vars, choices);
    out
}

/// [`render`], appending to `out`.
fn render_into(out: &mut String, t: &Template, vars: &Vars<'_>, choices: &mut fastrand::Rng) {
    // Scenario validation only lets request placeholders into request templates, so every
    // one renders.
    let _ = t.render_into(out, |var, out| {
        match var {
            Var::Key => out.push_str(vars.key),
            Var::Op => out.push_str(&vars.op.to_string()),
            Var::Attempt => out.push_str(&vars.attempt.to_string()),
            Var::Uuid => out.push_str(vars.uuid),
            Var::Seq => out.push_str(&vars.seq.to_string()),
            Var::IdempotencyKey => out.push_str(vars.idempotency_key.unwrap_or("")),
            Var::Choice(options) => out.push_str(&options[choices.usize(..options.len())]),
            // Validation made sure a step captures every name used; a per-key step that ran
            // for fewer keys than the caller draws leaves the rest empty.
            Var::Setup(name) => out.push_str(vars.setup.once.get(name).map_or("", String::as_str)),
            Var::KeyValue(name) => out.push_str(
                vars.setup
                    .per_key
                    .get(vars.key)
                    .and_then(|values| values.get(name))
                    .map_or("", String::as_str),
            ),
            _ => return false,
        }
        true
    });
}

/// The request bytes of one attempt: request line, headers, body.
fn build_request(
    spec: &Caller,
    host: &str,
    vars: &Vars<'_>,
    trace_id: TraceId,
    span_id: u64,
) -> Result<Vec<u8>, String> {
    use std::fmt::Write as _;
    let mut choices = fastrand::Rng::with_seed(vars.choice_seed);
    let mut out = String::with_capacity(256);
    out.push_str(&spec.request.method);
    out.push(' ');
    // The path is rendered in place; the body (after it in the draws) once the path is.
    let path_start = out.len();
    render_into(&mut out, &spec.request.path, vars, &mut choices);
    let body = spec
        .request
        .body
        .as_ref()
        .map(|t| render(t, vars, &mut choices));
    out.reserve(body.as_ref().map_or(0, String::len));
    let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
    let path = &out[path_start..];
    if !clean(path) || path.contains(' ') {
        return Err(format!(
            "the rendered path {path:?} contains spaces or line breaks"
        ));
    }
    out.push_str(" HTTP/1.1\r\nhost: ");
    out.push_str(host);
    out.push_str("\r\ntraceparent: ");
    ids::push_traceparent(&mut out, trace_id, span_id);
    let _ = write!(out, "\r\nx-retry-attempt: {}\r\n", vars.attempt);
    let mut has_content_type = false;
    for (name, value) in &spec.request.headers {
        has_content_type |= name == "content-type";
        let value = render(value, vars, &mut choices);
        if !clean(&value) {
            return Err(format!(
                "header {name} renders to a value with a line break"
            ));
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(key) = vars.idempotency_key {
        let _ = write!(out, "{}: {key}\r\n", spec.idempotency.header);
    }
    match &body {
        Some(body) => {
            if !has_content_type {
                out.push_str("content-type: application/json\r\n");
            }
            let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
            out.push_str(body);
        }
        None if matches!(spec.request.method.as_str(), "POST" | "PUT" | "PATCH") => {
            out.push_str("content-length: 0\r\n\r\n");
        }
        None => out.push_str("\r\n"),
    }
    Ok(out.into_bytes())
}

async fn send(
    rt: &mut Runner,
    pool: &http::Pool,
    request: &[u8],
    head_only: bool,
    deadline: tokio::time::Instant,
) -> (AttemptEnd, Option<Snippet>) {
    finish(rt.within(deadline, pool.exchange(request, head_only)).await)
}

/// How an exchange run until its deadline ended.
fn finish(
    exchanged: Result<Option<Result<http::Response, http::HttpError>>, Stopped>,
) -> (AttemptEnd, Option<Snippet>) {
    match exchanged {
        Ok(Some(Ok(response))) => {
            let kept = &response.body[..response.body.len().min(KEPT_RESPONSE_BYTES)];
            (
                AttemptEnd::Status(response.status, response.retry_after),
                Some(Snippet::new(&String::from_utf8_lossy(kept))),
            )
        }
        Ok(Some(Err(http::HttpError::Connect(e)))) => (AttemptEnd::Connect(e), None),
        Ok(Some(Err(http::HttpError::Transport(e)))) => (AttemptEnd::Transport(e), None),
        Ok(None) => (AttemptEnd::Timeout, None),
        Err(Stopped) => (AttemptEnd::Stopped, None),
    }
}

/// A version-4 UUID from `rng`.
pub fn uuid(rng: &mut fastrand::Rng) -> String {
    ids::uuid(rng.u64(..), rng.u64(..))
}

/// A scenario with one external service and `extra` (callers and more), for tests.
#[cfg(test)]
pub(crate) fn test_scenario(extra: &str) -> Scenario {
    let text = format!(
        "seed = 42\nduration = \"10s\"\n[[service]]\nname = \"svc\"\nurl = \"http://127.0.0.1:1\"\n{extra}"
    );
    reprod_scenario::parse("test.toml", &text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_render_the_same_for_the_same_operation() {
        let s = test_scenario(
            r#"
[[caller]]
name = "api"
request = { method = "POST", path = "/x/{key}?op={op}&a={attempt}", body = '{"k": "{key}", "u": "{uuid}", "c": "{choice:a|b|c|d|e|f}", "i": "{idempotency_key}"}' }
rate = 1
"#,
        );
        let render_for = |op_id: u64| {
            let mut rng = fastrand::Rng::with_seed(mix(s.seed, op_id));
            let u = uuid(&mut rng);
            let vars = Vars {
                key: "k1",
                op: op_id,
                attempt: 2,
                uuid: &u,
                seq: 1,
                idempotency_key: Some("idem"),
                choice_seed: mix(s.seed, op_id + 7),
                setup: &SetupValues::default(),
            };
            let mut choices = fastrand::Rng::with_seed(vars.choice_seed);
            let body = s.callers[0].request.body.as_ref().expect("body");
            (
                render(&s.callers[0].request.path, &vars, &mut choices),
                render(body, &vars, &mut choices),
            )
        };
        assert_eq!(render_for(5), render_for(5));
        assert_ne!(render_for(5).1, render_for(6).1);
        let (path, body) = render_for(5);
        assert_eq!(path, "/x/k1?op=5&a=2");
        assert!(
            body.starts_with(r#"{"k": "k1", "u": ""#) && body.ends_with(r#""i": "idem"}"#),
            "{body}"
        );
    }

    #[test]
    fn backoff_follows_the_policy() {
        let s = test_scenario(
            r#"
[[caller]]
name = "api"
request = { path = "/" }
rate = 1
retry = { attempts = 5, backoff = "exponential", base = "100ms", max = "1s", jitter = "none" }
"#,
        );
        let c = &s.callers[0];
        let mut rng = fastrand::Rng::with_seed(1);
        let waits: Vec<u128> = (1..=5)
            .map(|n| backoff(c, n, None, &mut rng).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000]);
        assert_eq!(
            backoff(c, 1, Some(Duration::from_secs(3)), &mut rng),
            Duration::from_secs(1),
            "Retry-After is capped by max"
        );
        let mut full = c.clone();
        full.retry.jitter = Jitter::Full;
        assert!((0..100).all(|_| backoff(&full, 3, None, &mut rng) <= Duration::from_millis(400)));
    }
}

//! The validated scenario: the only shape of a scenario the engine, the services and the fault
//! layer ever see. Every value here was checked; every bound has a value.

use std::time::Duration;

use crate::template::{Template, Var};

/// A loaded, validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name (defaults to the file stem).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Final parameter values, after `--set`.
    pub params: Vec<(String, String)>,
    /// Parameters marked `secret = true`: requests and services get their values, reports,
    /// `summary.json` and the history show `…`.
    pub secret_params: Vec<String>,
    /// The run's seed: schedule, keys, bodies and fault decisions derive from it.
    pub seed: u64,
    /// How long load is generated.
    pub duration: Duration,
    /// Bound on operations across all callers.
    pub max_ops: u64,
    /// How long to wait after load for in-flight operations and background work.
    pub drain: Duration,
    /// Bound on operations in flight at once.
    pub max_in_flight: usize,
    /// Hosts other than loopback that services may be reached at.
    pub allow_hosts: Vec<String>,
    /// Fields of the services' own log lines compared between violating and clean keys
    /// (`cache`, `db_wait_ms`, `feature_flag`).
    pub dimensions: Vec<String>,
    /// The database the service uses and invariants are checked against.
    pub database: Option<Database>,
    /// Systems under test.
    pub services: Vec<Service>,
    /// Things the services call, which reprod stands in for or in front of.
    pub dependencies: Vec<Dependency>,
    /// Side-effect receivers.
    pub sinks: Vec<Sink>,
    /// Sources of operations.
    pub callers: Vec<Caller>,
    /// What must hold.
    pub invariants: Vec<Invariant>,
    /// Requests run once the services are ready and before the load clock starts, in order.
    pub setup: Vec<SetupStep>,
    /// Limits that fail the run.
    pub thresholds: Thresholds,
    /// Set when the `overlap` condition is switched off: operations on one key never run at the
    /// same time (across callers).
    pub serialize_keys: bool,
    /// Set by `reprod run --stop-at-violation` (never by the file): the load stops at the first
    /// violation a mid-run check (`every`) finds, for runs whose only question is whether it
    /// reproduces.
    pub stop_at_violation: bool,
}

/// The database under test.
#[derive(Clone, Debug)]
pub struct Database {
    /// `sqlite:PATH` or `postgres://...`; may use `{run_dir}`.
    pub url: Template,
    /// On PostgreSQL: every run gets a scratch database of its own on that server, dropped
    /// afterwards (services and invariants use it instead of the named one).
    pub fresh: Option<FreshDatabase>,
    /// Whether the services reach it through reprod's PostgreSQL proxy.
    pub proxy: ProxyMode,
    /// The loopback port the proxy listens on; `None`: any free one. A service reprod does
    /// not start is pointed at this port by its owner.
    pub proxy_port: Option<u16>,
    /// The key a statement is about, for statements that carry no trace.
    pub key: Option<StatementKey>,
    /// Statement faults the proxy injects.
    pub faults: Vec<DbFault>,
}

/// `[database] proxy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Services connect to the database directly.
    Off,
    /// Through the proxy; a SQLite URL is an error.
    On,
    /// Through the proxy when the URL is PostgreSQL, directly when it is SQLite (resolved to
    /// `On` or `Off` when the scenario loads).
    Auto,
}

/// How the proxy finds the key of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatementKey {
    /// The bind parameter with this 1-based index (`$1`).
    Param(usize),
    /// The first capture group of this regular expression over the statement's text.
    Regex(String),
    /// The value given to this column: `column = $N` or `column = 'literal'` in the text, or
    /// the column's place in an `INSERT ... (columns) VALUES (...)`.
    Column(String),
}

/// A kind of SQL statement, from its first word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// `SELECT`, `WITH ... SELECT`, `VALUES`, `SHOW`.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// Anything else (DDL, `SET`, `COPY`, ...).
    Other,
}

impl StatementKind {
    /// Every kind, with its name.
    pub const NAMES: [(&'static str, StatementKind); 8] = [
        ("select", StatementKind::Select),
        ("insert", StatementKind::Insert),
        ("update", StatementKind::Update),
        ("delete", StatementKind::Delete),
        ("begin", StatementKind::Begin),
        ("commit", StatementKind::Commit),
        ("rollback", StatementKind::Rollback),
        ("other", StatementKind::Other),
    ];

    /// Its name in scenarios and the history.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("other", |(n, _)| n)
    }
}

/// One `[[database.fault]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DbFault {
    /// What happens.
    pub kind: DbFaultKind,
    /// Chance that a matching statement gets it (0..=1).
    pub probability: f64,
    /// Only statements of this kind.
    pub statement: Option<StatementKind>,
    /// Only statements whose normalised text this regular expression matches.
    pub text: Option<String>,
    /// Only statements about this key.
    pub key: Option<String>,
    /// Active from this time after the load started...
    pub from: Duration,
    /// ... until this one (`None` = the end).
    pub to: Option<Duration>,
}

impl DbFault {
    /// Whether it only delays (`slow_database`) rather than fails (`database_faults`).
    pub fn is_latency(&self) -> bool {
        matches!(self.kind, DbFaultKind::Latency(_))
    }
}

/// What a statement fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum DbFaultKind {
    /// Hold the statement this long before forwarding it.
    Latency(Latency),
    /// Answer an error with this SQLSTATE instead of running it.
    Error {
        /// Five characters: `40001`, `40P01`, `57014`, `23505`.
        sqlstate: String,
        /// The error's message.
        message: String,
    },
    /// Close the service's connection instead of running it.
    Reset,
    /// Run it (a `COMMIT`, typically), then close the connection before the answer.
    Ambiguous,
}

/// How a run's scratch PostgreSQL database is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreshDatabase {
    /// `CREATE DATABASE ... TEMPLATE` this prepared database.
    pub template: Option<String>,
    /// Run this SQL file in it first (schema, seed data); resolved against the scenario file.
    pub schema: Option<std::path::PathBuf>,
    /// Scratch names start with this (`[a-z0-9_]`, default `reprod_`).
    pub prefix: String,
}

/// A system under test.
#[derive(Clone, Debug)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// How it is reached.
    pub kind: ServiceKind,
    /// The directory a command service runs in (relative paths in the scenario are relative to
    /// the scenario file); `None`: reprod's own.
    pub cwd: Option<std::path::PathBuf>,
    /// Run once before any replica starts (migrations, seeds), with the service's env and cwd.
    pub prepare: Option<Vec<Template>>,
    /// Deadline of `prepare` (and of `reset`).
    pub prepare_timeout: Duration,
    /// For a service at a url: how its state is made fresh before each run and trial.
    pub reset: Option<Reset>,
    /// Replica count (1 for an external URL).
    pub replicas: u32,
    /// Where `{port}` comes from: any free port, or the first free one in this range (both
    /// ends included).
    pub ports: Option<(u16, u16)>,
    /// Version label per replica, cycled when shorter than `replicas`.
    pub versions: Vec<String>,
    /// Readiness probe path (HTTP GET, 2xx = ready).
    pub ready_path: Option<String>,
    /// Stdout line prefix after which the rest of the line is the replica's URL.
    pub stdout_prefix: Option<String>,
    /// A regular expression a stdout line must match to mean ready; its first capture group,
    /// when it has one, is the replica's URL.
    pub stdout_regex: Option<String>,
    /// Deadline for readiness.
    pub ready_timeout: Duration,
    /// How attempts are spread over replicas.
    pub balance: Balance,
    /// Extra arguments passed when `pool_pressure` is on.
    pub pressure_args: Vec<Template>,
    /// Extra environment passed when `pool_pressure` is on.
    pub pressure_env: Vec<(String, Template)>,
    /// How its output lines are read into the history (`service_logs`); `None`: they are only
    /// kept in its log files.
    pub logs: Option<LogSpec>,
}

/// `logs = {...}`: how a service's output lines become `service_logs` rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSpec {
    /// How a line is split into fields.
    pub format: LogFormat,
    /// The field holding the trace (a W3C trace id or a `traceparent`); `None`: the usual
    /// names (`traceparent`, `trace_id`, `traceId`, `trace.id`).
    pub trace: Option<String>,
    /// The field holding the service's own time (RFC 3339, or seconds, milliseconds,
    /// microseconds or nanoseconds since the Unix epoch); `None`: `time`, `timestamp`, `ts`,
    /// `@timestamp`.
    pub time: Option<String>,
    /// The field holding the message; `None`: `msg`, `message`, `event`.
    pub message: Option<String>,
    /// The field holding the key the line is about; `None`: the line has no key of its own
    /// (it joins by trace only).
    pub key: Option<String>,
    /// The field holding the level; `None`: `level`, `severity`, `lvl`.
    pub level: Option<String>,
    /// Most lines of this service kept per run; later ones are counted, not stored.
    pub max_lines: u64,
}

/// How a log line is split into fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line; a field name starting with `/` is a JSON pointer.
    Json,
    /// `key=value key2="quoted value"` pairs.
    Logfmt,
    /// A regular expression; its named groups are the fields.
    Regex(String),
}

impl LogFormat {
    /// `json`, `logfmt` or `regex`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Logfmt => "logfmt",
            LogFormat::Regex(_) => "regex",
        }
    }
}

impl Service {
    /// Whether its command or env names `{otlp.url}`.
    pub fn uses_otlp(&self) -> bool {
        use crate::template::Var;
        match &self.kind {
            ServiceKind::Command { command, env } => command
                .iter()
                .chain(env.iter().map(|(_, t)| t))
                .chain(&self.pressure_args)
                .chain(self.pressure_env.iter().map(|(_, t)| t))
                .any(|t| t.uses(|v| *v == Var::OtlpUrl)),
            ServiceKind::External { .. } => false,
        }
    }
}

/// How a service reprod does not start gets fresh state before each run and trial.
#[derive(Clone, Debug)]
pub enum Reset {
    /// A command, run in the scenario's directory; it must exit 0.
    Command {
        /// Program and arguments.
        argv: Vec<Template>,
        /// The scenario's directory.
        cwd: std::path::PathBuf,
    },
    /// A SQL file run in the scenario's `[database]`.
    Sql(std::path::PathBuf),
}

/// How a service is reached.
#[derive(Clone, Debug)]
pub enum ServiceKind {
    /// reprod starts it.
    Command {
        /// Program and arguments.
        command: Vec<Template>,
        /// Environment added to reprod's own.
        env: Vec<(String, Template)>,
    },
    /// Already running.
    External {
        /// Base URL.
        url: String,
    },
}

/// Replica choice per attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    RoundRobin,
    /// Drawn from the seeded RNG.
    Random,
    /// By a hash of the key: one key always lands on one replica.
    Key,
}

/// A source of operations.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Unique name.
    pub name: String,
    /// Index into `Scenario::services`.
    pub service: usize,
    /// What each attempt sends.
    pub request: RequestTemplate,
    /// When operations arrive.
    pub arrival: Arrival,
    /// Which keys operations are about.
    pub keys: Keys,
    /// Operations per arrival on the same key, and how close together.
    pub overlap: Overlap,
    /// Queue age: generated at t, sent at t + delay.
    pub delay: Duration,
    /// Client timeout per attempt.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: Retry,
    /// Idempotency-key policy.
    pub idempotency: Idempotency,
    /// The statuses that mean the operation succeeded (default: any 2xx): its outcome, its
    /// retries and the response invariants follow them.
    pub ok: RetryOn,
    /// No operation of this caller is generated at or after this load time (`None`: the run's
    /// duration). Set when `concurrent_callers` is off, so a caller moved to a later slice is
    /// cut where the run would have cut it.
    pub until: Option<Duration>,
}

/// A setup step: a request run once (or once per key) before the load, whose answer's values
/// are captured for later steps and callers.
#[derive(Clone, Debug)]
pub struct SetupStep {
    /// Unique name.
    pub name: String,
    /// Index into `Scenario::services`.
    pub service: usize,
    /// What it sends (setup scope: `{key}` in a per-key step, `{uuid}`, earlier captures).
    pub request: RequestTemplate,
    /// The statuses that mean it worked (default any 2xx).
    pub expect: RetryOn,
    /// Name → where in the answer the value is.
    pub captures: Vec<(String, Capture)>,
    /// Run once per key of this key space (its captures are `{key.NAME}` for callers on these
    /// keys), at most `concurrency` at once; `None`: once (captures are `{setup.NAME}`).
    pub for_each: Option<(Keys, usize)>,
    /// Deadline of one request.
    pub timeout: Duration,
}

/// Where a setup step finds a value in its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// A JSON pointer into the body.
    Json(String),
    /// A response header (lower case).
    Header(String),
    /// A cookie the answer sets.
    Cookie(String),
    /// The first capture group (or the whole match) of a regular expression over the body.
    Regex(String),
}

/// What reports show instead of a secret's value.
pub const REDACTED: &str = "…";

impl Scenario {
    /// Whether an invariant is checked while the load runs (a SQL invariant with `every`).
    pub fn checks_mid_run(&self) -> bool {
        self.database.is_some()
            && self
                .invariants
                .iter()
                .any(|i| matches!(i.kind, InvariantKind::Sql { every: Some(_), .. }))
    }

    /// Whether a service's command or env names `{otlp.url}`: then reprod serves OTLP/HTTP.
    pub fn uses_otlp(&self) -> bool {
        self.services.iter().any(Service::uses_otlp)
    }

    /// The parameters as reports may show them: secret values replaced by [`REDACTED`].
    pub fn shown_params(&self) -> Vec<(String, String)> {
        self.params
            .iter()
            .map(|(k, v)| {
                let shown = if self.secret_params.contains(k) {
                    REDACTED.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

impl Caller {
    /// When its first operation can arrive (after the load starts, queue delay not counted).
    pub fn first_arrival(&self) -> Duration {
        match &self.arrival {
            Arrival::Constant { start, .. } | Arrival::Poisson { start, .. } => *start,
            Arrival::Burst { at, .. } | Arrival::Batch { at, .. } => *at,
        }
    }
}

/// A request template.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    /// HTTP method, upper case.
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: Template,
    /// Headers.
    pub headers: Vec<(String, Template)>,
    /// Body, sent with `content-type: application/json` unless a header says otherwise.
    pub body: Option<Template>,
}

impl Caller {
    /// The operation it sends, as `POST /orders/{}`: the method and the path with its
    /// placeholders blanked, so two callers sending the same request on different keys say the
    /// same.
    pub fn operation(&self) -> String {
        let mut out = format!("{} ", self.request.method);
        for segment in &self.request.path.segments {
            match segment {
                crate::template::Segment::Lit(text) => out.push_str(text),
                crate::template::Segment::Var(_) => out.push_str("{}"),
            }
        }
        out
    }
}

impl RequestTemplate {
    /// Whether the path, a header or the body has a placeholder that satisfies `pred`.
    pub fn uses(&self, pred: impl Fn(&Var) -> bool) -> bool {
        self.path.uses(&pred)
            || self.headers.iter().any(|(_, h)| h.uses(&pred))
            || self.body.as_ref().is_some_and(|b| b.uses(&pred))
    }
}

/// Arrival process of a caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrival {
    /// Evenly spaced at `rate_per_s` between `start` and `stop`.
    Constant {
        /// Arrivals per second.
        rate_per_s: f64,
        /// First arrival.
        start: Duration,
        /// No arrival after (capped by the run duration).
        stop: Option<Duration>,
    },
    /// Exponential gaps with mean 1/`rate_per_s`.
    Poisson {
        /// Mean arrivals per second.
        rate_per_s: f64,
        /// First possible arrival.
        start: Duration,
        /// No arrival after.
        stop: Option<Duration>,
    },
    /// `count` arrivals at `at`, on drawn keys.
    Burst {
        /// Arrivals.
        count: u64,
        /// When.
        at: Duration,
    },
    /// One arrival per key, all keys, starting at `at`, spread evenly over `spread`.
    Batch {
        /// When.
        at: Duration,
        /// Over how long.
        spread: Duration,
    },
}

/// Key space and distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Keys {
    /// Number of distinct keys.
    pub count: u64,
    /// Keys are `prefix` + index; callers with one prefix share keys. With `file`, the file's
    /// path as written (`file:users.csv`), which only says which callers share keys.
    pub prefix: String,
    /// How keys are drawn.
    pub distribution: KeyDistribution,
    /// Keys read from a file: key `i` is `file.keys[i]`, not `prefix` + `i`.
    pub file: Option<std::sync::Arc<KeyFile>>,
}

impl Keys {
    /// The text of key `index`: the file's key, or `prefix` + `index`.
    #[inline]
    pub fn name(&self, index: u64) -> String {
        use std::fmt::Write as _;
        match &self.file {
            Some(file) => file.keys[index as usize].clone(),
            None => {
                let mut key = String::with_capacity(self.prefix.len() + 20);
                key.push_str(&self.prefix);
                let _ = write!(key, "{index}");
                key
            }
        }
    }
}

/// Keys and their values, from `keys = { file = "..." }`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyFile {
    /// The keys, in file order.
    pub keys: Vec<String>,
    /// The other columns: `{key.COLUMN}`.
    pub columns: Vec<String>,
    /// Per key, its value in each of `columns`.
    pub values: Vec<Vec<String>>,
}

/// How keys are drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Rank r drawn with probability ∝ 1/r^s.
    Zipf {
        /// Exponent (> 0).
        s: f64,
    },
    /// A hot set: `fraction` of the keys receives `share` of the operations.
    Hot {
        /// Share of keys that are hot (0..1).
        fraction: f64,
        /// Share of operations they get (0..1).
        share: f64,
    },
}

/// Deliberate same-key concurrency.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlap {
    /// Operations per arrival on one key (1 = none).
    pub k: u32,
    /// The extra operations start uniformly within this window after the first.
    pub window: Duration,
    /// How the group's first attempts are sent together.
    pub sync: OverlapSync,
}

/// How an overlap group's first attempts are sent together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverlapSync {
    /// Each at its own time within `window`.
    #[default]
    Window,
    /// Last-byte synchronisation: each member on its own connection writes all of its request
    /// but the final byte; when every member has, the final bytes go out together.
    LastByte,
}

/// Client retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// Growth of the wait between attempts.
    pub backoff: Backoff,
    /// First wait.
    pub base: Duration,
    /// Largest wait.
    pub max: Duration,
    /// Randomisation of the wait.
    pub jitter: Jitter,
    /// Which outcomes are retried.
    pub on: RetryOn,
    /// Wait what `Retry-After` says when the answer has it (capped by `max`).
    pub respect_retry_after: bool,
    /// Retries allowed as a share of operations (token-bucket style), `None` = unlimited.
    pub budget: Option<f64>,
}

/// Backoff growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// Always `base`.
    Constant,
    /// `base * 2^(attempt-1)`, capped at `max`.
    Exponential,
}

/// Backoff randomisation (AWS architecture blog terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// The computed wait.
    None,
    /// Uniform in [0, wait].
    Full,
    /// wait/2 + uniform in [0, wait/2].
    Equal,
}

/// Outcomes that trigger a retry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The client timeout fired.
    pub timeout: bool,
    /// Connecting or exchanging failed.
    pub connect: bool,
    /// Exact statuses.
    pub statuses: Vec<u16>,
    /// Status classes (5 = any 5xx).
    pub classes: Vec<u16>,
}

impl RetryOn {
    /// Whether an answer with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        self.statuses.contains(&status) || self.classes.contains(&(status / 100))
    }
}

/// Idempotency-key policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// When a key is minted.
    pub mode: IdempotencyMode,
    /// Header that carries it.
    pub header: String,
}

/// When an idempotency key is minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdempotencyMode {
    /// No key.
    None,
    /// One per operation, reused by its retries.
    PerOp,
    /// A new one per attempt (the bug many clients have).
    PerAttempt,
}

/// Something the services call.
#[derive(Clone, Debug)]
pub struct Dependency {
    /// Unique name.
    pub name: String,
    /// Stub or proxy.
    pub mode: DependencyMode,
    /// Added latency; `None` = none.
    pub latency: Option<Latency>,
    /// How a call names its key.
    pub key: Option<KeyExtract>,
    /// Fault rules, in order; the first that matches and fires decides.
    pub faults: Vec<FaultRule>,
}

/// One fault rule of a dependency.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// What happens.
    pub kind: FaultKind,
    /// Chance that a matching call gets it (0..=1).
    pub probability: f64,
    /// Which calls it applies to.
    pub matcher: Matcher,
    /// Active from this time in the run...
    pub from: Duration,
    /// ... until this one (`None` = the end).
    pub to: Option<Duration>,
}

/// What a fault does to a call.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Answer this status and body instead (after the latency).
    Error {
        /// Status.
        status: u16,
        /// Body.
        body: String,
    },
    /// A token bucket: past `rate_per_s` (with `burst`), answer 429 with `Retry-After`.
    Throttle {
        /// Tokens per second.
        rate_per_s: f64,
        /// Bucket size.
        burst: u32,
        /// `Retry-After` sent.
        retry_after: Duration,
    },
    /// Never answer; the caller gives up.
    Hang,
    /// Close the connection without an answer.
    Reset,
    /// Apply the call (stub answer made, or forwarded upstream), then lose the answer.
    Ambiguous {
        /// How the answer is lost.
        mode: AmbiguousMode,
    },
    /// Forward the call upstream twice (proxies only).
    Duplicate,
}

/// How an ambiguous fault loses the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmbiguousMode {
    /// Keep the connection open and never answer.
    Drop,
    /// Close the connection.
    Reset,
    /// Answer after this long (past the caller's deadline, usually).
    Delay(Duration),
}

/// Which calls a fault rule applies to; every part set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    /// HTTP method, upper case.
    pub method: Option<String>,
    /// Path glob: `*` matches any run of characters.
    pub path: Option<String>,
    /// Header name (lower case) and, optionally, the value it must have.
    pub header: Option<(String, Option<String>)>,
    /// The extracted key.
    pub key: Option<String>,
}

impl Matcher {
    /// Whether a call matches.
    pub fn matches(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<String>,
        key: Option<&str>,
    ) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path.as_ref().is_none_or(|p| glob(p, path))
            && self.key.as_ref().is_none_or(|k| Some(k.as_str()) == key)
            && self
                .header
                .as_ref()
                .is_none_or(|(name, value)| match (header(name), value) {
                    (Some(v), Some(want)) => v == *want,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
    }
}

/// `*` matches any run of characters (including `/`); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// How a dependency answers.
#[derive(Clone, Debug)]
pub enum DependencyMode {
    /// reprod answers itself.
    Stub {
        /// Status.
        status: u16,
        /// Headers.
        headers: Vec<(String, String)>,
        /// JSON body template.
        body: Template,
    },
    /// reprod forwards to a real upstream.
    Proxy {
        /// Base URL of the upstream.
        upstream: String,
    },
}

/// A latency shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Latency {
    /// Always the same.
    Fixed(Duration),
    /// Uniform between two bounds.
    Uniform {
        /// Lower bound.
        min: Duration,
        /// Upper bound.
        max: Duration,
    },
    /// Given percentiles, met exactly by a piecewise log-normal (see the engine's sampler).
    Percentiles {
        /// Median.
        p50: Duration,
        /// 95th percentile.
        p95: Option<Duration>,
        /// 99th percentile.
        p99: Option<Duration>,
        /// 99.9th percentile.
        p999: Option<Duration>,
    },
}

/// Where a request names its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyExtract {
    /// 0-based path segment (`/usage/{0}/...` is segment 1).
    PathSegment(usize),
    /// The first capture group of a regular expression matched against the path.
    PathRegex(String),
    /// JSON pointer into the body.
    JsonPointer(String),
    /// A header.
    Header(String),
}

/// A side-effect receiver.
#[derive(Clone, Debug)]
pub struct Sink {
    /// Unique name.
    pub name: String,
    /// Status answered.
    pub status: u16,
    /// Added latency.
    pub latency: Option<Latency>,
    /// How a delivery names its key.
    pub key: Option<KeyExtract>,
    /// Header that carries the idempotency key.
    pub idempotency_header: String,
    /// Honour idempotency keys like a real provider: a repeated key gets the first answer and
    /// is recorded as a duplicate.
    pub dedupe: bool,
}

/// Something that must hold after the run.
#[derive(Clone, Debug)]
pub struct Invariant {
    /// Unique name, as reports show it.
    pub name: String,
    /// How it is checked.
    pub kind: InvariantKind,
}

/// How an invariant is checked.
#[derive(Clone, Debug)]
pub enum InvariantKind {
    /// A read-only query whose rows are violations.
    Sql {
        /// The query.
        query: String,
        /// Column that names the key of each row.
        key_column: String,
        /// Also check this often during the run, to learn when each violation first appeared.
        every: Option<Duration>,
    },
    /// A delivery-count rule on a sink.
    Sink {
        /// Index into `Scenario::sinks`.
        sink: usize,
        /// The rule.
        rule: SinkRule,
        /// Deliveries that share an idempotency key count once.
        same_idempotency_key_once: bool,
    },
    /// Jepsen's counter check: a query returns (key, value) and each value must lie between the
    /// operations confirmed ok and those attempted (ok + ambiguous) on that key.
    Counter {
        /// The query: the key column and the value column (`key_column`, `value`).
        query: String,
        /// Column that names the key.
        key_column: String,
        /// Only this caller's operations count (`None` = all).
        caller: Option<String>,
    },
    /// All successful responses for one key agree on a field.
    ResponsesAgree {
        /// JSON pointer into the response body.
        pointer: String,
        /// Only this caller's operations (`None` = all).
        caller: Option<String>,
    },
    /// No attempt answered one of these statuses.
    NoStatus {
        /// The statuses and classes that must not appear.
        statuses: RetryOn,
        /// Only this caller's operations (`None` = all).
        caller: Option<String>,
    },
}

/// Delivery-count rules per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkRule {
    /// Exactly one delivery per key seen.
    ExactlyOnce,
    /// No key delivered twice.
    AtMostOnce,
    /// Every key an operation completed ok for got at least one delivery.
    AtLeastOnce,
}

/// Limits that fail the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    /// p99 latency bound (from intended start).
    pub p99: Option<Duration>,
    /// Largest share of operations that may fail.
    pub error_rate: Option<f64>,
    /// Smallest acceptable goodput.
    pub min_goodput_rps: Option<f64>,
}

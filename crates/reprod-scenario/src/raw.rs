//! The scenario file as written: serde types that mirror the TOML, with spans for every value
//! that validation may complain about. Nothing here is checked beyond TOML types; `validate`
//! turns it into the plan the engine sees.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

/// A number or boolean as written: the value itself, or a string holding `{param.NAME}`, which
/// validation substitutes before it checks the value.
pub type Scalar = S<toml::Value>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub name: Option<S<String>>,
    pub description: Option<String>,
    pub seed: Option<Scalar>,
    pub duration: Option<S<String>>,
    pub max_ops: Option<Scalar>,
    pub drain: Option<S<String>>,
    pub max_in_flight: Option<Scalar>,
    #[serde(default)]
    pub allow_hosts: Vec<S<String>>,
    #[serde(default)]
    pub dimensions: Vec<S<String>>,
    #[serde(default)]
    pub params: BTreeMap<String, S<toml::Value>>,
    pub database: Option<RawDatabase>,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
    #[serde(default, rename = "dependency")]
    pub dependencies: Vec<RawDependency>,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<RawSink>,
    #[serde(default, rename = "caller")]
    pub callers: Vec<RawCaller>,
    #[serde(default, rename = "invariant")]
    pub invariants: Vec<RawInvariant>,
    #[serde(default, rename = "setup")]
    pub setup: Vec<RawSetup>,
    pub thresholds: Option<RawThresholds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: S<String>,
    pub fresh: Option<Scalar>,
    pub template: Option<S<String>>,
    pub schema: Option<S<String>>,
    pub scratch_prefix: Option<S<String>>,
    pub proxy: Option<Scalar>,
    pub proxy_port: Option<Scalar>,
    pub key: Option<S<RawDbKey>>,
    #[serde(default, rename = "fault")]
    pub faults: Vec<RawDbFault>,
}

/// `key = { param = 1 }` or `key = { regex = "..." }`: the key a statement is about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbKey {
    pub param: Option<Scalar>,
    pub regex: Option<S<String>>,
    pub column: Option<S<String>>,
}

/// `[[database.fault]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbFault {
    pub kind: S<String>,
    pub probability: Option<S<toml::Value>>,
    pub latency: Option<RawLatency>,
    pub sqlstate: Option<S<String>>,
    pub message: Option<S<String>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawDbMatch>,
    pub from: Option<S<String>>,
    pub to: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbMatch {
    pub statement: Option<S<String>>,
    pub text: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: S<String>,
    pub command: Option<S<Vec<S<String>>>>,
    pub prepare: Option<S<Vec<S<String>>>>,
    pub prepare_timeout: Option<S<String>>,
    pub reset: Option<S<Vec<S<String>>>>,
    pub reset_sql: Option<S<String>>,
    pub ports: Option<S<String>>,
    pub cwd: Option<S<String>>,
    pub url: Option<S<String>>,
    pub replicas: Option<Scalar>,
    #[serde(default)]
    pub versions: Vec<S<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, S<String>>,
    pub ready: Option<RawReady>,
    pub balance: Option<S<String>>,
    #[serde(default)]
    pub pressure_args: Vec<S<String>>,
    #[serde(default)]
    pub pressure_env: BTreeMap<String, S<String>>,
    pub logs: Option<S<RawLogs>>,
}

/// `logs = { format = "json", trace = "...", ... }`: how a service's output lines are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    pub format: Option<S<String>>,
    pub pattern: Option<S<String>>,
    pub trace: Option<S<String>>,
    pub time: Option<S<String>>,
    pub message: Option<S<String>>,
    pub key: Option<S<String>>,
    pub level: Option<S<String>>,
    pub max_lines: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReady {
    pub path: Option<S<String>>,
    pub stdout_prefix: Option<S<String>>,
    pub stdout: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaller {
    pub name: S<String>,
    pub service: Option<S<String>>,
    pub request: RawRequest,
    pub arrival: Option<S<String>>,
    pub rate: Option<S<toml::Value>>,
    pub count: Option<Scalar>,
    pub at: Option<S<String>>,
    pub start: Option<S<String>>,
    pub stop: Option<S<String>>,
    pub spread: Option<S<String>>,
    pub keys: Option<RawKeys>,
    pub overlap: Option<RawOverlap>,
    pub delay: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub retry: Option<RawRetry>,
    pub idempotency: Option<RawIdempotency>,
    pub ok: Option<S<Vec<S<toml::Value>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    pub method: Option<S<String>>,
    pub path: S<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, S<String>>,
    pub body: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub file: Option<S<String>>,
    pub count: Option<Scalar>,
    pub prefix: Option<S<String>>,
    pub distribution: Option<S<String>>,
    pub s: Option<S<toml::Value>>,
    pub hot_fraction: Option<S<toml::Value>>,
    pub hot_share: Option<S<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverlap {
    pub k: Scalar,
    pub window: Option<S<String>>,
    pub sync: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Scalar,
    pub backoff: Option<S<String>>,
    pub base: Option<S<String>>,
    pub max: Option<S<String>>,
    pub jitter: Option<S<String>>,
    #[serde(default)]
    pub on: Vec<S<toml::Value>>,
    pub respect_retry_after: Option<Scalar>,
    pub budget: Option<S<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub mode: S<String>,
    pub header: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDependency {
    pub name: S<String>,
    pub upstream: Option<S<String>>,
    pub stub: Option<RawStub>,
    pub latency: Option<RawLatency>,
    pub key: Option<RawKeyExtract>,
    #[serde(default, rename = "fault")]
    pub faults: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub kind: S<String>,
    pub probability: Option<S<toml::Value>>,
    pub status: Option<Scalar>,
    pub body: Option<S<String>>,
    pub rate: Option<S<toml::Value>>,
    pub burst: Option<Scalar>,
    pub retry_after: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub delay: Option<S<String>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub from: Option<S<String>>,
    pub to: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub method: Option<S<String>>,
    pub path: Option<S<String>>,
    pub header: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStub {
    pub status: Option<Scalar>,
    #[serde(default)]
    pub headers: BTreeMap<String, S<String>>,
    pub body: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    pub fixed: Option<S<String>>,
    pub min: Option<S<String>>,
    pub max: Option<S<String>>,
    pub p50: Option<S<String>>,
    pub p95: Option<S<String>>,
    pub p99: Option<S<String>>,
    pub p999: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyExtract {
    pub path_segment: Option<Scalar>,
    pub path_regex: Option<S<String>>,
    pub json: Option<S<String>>,
    pub header: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: S<String>,
    pub status: Option<Scalar>,
    pub latency: Option<RawLatency>,
    pub key: Option<RawKeyExtract>,
    pub idempotency_header: Option<S<String>>,
    pub dedupe: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInvariant {
    pub name: S<String>,
    pub sql: Option<S<String>>,
    pub key_column: Option<S<String>>,
    pub sink: Option<S<String>>,
    pub rule: Option<S<String>>,
    pub same_idempotency_key_once: Option<Scalar>,
    pub agree: Option<S<String>>,
    pub counter: Option<S<String>>,
    pub every: Option<S<String>>,
    pub no_status: Option<S<Vec<S<toml::Value>>>>,
    pub caller: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    pub p99: Option<S<String>>,
    pub error_rate: Option<S<toml::Value>>,
    pub min_goodput_rps: Option<S<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSetup {
    pub name: S<String>,
    pub service: Option<S<String>>,
    pub request: RawRequest,
    pub expect: Option<S<Vec<S<toml::Value>>>>,
    #[serde(default)]
    pub capture: BTreeMap<String, S<RawCapture>>,
    pub for_each: Option<RawForEach>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    pub json: Option<String>,
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForEach {
    pub keys: RawKeys,
    pub concurrency: Option<Scalar>,
}

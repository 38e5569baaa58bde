//! Raw → validated. Every check records a diagnostic at the offending value and carries on, so
//! one `reprod check` lists every problem in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use crate::error::{Diagnostics, nearest};
use crate::model::{
    AmbiguousMode, Arrival, Backoff, Balance, Caller, Database, DbFault, DbFaultKind, Dependency,
    DependencyMode, FaultKind, FaultRule, FreshDatabase, Idempotency, IdempotencyMode, Invariant,
    InvariantKind, Jitter, KeyDistribution, KeyExtract, KeyFile, Keys, Latency, LogFormat, LogSpec,
    Matcher, Overlap, OverlapSync, ProxyMode, RequestTemplate, Reset, Retry, RetryOn, Scenario,
    Service, ServiceKind, Sink, SinkRule, StatementKey, StatementKind, Thresholds,
};
use crate::raw::{
    RawCaller, RawDatabase, RawDbFault, RawDbKey, RawDependency, RawFault, RawInvariant,
    RawKeyExtract, RawKeys, RawLatency, RawLogs, RawRequest, RawRetry, RawScenario, RawService,
    RawSink, RawThresholds, S,
};
use crate::sql_guard::{Backend, check_read_only};
use crate::template::{Scope, Template, Var};
use crate::units::parse_duration;

/// Default bounds, so every run is bounded even when the scenario says nothing.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default bound on operations.
pub const DEFAULT_MAX_OPS: u64 = 100_000;
/// Default drain after load.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(3);
/// Default bound on operations in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// The longest load a run may generate, from a scenario or from `--duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Checks a load duration against the one documented limit (more than 0, at most 24h): the
/// same words for the scenario's `duration` and for `--duration`.
pub fn check_load_duration(duration: Duration) -> Result<(), String> {
    if duration.is_zero() || duration > MAX_DURATION {
        Err(format!(
            "the load duration must be more than 0 and at most 24h, got {}",
            crate::units::format_duration(duration)
        ))
    } else {
        Ok(())
    }
}
const MAX_OPS_CEILING: u64 = 100_000_000;

struct Cx<'a, 'd> {
    d: &'d mut Diagnostics<'a>,
    params: BTreeMap<String, Template>,
    /// Where relative paths in the scenario start.
    base_dir: std::path::PathBuf,
    /// Key files read so far, by path: callers naming one file share its keys.
    key_files: BTreeMap<std::path::PathBuf, Option<std::sync::Arc<KeyFile>>>,
}

impl Cx<'_, '_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<&str>) {
        self.d.error(span, message, hint);
    }

    /// `text` with every `{param.NAME}` replaced by the parameter's value: how a number, a
    /// duration, a boolean or a choice may come from `[params]` and `--set`. Any other
    /// placeholder is an error, since these values are fixed before the run starts.
    fn substitute(&mut self, span: Range<usize>, text: &str, what: &str) -> Option<String> {
        if !text.contains('{') {
            return Some(text.to_string());
        }
        match Template::parse(text, Scope::Fixed, &self.params) {
            // The fixed scope admits no placeholder, so what parses is literal text.
            Ok(t) => t.as_literal(),
            Err(e) => {
                let hint = self.template_hint(&e);
                self.err(span, format!("{what}: {e}"), Some(&hint));
                None
            }
        }
    }

    fn duration(&mut self, value: &S<String>, what: &str) -> Option<Duration> {
        let text = self.substitute(value.span(), value.get_ref(), what)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                let from = from_param(value.get_ref(), &text);
                self.err(
                    value.span(),
                    format!("{what}: {e}{from}"),
                    Some("durations look like 150ms, 2s or 5m"),
                );
                None
            }
        }
    }

    /// A whole number, written as one or as `"{param.NAME}"`.
    fn integer(&mut self, value: &S<toml::Value>, what: &str) -> Option<i64> {
        match value.get_ref() {
            toml::Value::Integer(i) => Some(*i),
            toml::Value::String(s) => {
                let text = self.substitute(value.span(), s, what)?;
                match text.trim().parse::<i64>() {
                    Ok(i) => Some(i),
                    Err(_) => {
                        let from = from_param(s, &text);
                        self.err(
                            value.span(),
                            format!("{what} must be a whole number, got {text:?}{from}"),
                            Some("write it without quotes, for example 4, or as \"{param.NAME}\" with a whole-number parameter"),
                        );
                        None
                    }
                }
            }
            other => {
                self.err(
                    value.span(),
                    format!("{what} must be a whole number, got {}", type_name(other)),
                    Some("for example 4, or \"{param.NAME}\" to take it from [params]"),
                );
                None
            }
        }
    }

    /// `true` or `false`, written as one or as `"{param.NAME}"`.
    fn flag(&mut self, value: &Option<S<toml::Value>>, what: &str, default: bool) -> bool {
        let Some(value) = value else {
            return default;
        };
        match value.get_ref() {
            toml::Value::Boolean(b) => *b,
            toml::Value::String(s) => {
                let Some(text) = self.substitute(value.span(), s, what) else {
                    return default;
                };
                match text.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        let from = from_param(s, &text);
                        self.err(
                            value.span(),
                            format!("{what} must be true or false, got {text:?}{from}"),
                            Some("write true or false without quotes"),
                        );
                        default
                    }
                }
            }
            other => {
                self.err(
                    value.span(),
                    format!("{what} must be true or false, got {}", type_name(other)),
                    Some("write true or false without quotes"),
                );
                default
            }
        }
    }

    fn duration_or(
        &mut self,
        value: &Option<S<String>>,
        what: &str,
        default: Duration,
    ) -> Duration {
        value
            .as_ref()
            .and_then(|v| self.duration(v, what))
            .unwrap_or(default)
    }

    fn number(&mut self, value: &S<toml::Value>, what: &str) -> Option<f64> {
        match value.get_ref() {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(f) if f.is_finite() => Some(*f),
            toml::Value::String(s) => {
                let text = self.substitute(value.span(), s, what)?;
                match text.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => Some(f),
                    _ => {
                        let from = from_param(s, &text);
                        self.err(
                            value.span(),
                            format!("{what} must be a number, got {text:?}{from}"),
                            Some(
                                "write it without quotes, for example 0.5, or as \"{param.NAME}\"",
                            ),
                        );
                        None
                    }
                }
            }
            other => {
                self.err(
                    value.span(),
                    format!("{what} must be a number, got {}", type_name(other)),
                    Some("for example 0.5, or \"{param.NAME}\" to take it from [params]"),
                );
                None
            }
        }
    }

    fn fraction(&mut self, value: &Option<S<toml::Value>>, what: &str) -> Option<f64> {
        let v = value.as_ref()?;
        let n = self.number(v, what)?;
        if !(0.0..=1.0).contains(&n) {
            self.err(
                v.span(),
                format!("{what} must be between 0 and 1, got {n}"),
                Some("a fraction: 0.25 is a quarter"),
            );
            return None;
        }
        Some(n)
    }

    fn positive(&mut self, value: &S<toml::Value>, what: &str, max: i64) -> Option<u64> {
        let n = self.integer(value, what)?;
        if n < 1 || n > max {
            self.err(
                value.span(),
                format!("{what} must be between 1 and {max}, got {n}"),
                Some(&format!("a whole number from 1 to {max}")),
            );
            return None;
        }
        Some(n as u64)
    }

    fn template(&mut self, value: &S<String>, scope: Scope) -> Option<Template> {
        match Template::parse(value.get_ref(), scope, &self.params) {
            Ok(t) => Some(t),
            Err(e) => {
                let hint = self.template_hint(&e);
                self.err(value.span(), e, Some(&hint));
                None
            }
        }
    }

    /// What to write instead, for a template error: the nearest placeholder or parameter
    /// when the error names a misspelt one.
    fn template_hint(&self, error: &str) -> String {
        const KNOWN: &[&str] = &[
            "key",
            "op",
            "attempt",
            "uuid",
            "seq",
            "idempotency_key",
            "port",
            "run_dir",
            "replica",
            "version",
            "database.url",
            "database.host",
            "database.port",
            "database.name",
            "database.user",
            "database.password",
            "database.path",
        ];
        let written = |marker: &str| {
            let rest = error.strip_prefix(marker)?;
            Some(rest[..rest.find('}')?].to_string())
        };
        if let Some(name) = written("unknown parameter {param.") {
            let known: Vec<String> = self.params.keys().cloned().collect();
            if let Some(near) = nearest(&name, &known) {
                return format!("did you mean {{param.{near}}}?");
            }
            return "declare it under [params], for example [params] NAME = \"value\"".to_string();
        }
        if let Some(name) = written("unknown placeholder {") {
            let known: Vec<String> = KNOWN.iter().map(|k| k.to_string()).collect();
            if let Some(near) = nearest(&name, &known) {
                return format!("did you mean {{{near}}}?");
            }
        }
        "see docs/scenario.md, Placeholders, for which placeholders each field takes".to_string()
    }

    fn choice<T: Copy>(
        &mut self,
        value: &S<String>,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let text = self.substitute(value.span(), value.get_ref(), what)?;
        let found = options.iter().find(|(name, _)| *name == text.as_str());
        if found.is_none() {
            let names: Vec<String> = options.iter().map(|(n, _)| n.to_string()).collect();
            let hint = nearest(&text, &names).map_or_else(
                || format!("write one of them, for example {what} = {:?}", names[0]),
                |n| format!("did you mean {n:?}?"),
            );
            self.err(
                value.span(),
                format!(
                    "{what} {text:?}{} is not one of: {}",
                    from_param(value.get_ref(), &text),
                    names.join(", ")
                ),
                Some(&hint),
            );
        }
        found.map(|(_, v)| *v)
    }
}

/// Validates `raw` (from `source`) with `--set` overrides applied.
pub fn validate(
    raw: RawScenario,
    sets: &[(String, String)],
    default_name: &str,
    base_dir: &std::path::Path,
    d: &mut Diagnostics<'_>,
) -> Option<Scenario> {
    let (params, secret_params) = params(&raw, sets, d);
    let mut cx = Cx {
        d,
        params: BTreeMap::new(),
        base_dir: base_dir.to_path_buf(),
        key_files: BTreeMap::new(),
    };
    for (name, value) in &params {
        match Template::parse(value, Scope::Run, &BTreeMap::new()) {
            Ok(t) => {
                cx.params.insert(name.clone(), t);
            }
            Err(e) => {
                let span = raw.params.get(name).map_or(0..0, |v| v.span());
                cx.err(span, format!("parameter {name:?}: {e}"), Some("a parameter may use {run_dir} and other parameters; write {{ for a literal brace"));
            }
        }
    }

    let name = raw
        .name
        .as_ref()
        .map_or_else(|| default_name.to_string(), |n| n.get_ref().clone());
    let seed = match raw.seed.as_ref().map(|s| (s.span(), cx.integer(s, "seed"))) {
        Some((span, Some(n))) if n < 0 => {
            cx.err(
                span,
                "seed must not be negative",
                Some("any whole number from 0 up; the same seed gives the same schedule"),
            );
            0
        }
        Some((_, n)) => n.unwrap_or(0) as u64,
        None => 1,
    };
    let duration = cx.duration_or(&raw.duration, "duration", DEFAULT_DURATION);
    if let Err(e) = check_load_duration(duration) {
        let span = raw.duration.as_ref().map_or(0..0, |v| v.span());
        cx.err(span, e, Some("for example duration = \"30s\""));
    }
    let max_ops = raw
        .max_ops
        .as_ref()
        .and_then(|v| cx.positive(v, "max_ops", MAX_OPS_CEILING as i64))
        .unwrap_or(DEFAULT_MAX_OPS);
    let drain = cx.duration_or(&raw.drain, "drain", DEFAULT_DRAIN);
    let max_in_flight = raw
        .max_in_flight
        .as_ref()
        .and_then(|v| cx.positive(v, "max_in_flight", 1_000_000))
        .map_or(DEFAULT_MAX_IN_FLIGHT, |n| n as usize);
    let allow_hosts = raw
        .allow_hosts
        .iter()
        .map(|h| h.get_ref().clone())
        .collect::<Vec<_>>();

    let database = raw.database.as_ref().and_then(|db| {
        let url = cx.template(&db.url, Scope::Run)?;
        if let Some(text) = url.as_literal()
            && !(text.starts_with("sqlite:")
                || text.starts_with("postgres://")
                || text.starts_with("postgresql://"))
        {
            cx.err(
                db.url.span(),
                format!("database url {text:?} is neither sqlite: nor postgres://"),
                Some("for example url = \"sqlite:{run_dir}/app.db\" or url = \"postgres://user@127.0.0.1:5432/app\""),
            );
        }
        let fresh = cx.flag(&db.fresh, "database.fresh", false);
        let postgres = match url.segments.first() {
            Some(crate::template::Segment::Lit(t)) => Backend::of_url(t) == Backend::Postgres,
            _ => false,
        };
        for (given, what) in [(&db.template, "template"), (&db.schema, "schema")] {
            if let Some(v) = given
                && !fresh
            {
                cx.err(
                    v.span(),
                    format!("database.{what} makes each run's scratch database, so it needs fresh = true"),
                    Some("add fresh = true to [database]"),
                );
            }
        }
        if fresh && !postgres {
            let span = db.fresh.as_ref().map_or(db.url.span(), |f| f.span());
            cx.err(
                span,
                "fresh = true makes a scratch PostgreSQL database per run; this URL is not postgres://",
                Some("a SQLite file under {run_dir} is fresh already: url = \"sqlite:{run_dir}/app.db\""),
            );
        }
        let prefix = db
            .scratch_prefix
            .as_ref()
            .map_or_else(|| "reprod_".to_string(), |p| p.get_ref().clone());
        if !prefix.is_empty()
            && !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            let span = db.scratch_prefix.as_ref().map_or(0..0, |p| p.span());
            cx.err(span, "scratch_prefix may hold only a-z, 0-9 and _", Some("for example scratch_prefix = \"shop_test_\""));
        }
        let fresh = fresh.then(|| FreshDatabase {
            template: db.template.as_ref().map(|t| t.get_ref().clone()),
            schema: db.schema.as_ref().map(|f| base_dir.join(f.get_ref())),
            prefix,
        });
        let sqlite = matches!(url.segments.first(),
            Some(crate::template::Segment::Lit(t)) if t.starts_with("sqlite:"));
        let proxy = database_proxy(&mut cx, db, sqlite);
        let key = db.key.as_ref().and_then(|k| statement_key(&mut cx, k));
        let mut faults: Vec<DbFault> = db
            .faults
            .iter()
            .filter_map(|f| db_fault(&mut cx, f))
            .collect();
        // "auto" on SQLite: no proxy, so its statement faults have nothing to act on.
        let proxy = match proxy {
            ProxyMode::Auto if sqlite => {
                faults.clear();
                ProxyMode::Off
            }
            ProxyMode::Auto => ProxyMode::On,
            other => other,
        };
        if proxy == ProxyMode::Off
            && db.proxy.as_ref().is_none_or(|p| p.get_ref().as_str() != Some("auto"))
            && let Some(f) = db.faults.first()
        {
            cx.err(
                f.kind.span(),
                "statement faults are injected by reprod's database proxy, which is off",
                Some("add proxy = true (or \"auto\") to [database]"),
            );
        }
        let proxy_port = db.proxy_port.as_ref().and_then(|p| {
            let port = cx.positive(p, "database.proxy_port", 65_535)? as u16;
            if proxy == ProxyMode::Off {
                cx.err(
                    p.span(),
                    "proxy_port says where the database proxy listens, and the proxy is off",
                    Some("add proxy = true to [database], or drop proxy_port"),
                );
            }
            Some(port)
        });
        Some(Database {
            url,
            fresh,
            proxy,
            proxy_port,
            key,
            faults,
        })
    });

    let dependencies = unique_names(
        &mut cx,
        raw.dependencies.iter().map(|d| &d.name),
        "dependency",
    );
    let sinks_names = unique_names(&mut cx, raw.sinks.iter().map(|s| &s.name), "sink");
    let service_names = unique_names(&mut cx, raw.services.iter().map(|s| &s.name), "service");
    unique_names(&mut cx, raw.callers.iter().map(|c| &c.name), "caller");
    unique_names(
        &mut cx,
        raw.invariants.iter().map(|i| &i.name),
        "invariant name",
    );

    let services: Vec<Service> = raw
        .services
        .iter()
        .filter_map(|s| {
            service(
                &mut cx,
                s,
                &dependencies,
                &sinks_names,
                &allow_hosts,
                raw.database.is_some(),
                base_dir,
            )
        })
        .collect();
    let telemetry =
        raw.services.iter().any(|s| s.logs.is_some()) || services.iter().any(Service::uses_otlp);
    let dimensions = dimensions(&mut cx, &raw.dimensions, telemetry);
    let deps: Vec<Dependency> = raw
        .dependencies
        .iter()
        .filter_map(|x| dependency(&mut cx, x, &allow_hosts))
        .collect();
    let sinks: Vec<Sink> = raw.sinks.iter().filter_map(|x| sink(&mut cx, x)).collect();
    let callers: Vec<Caller> = raw
        .callers
        .iter()
        .filter_map(|c| caller(&mut cx, c, &service_names))
        .collect();
    if let (Some(db), Some(raw_db)) = (&database, &raw.database)
        && db.fresh.is_some()
        && let Some(external) = raw.services.iter().find(|s| s.url.is_some())
    {
        cx.err(
            raw_db.fresh.as_ref().map_or(raw_db.url.span(), |f| f.span()),
            format!(
                "fresh = true gives the services reprod starts a new database per run, but service {:?} is already running at a url and would not see it",
                external.name.get_ref()
            ),
            Some("start that service with command = [...] and {database.url}, or drop fresh"),
        );
    }
    let backend = database.as_ref().map(|db| match db.url.segments.first() {
        Some(crate::template::Segment::Lit(text)) => Backend::of_url(text),
        _ => Backend::Unknown,
    });
    let invariants: Vec<Invariant> = raw
        .invariants
        .iter()
        .filter_map(|i| invariant(&mut cx, i, &sinks_names, backend))
        .collect();
    let thresholds = raw
        .thresholds
        .as_ref()
        .map(|t| thresholds(&mut cx, t))
        .unwrap_or_default();
    unique_names(&mut cx, raw.setup.iter().map(|s| &s.name), "setup step");
    let setup = setup_steps(&mut cx, &raw.setup, &service_names);
    check_captures(&mut cx, &raw, &setup, &callers);

    if raw.callers.is_empty() {
        cx.err(
            0..0,
            "the scenario has no [[caller]]",
            Some("add a [[caller]] with a request, a rate and keys"),
        );
    }
    if raw.services.is_empty() {
        cx.err(
            0..0,
            "the scenario has no [[service]]",
            Some("add a [[service]] with a command or a url"),
        );
    }
    if !cx.d.is_empty() {
        return None;
    }
    Some(Scenario {
        name,
        description: raw.description.clone().unwrap_or_default(),
        params,
        secret_params,
        seed,
        duration,
        max_ops,
        drain,
        max_in_flight,
        allow_hosts,
        dimensions,
        database,
        services,
        dependencies: deps,
        sinks,
        callers,
        invariants,
        thresholds,
        setup,
        serialize_keys: false,
        stop_at_violation: false,
    })
}

/// The parameters' final values, and the names of those marked secret.
fn params(
    raw: &RawScenario,
    sets: &[(String, String)],
    d: &mut Diagnostics<'_>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut secret = Vec::new();
    for (name, value) in &raw.params {
        // `name = { default = "...", secret = true }`: a value never shown in reports.
        let value_of = match value.get_ref() {
            toml::Value::Table(t) => {
                let unknown: Vec<&String> = t
                    .keys()
                    .filter(|k| !["default", "secret"].contains(&k.as_str()))
                    .collect();
                if !unknown.is_empty() {
                    d.error(
                        value.span(),
                        format!(
                            "parameter {name:?} has unknown key(s) {}; a parameter table takes default and secret",
                            unknown.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                        ),
                        Some("for example password = { default = \"s3cret\", secret = true }"),
                    );
                    continue;
                }
                match t.get("secret") {
                    Some(toml::Value::Boolean(true)) => secret.push(name.clone()),
                    Some(toml::Value::Boolean(false)) | None => {}
                    Some(_) => {
                        d.error(
                            value.span(),
                            format!("parameter {name:?}: secret must be true or false"),
                            Some("for example password = { default = \"s3cret\", secret = true }"),
                        );
                        continue;
                    }
                }
                match t.get("default") {
                    Some(v) => v.clone(),
                    None => {
                        d.error(
                            value.span(),
                            format!("parameter {name:?} needs a default"),
                            Some("for example password = { default = \"s3cret\", secret = true }; --set overrides it"),
                        );
                        continue;
                    }
                }
            }
            other => other.clone(),
        };
        let text = match &value_of {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                d.error(
                    value.span(),
                    format!(
                        "parameter {name:?} must be a string, number or boolean, got {}",
                        type_name(other)
                    ),
                    Some("or a table: { default = \"...\", secret = true }"),
                );
                continue;
            }
        };
        values.insert(name.clone(), text);
    }
    for (name, value) in sets {
        if raw.params.contains_key(name) {
            values.insert(name.clone(), value.clone());
        } else {
            let known: Vec<&str> = raw.params.keys().map(String::as_str).collect();
            d.error(
                0..0,
                format!("--set {name}={value}: the scenario declares no parameter {name:?}"),
                Some(&format!(
                    "declared parameters: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )),
            );
        }
    }
    (values.into_iter().collect(), secret)
}

fn unique_names<'r>(
    cx: &mut Cx<'_, '_>,
    names: impl Iterator<Item = &'r S<String>>,
    what: &str,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in names {
        let n = name.get_ref();
        // Invariant names are sentences ("one invoice per account and period"); the others end up
        // in placeholders, file names and flags.
        let ok = if what == "invariant name" {
            !n.trim().is_empty()
        } else {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        };
        if !ok {
            cx.err(
                name.span(),
                format!("{what} name {n:?} must be non-empty letters, digits, _ or -"),
                Some("for example name = \"api\" or name = \"usage-service\""),
            );
        }
        if !seen.insert(n.clone()) {
            cx.err(
                name.span(),
                format!("there is already a {what} named {n:?}"),
                Some("names must be unique"),
            );
        }
        out.push(n.clone());
    }
    out
}

fn check_refs(
    cx: &mut Cx<'_, '_>,
    t: &Template,
    span: Range<usize>,
    deps: &[String],
    sinks: &[String],
    has_db: bool,
) {
    for seg in &t.segments {
        if let crate::template::Segment::Var(v) = seg {
            let v = match v {
                Var::Filtered(inner, _) => inner.as_ref(),
                v => v,
            };
            match v {
                Var::DependencyUrl(n) if !deps.contains(n) => {
                    cx.err(
                        span.clone(),
                        format!("{v} names no [[dependency]]"),
                        Some(&format!("dependencies: {}", listed(deps))),
                    );
                }
                Var::SinkUrl(n) if !sinks.contains(n) => {
                    cx.err(
                        span.clone(),
                        format!("{v} names no [[sink]]"),
                        Some(&format!("sinks: {}", listed(sinks))),
                    );
                }
                Var::DatabaseUrl | Var::DatabasePart(_) if !has_db => {
                    cx.err(
                        span.clone(),
                        format!("{v} is used but the scenario has no [database]"),
                        Some("add [database] with url = \"sqlite:{run_dir}/app.db\" or a postgres:// URL"),
                    );
                }
                _ => {}
            }
        }
    }
}

fn service(
    cx: &mut Cx<'_, '_>,
    s: &RawService,
    deps: &[String],
    sinks: &[String],
    allow_hosts: &[String],
    has_db: bool,
    base_dir: &std::path::Path,
) -> Option<Service> {
    let name = s.name.get_ref().clone();
    let check = |cx: &mut Cx<'_, '_>, v: &S<String>| {
        let t = cx.template(v, Scope::Service)?;
        check_refs(cx, &t, v.span(), deps, sinks, has_db);
        Some(t)
    };
    let kind = match (&s.command, &s.url) {
        (Some(command), None) => {
            if command.get_ref().is_empty() {
                cx.err(
                    command.span(),
                    format!("service {name:?} has an empty command"),
                    Some("give the program and its arguments: command = [\"python3\", \"app.py\", \"--port\", \"{port}\"]"),
                );
            }
            let command: Vec<Template> = command
                .get_ref()
                .iter()
                .filter_map(|a| check(cx, a))
                .collect();
            let env = s
                .env
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), check(cx, v)?)))
                .collect();
            ServiceKind::Command { command, env }
        }
        (None, Some(url)) => {
            let resolved = cx.template(url, Scope::Run)?;
            let Some(text) = resolved.as_literal() else {
                cx.err(
                    url.span(),
                    "a service url may use {param.NAME} but not {run_dir}",
                    Some("a service at a url is already running; point url at it, for example url = \"http://127.0.0.1:8080\""),
                );
                return None;
            };
            let text = text.trim_end_matches('/').to_string();
            match host_of(&text) {
                Some(host) if is_loopback(host) || allow_hosts.iter().any(|h| h == host) => {}
                Some(host) => cx.err(
                    url.span(),
                    format!("service {name:?} is at {host}, which is not a loopback address"),
                    Some("reprod only sends load to loopback unless the host is listed in allow_hosts"),
                ),
                None => cx.err(url.span(), format!("service url {text:?} is not an http:// URL"), Some("for example url = \"http://127.0.0.1:8080\"")),
            }
            ServiceKind::External { url: text }
        }
        _ => {
            cx.err(
                s.name.span(),
                format!("service {name:?} needs exactly one of command or url"),
                Some("command = [...] for a service reprod starts, url = \"http://...\" for one already running"),
            );
            return None;
        }
    };
    let replicas = s
        .replicas
        .as_ref()
        .and_then(|r| cx.positive(r, "replicas", 64))
        .unwrap_or(1) as u32;
    if replicas > 1 && matches!(kind, ServiceKind::External { .. }) {
        let span = s.replicas.as_ref().map_or(0..0, |r| r.span());
        cx.err(
            span,
            "an external service has one replica; reprod can only start replicas of a command",
            Some("drop replicas, or start the service with command = [...] so reprod can run several"),
        );
    }
    let versions: Vec<String> = if s.versions.is_empty() {
        vec!["v1".to_string()]
    } else {
        s.versions.iter().map(|v| v.get_ref().clone()).collect()
    };
    let ready = s.ready.as_ref();
    let ready_path = ready
        .and_then(|r| r.path.as_ref())
        .map(|p| p.get_ref().clone());
    if let Some(p) = ready.and_then(|r| r.path.as_ref())
        && !p.get_ref().starts_with('/')
    {
        cx.err(
            p.span(),
            "ready.path must start with /",
            Some("for example ready = { path = \"/health\" }"),
        );
    }
    let stdout_prefix = ready
        .and_then(|r| r.stdout_prefix.as_ref())
        .map(|p| p.get_ref().clone());
    let ready_timeout = cx.duration_or(
        &ready.and_then(|r| r.timeout.clone()),
        "ready.timeout",
        Duration::from_secs(30),
    );
    let uses_port = matches!(&kind, ServiceKind::Command { command, env }
        if command.iter().chain(env.iter().map(|(_, t)| t)).any(|t| t.uses(|v| *v == Var::Port)));
    let stdout_regex = ready.and_then(|r| r.stdout.as_ref()).and_then(|re| {
        if stdout_prefix.is_some() {
            cx.err(
                re.span(),
                "ready.stdout and ready.stdout_prefix both say how to read the readiness line; keep one",
                Some("ready.stdout is a regular expression and covers what stdout_prefix did"),
            );
        }
        match regex_lite::Regex::new(re.get_ref()) {
            Ok(compiled) => Some((re.get_ref().clone(), compiled.captures_len() >= 2)),
            Err(e) => {
                cx.err(
                    re.span(),
                    format!("ready.stdout is not a valid regular expression: {e}"),
                    Some("for example \"listening on (http://\\S+)\""),
                );
                None
            }
        }
    });
    let learns_address = stdout_prefix.is_some()
        || stdout_regex.as_ref().is_some_and(|(_, captures)| *captures)
        || uses_port;
    if matches!(kind, ServiceKind::Command { .. }) && !learns_address {
        cx.err(
            s.name.span(),
            format!("service {name:?} gives reprod no way to learn its address"),
            Some("pass {port} in its command or env, set ready.stdout_prefix to the text before the URL it prints, or give ready.stdout a regular expression whose first group captures the URL"),
        );
    }
    let balance = s
        .balance
        .as_ref()
        .and_then(|b| {
            cx.choice(
                b,
                "balance",
                &[
                    ("round_robin", Balance::RoundRobin),
                    ("random", Balance::Random),
                    ("key", Balance::Key),
                ],
            )
        })
        .unwrap_or(Balance::RoundRobin);
    let pressure_args = s
        .pressure_args
        .iter()
        .filter_map(|a| check(cx, a))
        .collect();
    let pressure_env = s
        .pressure_env
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), check(cx, v)?)))
        .collect();
    let cwd = s.cwd.as_ref().and_then(|dir| {
        if matches!(kind, ServiceKind::External { .. }) {
            cx.err(
                dir.span(),
                "cwd is for a command reprod starts; a service at a url runs where it runs",
                Some("drop cwd, or start the service with command = [...]"),
            );
            return None;
        }
        if dir.get_ref().trim().is_empty() {
            cx.err(
                dir.span(),
                "cwd must name a directory",
                Some("for example cwd = \"../app\""),
            );
            return None;
        }
        Some(base_dir.join(dir.get_ref()))
    });
    let prepare = s.prepare.as_ref().and_then(|prepare| {
        if matches!(kind, ServiceKind::External { .. }) {
            cx.err(
                prepare.span(),
                "prepare runs before reprod starts a command's replicas; a service at a url is already running",
                Some("prepare its database yourself, or start the service with command = [...]"),
            );
            return None;
        }
        if prepare.get_ref().is_empty() {
            cx.err(
                prepare.span(),
                "prepare is an empty command",
                Some("for example prepare = [\"npm\", \"run\", \"migrate\"]"),
            );
            return None;
        }
        prepare
            .get_ref()
            .iter()
            .map(|a| check(cx, a))
            .collect::<Option<Vec<_>>>()
    });
    let prepare_timeout = cx.duration_or(
        &s.prepare_timeout,
        "prepare_timeout",
        Duration::from_secs(60),
    );
    let reset = if let (Some(_), Some(sql)) = (&s.reset, &s.reset_sql) {
        cx.err(
            sql.span(),
            "reset and reset_sql both say how to reset the service's state; keep one",
            Some("reset = [...] runs a command; reset_sql = \"reset.sql\" runs a SQL file in [database]"),
        );
        None
    } else {
        reset(cx, s, &kind, has_db, base_dir, check)
    };
    let ports = s.ports.as_ref().and_then(|written| {
        let text = cx.substitute(written.span(), written.get_ref(), "ports")?;
        let range = text.split_once('-').and_then(|(lo, hi)| {
            let lo: u16 = lo.trim().parse().ok()?;
            let hi: u16 = hi.trim().parse().ok()?;
            (lo >= 1 && lo <= hi).then_some((lo, hi))
        });
        let Some((lo, hi)) = range else {
            cx.err(
                written.span(),
                format!("ports {text:?} is not a range of ports"),
                Some("write the lowest and highest port, for example ports = \"8000-8099\""),
            );
            return None;
        };
        if u32::from(hi - lo) + 1 < replicas {
            cx.err(
                written.span(),
                format!("ports {text:?} holds {} port(s) for {replicas} replicas", hi - lo + 1),
                Some("give at least one port per replica"),
            );
            return None;
        }
        if matches!(kind, ServiceKind::External { .. }) {
            cx.err(
                written.span(),
                "ports says where {port} comes from, for a command reprod starts; a service at a url has its own",
                Some("drop ports"),
            );
            return None;
        }
        Some((lo, hi))
    });
    let logs = s.logs.as_ref().and_then(|l| logs(cx, l, &kind));
    Some(Service {
        logs,
        name,
        kind,
        cwd,
        prepare,
        prepare_timeout,
        reset,
        replicas,
        ports,
        versions,
        ready_path,
        stdout_prefix,
        stdout_regex: stdout_regex.map(|(pattern, _)| pattern),
        ready_timeout,
        balance,
        pressure_args,
        pressure_env,
    })
}

/// `[database] proxy = true | false | "auto"`.
fn database_proxy(cx: &mut Cx<'_, '_>, db: &RawDatabase, sqlite: bool) -> ProxyMode {
    let Some(value) = &db.proxy else {
        return ProxyMode::Off;
    };
    let mode = match value.get_ref() {
        toml::Value::String(t) if t.trim() == "auto" => ProxyMode::Auto,
        _ => match cx.flag(&db.proxy, "database.proxy", false) {
            true => ProxyMode::On,
            false => ProxyMode::Off,
        },
    };
    if mode == ProxyMode::On && sqlite {
        cx.err(
            value.span(),
            "SQLite runs inside the service, so there is no database connection for reprod's proxy to sit on",
            Some("drop proxy (or write proxy = \"auto\": on for PostgreSQL, off for SQLite), and read the service's own lines with logs = { format = \"json\" } on the service"),
        );
    }
    mode
}

/// `key = { param = N }` or `key = { regex = "..." }`.
fn statement_key(cx: &mut Cx<'_, '_>, k: &S<RawDbKey>) -> Option<StatementKey> {
    let k_ref = k.get_ref();
    match (&k_ref.param, &k_ref.regex, &k_ref.column) {
        (None, None, Some(c)) => {
            let name = c.get_ref().trim();
            if name.is_empty() || !name.chars().all(|ch| ch.is_alphanumeric() || ch == '_') {
                cx.err(
                    c.span(),
                    format!("database.key.column {name:?} is not a column name"),
                    Some("for example column = \"account_id\""),
                );
                return None;
            }
            Some(StatementKey::Column(name.to_string()))
        }
        (Some(p), None, None) => cx
            .positive(p, "database.key.param", 65_535)
            .map(|n| StatementKey::Param(n as usize)),
        (None, Some(re), None) => match regex_lite::Regex::new(re.get_ref()) {
            Ok(compiled) if compiled.captures_len() >= 2 => {
                Some(StatementKey::Regex(re.get_ref().clone()))
            }
            Ok(_) => {
                cx.err(
                    re.span(),
                    "database.key.regex needs a capture group: the key is what it captures",
                    Some("for example regex = \"account_id = '([^']+)'\""),
                );
                None
            }
            Err(e) => {
                cx.err(
                    re.span(),
                    format!("database.key.regex is not a valid regular expression: {e}"),
                    Some("for example regex = \"account_id = '([^']+)'\""),
                );
                None
            }
        },
        _ => {
            cx.err(
                k.span(),
                "database.key takes one of column, param (a bind parameter's number) or regex",
                Some("key = { column = \"account_id\" } for the value a statement gives that column, key = { param = 1 } for its $1, or key = { regex = \"account_id = '([^']+)'\" }"),
            );
            None
        }
    }
}

/// A fault rule's `from` and `to`: when, counted from the load's start, it applies.
fn fault_window(
    cx: &mut Cx<'_, '_>,
    from: &Option<S<String>>,
    to: &Option<S<String>>,
) -> (Duration, Option<Duration>) {
    let start = cx.duration_or(from, "from", Duration::ZERO);
    let end = to.as_ref().and_then(|t| cx.duration(t, "to"));
    if let (Some(end), Some(span)) = (end, to.as_ref().map(|t| t.span()))
        && end <= start
    {
        cx.err(
            span,
            "the fault window's end (to) must come after its start (from)",
            Some("for example from = \"2s\", to = \"5s\""),
        );
    }
    (start, end)
}

/// One `[[database.fault]]`.
fn db_fault(cx: &mut Cx<'_, '_>, f: &RawDbFault) -> Option<DbFault> {
    #[derive(Clone, Copy)]
    enum Kind {
        Latency,
        Error,
        Reset,
        Ambiguous,
    }
    let kind = cx.choice(
        &f.kind,
        "database fault kind",
        &[
            ("latency", Kind::Latency),
            ("error", Kind::Error),
            ("reset", Kind::Reset),
            ("ambiguous", Kind::Ambiguous),
        ],
    )?;
    let probability = cx
        .fraction(&f.probability, "fault probability")
        .unwrap_or(1.0);
    let kind = match kind {
        Kind::Latency => {
            let Some(l) = &f.latency else {
                cx.err(
                    f.kind.span(),
                    "a latency fault needs a latency",
                    Some("for example latency = { p50 = \"5ms\", p99 = \"40ms\" } or latency = { fixed = \"10ms\" }"),
                );
                return None;
            };
            DbFaultKind::Latency(latency(cx, l)?)
        }
        Kind::Error => {
            let sqlstate = f
                .sqlstate
                .as_ref()
                .map_or_else(|| "40001".to_string(), |s| s.get_ref().clone());
            if sqlstate.len() != 5 || !sqlstate.bytes().all(|b| b.is_ascii_alphanumeric()) {
                cx.err(
                    f.sqlstate.as_ref().map_or(f.kind.span(), |s| s.span()),
                    format!("{sqlstate:?} is not a SQLSTATE (five letters or digits)"),
                    Some("for example sqlstate = \"40001\" (serialization failure), \"40P01\" (deadlock), \"57014\" (canceled)"),
                );
            }
            DbFaultKind::Error {
                message: f.message.as_ref().map_or_else(
                    || format!("injected by reprod (SQLSTATE {sqlstate})"),
                    |m| m.get_ref().clone(),
                ),
                sqlstate,
            }
        }
        Kind::Reset => DbFaultKind::Reset,
        Kind::Ambiguous => DbFaultKind::Ambiguous,
    };
    let m = f.matcher.as_ref();
    let statement = m
        .and_then(|m| m.statement.as_ref())
        .and_then(|s| cx.choice(s, "match.statement", &StatementKind::NAMES));
    let text = m.and_then(|m| m.text.as_ref()).and_then(|t| match regex_lite::Regex::new(t.get_ref()) {
        Ok(_) => Some(t.get_ref().clone()),
        Err(e) => {
            cx.err(
                t.span(),
                format!("match.text is not a valid regular expression: {e}"),
                Some("it is matched against the statement's text, for example text = \"FROM invoices\""),
            );
            None
        }
    });
    let (from, to) = fault_window(cx, &f.from, &f.to);
    Some(DbFault {
        kind,
        probability,
        statement,
        text,
        key: m.and_then(|m| m.key.as_ref()).map(|k| k.get_ref().clone()),
        from,
        to,
    })
}

/// The comparison's own dimension names, which a log field may not take.
const BUILT_IN_DIMENSIONS: &[&str] = &[
    "overlap",
    "retries",
    "instances",
    "mixed_versions",
    "queue_delay",
    "dependency_faults",
    "hot_keys",
    "slow_dependency",
    "slow_database",
    "database_faults",
    "db_wait",
    "caller_mix",
];

/// `dimensions = ["cache", "db_wait_ms"]`: fields of the services' log lines and span
/// attributes; `telemetry`: some service has `logs` or sends to `{otlp.url}`.
fn dimensions(cx: &mut Cx<'_, '_>, raw: &[S<String>], telemetry: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in raw {
        let name = d.get_ref().trim();
        if name.is_empty() {
            cx.err(
                d.span(),
                "a dimension needs a field name",
                Some("for example dimensions = [\"cache\", \"db_wait_ms\"]"),
            );
        } else if BUILT_IN_DIMENSIONS.contains(&name) {
            cx.err(
                d.span(),
                format!("{name:?} is one of the comparison's own dimensions, always compared"),
                Some("dimensions names fields of the services' log lines; drop this one"),
            );
        } else if out.iter().any(|o| o == name) {
            cx.err(
                d.span(),
                format!("dimension {name:?} is listed twice"),
                Some("keep one"),
            );
        } else if !telemetry {
            cx.err(
                d.span(),
                "dimensions compare fields of the services' log lines and spans, and no service has logs or {otlp.url}",
                Some("give the service that logs the field logs = { format = \"json\" } (or logfmt, or regex), or send its spans to {otlp.url}"),
            );
            return out;
        } else {
            out.push(name.to_string());
        }
    }
    out
}

/// Most `service_logs` rows one service keeps per run unless `logs.max_lines` says otherwise.
pub const DEFAULT_MAX_LOG_LINES: u64 = 200_000;

/// `logs = { format = ..., trace = ..., ... }`.
fn logs(cx: &mut Cx<'_, '_>, l: &S<RawLogs>, kind: &ServiceKind) -> Option<LogSpec> {
    let span = l.span();
    let l = l.get_ref();
    if matches!(kind, ServiceKind::External { .. }) {
        cx.err(
            span,
            "logs reads the output of the replicas reprod starts; a service at a url writes its output elsewhere",
            Some("drop logs here, or let reprod start the service with command = [...] so it can read what it prints"),
        );
        return None;
    }
    let field = |f: &Option<S<String>>| f.as_ref().map(|f| f.get_ref().clone());
    let format = match (&l.format, &l.pattern) {
        (Some(f), pattern) => match f.get_ref().as_str() {
            "json" | "logfmt" if pattern.is_some() => {
                cx.err(
                    pattern.as_ref().map_or(span, |p| p.span()),
                    format!("logs.pattern is for format = \"regex\"; format = {:?} reads its own fields", f.get_ref()),
                    Some("drop pattern, or write format = \"regex\""),
                );
                return None;
            }
            "json" => LogFormat::Json,
            "logfmt" => LogFormat::Logfmt,
            "regex" => {
                let Some(pattern) = pattern else {
                    cx.err(
                        f.span(),
                        "format = \"regex\" needs a pattern whose named groups are the fields",
                        Some("for example pattern = '^(?P<time>\\S+) (?P<level>\\w+) trace=(?P<trace>\\w+) (?P<msg>.*)$'"),
                    );
                    return None;
                };
                match regex_lite::Regex::new(pattern.get_ref()) {
                    Ok(re) if re.capture_names().flatten().next().is_some() => {
                        LogFormat::Regex(pattern.get_ref().clone())
                    }
                    Ok(_) => {
                        cx.err(
                            pattern.span(),
                            "logs.pattern has no named group, so no line would have a field",
                            Some("name the parts: (?P<trace>[0-9a-f]{32}) (?P<msg>.*)"),
                        );
                        return None;
                    }
                    Err(e) => {
                        cx.err(
                            pattern.span(),
                            format!("logs.pattern is not a valid regular expression: {e}"),
                            Some("for example '^(?P<level>\\w+) (?P<msg>.*)$'"),
                        );
                        return None;
                    }
                }
            }
            other => {
                let formats = ["json", "logfmt", "regex"].map(String::from);
                let hint = match nearest(other, &formats) {
                    Some(near) => format!("did you mean {near:?}? format is json, logfmt or regex"),
                    None => "format is json (one object per line), logfmt (key=value pairs) or regex (with pattern)".to_string(),
                };
                cx.err(
                    f.span(),
                    format!("unknown logs.format {other:?}"),
                    Some(&hint),
                );
                return None;
            }
        },
        (None, Some(pattern)) => {
            cx.err(
                pattern.span(),
                "logs.pattern needs format = \"regex\"",
                Some("write logs = { format = \"regex\", pattern = '...' }"),
            );
            return None;
        }
        (None, None) => {
            cx.err(
                span,
                "logs needs a format",
                Some("logs = { format = \"json\" } for one JSON object per line, \"logfmt\" for key=value pairs, \"regex\" with a pattern for plain text"),
            );
            return None;
        }
    };
    if let LogFormat::Regex(pattern) = &format {
        // Every field the scenario names must be a group of the pattern.
        let re = regex_lite::Regex::new(pattern).ok()?;
        let groups: Vec<&str> = re.capture_names().flatten().collect();
        for (what, f) in [
            ("trace", &l.trace),
            ("time", &l.time),
            ("message", &l.message),
            ("key", &l.key),
            ("level", &l.level),
        ] {
            if let Some(f) = f
                && !groups.contains(&f.get_ref().as_str())
            {
                cx.err(
                    f.span(),
                    format!(
                        "logs.{what} names {:?}, which is not a named group of logs.pattern",
                        f.get_ref()
                    ),
                    Some(&format!("the pattern's groups are {}", groups.join(", "))),
                );
            }
        }
    }
    let max_lines = match &l.max_lines {
        Some(v) => cx.positive(v, "logs.max_lines", 10_000_000)?,
        None => DEFAULT_MAX_LOG_LINES,
    };
    Some(LogSpec {
        format,
        trace: field(&l.trace),
        time: field(&l.time),
        message: field(&l.message),
        key: field(&l.key),
        level: field(&l.level),
        max_lines,
    })
}

/// A url service's `reset` (a command) or `reset_sql` (a file run in `[database]`).
fn reset(
    cx: &mut Cx<'_, '_>,
    s: &RawService,
    kind: &ServiceKind,
    has_database: bool,
    base_dir: &std::path::Path,
    check: impl Fn(&mut Cx<'_, '_>, &S<String>) -> Option<Template>,
) -> Option<Reset> {
    let span = s
        .reset
        .as_ref()
        .map(|r| r.span())
        .or(s.reset_sql.as_ref().map(|r| r.span()))?;
    if matches!(kind, ServiceKind::Command { .. }) {
        cx.err(
            span,
            "reset is for a service at a url; a service reprod starts gets fresh state from its database URL",
            Some("put its SQLite file under {run_dir}, or give [database] fresh = true; use prepare = [...] for migrations"),
        );
        return None;
    }
    if let Some(command) = &s.reset {
        if command.get_ref().is_empty() {
            cx.err(
                command.span(),
                "reset is an empty command",
                Some("for example reset = [\"./reset-db.sh\"] or reset = [\"python3\", \"manage.py\", \"flush\", \"--noinput\"]"),
            );
            return None;
        }
        let argv = command
            .get_ref()
            .iter()
            .map(|a| check(cx, a))
            .collect::<Option<Vec<_>>>()?;
        if argv
            .iter()
            .any(|t| t.uses(|v| matches!(v, Var::Port | Var::Replica | Var::Version)))
        {
            cx.err(
                command.span(),
                "a reset runs once, for no replica: {port}, {replica} and {version} mean nothing in it",
                Some("use {database.url}, {database.path}, {run_dir} or {param.NAME}"),
            );
            return None;
        }
        return Some(Reset::Command {
            argv,
            cwd: base_dir.to_path_buf(),
        });
    }
    let sql = s.reset_sql.as_ref()?;
    if !has_database {
        cx.err(
            sql.span(),
            "reset_sql runs in the scenario's [database], and it has none",
            Some("add [database] with the url the service uses, or reset with a command: reset = [...]"),
        );
        return None;
    }
    Some(Reset::Sql(base_dir.join(sql.get_ref())))
}

/// Host of an `http://host[:port]/...` URL.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// Whether `host` is a loopback name or address.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn caller(cx: &mut Cx<'_, '_>, c: &RawCaller, services: &[String]) -> Option<Caller> {
    let name = c.name.get_ref().clone();
    // Every part is checked before giving up on the caller, so one pass reports everything.
    let service = match &c.service {
        Some(s) => {
            let found = services.iter().position(|n| n == s.get_ref());
            if found.is_none() {
                cx.err(
                    s.span(),
                    format!(
                        "caller {name:?} names service {:?}, which does not exist",
                        s.get_ref()
                    ),
                    Some(&format!("services: {}", listed(services))),
                );
            }
            found
        }
        None if services.len() == 1 => Some(0),
        None => {
            cx.err(
                c.name.span(),
                format!("caller {name:?} must say which service it calls"),
                Some("set service = \"NAME\""),
            );
            None
        }
    };
    let request = request(cx, &c.request);
    let arrival = arrival(cx, c);
    let keys = keys(cx, c.keys.as_ref());
    let overlap = match &c.overlap {
        Some(o) => {
            let sync = match o.sync.as_ref().map(|s| (s.span(), s.get_ref().as_str())) {
                None | Some((_, "window")) => OverlapSync::Window,
                Some((_, "last_byte")) => OverlapSync::LastByte,
                Some((span, other)) => {
                    cx.err(
                        span,
                        format!("unknown overlap.sync {other:?}"),
                        Some("sync = \"last_byte\" (every member's final byte sent together) or leave it out for the window"),
                    );
                    OverlapSync::Window
                }
            };
            if sync == OverlapSync::LastByte
                && let Some(w) = &o.window
            {
                cx.err(
                    w.span(),
                    "overlap.window and sync = \"last_byte\" contradict each other: a synchronised group is sent at one instant",
                    Some("drop window, or drop sync to spread the group over the window"),
                );
            }
            Overlap {
                k: cx.positive(&o.k, "overlap.k", 64).unwrap_or(1) as u32,
                window: match sync {
                    OverlapSync::LastByte => Duration::ZERO,
                    OverlapSync::Window => {
                        cx.duration_or(&o.window, "overlap.window", Duration::from_millis(10))
                    }
                },
                sync,
            }
        }
        None => Overlap {
            k: 1,
            window: Duration::ZERO,
            sync: OverlapSync::Window,
        },
    };
    let delay = cx.duration_or(&c.delay, "delay", Duration::ZERO);
    let timeout = cx.duration_or(&c.timeout, "timeout", Duration::from_secs(10));
    if timeout.is_zero() {
        cx.err(
            c.timeout.as_ref().map_or(0..0, |t| t.span()),
            "timeout must be more than 0",
            Some("for example timeout = \"2s\""),
        );
    }
    let retry = retry(cx, c.retry.as_ref());
    let ok = match &c.ok {
        Some(list) => {
            let ok = status_list(cx, list.get_ref(), "ok");
            if ok.statuses.is_empty() && ok.classes.is_empty() {
                cx.err(
                    list.span(),
                    "ok must name at least one status or class",
                    Some("the default is [\"2xx\"]; add the redirects your service answers with, like [\"2xx\", 302]"),
                );
            }
            ok
        }
        None => RetryOn {
            classes: vec![2],
            ..RetryOn::default()
        },
    };
    let idempotency = match &c.idempotency {
        Some(i) => Idempotency {
            mode: cx
                .choice(
                    &i.mode,
                    "idempotency.mode",
                    &[
                        ("none", IdempotencyMode::None),
                        ("per_op", IdempotencyMode::PerOp),
                        ("per_attempt", IdempotencyMode::PerAttempt),
                    ],
                )
                .unwrap_or(IdempotencyMode::None),
            header: i
                .header
                .as_ref()
                .map_or_else(|| "Idempotency-Key".to_string(), |h| h.get_ref().clone()),
        },
        None => Idempotency {
            mode: IdempotencyMode::None,
            header: "Idempotency-Key".to_string(),
        },
    };
    Some(Caller {
        name,
        service: service?,
        request: request?,
        arrival: arrival?,
        keys,
        overlap,
        delay,
        timeout,
        retry,
        idempotency,
        ok,
        until: None,
    })
}

fn request(cx: &mut Cx<'_, '_>, r: &RawRequest) -> Option<RequestTemplate> {
    request_in(cx, r, Scope::Request)
}

fn request_in(cx: &mut Cx<'_, '_>, r: &RawRequest, scope: Scope) -> Option<RequestTemplate> {
    let method = r
        .method
        .as_ref()
        .map_or_else(|| "GET".to_string(), |m| m.get_ref().to_ascii_uppercase());
    if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].contains(&method.as_str()) {
        let span = r.method.as_ref().map_or(0..0, |m| m.span());
        cx.err(
            span,
            format!("unknown HTTP method {method:?}"),
            Some("use GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"),
        );
    }
    if !r.path.get_ref().starts_with('/') {
        cx.err(
            r.path.span(),
            "request.path must start with /",
            Some("the service's base URL comes from the service"),
        );
    }
    let path = cx.template(&r.path, scope)?;
    let headers = r
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), cx.template(v, scope)?)))
        .collect();
    let body = match &r.body {
        Some(b) => Some(cx.template(b, scope)?),
        None => None,
    };
    Some(RequestTemplate {
        method,
        path,
        headers,
        body,
    })
}

#[derive(Clone, Copy)]
enum ArrivalKind {
    Constant,
    Poisson,
    Burst,
    Batch,
}

#[derive(Clone, Copy)]
enum DistributionKind {
    Uniform,
    Zipf,
    Hot,
}

fn arrival(cx: &mut Cx<'_, '_>, c: &RawCaller) -> Option<Arrival> {
    let kind = match &c.arrival {
        Some(a) => cx.choice(
            a,
            "arrival",
            &[
                ("constant", ArrivalKind::Constant),
                ("poisson", ArrivalKind::Poisson),
                ("burst", ArrivalKind::Burst),
                ("batch", ArrivalKind::Batch),
            ],
        )?,
        None => ArrivalKind::Constant,
    };
    let start = cx.duration_or(&c.start, "start", Duration::ZERO);
    let stop = c.stop.as_ref().and_then(|s| cx.duration(s, "stop"));
    let at = cx.duration_or(&c.at, "at", Duration::ZERO);
    let need_rate = |cx: &mut Cx<'_, '_>| -> Option<f64> {
        let Some(rate) = &c.rate else {
            cx.err(
                c.name.span(),
                format!(
                    "caller {:?} needs a rate (operations per second)",
                    c.name.get_ref()
                ),
                Some("rate = 50"),
            );
            return None;
        };
        let r = cx.number(rate, "rate")?;
        if !(r > 0.0 && r <= 1_000_000.0) {
            cx.err(
                rate.span(),
                format!("rate must be above 0 and at most 1000000 per second, got {r}"),
                Some("rate is operations per second, for example rate = 50; for a few operations use arrival = \"burst\" with count"),
            );
            return None;
        }
        Some(r)
    };
    Some(match kind {
        ArrivalKind::Constant => Arrival::Constant {
            rate_per_s: need_rate(cx)?,
            start,
            stop,
        },
        ArrivalKind::Poisson => Arrival::Poisson {
            rate_per_s: need_rate(cx)?,
            start,
            stop,
        },
        ArrivalKind::Burst => {
            let Some(count) = &c.count else {
                cx.err(
                    c.name.span(),
                    "a burst needs count (operations in the burst)",
                    Some("for example arrival = \"burst\", count = 20, at = \"1s\""),
                );
                return None;
            };
            Arrival::Burst {
                count: cx.positive(count, "count", 10_000_000)?,
                at,
            }
        }
        ArrivalKind::Batch => Arrival::Batch {
            at,
            spread: cx.duration_or(&c.spread, "spread", Duration::ZERO),
        },
    })
}

fn keys(cx: &mut Cx<'_, '_>, k: Option<&RawKeys>) -> Keys {
    let Some(k) = k else {
        return Keys {
            count: 1000,
            prefix: "key_".to_string(),
            distribution: KeyDistribution::Uniform,
            file: None,
        };
    };
    let file = k.file.as_ref().and_then(|f| key_file(cx, f));
    for (given, what) in [
        (k.count.as_ref().map(|c| c.span()), "count"),
        (k.prefix.as_ref().map(|p| p.span()), "prefix"),
    ] {
        if let (Some(span), Some(_)) = (given, &k.file) {
            cx.err(
                span,
                format!("keys.{what} comes from the key file when keys has a file"),
                Some("drop it: the keys are the file's rows"),
            );
        }
    }
    let count = match &file {
        Some(f) => f.keys.len() as u64,
        None => k
            .count
            .as_ref()
            .and_then(|c| cx.positive(c, "keys.count", 100_000_000))
            .unwrap_or(1000),
    };
    let prefix = match (&k.file, &k.prefix) {
        (Some(f), _) => format!("file:{}", f.get_ref()),
        (None, Some(p)) => p.get_ref().clone(),
        (None, None) => "key_".to_string(),
    };
    let kind = k
        .distribution
        .as_ref()
        .and_then(|d| {
            cx.choice(
                d,
                "keys.distribution",
                &[
                    ("uniform", DistributionKind::Uniform),
                    ("zipf", DistributionKind::Zipf),
                    ("hot", DistributionKind::Hot),
                ],
            )
        })
        .unwrap_or(DistributionKind::Uniform);
    let distribution = match kind {
        DistributionKind::Zipf => {
            let s =
                k.s.as_ref()
                    .and_then(|s| cx.number(s, "keys.s"))
                    .unwrap_or(1.0);
            if s <= 0.0 || s > 10.0 {
                cx.err(
                    k.s.as_ref().map_or(0..0, |v| v.span()),
                    "keys.s must be above 0 and at most 10",
                    Some("a Zipf exponent: 1.0 is typical, larger is more skewed"),
                );
            }
            KeyDistribution::Zipf { s }
        }
        DistributionKind::Hot => KeyDistribution::Hot {
            fraction: cx
                .fraction(&k.hot_fraction, "keys.hot_fraction")
                .unwrap_or(0.1),
            share: cx.fraction(&k.hot_share, "keys.hot_share").unwrap_or(0.9),
        },
        DistributionKind::Uniform => KeyDistribution::Uniform,
    };
    Keys {
        count,
        prefix,
        distribution,
        file,
    }
}

/// The key file `written` (relative to the scenario), read once per scenario.
fn key_file(cx: &mut Cx<'_, '_>, written: &S<String>) -> Option<std::sync::Arc<KeyFile>> {
    let text = cx.substitute(written.span(), written.get_ref(), "keys.file")?;
    let path = cx.base_dir.join(&text);
    if let Some(known) = cx.key_files.get(&path) {
        return known.clone();
    }
    let read = match crate::key_file::read(&path) {
        Ok(file) => Some(std::sync::Arc::new(file)),
        Err(e) => {
            let at = match e.line {
                Some(line) => format!("{text}:{line}"),
                None => text.clone(),
            };
            cx.err(
                written.span(),
                format!("key file {at}: {}", e.message),
                Some(e.hint),
            );
            None
        }
    };
    cx.key_files.insert(path, read.clone());
    read
}

fn retry(cx: &mut Cx<'_, '_>, r: Option<&RawRetry>) -> Retry {
    let Some(r) = r else {
        return Retry {
            attempts: 1,
            backoff: Backoff::Exponential,
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
            jitter: Jitter::Full,
            on: RetryOn::default(),
            respect_retry_after: true,
            budget: None,
        };
    };
    let attempts = cx.positive(&r.attempts, "retry.attempts", 20).unwrap_or(1) as u32;
    let backoff = r
        .backoff
        .as_ref()
        .and_then(|b| {
            cx.choice(
                b,
                "retry.backoff",
                &[
                    ("constant", Backoff::Constant),
                    ("exponential", Backoff::Exponential),
                ],
            )
        })
        .unwrap_or(Backoff::Exponential);
    let jitter = r
        .jitter
        .as_ref()
        .and_then(|j| {
            cx.choice(
                j,
                "retry.jitter",
                &[
                    ("none", Jitter::None),
                    ("full", Jitter::Full),
                    ("equal", Jitter::Equal),
                ],
            )
        })
        .unwrap_or(Jitter::Full);
    let mut on = RetryOn::default();
    if r.on.is_empty() {
        on = RetryOn {
            timeout: true,
            connect: true,
            statuses: vec![429],
            classes: vec![5],
        };
    }
    for item in &r.on {
        match item.get_ref() {
            toml::Value::String(s) if s == "timeout" => on.timeout = true,
            toml::Value::String(s) if s == "connect" => on.connect = true,
            toml::Value::String(s) if s.len() == 3 && s.ends_with("xx") && s.starts_with(['4', '5']) => {
                on.classes.push(u16::from(s.as_bytes()[0] - b'0'));
            }
            toml::Value::Integer(i) if (100..=599).contains(i) => on.statuses.push(*i as u16),
            other => cx.err(
                item.span(),
                format!("retry.on item {} is not understood", type_name(other)),
                Some("use \"timeout\", \"connect\", a status such as 503, or a class \"5xx\" / \"4xx\""),
            ),
        }
    }
    let budget = r.budget.as_ref().and_then(|b| {
        let v = cx.number(b, "retry.budget")?;
        if !(0.0..=10.0).contains(&v) {
            cx.err(
                b.span(),
                "retry.budget is retries per operation, between 0 and 10",
                Some("for example budget = 0.2: at most one retry per five operations"),
            );
            return None;
        }
        Some(v)
    });
    Retry {
        attempts,
        backoff,
        base: cx.duration_or(&r.base, "retry.base", Duration::from_millis(50)),
        max: cx.duration_or(&r.max, "retry.max", Duration::from_secs(1)),
        jitter,
        on,
        respect_retry_after: cx.flag(&r.respect_retry_after, "retry.respect_retry_after", true),
        budget,
    }
}

fn latency(cx: &mut Cx<'_, '_>, l: &RawLatency) -> Option<Latency> {
    if let Some(f) = &l.fixed {
        return Some(Latency::Fixed(cx.duration(f, "latency.fixed")?));
    }
    if let (Some(min), Some(max)) = (&l.min, &l.max) {
        let (lo, hi) = (
            cx.duration(min, "latency.min")?,
            cx.duration(max, "latency.max")?,
        );
        if lo > hi {
            cx.err(
                min.span(),
                "latency.min is above latency.max",
                Some("swap them: min is the fastest call"),
            );
        }
        return Some(Latency::Uniform { min: lo, max: hi });
    }
    let Some(p50) = &l.p50 else {
        cx.err(
            0..0,
            "a latency needs fixed, min and max, or p50 (with optional p95, p99, p999)",
            Some("for example latency = { p50 = \"20ms\", p99 = \"300ms\" } or latency = { fixed = \"50ms\" }"),
        );
        return None;
    };
    let p50v = cx.duration(p50, "latency.p50")?;
    let mut last = p50v;
    let mut next = |cx: &mut Cx<'_, '_>, v: &Option<S<String>>, what: &str| -> Option<Duration> {
        let s = v.as_ref()?;
        let d = cx.duration(s, what)?;
        if d < last {
            cx.err(
                s.span(),
                format!("{what} is below a lower percentile; percentiles must not decrease"),
                Some("p50 <= p95 <= p99 <= p999"),
            );
        }
        last = d;
        Some(d)
    };
    let p95 = next(cx, &l.p95, "latency.p95");
    let p99 = next(cx, &l.p99, "latency.p99");
    let p999 = next(cx, &l.p999, "latency.p999");
    Some(Latency::Percentiles {
        p50: p50v,
        p95,
        p99,
        p999,
    })
}

fn key_extract(cx: &mut Cx<'_, '_>, k: &RawKeyExtract) -> Option<KeyExtract> {
    let set = [
        k.path_segment.is_some(),
        k.path_regex.is_some(),
        k.json.is_some(),
        k.header.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        cx.err(
            0..0,
            "key needs exactly one of path_segment, path_regex, json or header",
            Some("for example key = { path_segment = 1 } for /accounts/acct_1/usage, or key = { json = \"/account_id\" }"),
        );
        return None;
    }
    if let Some(seg) = &k.path_segment {
        let n = cx.integer(seg, "key.path_segment")?;
        if n < 0 {
            cx.err(
                seg.span(),
                "key.path_segment must be 0 or more",
                Some("segments count from 0: in /accounts/acct_1/invoices, segment 1 is acct_1"),
            );
            return None;
        }
        return Some(KeyExtract::PathSegment(n as usize));
    }
    if let Some(re) = &k.path_regex {
        return match regex_lite::Regex::new(re.get_ref()) {
            Ok(compiled) if compiled.captures_len() >= 2 => {
                Some(KeyExtract::PathRegex(re.get_ref().clone()))
            }
            Ok(_) => {
                cx.err(
                    re.span(),
                    "key.path_regex needs a capture group: the key is what the first group matches",
                    Some("for example \"^/usage/([^/]+)/\""),
                );
                None
            }
            Err(e) => {
                cx.err(
                    re.span(),
                    format!("key.path_regex is not a valid regular expression: {e}"),
                    Some("the first group is the key, for example path_regex = \"/accounts/([^/]+)\""),
                );
                None
            }
        };
    }
    if let Some(ptr) = &k.json {
        if !ptr.get_ref().starts_with('/') {
            cx.err(
                ptr.span(),
                "key.json must be a JSON pointer starting with /",
                Some("for example \"/invoiceId\""),
            );
            return None;
        }
        return Some(KeyExtract::JsonPointer(ptr.get_ref().clone()));
    }
    k.header
        .as_ref()
        .map(|h| KeyExtract::Header(h.get_ref().to_ascii_lowercase()))
}

fn dependency(
    cx: &mut Cx<'_, '_>,
    d: &RawDependency,
    allow_hosts: &[String],
) -> Option<Dependency> {
    let name = d.name.get_ref().clone();
    let mode = match (&d.upstream, &d.stub) {
        (Some(up), None) => {
            match host_of(up.get_ref()) {
                None => cx.err(up.span(), "upstream must be an http:// URL", Some("for example upstream = \"http://127.0.0.1:9000\"; or give a [dependency.stub] instead")),
                Some(host) if is_loopback(host) || allow_hosts.iter().any(|h| h == host) => {}
                Some(host) => cx.err(
                    up.span(),
                    format!("dependency {name:?} forwards to {host}, which is not a loopback address"),
                    Some("reprod only sends traffic to loopback unless the host is listed in allow_hosts"),
                ),
            }
            DependencyMode::Proxy {
                upstream: up.get_ref().trim_end_matches('/').to_string(),
            }
        }
        (None, Some(stub)) => {
            let status = stub
                .status
                .as_ref()
                .map_or(Some(200), |s| cx.integer(s, "stub.status"))
                .unwrap_or(200);
            if !(100..=599).contains(&status) {
                cx.err(
                    stub.status.as_ref().map_or(0..0, |s| s.span()),
                    "stub.status must be an HTTP status",
                    Some("a number from 100 to 599, for example status = 200"),
                );
            }
            let body = match &stub.body {
                Some(b) => cx.template(b, Scope::Stub)?,
                None => Template::literal("{}"),
            };
            DependencyMode::Stub {
                status: status as u16,
                headers: stub
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                    .collect(),
                body,
            }
        }
        _ => {
            cx.err(
                d.name.span(),
                format!("dependency {name:?} needs exactly one of upstream or [dependency.stub]"),
                Some("upstream = \"http://...\" forwards to a real dependency; [dependency.stub] answers itself"),
            );
            return None;
        }
    };
    let latency = d.latency.as_ref().and_then(|l| latency(cx, l));
    let key = d.key.as_ref().and_then(|k| key_extract(cx, k));
    let is_proxy = matches!(mode, DependencyMode::Proxy { .. });
    let faults = d
        .faults
        .iter()
        .filter_map(|f| fault(cx, f, is_proxy))
        .collect();
    Some(Dependency {
        name,
        mode,
        latency,
        key,
        faults,
    })
}

fn fault(cx: &mut Cx<'_, '_>, f: &RawFault, is_proxy: bool) -> Option<FaultRule> {
    #[derive(Clone, Copy)]
    enum Kind {
        Error,
        Throttle,
        Hang,
        Reset,
        Ambiguous,
        Duplicate,
    }
    #[derive(Clone, Copy)]
    enum Mode {
        Drop,
        Reset,
        Delay,
    }
    let kind = cx.choice(
        &f.kind,
        "fault kind",
        &[
            ("error", Kind::Error),
            ("throttle", Kind::Throttle),
            ("hang", Kind::Hang),
            ("reset", Kind::Reset),
            ("ambiguous", Kind::Ambiguous),
            ("duplicate", Kind::Duplicate),
        ],
    )?;
    let probability = cx
        .fraction(&f.probability, "fault probability")
        .unwrap_or(1.0);
    let kind = match kind {
        Kind::Error => {
            let status = f
                .status
                .as_ref()
                .map_or(Some(500), |s| cx.integer(s, "fault status"))
                .unwrap_or(500);
            if !(400..=599).contains(&status) {
                cx.err(
                    f.status.as_ref().map_or(f.kind.span(), |s| s.span()),
                    "an error fault's status must be 4xx or 5xx",
                    Some("for example status = 503"),
                );
            }
            FaultKind::Error {
                status: status as u16,
                body: f.body.as_ref().map_or_else(
                    || "{\"error\":\"injected by reprod\"}".to_string(),
                    |b| b.get_ref().clone(),
                ),
            }
        }
        Kind::Throttle => {
            let Some(rate) = &f.rate else {
                cx.err(
                    f.kind.span(),
                    "a throttle fault needs rate (requests per second let through)",
                    Some("for example kind = \"throttle\", rate = 20, burst = 5"),
                );
                return None;
            };
            let rate_per_s = cx.number(rate, "throttle rate")?;
            if rate_per_s <= 0.0 {
                cx.err(
                    rate.span(),
                    "throttle rate must be above 0",
                    Some("requests per second let through, for example rate = 20"),
                );
            }
            FaultKind::Throttle {
                rate_per_s,
                burst: f
                    .burst
                    .as_ref()
                    .and_then(|b| cx.positive(b, "burst", 1_000_000))
                    .unwrap_or(1) as u32,
                retry_after: cx.duration_or(&f.retry_after, "retry_after", Duration::from_secs(1)),
            }
        }
        Kind::Hang => FaultKind::Hang,
        Kind::Reset => FaultKind::Reset,
        Kind::Ambiguous => {
            let mode = match &f.mode {
                Some(m) => cx.choice(
                    m,
                    "ambiguous mode",
                    &[
                        ("drop", Mode::Drop),
                        ("reset", Mode::Reset),
                        ("delay", Mode::Delay),
                    ],
                )?,
                None => Mode::Drop,
            };
            FaultKind::Ambiguous {
                mode: match mode {
                    Mode::Drop => AmbiguousMode::Drop,
                    Mode::Reset => AmbiguousMode::Reset,
                    Mode::Delay => AmbiguousMode::Delay(cx.duration_or(
                        &f.delay,
                        "delay",
                        Duration::from_secs(5),
                    )),
                },
            }
        }
        Kind::Duplicate => {
            if !is_proxy {
                cx.err(
                    f.kind.span(),
                    "a duplicate fault forwards a call twice, so it needs an upstream, not a stub",
                    Some("give the dependency upstream = \"http://...\""),
                );
            }
            FaultKind::Duplicate
        }
    };
    let matcher = match &f.matcher {
        Some(m) => Matcher {
            method: m.method.as_ref().map(|x| x.get_ref().to_ascii_uppercase()),
            path: m.path.as_ref().map(|x| x.get_ref().clone()),
            header: m
                .header
                .as_ref()
                .map(|h| match h.get_ref().split_once('=') {
                    Some((name, value)) => (
                        name.trim().to_ascii_lowercase(),
                        Some(value.trim().to_string()),
                    ),
                    None => (h.get_ref().trim().to_ascii_lowercase(), None),
                }),
            key: m.key.as_ref().map(|x| x.get_ref().clone()),
        },
        None => Matcher::default(),
    };
    let (from, to) = fault_window(cx, &f.from, &f.to);
    Some(FaultRule {
        kind,
        probability,
        matcher,
        from,
        to,
    })
}

fn sink(cx: &mut Cx<'_, '_>, s: &RawSink) -> Option<Sink> {
    let status = s
        .status
        .as_ref()
        .map_or(Some(202), |v| cx.integer(v, "sink status"))
        .unwrap_or(202);
    if !(100..=599).contains(&status) {
        cx.err(
            s.status.as_ref().map_or(0..0, |v| v.span()),
            "sink status must be an HTTP status",
            Some("a number from 100 to 599, for example status = 202"),
        );
    }
    Some(Sink {
        name: s.name.get_ref().clone(),
        status: status as u16,
        latency: s.latency.as_ref().and_then(|l| latency(cx, l)),
        key: s.key.as_ref().and_then(|k| key_extract(cx, k)),
        idempotency_header: s.idempotency_header.as_ref().map_or_else(
            || "idempotency-key".to_string(),
            |h| h.get_ref().to_ascii_lowercase(),
        ),
        dedupe: cx.flag(&s.dedupe, "sink dedupe", false),
    })
}

fn invariant(
    cx: &mut Cx<'_, '_>,
    i: &RawInvariant,
    sinks: &[String],
    backend: Option<Backend>,
) -> Option<Invariant> {
    let name = i.name.get_ref().clone();
    let has_db = backend.is_some();
    let read_only = |cx: &mut Cx<'_, '_>, query: &S<String>| {
        if let Err(why) = check_read_only(query.get_ref(), backend.unwrap_or(Backend::Unknown)) {
            cx.err(
                query.span(),
                format!("invariant {name:?}: {why}"),
                Some("an invariant query is one SELECT returning the violating rows; reprod runs it read-only after the run"),
            );
        }
    };
    let forms = [
        i.sql.is_some(),
        i.sink.is_some(),
        i.agree.is_some(),
        i.no_status.is_some(),
        i.counter.is_some(),
    ];
    if forms.iter().filter(|x| **x).count() != 1 {
        cx.err(
            i.name.span(),
            format!(
                "invariant {name:?} needs exactly one of sql, sink, agree, no_status or counter"
            ),
            Some("for example sql = \"SELECT ... HAVING count(*) > 1\" with key_column; see docs/scenario.md, Invariants"),
        );
        return None;
    }
    if let (Some(every), None) = (&i.every, &i.sql) {
        cx.err(
            every.span(),
            "every applies to SQL invariants only",
            Some("drop every, or write the invariant as sql = \"...\""),
        );
    }
    if let Some(query) = &i.counter {
        read_only(cx, query);
        if !has_db {
            cx.err(
                query.span(),
                format!("invariant {name:?} is a counter query but the scenario has no [database]"),
                Some("add [database] with the url the service uses"),
            );
        }
        let Some(key_column) = &i.key_column else {
            cx.err(
                i.name.span(),
                format!("invariant {name:?} needs key_column: the column that names each key"),
                Some("for example key_column = \"account_id\""),
            );
            return None;
        };
        return Some(Invariant {
            name,
            kind: InvariantKind::Counter {
                query: query.get_ref().clone(),
                key_column: key_column.get_ref().clone(),
                caller: i.caller.as_ref().map(|c| c.get_ref().clone()),
            },
        });
    }
    let caller = i.caller.as_ref().map(|c| c.get_ref().clone());
    if let Some(pointer) = &i.agree {
        if !pointer.get_ref().starts_with('/') {
            cx.err(
                pointer.span(),
                "agree must be a JSON pointer into the response, starting with /",
                Some("for example \"/id\""),
            );
            return None;
        }
        return Some(Invariant {
            name,
            kind: InvariantKind::ResponsesAgree {
                pointer: pointer.get_ref().clone(),
                caller,
            },
        });
    }
    if let Some(list) = &i.no_status {
        let statuses = status_list(cx, list.get_ref(), "no_status");
        return Some(Invariant {
            name,
            kind: InvariantKind::NoStatus { statuses, caller },
        });
    }
    let kind = match (&i.sql, &i.sink) {
        (Some(sql), None) => {
            read_only(cx, sql);
            if !has_db {
                cx.err(
                    sql.span(),
                    format!("invariant {name:?} is SQL but the scenario has no [database]"),
                    Some("add [database] with the url the service uses, for example url = \"sqlite:{run_dir}/app.db\""),
                );
            }
            let Some(key_column) = &i.key_column else {
                cx.err(i.name.span(), format!("invariant {name:?} needs key_column: the column that names each violating key"), Some("for example key_column = \"account_id\": the SELECT must return it"));
                return None;
            };
            let every = i.every.as_ref().and_then(|e| cx.duration(e, "every"));
            if every.is_some_and(|e| e < Duration::from_millis(100)) {
                let span = i.every.as_ref().map_or(0..0, |e| e.span());
                cx.err(
                    span,
                    "every must be at least 100ms: each check is a query on the service's database",
                    Some("for example every = \"500ms\""),
                );
            }
            InvariantKind::Sql {
                query: sql.get_ref().clone(),
                key_column: key_column.get_ref().clone(),
                every,
            }
        }
        (None, Some(sink)) => {
            let Some(index) = sinks.iter().position(|s| s == sink.get_ref()) else {
                cx.err(
                    sink.span(),
                    format!(
                        "invariant {name:?} names sink {:?}, which does not exist",
                        sink.get_ref()
                    ),
                    Some(&match nearest(sink.get_ref(), sinks) {
                        Some(near) => format!("did you mean {near:?}? sinks: {}", listed(sinks)),
                        None => format!(
                            "declare it with [[sink]] name = ...; sinks: {}",
                            listed(sinks)
                        ),
                    }),
                );
                return None;
            };
            let rule = match &i.rule {
                Some(r) => cx.choice(
                    r,
                    "rule",
                    &[
                        ("exactly_once", SinkRule::ExactlyOnce),
                        ("at_most_once", SinkRule::AtMostOnce),
                        ("at_least_once", SinkRule::AtLeastOnce),
                    ],
                )?,
                None => SinkRule::ExactlyOnce,
            };
            InvariantKind::Sink {
                sink: index,
                rule,
                same_idempotency_key_once: cx.flag(
                    &i.same_idempotency_key_once,
                    "same_idempotency_key_once",
                    false,
                ),
            }
        }
        _ => {
            cx.err(
                i.name.span(),
                format!("invariant {name:?} needs exactly one of sql, sink, agree or no_status"),
                Some("see docs/scenario.md, Invariants"),
            );
            return None;
        }
    };
    Some(Invariant { name, kind })
}

fn thresholds(cx: &mut Cx<'_, '_>, t: &RawThresholds) -> Thresholds {
    Thresholds {
        p99: t
            .p99
            .as_ref()
            .and_then(|v| cx.duration(v, "thresholds.p99")),
        error_rate: cx.fraction(&t.error_rate, "thresholds.error_rate"),
        min_goodput_rps: t
            .min_goodput_rps
            .as_ref()
            .and_then(|v| cx.number(v, "thresholds.min_goodput_rps")),
    }
}

/// The setup steps, in file order.
fn setup_steps(
    cx: &mut Cx<'_, '_>,
    raw: &[crate::raw::RawSetup],
    services: &[String],
) -> Vec<crate::model::SetupStep> {
    use crate::model::{Capture, SetupStep};
    let mut steps = Vec::new();
    for r in raw {
        let name = r.name.get_ref().clone();
        let service = match &r.service {
            Some(s) => services.iter().position(|n| n == s.get_ref()).or_else(|| {
                cx.err(
                    s.span(),
                    format!(
                        "setup step {name:?} names service {:?}, which does not exist",
                        s.get_ref()
                    ),
                    Some(&format!("services: {}", listed(services))),
                );
                None
            }),
            None if services.len() == 1 => Some(0),
            None => {
                cx.err(
                    r.name.span(),
                    format!("setup step {name:?} must say which service it calls"),
                    Some("set service = \"NAME\""),
                );
                None
            }
        };
        let request = request_in(cx, &r.request, Scope::Setup);
        let expect = match &r.expect {
            Some(list) => status_list(cx, list.get_ref(), "expect"),
            None => RetryOn {
                classes: vec![2],
                ..RetryOn::default()
            },
        };
        let mut captures = Vec::new();
        for (capture, spec) in &r.capture {
            let c = spec.get_ref();
            let forms = [&c.json, &c.header, &c.cookie, &c.regex];
            let given: Vec<&String> = forms.iter().filter_map(|f| f.as_ref()).collect();
            if given.len() != 1 {
                cx.err(
                    spec.span(),
                    format!("capture {capture:?} of setup step {name:?} needs exactly one of json, header, cookie or regex"),
                    Some("for example token = { json = \"/token\" } or sid = { cookie = \"sid\" }"),
                );
                continue;
            }
            let found = if let Some(pointer) = &c.json {
                if !pointer.starts_with('/') {
                    cx.err(
                        spec.span(),
                        format!("capture {capture:?}: json must be a JSON pointer starting with /"),
                        Some("for example \"/token\" or \"/data/id\""),
                    );
                    continue;
                }
                Capture::Json(pointer.clone())
            } else if let Some(header) = &c.header {
                Capture::Header(header.to_ascii_lowercase())
            } else if let Some(cookie) = &c.cookie {
                Capture::Cookie(cookie.clone())
            } else if let Some(re) = &c.regex {
                if let Err(e) = regex_lite::Regex::new(re) {
                    cx.err(
                        spec.span(),
                        format!("capture {capture:?}: not a valid regular expression: {e}"),
                        Some("the first group is the value, for example regex = \"id=([0-9]+)\""),
                    );
                    continue;
                }
                Capture::Regex(re.clone())
            } else {
                continue;
            };
            captures.push((capture.clone(), found));
        }
        let for_each = r.for_each.as_ref().map(|f| {
            let concurrency = f
                .concurrency
                .as_ref()
                .and_then(|c| cx.positive(c, "for_each.concurrency", 1000))
                .unwrap_or(8) as usize;
            (keys(cx, Some(&f.keys)), concurrency)
        });
        if for_each.is_none() && request.as_ref().is_some_and(|t| t.uses(|v| *v == Var::Key)) {
            cx.err(
                r.request.path.span(),
                format!("setup step {name:?} uses {{key}} but runs once; give it for_each = {{ keys = ... }} to run it per key"),
                Some("for example for_each = { keys = { count = 10, prefix = \"user_\" } }"),
            );
        }
        let timeout = cx.duration_or(&r.timeout, "timeout", Duration::from_secs(10));
        if let (Some(service), Some(request)) = (service, request) {
            steps.push(SetupStep {
                name,
                service,
                request,
                expect,
                captures,
                for_each,
                timeout,
            });
        }
    }
    steps
}

/// Every `{setup.NAME}` is captured by a step that runs once, before it; every `{key.NAME}` is a
/// column of the key file, or captured by a per-key step on the same key space as the caller
/// that uses it (and before the step that uses it).
fn check_captures(
    cx: &mut Cx<'_, '_>,
    raw: &RawScenario,
    setup: &[crate::model::SetupStep],
    callers: &[Caller],
) {
    let wanted = |t: &RequestTemplate| -> Vec<Var> {
        let mut out = Vec::new();
        let mut look = |tt: &Template| {
            for seg in &tt.segments {
                if let crate::template::Segment::Var(v) = seg {
                    let v = match v {
                        Var::Filtered(inner, _) => inner.as_ref().clone(),
                        v => v.clone(),
                    };
                    if matches!(v, Var::Setup(_) | Var::KeyValue(_)) {
                        out.push(v);
                    }
                }
            }
        };
        look(&t.path);
        for (_, h) in &t.headers {
            look(h);
        }
        if let Some(b) = &t.body {
            look(b);
        }
        out
    };
    let captured_once = |upto: usize, name: &str| {
        setup[..upto]
            .iter()
            .any(|s| s.for_each.is_none() && s.captures.iter().any(|(n, _)| n == name))
    };
    let captured_per_key = |upto: usize, name: &str, prefix: &str| {
        setup[..upto].iter().any(|s| {
            s.for_each.as_ref().is_some_and(|(k, _)| k.prefix == prefix)
                && s.captures.iter().any(|(n, _)| n == name)
        })
    };
    let in_file = |keys: &Keys, name: &str| {
        keys.file
            .as_ref()
            .is_some_and(|f| f.columns.iter().any(|c| c == name))
    };
    for (i, step) in setup.iter().enumerate() {
        let span = raw.setup.get(i).map_or(0..0, |r| r.name.span());
        for v in wanted(&step.request) {
            let ok = match &v {
                Var::Setup(n) => captured_once(i, n),
                Var::KeyValue(n) => step
                    .for_each
                    .as_ref()
                    .is_some_and(|(k, _)| in_file(k, n) || captured_per_key(i, n, &k.prefix)),
                _ => true,
            };
            if !ok {
                cx.err(
                    span.clone(),
                    format!("setup step {:?} uses {v}, which no earlier step captures", step.name),
                    Some("capture it in an earlier [[setup]] step (per key for {key.NAME}, once for {setup.NAME})"),
                );
            }
        }
    }
    for (caller, raw_caller) in callers.iter().zip(&raw.callers) {
        for v in wanted(&caller.request) {
            let ok = match &v {
                Var::Setup(n) => captured_once(setup.len(), n),
                Var::KeyValue(n) => {
                    in_file(&caller.keys, n)
                        || captured_per_key(setup.len(), n, &caller.keys.prefix)
                }
                _ => true,
            };
            if !ok {
                let (message, hint) = match (&v, &caller.keys.file) {
                    (Var::KeyValue(name), Some(file)) => (
                        format!(
                            "caller {:?} uses {v}, which is not a column of its key file (columns: {}) and no per-key setup step captures it",
                            caller.name,
                            listed(&file.columns)
                        ),
                        match nearest(name, &file.columns) {
                            Some(near) => format!("did you mean {{key.{near}}}?"),
                            None => "add the column to the file, or capture it in a [[setup]] step with for_each = { keys = { file = ... } }".to_string(),
                        },
                    ),
                    (Var::KeyValue(_), None) => (
                        format!(
                            "caller {:?} uses {v}, which no setup step captures for its keys (prefix {:?})",
                            caller.name, caller.keys.prefix
                        ),
                        "a [[setup]] step with for_each = { keys = { prefix = ... } } on the caller's key prefix must capture it, or read the keys from a file: keys = { file = \"users.csv\" }".to_string(),
                    ),
                    _ => (
                        format!("caller {:?} uses {v}, which no setup step captures", caller.name),
                        "a [[setup]] step without for_each must capture it".to_string(),
                    ),
                };
                cx.err(raw_caller.name.span(), message, Some(&hint));
            }
        }
    }
}

/// A list of statuses and classes (`[429, "5xx"]`), as `no_status` and a caller's `ok` take it.
fn status_list(cx: &mut Cx<'_, '_>, list: &[S<toml::Value>], what: &str) -> RetryOn {
    let mut statuses = RetryOn::default();
    for item in list {
        match item.get_ref() {
            toml::Value::Integer(code) if (100..=599).contains(code) => {
                statuses.statuses.push(*code as u16)
            }
            toml::Value::String(s)
                if s.len() == 3
                    && s.ends_with("xx")
                    && s.starts_with(['1', '2', '3', '4', '5']) =>
            {
                statuses.classes.push(u16::from(s.as_bytes()[0] - b'0'));
            }
            other => cx.err(
                item.span(),
                format!(
                    "{what} item {} is neither a status nor a class like \"5xx\"",
                    type_name(other)
                ),
                Some("write statuses as numbers (302) and classes as strings (\"2xx\")"),
            ),
        }
    }
    statuses
}

/// How a TOML value's type reads in a message.
fn type_name(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the number {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(_) => "a date".to_string(),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// ` (from "{param.n}")` when `text` came from substituting `written`, for messages.
fn from_param(written: &str, text: &str) -> String {
    if written == text {
        String::new()
    } else {
        format!(" (from {written:?})")
    }
}

/// Names for a hint: `a, b` or `none declared`.
fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "none declared".to_string()
    } else {
        names.join(", ")
    }
}

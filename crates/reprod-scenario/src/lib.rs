//! reprod's scenario format: one TOML file describing a production condition — services,
//! dependencies, sinks, callers, invariants, thresholds, bounds — parsed into a validated
//! [`Scenario`].
//!
//! Parse, then validate: `raw` mirrors the TOML with spans; `validate` checks every value and
//! reports each problem at `file:line:column` with a hint. The crate does no I/O beyond reading
//! the scenario file in [`load`] and the key files it names (`keys = { file = ... }`), and
//! knows nothing of tokio or HTTP. The full format is in
//! `docs/scenario.md`.

#![deny(missing_docs)]

mod conditions;
mod error;
mod key_file;
mod model;
mod raw;
pub mod seed;
pub mod sql_guard;
mod template;
mod units;
mod validate;

use std::path::Path;

pub use conditions::Condition;
pub use error::{Diagnostic, ScenarioError, line_column};
pub use model::*;
pub use template::{DatabasePart, Filter, Scope, Segment, Template, Var};
pub use units::{format_duration, parse_duration};
pub use validate::{
    DEFAULT_DRAIN, DEFAULT_DURATION, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_OPS, MAX_DURATION,
    check_load_duration, host_of, is_loopback,
};

/// Parses and validates scenario `source`; `path` is only used in messages and for the default
/// name. `sets` are `--set name=value` overrides of `[params]`.
pub fn parse(
    path: &str,
    source: &str,
    sets: &[(String, String)],
) -> Result<Scenario, ScenarioError> {
    let mut diagnostics = error::Diagnostics::new(source);
    let raw: raw::RawScenario = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let at = source.get(span.clone()).unwrap_or("");
            let (message, hint) = explain_toml_error(e.message().trim(), at);
            diagnostics.error(span, message, Some(&hint));
            return Err(diagnostics.into_error(path));
        }
    };
    let default_name = Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("scenario")
        .to_string();
    let base_dir = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match validate::validate(raw, sets, &default_name, base_dir, &mut diagnostics) {
        Some(scenario) if diagnostics.is_empty() => Ok(scenario),
        _ => Err(diagnostics.into_error(path)),
    }
}

/// Reads and parses the scenario file at `path`.
pub fn load(path: &Path, sets: &[(String, String)]) -> Result<Scenario, ScenarioError> {
    let shown = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| {
        let (message, hint) = match e.kind() {
            std::io::ErrorKind::InvalidData => (
                "the scenario is not text (it is not valid UTF-8)".to_string(),
                "a scenario is a TOML text file, such as scenarios/invoices.toml; is this the file you meant?",
            ),
            std::io::ErrorKind::NotFound => (
                format!("cannot read the scenario: {e}"),
                "check the path; it is relative to the current directory",
            ),
            std::io::ErrorKind::IsADirectory => (
                "the scenario path is a directory".to_string(),
                "name the .toml file inside it",
            ),
            _ => (
                format!("cannot read the scenario: {e}"),
                "check the path and that the file is readable",
            ),
        };
        ScenarioError {
            path: shown.clone(),
            diagnostics: vec![Diagnostic {
                line: 1,
                column: 1,
                message,
                hint: Some(hint.to_string()),
            }],
        }
    })?;
    parse(&shown, &source, sets)
}

/// Parses one `--set name=value`.
pub fn parse_set(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("--set {text:?} must look like name=value")),
    }
}

/// The top-level fields: written after a `[table]` header, TOML puts them in that table.
const TOP_LEVEL: &[&str] = &[
    "name",
    "description",
    "seed",
    "duration",
    "max_ops",
    "drain",
    "max_in_flight",
    "allow_hosts",
];

/// The lists of tables a scenario has, written `[[NAME]]`.
const TABLE_LISTS: &[&str] = &[
    "service",
    "caller",
    "dependency",
    "sink",
    "invariant",
    "setup",
    "fault",
];

/// A TOML or type error (`message`, at the text `at`) in the scenario's own words, with what to
/// write instead. serde's wording ("invalid type: map, expected a sequence") names Rust types,
/// which a scenario's author never sees.
fn explain_toml_error(message: &str, at: &str) -> (String, String) {
    let quoted = |text: &str| -> Option<String> {
        let start = text.find('`')? + 1;
        let end = start + text[start..].find('`')?;
        Some(text[start..end].to_string())
    };
    let header = at
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let field = quoted(rest).unwrap_or_default();
        let expected: Vec<String> = rest
            .split_once("expected")
            .map(|(_, list)| list.split(',').filter_map(quoted).collect())
            .unwrap_or_default();
        let hint = if let Some(near) = error::nearest(&field, &expected) {
            format!("did you mean `{near}`?")
        } else if TOP_LEVEL.contains(&field.as_str()) {
            format!(
                "`{field}` belongs at the top of the file, before the first [table]: TOML puts every line after a [table] header into that table"
            )
        } else if expected.is_empty() {
            "see docs/scenario.md for the fields each table takes".to_string()
        } else {
            format!("this table takes {}", expected.join(", "))
        };
        return (format!("unknown field `{field}` here"), hint);
    }
    if message.starts_with("duplicate key") {
        let key = quoted(message).unwrap_or_else(|| header.to_string());
        if TABLE_LISTS.contains(&key.as_str()) {
            return (
                format!("[{key}] appears twice"),
                format!("{key} is a list: write [[{key}]] (double brackets) for each entry"),
            );
        }
        return (
            format!("`{key}` is set twice in the same table"),
            "keep one; each key appears once per table".to_string(),
        );
    }
    if message.starts_with("missing field") {
        let field = quoted(message).unwrap_or_default();
        return (
            format!("this table needs `{field}`"),
            "see docs/scenario.md for what each table needs".to_string(),
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (got, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        if got.starts_with("map") && expected.contains("sequence") {
            let name = header.trim_matches('[').trim_matches(']');
            return (
                format!("[{name}] is one table, but {name} is a list of tables"),
                format!("write [[{name}]] (double brackets), once per entry"),
            );
        }
        return (
            format!("expected {}, got {}", in_words(expected), in_words(got)),
            "strings and durations are quoted (\"150ms\"), numbers and true/false are not, lists are [..], tables are { .. }".to_string(),
        );
    }
    (
        message.to_string(),
        "this is TOML syntax: strings in double quotes, [table] headers, key = value; see docs/scenario.md".to_string(),
    )
}

/// serde's names for a type, as a scenario's author would say them.
fn in_words(serde: &str) -> String {
    let serde = serde.trim();
    let word = serde.split([' ', '`']).next().unwrap_or(serde);
    let value = serde
        .split_once('`')
        .map(|(_, rest)| rest.trim_end_matches('`'));
    let with = |what: &str, named: &str| match value {
        Some(v) => format!("{named} {v}"),
        None => what.to_string(),
    };
    match word {
        "string" if serde.len() > "string ".len() => {
            format!("the text {}", &serde["string ".len()..])
        }
        "string" | "a" if serde.contains("string") => "text in quotes".to_string(),
        "integer" | "i64" | "u64" | "u32" | "i32" => with("a whole number", "the number"),
        "float" | "f64" => with("a number", "the number"),
        "boolean" | "bool" => with("true or false", "the value"),
        "sequence" => "a list [..]".to_string(),
        "map" | "struct" => "a table { .. }".to_string(),
        _ if serde.contains("sequence") => "a list [..]".to_string(),
        _ if serde.contains("map") || serde.contains("struct") => "a table { .. }".to_string(),
        _ => serde.to_string(),
    }
}

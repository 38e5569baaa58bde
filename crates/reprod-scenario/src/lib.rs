//! reprod's scenario format: one TOML file describing a production condition — services,
//! dependencies, sinks, callers, invariants, thresholds, bounds — parsed into a validated
//! [`Scenario`].
//!
//! Parse, then validate: `raw` mirrors the TOML with spans; `validate` checks every value and
//! reports each problem at `file:line:column` with a hint. The crate does no I/O beyond reading
//! the scenario file in [`load`], and knows nothing of tokio or HTTP. The full format is in
//! `docs/scenario.md`.

#![deny(missing_docs)]

mod conditions;
mod error;
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
            let message = e.message().trim().to_string();
            let hint = hint_for(&message);
            diagnostics.error(span, message, hint);
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
    let source = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        path: shown.clone(),
        diagnostics: vec![Diagnostic {
            line: 1,
            column: 1,
            message: format!("cannot read the scenario: {e}"),
            hint: Some("check the path".to_string()),
        }],
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

fn hint_for(message: &str) -> Option<&'static str> {
    if message.contains("unknown field") {
        Some("see docs/scenario.md for the fields each table takes")
    } else if message.contains("missing field") {
        Some("this table needs that field; see docs/scenario.md")
    } else if message.contains("invalid type") {
        Some("check the value's type: strings are quoted, durations are strings like \"150ms\"")
    } else {
        None
    }
}

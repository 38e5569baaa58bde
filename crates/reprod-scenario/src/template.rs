//! String templates with `{placeholders}`.
//!
//! A placeholder is `{` + a name made of `[A-Za-z0-9_.:|-]` + `}`; anything else in braces (the
//! braces of a JSON body, `{}`) is literal text, so JSON bodies need no escaping. `{{` is a
//! literal `{`. Parameters (`{param.NAME}`) are resolved when the scenario loads; the rest when a
//! service starts or a request is sent, and only where that scope allows them.

use std::collections::BTreeMap;
use std::fmt;

/// A value a placeholder stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// `{port}`: a free port reserved for this replica.
    Port,
    /// `{run_dir}`: the run directory.
    RunDir,
    /// `{replica}`: 0-based replica index.
    Replica,
    /// `{version}`: the replica's version label.
    Version,
    /// `{database.url}`: the scenario's database URL.
    DatabaseUrl,
    /// `{database.host}`, `{database.port}`, ...: one part of it, for services configured by
    /// parts (`DB_HOST`, `DB_NAME`) or in another URL form (SQLAlchemy's `sqlite:///PATH`).
    DatabasePart(DatabasePart),
    /// `{dependency.NAME.url}`: where reprod serves that dependency.
    DependencyUrl(String),
    /// `{sink.NAME.url}`: where reprod serves that sink.
    SinkUrl(String),
    /// `{otlp.url}`: reprod's OTLP/HTTP receiver, as a replica's exporter endpoint.
    OtlpUrl,
    /// `{key}`: the operation's key.
    Key,
    /// `{op}`: the operation id.
    Op,
    /// `{attempt}`: the attempt number, 1 for the first try.
    Attempt,
    /// `{uuid}`: a UUID drawn per operation from the seeded RNG.
    Uuid,
    /// `{seq}`: the operation's sequence number within its caller.
    Seq,
    /// `{idempotency_key}`: the key the caller's idempotency policy gave this attempt.
    IdempotencyKey,
    /// `{choice:a|b|c}`: one of the options, drawn per operation.
    Choice(Vec<String>),
    /// `{NAME|url}`, `{NAME|json}`: another placeholder's value, escaped for where it goes.
    Filtered(Box<Var>, Filter),
    /// `{setup.NAME}`: what a setup step (run once) captured.
    Setup(String),
    /// `{key.NAME}`: what a per-key setup step captured for the operation's key.
    KeyValue(String),
}

/// How a placeholder's value is escaped for where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `|url`: percent-encoded, for a query string or a form body (`a b&c` → `a%20b%26c`).
    Url,
    /// `|json`: escaped for inside a JSON string (`"` → `\"`, control characters as `\uXXXX`).
    Json,
}

impl Filter {
    fn named(name: &str) -> Option<Filter> {
        match name {
            "url" => Some(Filter::Url),
            "json" => Some(Filter::Json),
            _ => None,
        }
    }

    /// Its name after the `|`.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Url => "url",
            Filter::Json => "json",
        }
    }

    /// Appends `text`, escaped, to `out`.
    pub fn apply(self, text: &str, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Filter::Url => {
                for b in text.bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        out.push(char::from(b));
                    } else {
                        let _ = write!(out, "%{b:02X}");
                    }
                }
            }
            Filter::Json => {
                for c in text.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
            }
        }
    }
}

/// A part of the database URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabasePart {
    /// The server's host (PostgreSQL).
    Host,
    /// Its port (default 5432).
    Port,
    /// The database's name.
    Name,
    /// The user.
    User,
    /// The password (empty when none).
    Password,
    /// The SQLite file's path (`sqlite:PATH` → `PATH`).
    Path,
}

impl DatabasePart {
    /// Its name in a placeholder.
    pub fn name(self) -> &'static str {
        match self {
            DatabasePart::Host => "host",
            DatabasePart::Port => "port",
            DatabasePart::Name => "name",
            DatabasePart::User => "user",
            DatabasePart::Password => "password",
            DatabasePart::Path => "path",
        }
    }

    /// This part of `url` (`sqlite:PATH` or `postgres://user:password@host:port/name?...`);
    /// `None` when the URL has no such part (a SQLite file has no host).
    pub fn of(self, url: &str) -> Option<String> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            let path = path.split('?').next().unwrap_or(path);
            return match self {
                DatabasePart::Path => Some(path.to_string()),
                DatabasePart::Name => std::path::Path::new(path)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned()),
                _ => None,
            };
        }
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (u, p),
                None => (c, ""),
            },
            None => ("", ""),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p),
            _ => (host_port, "5432"),
        };
        let decode = |s: &str| percent_decode(s);
        Some(match self {
            DatabasePart::Host => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            DatabasePart::Port => port.to_string(),
            DatabasePart::Name => decode(path.split('?').next().unwrap_or("")),
            DatabasePart::User => decode(user),
            DatabasePart::Password => decode(password),
            DatabasePart::Path => return None,
        })
    }
}

/// `%XX` escapes decoded (URL user, password and database names may carry them).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a template is used, which decides the placeholders it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Parameter values and the database URL: `{run_dir}` only.
    Run,
    /// Service command, env and URL: run scope plus replica, port, version and the URLs.
    Service,
    /// Caller requests: run-time values of one operation.
    Request,
    /// Dependency stub bodies: request values seen by the dependency.
    Stub,
    /// Setup step requests: `{key}` (per-key steps), `{uuid}`, and what earlier steps captured.
    Setup,
    /// Numbers, durations, booleans and choices: fixed before the run, so `{param.NAME}` only.
    Fixed,
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text as written.
    Lit(String),
    /// A placeholder filled at run time.
    Var(Var),
}

/// A parsed template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    pub segments: Vec<Segment>,
}

impl Template {
    /// Parses `text`, resolving `{param.NAME}` from `params` and checking every other
    /// placeholder against `scope`.
    pub fn parse(
        text: &str,
        scope: Scope,
        params: &BTreeMap<String, Template>,
    ) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            if let Some(stripped) = after.strip_prefix('{') {
                literal.push('{');
                rest = stripped;
                continue;
            }
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_.:|-".contains(c)))
                .unwrap_or(after.len());
            let is_placeholder = name_len > 0 && after[name_len..].starts_with('}');
            if !is_placeholder {
                literal.push('{');
                rest = after;
                continue;
            }
            let full = &after[..name_len];
            rest = &after[name_len + 1..];
            // `{NAME|url}`: a filter after the last bar (not inside `{choice:a|b}`).
            let (name, filter) = match full.rsplit_once('|') {
                Some((inner, f)) if !full.starts_with("choice:") => match Filter::named(f) {
                    Some(filter) => (inner, Some(filter)),
                    None => {
                        return Err(format!(
                            "{{{full}}} has an unknown filter |{f}; filters are |url (percent-encoding, for query strings and form bodies) and |json (escaping inside a JSON string)"
                        ));
                    }
                },
                _ => (full, None),
            };
            if let Some(param) = name.strip_prefix("param.") {
                let value = params.get(param).ok_or_else(|| {
                    let known: Vec<&str> = params.keys().map(String::as_str).collect();
                    format!(
                        "unknown parameter {{param.{param}}}; declared in [params]: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                })?;
                for seg in &value.segments {
                    match (seg, filter) {
                        (Segment::Lit(s), None) => literal.push_str(s),
                        (Segment::Lit(s), Some(f)) => f.apply(s, &mut literal),
                        (Segment::Var(v), _) => {
                            check_scope(v, scope, name)?;
                            flush(&mut literal, &mut segments);
                            segments.push(Segment::Var(match filter {
                                Some(f) => Var::Filtered(Box::new(v.clone()), f),
                                None => v.clone(),
                            }));
                        }
                    }
                }
                continue;
            }
            let var = parse_var(name)?;
            check_scope(&var, scope, name)?;
            flush(&mut literal, &mut segments);
            segments.push(Segment::Var(match filter {
                Some(f) => Var::Filtered(Box::new(var), f),
                None => var,
            }));
        }
        literal.push_str(rest);
        flush(&mut literal, &mut segments);
        Ok(Template { segments })
    }

    /// A template that is only text.
    pub fn literal(text: &str) -> Template {
        Template {
            segments: vec![Segment::Lit(text.to_string())],
        }
    }

    /// The text when the template holds no placeholder.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                Segment::Var(_) => return None,
            }
        }
        Some(out)
    }

    /// Whether any placeholder satisfies `pred` (a filtered one is asked about what it filters).
    pub fn uses(&self, pred: impl Fn(&Var) -> bool) -> bool {
        self.segments.iter().any(|s| match s {
            Segment::Var(Var::Filtered(inner, _)) => pred(inner),
            Segment::Var(v) => pred(v),
            Segment::Lit(_) => false,
        })
    }

    /// Renders with `value` supplying each placeholder; `Err` names the first one it could not.
    pub fn render(&self, value: impl FnMut(&Var, &mut String) -> bool) -> Result<String, Var> {
        let mut out = String::new();
        self.render_into(&mut out, value)?;
        Ok(out)
    }

    /// [`Template::render`], appending to `out` (on `Err`, `out` holds a partial rendering).
    pub fn render_into(
        &self,
        out: &mut String,
        mut value: impl FnMut(&Var, &mut String) -> bool,
    ) -> Result<(), Var> {
        for seg in &self.segments {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                Segment::Var(Var::Filtered(inner, filter)) => {
                    let mut raw = String::new();
                    if !value(inner, &mut raw) {
                        return Err((**inner).clone());
                    }
                    filter.apply(&raw, out);
                }
                Segment::Var(v) => {
                    if !value(v, out) {
                        return Err(v.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::Port => f.write_str("{port}"),
            Var::RunDir => f.write_str("{run_dir}"),
            Var::Replica => f.write_str("{replica}"),
            Var::Version => f.write_str("{version}"),
            Var::DatabaseUrl => f.write_str("{database.url}"),
            Var::DatabasePart(part) => write!(f, "{{database.{}}}", part.name()),
            Var::DependencyUrl(n) => write!(f, "{{dependency.{n}.url}}"),
            Var::SinkUrl(n) => write!(f, "{{sink.{n}.url}}"),
            Var::OtlpUrl => f.write_str("{otlp.url}"),
            Var::Key => f.write_str("{key}"),
            Var::Op => f.write_str("{op}"),
            Var::Attempt => f.write_str("{attempt}"),
            Var::Uuid => f.write_str("{uuid}"),
            Var::Seq => f.write_str("{seq}"),
            Var::IdempotencyKey => f.write_str("{idempotency_key}"),
            Var::Choice(options) => write!(f, "{{choice:{}}}", options.join("|")),
            Var::Setup(name) => write!(f, "{{setup.{name}}}"),
            Var::KeyValue(name) => write!(f, "{{key.{name}}}"),
            Var::Filtered(inner, filter) => {
                let inner = inner.to_string();
                write!(f, "{{{}|{}}}", &inner[1..inner.len() - 1], filter.name())
            }
        }
    }
}

fn flush(literal: &mut String, segments: &mut Vec<Segment>) {
    if !literal.is_empty() {
        segments.push(Segment::Lit(std::mem::take(literal)));
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "port" => Var::Port,
        "run_dir" => Var::RunDir,
        "replica" => Var::Replica,
        "version" => Var::Version,
        "database.url" => Var::DatabaseUrl,
        "otlp.url" => Var::OtlpUrl,
        "database.host" => Var::DatabasePart(DatabasePart::Host),
        "database.port" => Var::DatabasePart(DatabasePart::Port),
        "database.name" => Var::DatabasePart(DatabasePart::Name),
        "database.user" => Var::DatabasePart(DatabasePart::User),
        "database.password" => Var::DatabasePart(DatabasePart::Password),
        "database.path" => Var::DatabasePart(DatabasePart::Path),
        "key" => Var::Key,
        "op" => Var::Op,
        "attempt" => Var::Attempt,
        "uuid" => Var::Uuid,
        "seq" => Var::Seq,
        "idempotency_key" => Var::IdempotencyKey,
        _ => {
            if let Some(options) = name.strip_prefix("choice:") {
                let options: Vec<String> = options.split('|').map(str::to_string).collect();
                if options.iter().any(String::is_empty) {
                    return Err(format!(
                        "{{{name}}} has an empty option; write {{choice:a|b|c}}"
                    ));
                }
                return Ok(Var::Choice(options));
            }
            if let Some(captured) = name.strip_prefix("setup.")
                && !captured.is_empty()
                && !captured.contains('.')
            {
                return Ok(Var::Setup(captured.to_string()));
            }
            if let Some(captured) = name.strip_prefix("key.")
                && !captured.is_empty()
                && !captured.contains('.')
            {
                return Ok(Var::KeyValue(captured.to_string()));
            }
            let parts: Vec<&str> = name.split('.').collect();
            match parts.as_slice() {
                ["dependency", dep, "url"] => Var::DependencyUrl(dep.to_string()),
                ["sink", sink, "url"] => Var::SinkUrl(sink.to_string()),
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}; known: {{key}}, {{op}}, {{attempt}}, \
                         {{setup.NAME}}, {{key.NAME}}, \
                         {{uuid}}, {{seq}}, {{idempotency_key}}, {{choice:a|b}}, {{param.NAME}}, \
                         {{port}}, {{run_dir}}, {{replica}}, {{version}}, {{database.url}}, \
                         {{database.host|port|name|user|password|path}}, \
                         {{dependency.NAME.url}}, {{sink.NAME.url}}, {{otlp.url}} \
                         (write {{{{ for a literal brace)"
                    ));
                }
            }
        }
    })
}

fn check_scope(var: &Var, scope: Scope, written: &str) -> Result<(), String> {
    if let Var::Filtered(inner, _) = var {
        return check_scope(inner, scope, written);
    }
    let allowed = match scope {
        Scope::Run => matches!(var, Var::RunDir),
        Scope::Service => matches!(
            var,
            Var::RunDir
                | Var::Port
                | Var::Replica
                | Var::Version
                | Var::DatabaseUrl
                | Var::DatabasePart(_)
                | Var::DependencyUrl(_)
                | Var::SinkUrl(_)
                | Var::OtlpUrl
        ),
        Scope::Request => matches!(
            var,
            Var::Key
                | Var::Op
                | Var::Attempt
                | Var::Uuid
                | Var::Seq
                | Var::IdempotencyKey
                | Var::Choice(_)
                | Var::Setup(_)
                | Var::KeyValue(_)
        ),
        Scope::Stub => matches!(var, Var::Key | Var::Uuid | Var::Choice(_)),
        Scope::Setup => matches!(
            var,
            Var::Key | Var::Uuid | Var::Choice(_) | Var::Setup(_) | Var::KeyValue(_)
        ),
        Scope::Fixed => false,
    };
    if allowed {
        Ok(())
    } else {
        let where_ = match scope {
            Scope::Run => "a parameter value or the database URL (only {run_dir} is known there)",
            Scope::Service => {
                "a service (service placeholders are {port}, {run_dir}, {replica}, {version}, {database.url}, {database.host}, {database.port}, {database.name}, {database.user}, {database.password}, {database.path}, {dependency.NAME.url}, {sink.NAME.url})"
            }
            Scope::Request => {
                "a caller request (request placeholders are {key}, {op}, {attempt}, {uuid}, {seq}, {idempotency_key}, {choice:a|b}, {setup.NAME}, {key.NAME})"
            }
            Scope::Setup => {
                "a setup step (setup placeholders are {key} in a per-key step, {uuid}, {choice:a|b}, {setup.NAME}, {key.NAME})"
            }
            Scope::Stub => "a dependency stub (stub placeholders are {key}, {uuid}, {choice:a|b})",
            Scope::Fixed => {
                "a number, duration, boolean or choice: these are fixed before the run, so only {param.NAME} may appear in them"
            }
        };
        Err(format!("{{{written}}} cannot be used in {where_}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_come_apart() {
        let pg = "postgres://app:s%40cret@db.local:6543/billing?sslmode=disable";
        let parts: Vec<Option<String>> = [
            DatabasePart::Host,
            DatabasePart::Port,
            DatabasePart::Name,
            DatabasePart::User,
            DatabasePart::Password,
            DatabasePart::Path,
        ]
        .iter()
        .map(|p| p.of(pg))
        .collect();
        assert_eq!(
            parts,
            [
                Some("db.local".into()),
                Some("6543".into()),
                Some("billing".into()),
                Some("app".into()),
                Some("s@cret".into()),
                None
            ]
        );
        assert_eq!(
            DatabasePart::Port
                .of("postgres://127.0.0.1/test")
                .as_deref(),
            Some("5432")
        );
        assert_eq!(
            DatabasePart::User
                .of("postgres://127.0.0.1/test")
                .as_deref(),
            Some("")
        );
        let lite = "sqlite:/tmp/run/app.db";
        assert_eq!(
            DatabasePart::Path.of(lite).as_deref(),
            Some("/tmp/run/app.db")
        );
        assert_eq!(DatabasePart::Name.of(lite).as_deref(), Some("app"));
        assert_eq!(DatabasePart::Host.of(lite), None);
    }

    fn parse(text: &str, scope: Scope) -> Result<Template, String> {
        let mut params = BTreeMap::new();
        params.insert("period".to_string(), Template::literal("2026-01"));
        Template::parse(text, scope, &params)
    }

    #[test]
    fn json_braces_are_literal_and_params_resolve() {
        let t = parse(
            r#"{"account_id": "{key}", "period": "{param.period}"}"#,
            Scope::Request,
        )
        .expect("parses");
        let out = t
            .render(|v, out| {
                assert_eq!(v, &Var::Key);
                out.push_str("acct_1");
                true
            })
            .expect("renders");
        assert_eq!(out, r#"{"account_id": "acct_1", "period": "2026-01"}"#);
        assert_eq!(
            parse("{{key}", Scope::Request)
                .expect("ok")
                .as_literal()
                .as_deref(),
            Some("{key}")
        );
        assert_eq!(
            parse("{}", Scope::Request)
                .expect("ok")
                .as_literal()
                .as_deref(),
            Some("{}")
        );
    }

    #[test]
    fn filters_escape_a_value_for_where_it_goes() {
        let t = parse(
            "user={key|url}&note={param.period|url} {\"name\": \"{key|json}\"}",
            Scope::Request,
        )
        .expect("parses");
        let out = t
            .render(|v, out| {
                assert_eq!(v, &Var::Key, "the filter gets the key's value");
                out.push_str("a b&c\"d\n");
                true
            })
            .expect("renders");
        assert_eq!(
            out,
            "user=a%20b%26c%22d%0A&note=2026-01 {\"name\": \"a b&c\\\"d\\n\"}"
        );
        assert!(t.uses(|v| *v == Var::Key));
        let err = parse("{key|base64}", Scope::Request).unwrap_err();
        assert!(err.contains("unknown filter |base64"), "{err}");
        assert!(
            parse("{port|url}", Scope::Request).is_err(),
            "scope is the inner's"
        );
        assert!(
            parse("{choice:a|url}", Scope::Request).is_ok(),
            "a choice keeps its bars"
        );
    }

    #[test]
    fn rejects_unknown_and_out_of_scope_placeholders() {
        assert!(
            parse("{nope}", Scope::Request)
                .unwrap_err()
                .contains("unknown placeholder {nope}")
        );
        assert!(
            parse("{param.x}", Scope::Request)
                .unwrap_err()
                .contains("declared in [params]: period")
        );
        assert!(
            parse("{port}", Scope::Request)
                .unwrap_err()
                .contains("cannot be used in a caller request")
        );
        assert!(
            parse("{key}", Scope::Service)
                .unwrap_err()
                .contains("cannot be used in a service")
        );
        assert!(parse("{choice:a||b}", Scope::Request).is_err());
        assert!(parse("DB_HOST={database.host}", Scope::Service).is_ok());
        assert!(parse("{database.host}", Scope::Request).is_err());
        let choice = parse("{choice:a|b}", Scope::Request).expect("ok");
        assert_eq!(
            choice.segments,
            vec![Segment::Var(Var::Choice(vec!["a".into(), "b".into()]))]
        );
    }
}

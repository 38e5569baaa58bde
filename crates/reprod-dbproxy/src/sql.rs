//! What the proxy reads from a statement's text and parameters: its kind and table, a
//! normalised form (literals and comments out), the trace of a sqlcommenter comment, and bind
//! parameters as text. Pure.

pub use reprod_history::bounded;
use reprod_scenario::StatementKind;
use serde_json::Value;

/// Longest normalised text kept.
pub const MAX_NORMALIZED_CHARS: usize = 1024;
/// Longest literal text kept.
pub const MAX_TEXT_CHARS: usize = 2048;
/// Longest parameter value kept, in characters; at most this many parameters are kept.
const MAX_PARAM_CHARS: usize = 256;
const MAX_PARAMS: usize = 32;

/// The text with comments removed, string and number literals replaced by `?`, and
/// whitespace collapsed: `SELECT id FROM invoices WHERE account_id = ?`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_NORMALIZED_CHARS));
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, c: char, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push(c);
    };
    while i < chars.len() && out.len() < MAX_NORMALIZED_CHARS {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            space = true;
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            space = true;
        } else if c == '\'' {
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if chars[i] == '\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
            push(&mut out, '?', &mut space);
        } else if c.is_ascii_digit()
            && !out
                .chars()
                .last()
                .is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '$')
        {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            push(&mut out, '?', &mut space);
        } else if c.is_whitespace() {
            space = true;
            i += 1;
        } else {
            push(&mut out, c, &mut space);
            i += 1;
        }
    }
    // `psql` sends the statement's own semicolon.
    while out.ends_with(';') || out.ends_with(' ') {
        out.pop();
    }
    out
}

/// The statement's kind, from its first word.
pub fn kind(normalized: &str) -> StatementKind {
    let first = normalized
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_uppercase();
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" | "SHOW" | "TABLE" => StatementKind::Select,
        "INSERT" => StatementKind::Insert,
        "UPDATE" => StatementKind::Update,
        "DELETE" => StatementKind::Delete,
        "BEGIN" | "START" => StatementKind::Begin,
        "COMMIT" | "END" => StatementKind::Commit,
        "ROLLBACK" | "ABORT" => {
            if normalized.to_ascii_uppercase().contains(" TO ") {
                StatementKind::Other
            } else {
                StatementKind::Rollback
            }
        }
        _ => StatementKind::Other,
    }
}

/// The table a statement names first: after `FROM` (select, delete), `INTO` (insert),
/// `UPDATE` (update).
pub fn table(normalized: &str, kind: StatementKind) -> Option<String> {
    let after = match kind {
        StatementKind::Select | StatementKind::Delete => "FROM",
        StatementKind::Insert => "INTO",
        StatementKind::Update => "UPDATE",
        _ => return None,
    };
    let words: Vec<&str> = normalized.split_whitespace().collect();
    let at = words.iter().position(|w| w.eq_ignore_ascii_case(after))?;
    let mut name = *words.get(at + 1)?;
    if name.eq_ignore_ascii_case("ONLY") {
        name = words.get(at + 2)?;
    }
    let name: String = name
        .chars()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '"'))
        .filter(|c| *c != '"')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The trace id of a sqlcommenter comment (`/*traceparent='00-<trace>-<span>-01'*/`).
pub fn traceparent(text: &str) -> Option<String> {
    let at = text.find("traceparent=")?;
    let rest = text[at + "traceparent=".len()..].trim_start_matches(['\'', '"']);
    let header = rest.get(..55)?;
    let mut parts = header.split('-');
    let (_, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0'))
    .then(|| trace.to_ascii_lowercase())
}

/// A bind parameter as text: text-format values as they are, binary ones decoded by their
/// type where it is a common one, other bytes in hex.
pub fn param(value: Option<&[u8]>, binary: bool, oid: u32) -> Value {
    let Some(bytes) = value else {
        return Value::Null;
    };
    let text = if !binary {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        let int = |n: usize| -> Option<i64> {
            (bytes.len() == n).then(|| {
                bytes
                    .iter()
                    .fold(0i64, |acc, b| (acc << 8) | i64::from(*b))
                    .wrapping_shl(64 - 8 * n as u32)
                    .wrapping_shr(64 - 8 * n as u32)
            })
        };
        match oid {
            16 if bytes.len() == 1 => (bytes[0] != 0).to_string(),
            20 => int(8).map_or_else(|| hex(bytes), |n| n.to_string()),
            23 => int(4).map_or_else(|| hex(bytes), |n| n.to_string()),
            21 => int(2).map_or_else(|| hex(bytes), |n| n.to_string()),
            _ => match std::str::from_utf8(bytes) {
                Ok(t) if !t.chars().any(char::is_control) => t.to_string(),
                _ => hex(bytes),
            },
        }
    };
    Value::String(bounded(&text, MAX_PARAM_CHARS))
}

/// Finds the value a statement gives one column.
#[derive(Debug)]
pub struct ColumnKey {
    compare: regex_lite::Regex,
    insert: regex_lite::Regex,
    column: String,
}

impl ColumnKey {
    /// For `column` (a plain identifier, checked when the scenario loaded).
    pub fn new(column: &str) -> Option<ColumnKey> {
        let compare = regex_lite::Regex::new(&format!(
            r#"(?i)(?:^|[^A-Za-z0-9_])"?{column}"?\s*=\s*(?:\$([0-9]+)|'((?:[^']|'')*)')"#
        ))
        .ok()?;
        let insert = regex_lite::Regex::new(
            r"(?is)INSERT\s+INTO\s+[^(\s]+\s*\(([^)]*)\)\s*VALUES\s*\(([^)]*)\)",
        )
        .ok()?;
        Some(ColumnKey {
            compare,
            insert,
            column: column.to_ascii_lowercase(),
        })
    }

    /// Where `text` gives the column its value: a bind parameter or a literal. It depends on
    /// the text alone, so a prepared statement's is found once.
    pub fn locate(&self, text: &str) -> Option<KeyAt> {
        let param = |n: &str| n.parse::<usize>().ok().map(KeyAt::Param);
        if let Some(c) = self.compare.captures(text) {
            if let Some(n) = c.get(1) {
                return param(n.as_str());
            }
            if let Some(lit) = c.get(2) {
                return Some(KeyAt::Literal(lit.as_str().replace("''", "'")));
            }
        }
        let c = self.insert.captures(text)?;
        let columns = c.get(1)?.as_str();
        let values = c.get(2)?.as_str();
        let at = columns.split(',').position(|col| {
            col.trim()
                .trim_matches('"')
                .eq_ignore_ascii_case(&self.column)
        })?;
        let value = values.split(',').nth(at)?.trim();
        match value.strip_prefix('$') {
            Some(n) => param(n),
            None => value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map(|v| KeyAt::Literal(v.replace("''", "'"))),
        }
    }

    /// The value `text` gives the column, reading `$N` from `params`.
    pub fn value(&self, text: &str, params: &[Value]) -> Option<String> {
        self.locate(text)?.value(params)
    }
}

/// Where a statement's key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAt {
    /// Its bind parameter with this 1-based number.
    Param(usize),
    /// In its text.
    Literal(String),
}

impl KeyAt {
    /// The key, with the statement bound to `params`.
    pub fn value(&self, params: &[Value]) -> Option<String> {
        match self {
            KeyAt::Literal(text) => Some(text.clone()),
            KeyAt::Param(n) => match params.get(n.checked_sub(1)?)? {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            },
        }
    }
}

/// The parameters as a JSON array, at most [`MAX_PARAMS`].
pub fn params_json(values: &[Value]) -> String {
    Value::Array(values.iter().take(MAX_PARAMS).cloned().collect()).to_string()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::from("\\x");
    for b in bytes.iter().take(64) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The number at the end of a command tag: `SELECT 3` → 3, `INSERT 0 1` → 1.
pub fn tag_rows(tag: &str) -> Option<i64> {
    tag.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_literals_comments_and_space() {
        assert_eq!(
            normalize(
                "SELECT id  FROM invoices /*traceparent='00-ab-cd-01'*/\n WHERE account_id = 'acct_1' -- x\n AND n > 42 AND t2.c = $1"
            ),
            "SELECT id FROM invoices WHERE account_id = ? AND n > ? AND t2.c = $1"
        );
        assert_eq!(normalize("SELECT 'it''s'"), "SELECT ?");
    }

    #[test]
    fn kinds_and_tables() {
        let k = |t: &str| kind(&normalize(t));
        assert_eq!(k("select 1"), StatementKind::Select);
        assert_eq!(k("  INSERT INTO x VALUES (1)"), StatementKind::Insert);
        assert_eq!(k("begin"), StatementKind::Begin);
        assert_eq!(k("ROLLBACK"), StatementKind::Rollback);
        assert_eq!(k("ROLLBACK TO SAVEPOINT a"), StatementKind::Other);
        assert_eq!(k("CREATE TABLE t (a int)"), StatementKind::Other);
        let t = |s: &str| {
            let n = normalize(s);
            table(&n, kind(&n))
        };
        assert_eq!(
            t("SELECT * FROM invoices WHERE a = 1").as_deref(),
            Some("invoices")
        );
        assert_eq!(
            t("INSERT INTO public.\"Jobs\" (a) VALUES ($1)").as_deref(),
            Some("public.Jobs")
        );
        assert_eq!(t("UPDATE ONLY jobs SET a = 1").as_deref(), Some("jobs"));
        assert_eq!(t("BEGIN"), None);
    }

    #[test]
    fn sqlcommenter_traceparents() {
        assert_eq!(
            traceparent(
                "SELECT 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/"
            )
            .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(traceparent("SELECT 1 /*traceparent='00-zz'*/"), None);
        assert_eq!(traceparent("SELECT 1"), None);
    }

    #[test]
    fn column_keys_read_comparisons_and_inserts() {
        let k = ColumnKey::new("account_id").expect("compiles");
        let params = [
            Value::from("inv_1"),
            Value::from("acct_7"),
            Value::from("2026-01"),
        ];
        assert_eq!(
            k.value(
                "SELECT * FROM invoices WHERE account_id = $2 AND period = $3",
                &params
            )
            .as_deref(),
            Some("acct_7")
        );
        assert_eq!(
            k.value(
                "INSERT INTO invoices (id, account_id, period) VALUES ($1, $2, $3)",
                &params
            )
            .as_deref(),
            Some("acct_7")
        );
        assert_eq!(
            k.value(
                "UPDATE jobs SET state = 'x' WHERE \"account_id\"='it''s'",
                &[]
            )
            .as_deref(),
            Some("it's")
        );
        assert_eq!(k.value("SELECT other_account_id = $1", &params), None);
        assert_eq!(k.value("SELECT 1", &params), None);
    }

    #[test]
    fn parameters_read_as_text() {
        assert_eq!(param(Some(b"acct_1"), true, 25), Value::from("acct_1"));
        assert_eq!(
            param(Some(&[0, 0, 0, 0, 0, 0, 1, 0]), true, 20),
            Value::from("256")
        );
        assert_eq!(
            param(Some(&[0xff, 0xff, 0xff, 0xfe]), true, 23),
            Value::from("-2")
        );
        assert_eq!(param(Some(b"42"), false, 0), Value::from("42"));
        assert_eq!(param(None, false, 0), Value::Null);
        assert_eq!(param(Some(&[0, 1]), true, 0), Value::from("\\x0001"));
        assert_eq!(tag_rows("INSERT 0 1"), Some(1));
        assert_eq!(tag_rows("SELECT 0"), Some(0));
        assert_eq!(tag_rows("BEGIN"), None);
    }
}

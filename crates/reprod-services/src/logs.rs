//! Reading a service's output lines as the scenario's `logs = {...}` says: one JSON object,
//! logfmt pairs or a regular expression's named groups per line, and from its fields the trace
//! id, the service's own time, the key, the level and the message. Pure: lines in, rows out.

use reprod_history::bounded;
use std::collections::HashMap;

use reprod_scenario::{LogFormat, LogSpec};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Longest message kept, in characters.
pub const MAX_MESSAGE_CHARS: usize = 512;
/// Longest field value kept, in characters.
const MAX_VALUE_CHARS: usize = 512;
/// Most bytes of fields kept per line (as JSON); later fields are counted in `_cut`.
pub const MAX_FIELDS_BYTES: usize = 4096;

/// Field names tried, in order, when the scenario names none.
const TRACE_FIELDS: &[&str] = &["traceparent", "trace_id", "traceId", "trace.id"];
const TIME_FIELDS: &[&str] = &["time", "timestamp", "ts", "@timestamp"];
const MESSAGE_FIELDS: &[&str] = &["msg", "message", "event"];
const LEVEL_FIELDS: &[&str] = &["level", "severity", "lvl"];

/// One line, read.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    /// The service's own time, µs since the Unix epoch.
    pub wall_us: Option<i64>,
    /// The W3C trace id it names.
    pub trace_id: Option<String>,
    /// The key it is about.
    pub key: Option<String>,
    /// Its level.
    pub level: Option<String>,
    /// Its message (the whole line, bounded, when it names none).
    pub message: String,
    /// Every field, as a JSON object.
    pub fields: String,
}

/// Reads lines as one service's `logs` says.
#[derive(Debug)]
pub struct LogReader {
    spec: LogSpec,
    regex: Option<regex_lite::Regex>,
}

impl LogReader {
    /// A reader for `spec` (validated when the scenario loaded).
    pub fn new(spec: &LogSpec) -> LogReader {
        let regex = match &spec.format {
            LogFormat::Regex(pattern) => regex_lite::Regex::new(pattern).ok(),
            _ => None,
        };
        LogReader {
            spec: spec.clone(),
            regex,
        }
    }

    /// The line read; `None` when it is not in the format (not a JSON object, no `k=v` pair,
    /// no match). Blank lines are `None` too.
    pub fn read(&self, line: &str) -> Option<LogLine> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let fields = match &self.spec.format {
            LogFormat::Json => return self.read_json(line),
            LogFormat::Logfmt => logfmt(line)?,
            LogFormat::Regex(_) => {
                let re = self.regex.as_ref()?;
                let caps = re.captures(line)?;
                let mut map = Map::new();
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        map.insert(name.to_string(), Value::String(m.as_str().to_string()));
                    }
                }
                map
            }
        };
        let line_fields = |name: &str| field(&fields, name).cloned();
        Some(self.line(line, line_fields, || bounded_fields(fields.clone())))
    }

    /// A JSON line, parsed only as far as it must be: the object's members are found without
    /// building their values, the few fields the scenario names are read, and a line within
    /// [`MAX_FIELDS_BYTES`] is kept as written (it is the fields' JSON already).
    fn read_json(&self, line: &str) -> Option<LogLine> {
        let members: HashMap<String, &RawValue> = serde_json::from_str(line).ok()?;
        let value = |name: &str| -> Option<Value> {
            match name.strip_prefix('/') {
                Some(pointer) => {
                    let (first, rest) = match pointer.find('/') {
                        Some(i) => (&pointer[..i], &pointer[i..]),
                        None => (pointer, ""),
                    };
                    let top = members.get(&first.replace("~1", "/").replace("~0", "~"))?;
                    let top: Value = serde_json::from_str(top.get()).ok()?;
                    if rest.is_empty() {
                        Some(top)
                    } else {
                        top.pointer(rest).cloned()
                    }
                }
                None => serde_json::from_str(members.get(name)?.get()).ok(),
            }
            .filter(|v| !v.is_null())
        };
        Some(self.line(line, value, || {
            if line.len() <= MAX_FIELDS_BYTES {
                line.to_string()
            } else {
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(map)) => bounded_fields(map),
                    _ => "{}".to_string(),
                }
            }
        }))
    }

    /// The line's trace, time, key, level and message from `value` (a field by name), and its
    /// fields from `fields`.
    fn line(
        &self,
        line: &str,
        value: impl Fn(&str) -> Option<Value>,
        fields: impl FnOnce() -> String,
    ) -> LogLine {
        let pick = |named: &Option<String>, defaults: &[&str]| -> Option<Value> {
            match named {
                Some(name) => value(name),
                None => defaults.iter().find_map(|name| value(name)),
            }
        };
        let trace_id = pick(&self.spec.trace, TRACE_FIELDS)
            .as_ref()
            .and_then(Value::as_str)
            .and_then(trace_id_in);
        let wall_us = pick(&self.spec.time, TIME_FIELDS)
            .as_ref()
            .and_then(wall_time_us);
        let key = self
            .spec
            .key
            .as_ref()
            .and_then(|name| value(name))
            .as_ref()
            .and_then(text_of);
        let level = pick(&self.spec.level, LEVEL_FIELDS)
            .as_ref()
            .and_then(text_of);
        let message = pick(&self.spec.message, MESSAGE_FIELDS)
            .as_ref()
            .and_then(text_of)
            .unwrap_or_else(|| line.to_string());
        LogLine {
            wall_us,
            trace_id,
            key: key.map(|k| bounded(&k, MAX_VALUE_CHARS)),
            level: level.map(|l| bounded(&l, 32)),
            message: bounded(&message, MAX_MESSAGE_CHARS),
            fields: fields(),
        }
    }
}

/// The field `name` (a JSON pointer when it starts with `/`).
fn field<'v>(fields: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    if let Some(pointer) = name.strip_prefix('/') {
        let (first, rest) = match pointer.find('/') {
            Some(i) => (&pointer[..i], &pointer[i..]),
            None => (pointer, ""),
        };
        let top = fields.get(&first.replace("~1", "/").replace("~0", "~"))?;
        if rest.is_empty() {
            Some(top)
        } else {
            top.pointer(rest)
        }
    } else {
        fields.get(name)
    }
    .filter(|v| !v.is_null())
}

/// A string or number as text.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The trace id in a `traceparent` or a bare 32-hex-digit trace id (not all zeros).
pub fn trace_id_in(text: &str) -> Option<String> {
    let text = text.trim();
    let id = if text.len() == 55 && text.as_bytes().get(2) == Some(&b'-') {
        text.get(3..35)?
    } else {
        text
    };
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

/// A time as µs since the Unix epoch: RFC 3339 text, or a number of seconds, milliseconds,
/// microseconds or nanoseconds since the epoch (told apart by size), as a number or as text.
pub fn wall_time_us(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => epoch_number_us(n.as_f64()?),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(n) => epoch_number_us(n),
            Err(_) => rfc3339_us(s.trim()),
        },
        _ => None,
    }
}

fn epoch_number_us(n: f64) -> Option<i64> {
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    // Today is about 1.8e9 s, 1.8e12 ms, 1.8e15 µs, 1.8e18 ns since the epoch.
    let us = if n < 1e11 {
        n * 1e6
    } else if n < 1e14 {
        n * 1e3
    } else if n < 1e17 {
        n
    } else {
        n / 1e3
    };
    Some(us as i64)
}

/// `2026-12-03T08:31:31.491Z`, `2026-12-03 08:31:31,491+01:00` and the like.
fn rfc3339_us(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if matches!(b.get(i), Some(b'.' | b',')) {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let six: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        micros = six.parse().ok()?;
    }
    let offset_s = match &s[i..] {
        "" | "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1_000_000 + micros)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `key=value key2="quoted \"value\"" flag` as fields; `None` when the line has no `k=v`.
fn logfmt(line: &str) -> Option<Map<String, Value>> {
    let mut map = Map::new();
    let mut pairs = 0;
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            // A bare word: a flag.
            if !key.is_empty() {
                map.insert(key, Value::Bool(true));
            }
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(match escaped {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                        }
                    }
                    '"' => break,
                    other => value.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if !key.is_empty() {
            pairs += 1;
            map.insert(key, Value::String(value));
        }
    }
    (pairs > 0).then_some(map)
}

/// The fields as JSON, each long string value cut, at most [`MAX_FIELDS_BYTES`] in all.
fn bounded_fields(fields: Map<String, Value>) -> String {
    let mut kept = Map::new();
    let mut size = 2;
    let mut cut = 0u64;
    for (name, value) in fields {
        let value = match value {
            Value::String(s) if s.chars().count() > MAX_VALUE_CHARS => {
                Value::String(bounded(&s, MAX_VALUE_CHARS))
            }
            other => other,
        };
        let cost = name.len() + value.to_string().len() + 4;
        if size + cost > MAX_FIELDS_BYTES {
            cut += 1;
            continue;
        }
        size += cost;
        kept.insert(name, value);
    }
    if cut > 0 {
        kept.insert("_cut".to_string(), Value::from(cut));
    }
    Value::Object(kept).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: LogFormat) -> LogSpec {
        LogSpec {
            format,
            trace: None,
            time: None,
            message: None,
            key: None,
            level: None,
            max_lines: 10,
        }
    }

    #[test]
    fn json_lines_name_their_trace_time_key_and_message() {
        let mut s = spec(LogFormat::Json);
        s.trace = Some("correlation_id".into());
        s.time = Some("ts_ms".into());
        s.key = Some("account_id".into());
        let reader = LogReader::new(&s);
        let line = r#"{"ts_ms":1796286693491,"level":"info","event":"invoice.none_found","correlation_id":"42346FEBCDEB18302C6512908AA92E1B","account_id":"acct_114"}"#;
        let read = reader.read(line).expect("a JSON object");
        assert_eq!(read.wall_us, Some(1_796_286_693_491_000));
        assert_eq!(
            read.trace_id.as_deref(),
            Some("42346febcdeb18302c6512908aa92e1b")
        );
        assert_eq!(read.key.as_deref(), Some("acct_114"));
        assert_eq!(read.level.as_deref(), Some("info"));
        assert_eq!(read.message, "invoice.none_found");
        assert!(read.fields.contains("\"account_id\":\"acct_114\""));
        assert_eq!(reader.read("listening on http://127.0.0.1:1"), None);
        assert_eq!(reader.read("[1, 2]"), None);
        assert_eq!(reader.read("   "), None);
    }

    #[test]
    fn default_names_and_json_pointers() {
        let mut s = spec(LogFormat::Json);
        s.trace = Some("/span/trace".into());
        let reader = LogReader::new(&s);
        let read = reader
            .read(r#"{"message":"hi","span":{"trace":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},"timestamp":"2026-12-03T08:31:31.5Z"}"#)
            .expect("read");
        assert_eq!(
            read.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(read.message, "hi");
        assert_eq!(read.wall_us, rfc3339_us("2026-12-03T08:31:31.500000Z"));
        // Without a message field, the line is the message.
        let read = reader.read(r#"{"a":1}"#).expect("read");
        assert_eq!(read.message, r#"{"a":1}"#);
        assert_eq!(read.trace_id, None);
    }

    #[test]
    fn logfmt_pairs_quotes_and_flags() {
        let reader = LogReader::new(&spec(LogFormat::Logfmt));
        let read = reader
            .read(r#"time=1796286693.25 level=warn msg="found \"none\" here" trace_id=4bf92f3577b34da6a3ce929d0e0e4736 retry"#)
            .expect("logfmt");
        assert_eq!(read.message, r#"found "none" here"#);
        assert_eq!(read.level.as_deref(), Some("warn"));
        assert_eq!(read.wall_us, Some(1_796_286_693_250_000));
        assert!(read.trace_id.is_some());
        assert!(read.fields.contains("\"retry\":true"));
        assert_eq!(reader.read("just words here"), None);
    }

    #[test]
    fn regex_groups_are_the_fields() {
        let mut s = spec(LogFormat::Regex(
            r"^(?P<time>\S+) (?P<level>\w+) \[(?P<trace>\w+)\] (?P<msg>.*)$".into(),
        ));
        s.key = Some("msg".into());
        let reader = LogReader::new(&s);
        let read = reader
            .read("2026-12-03T09:00:00+01:00 INFO [4bf92f3577b34da6a3ce929d0e0e4736] created alias")
            .expect("match");
        assert_eq!(read.message, "created alias");
        assert_eq!(read.wall_us, rfc3339_us("2026-12-03T08:00:00Z"));
        assert_eq!(read.level.as_deref(), Some("INFO"));
        assert_eq!(reader.read("Traceback (most recent call last):"), None);
    }

    #[test]
    fn times_in_every_unit_agree() {
        let us = 1_796_286_693_491_000;
        for v in [
            Value::from(1_796_286_693.491),
            Value::from(1_796_286_693_491_i64),
            Value::from(1_796_286_693_491_000_i64),
            Value::from(1_796_286_693_491_000_000_i64),
            Value::from("1796286693491"),
        ] {
            let got = wall_time_us(&v).expect("a time");
            assert!((got - us).abs() <= 1, "{v}: {got}");
        }
        // 2026-12-03T08:31:33.491Z is 1796286693.491 s after the epoch.
        assert_eq!(rfc3339_us("2026-12-03T08:31:33.491Z"), Some(us));
        assert_eq!(rfc3339_us("2026-12-03 09:31:33,491+01:00"), Some(us));
        assert_eq!(rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_us("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-03T08:31:33+1",
        ] {
            assert_eq!(rfc3339_us(bad), None, "{bad:?}");
        }
        assert_eq!(wall_time_us(&Value::from(-5)), None);
    }

    #[test]
    fn long_lines_are_bounded() {
        let reader = LogReader::new(&spec(LogFormat::Json));
        let huge = "x".repeat(10_000);
        let many: String = (0..400)
            .map(|i| format!("\"f{i}\":\"{}\"", "y".repeat(20)))
            .collect::<Vec<_>>()
            .join(",");
        let read = reader
            .read(&format!("{{\"msg\":\"{huge}\",{many}}}"))
            .expect("read");
        assert_eq!(read.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(
            read.fields.len() <= MAX_FIELDS_BYTES + 32,
            "{}",
            read.fields.len()
        );
        let fields: Value = serde_json::from_str(&read.fields).expect("still JSON");
        assert!(fields["_cut"].as_u64().unwrap() > 0);
    }

    #[test]
    fn trace_ids_are_w3c_or_nothing() {
        assert_eq!(trace_id_in("abc"), None);
        assert_eq!(trace_id_in(&"0".repeat(32)), None);
        assert_eq!(
            trace_id_in("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}

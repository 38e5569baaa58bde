//! Key extraction: which key a dependency call or a sink delivery is about, so it joins back to
//! operations even when the service does not propagate `traceparent`.

use hyper::HeaderMap;
use reprod_scenario::KeyExtract;

/// A key rule ready to apply: regular expressions compiled once.
#[derive(Clone, Debug)]
pub struct KeyRule {
    rule: KeyExtract,
    regex: Option<regex_lite::Regex>,
}

impl KeyRule {
    /// Compiles `rule` (a path regex was validated when the scenario loaded).
    pub fn new(rule: &KeyExtract) -> KeyRule {
        let regex = match rule {
            KeyExtract::PathRegex(p) => regex_lite::Regex::new(p).ok(),
            _ => None,
        };
        KeyRule {
            rule: rule.clone(),
            regex,
        }
    }

    /// The key this rule finds in a request, if any.
    pub fn extract(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> Option<String> {
        match &self.regex {
            Some(re) => re
                .captures(path)?
                .get(1)
                .map(|m| percent_decode(m.as_str())),
            None => extract_key(&self.rule, path, headers, body),
        }
    }
}

/// The key named by `rule` in a request, if it has one. Compiles a path regex on every call:
/// use [`KeyRule`] where calls repeat.
pub fn extract_key(
    rule: &KeyExtract,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    match rule {
        KeyExtract::PathSegment(i) => path
            .split('/')
            .filter(|s| !s.is_empty())
            .nth(*i)
            .map(percent_decode),
        KeyExtract::PathRegex(pattern) => regex_lite::Regex::new(pattern)
            .ok()?
            .captures(path)?
            .get(1)
            .map(|m| percent_decode(m.as_str())),
        KeyExtract::Header(name) => headers
            .get(name.as_str())?
            .to_str()
            .ok()
            .map(str::to_string),
        KeyExtract::JsonPointer(pointer) => {
            let value: serde_json::Value = serde_json::from_slice(body).ok()?;
            match value.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            }
        }
    }
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_from_path_json_and_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-account", "acct_9".parse().expect("header"));
        let path = "/usage/acct%201/2026-01";
        assert_eq!(
            extract_key(&KeyExtract::PathSegment(1), path, &headers, b""),
            Some("acct 1".into())
        );
        assert_eq!(
            extract_key(&KeyExtract::PathSegment(5), path, &headers, b""),
            None
        );
        let body = br#"{"invoiceId": "inv_1", "n": 3}"#;
        assert_eq!(
            extract_key(
                &KeyExtract::JsonPointer("/invoiceId".into()),
                "/",
                &headers,
                body
            ),
            Some("inv_1".into())
        );
        assert_eq!(
            extract_key(&KeyExtract::JsonPointer("/n".into()), "/", &headers, body),
            Some("3".into())
        );
        assert_eq!(
            extract_key(
                &KeyExtract::JsonPointer("/x".into()),
                "/",
                &headers,
                b"not json"
            ),
            None
        );
        assert_eq!(
            extract_key(&KeyExtract::Header("x-account".into()), "/", &headers, b""),
            Some("acct_9".into())
        );
    }
}

//! Per-key data from a CSV file: `keys = { file = "users.csv" }`. The header names the columns;
//! the key is the `key` column, or the first. Every other column is `{key.COLUMN}` in requests.
//! Fields follow RFC 4180: separated by commas, optionally in double quotes (`""` inside is one
//! quote, and a quoted field may hold commas and line breaks); lines end in LF or CRLF.

use std::path::Path;

use crate::model::KeyFile;

/// The largest key file read, so a wrong path (a database, a log) fails fast.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The most keys a file may hold, as for `keys.count`.
pub const MAX_KEYS: usize = 1_000_000;

/// A problem in the file, with the file's own 1-based line when it is about one row.
#[derive(Debug)]
pub struct KeyFileError {
    pub line: Option<usize>,
    pub message: String,
    pub hint: &'static str,
}

/// Reads and checks the key file at `path`.
pub fn read(path: &Path) -> Result<KeyFile, KeyFileError> {
    let fail = |line, message: String, hint| KeyFileError {
        line,
        message,
        hint,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        fail(
            None,
            format!("cannot read the key file: {e}"),
            "the path is relative to the scenario file",
        )
    })?;
    if meta.len() > MAX_BYTES {
        return Err(fail(
            None,
            format!(
                "the key file is {} MiB; at most {} MiB is read",
                meta.len() / (1024 * 1024),
                MAX_BYTES / (1024 * 1024)
            ),
            "keep only the keys the run needs",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        fail(
            None,
            format!("cannot read the key file: {e}"),
            "the path is relative to the scenario file",
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        fail(
            None,
            "the key file is not UTF-8 text".to_string(),
            "a key file is CSV text with a header row, such as: key,token",
        )
    })?;
    parse(text.strip_prefix('\u{feff}').unwrap_or(&text))
}

/// Parses key file `text`.
pub fn parse(text: &str) -> Result<KeyFile, KeyFileError> {
    let rows = records(text)?;
    let mut rows = rows.into_iter().filter(|(_, fields)| {
        // A blank line (one empty field) is skipped.
        !(fields.len() == 1 && fields[0].is_empty())
    });
    let Some((_, header)) = rows.next() else {
        return Err(KeyFileError {
            line: Some(1),
            message: "the key file is empty".to_string(),
            hint: "the first line names the columns, for example: key,token; each line after it is one key",
        });
    };
    for (i, name) in header.iter().enumerate() {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(KeyFileError {
                line: Some(1),
                message: format!("column {} of the header is {name:?}", i + 1),
                hint: "column names are used as {key.NAME}: letters, digits, _ or -",
            });
        }
        if header[..i].contains(name) {
            return Err(KeyFileError {
                line: Some(1),
                message: format!("the header names column {name:?} twice"),
                hint: "give each column its own name",
            });
        }
    }
    let key_column = header.iter().position(|h| h == "key").unwrap_or(0);
    let columns: Vec<String> = header
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != key_column)
        .map(|(_, h)| h.clone())
        .collect();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (line, mut fields) in rows {
        if fields.len() != header.len() {
            return Err(KeyFileError {
                line: Some(line),
                message: format!(
                    "this row has {} field(s); the header has {}",
                    fields.len(),
                    header.len()
                ),
                hint: "quote a field that holds a comma: \"a,b\"",
            });
        }
        let key = fields.remove(key_column);
        if key.is_empty() {
            return Err(KeyFileError {
                line: Some(line),
                message: format!("the key ({}) is empty", header[key_column]),
                hint: "every row needs its key",
            });
        }
        if let Some(first) = seen.insert(key.clone(), line) {
            return Err(KeyFileError {
                line: Some(line),
                message: format!("key {key:?} is also on line {first}"),
                hint: "each key appears once; its other columns are that key's values",
            });
        }
        if keys.len() == MAX_KEYS {
            return Err(KeyFileError {
                line: Some(line),
                message: format!("the key file holds more than {MAX_KEYS} keys"),
                hint: "keep only the keys the run needs",
            });
        }
        keys.push(key);
        values.push(fields);
    }
    if keys.is_empty() {
        return Err(KeyFileError {
            line: Some(1),
            message: "the key file has a header but no keys".to_string(),
            hint: "each line after the header is one key",
        });
    }
    Ok(KeyFile {
        keys,
        columns,
        values,
    })
}

/// The records of `text`, each with the line it starts on.
fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, KeyFileError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(KeyFileError {
                        line: Some(start),
                        message: "a quoted field is not closed".to_string(),
                        hint: "end it with \"; a quote inside a quoted field is written \"\"",
                    });
                }
                fields.push(std::mem::take(&mut field));
                break;
            };
            match c {
                '"' if quoted => {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                '"' if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                '\n' if quoted => {
                    line += 1;
                    field.push('\n');
                }
                ',' if !quoted => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '\r' if !quoted && chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                c if was_quoted && !quoted => {
                    return Err(KeyFileError {
                        line: Some(line),
                        message: format!("{c:?} follows a closing quote"),
                        hint: "a quoted field ends at its closing quote; put the whole field in quotes",
                    });
                }
                c => field.push(c),
            }
        }
        out.push((start, fields));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_keys_and_columns() {
        let f = parse("user,key,token\r\nalice,a1,\"t,1\"\nbob,b2,\"say \"\"hi\"\"\"\n\n").unwrap();
        assert_eq!(f.keys, ["a1", "b2"]);
        assert_eq!(f.columns, ["user", "token"]);
        assert_eq!(f.values[0], ["alice", "t,1"]);
        assert_eq!(f.values[1], ["bob", "say \"hi\""]);
    }

    #[test]
    fn the_first_column_is_the_key_without_one_named_key() {
        let f = parse("email,password\nx@example.com,pw\n").unwrap();
        assert_eq!(f.keys, ["x@example.com"]);
        assert_eq!(f.columns, ["password"]);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let e = parse("key,token\na,1\nb\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(
            e.message.contains("1 field(s); the header has 2"),
            "{}",
            e.message
        );
        let e = parse("key,token\na,1\n\"b\nc\",2\na,3\n").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(5), "key \"a\" is also on line 2")
        );
        let e = parse("key,to ken\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = parse("key\n\"open\n").unwrap_err();
        assert!(e.message.contains("not closed"));
        assert!(parse("key\n").unwrap_err().message.contains("no keys"));
        assert!(parse("").unwrap_err().message.contains("empty"));
    }
}

//! Scenario errors that point at the file: `path:line:column: message`, with a hint.

use std::fmt;
use std::ops::Range;

/// One problem in a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// Every problem found in a scenario; nothing runs while there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file as the user named it.
    pub path: String,
    /// At least one.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.path, d.line, d.column, d.message)?;
            if let Some(hint) = &d.hint {
                write!(f, "\n  hint: {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioError {}

/// Collects diagnostics against one source text.
#[derive(Debug)]
pub struct Diagnostics<'a> {
    source: &'a str,
    list: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(source: &'a str) -> Diagnostics<'a> {
        Diagnostics {
            source,
            list: Vec::new(),
        }
    }

    /// Records a problem at the start of `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<&str>) {
        let (line, column) = line_column(self.source, span.start);
        self.list.push(Diagnostic {
            line,
            column,
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_error(mut self, path: &str) -> ScenarioError {
        self.list.sort_by_key(|d| (d.line, d.column));
        self.list.dedup();
        ScenarioError {
            path: path.to_string(),
            diagnostics: self.list,
        }
    }
}

/// 1-based line and column of byte `offset` in `source`.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The candidate closest to `written` by edit distance, when it is close enough to be a typo:
/// at most one edit in a short word, a third of its length in a long one.
pub(crate) fn nearest<'c>(written: &str, candidates: &'c [String]) -> Option<&'c str> {
    let limit = (written.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(written, c), c))
        .filter(|(d, c)| *d <= limit && *d > 0 || (*d == 0 && c.as_str() != written))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Levenshtein distance over characters, ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::{line_column, nearest};

    #[test]
    fn nearest_suggests_typos_only() {
        let names: Vec<String> = ["replicas", "command", "url", "ready"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearest("replica", &names), Some("replicas"));
        assert_eq!(nearest("Command", &names), Some("command"));
        assert_eq!(nearest("uri", &names), Some("url"));
        assert_eq!(nearest("timeout", &names), None);
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3));
    }
}

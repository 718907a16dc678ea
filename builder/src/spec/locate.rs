//! Positions of errors found after parsing: the offending key and value looked up in the
//! spec's text, so a semantic error names file:line:column like a syntax error does.

use super::{Location, SpecError};

pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// Locates the first line holding `key:` followed by `value` (or just `key:` when `value` is
    /// empty), for errors found after parsing.
    fn locate(&self, key: &str, value: &str) -> Location {
        let mut line = 0;
        for (i, l) in self.text.lines().enumerate() {
            let t = l.trim_start().trim_start_matches("- ");
            if let Some(rest) = t
                .strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix(':'))
            {
                let rest = rest.trim().trim_matches(|c| c == '"' || c == '\'');
                if value.is_empty() || rest == value || rest.contains(value) {
                    line = i + 1;
                    break;
                }
            }
            if line == 0 && !value.is_empty() && l.contains(value) && l.contains(key) {
                line = i + 1;
            }
        }
        let column = if line > 0 {
            self.text
                .lines()
                .nth(line - 1)
                .map_or(0, |l| l.find(key).map_or(1, |c| c + 1))
        } else {
            0
        };
        Location {
            file: self.file.to_string(),
            line,
            column,
        }
    }

    pub(super) fn err(&self, key: &str, value: &str, message: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            at: self.locate(key, value),
            message: message.into(),
        }
    }
}

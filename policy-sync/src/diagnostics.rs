//! Problems found in policies, schemas and entities, with where they are: the source (a
//! policy id, `schema`, an entity, or a file), line and column. The API returns them as JSON;
//! the CLI renders them with miette, source snippet included.

use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

/// One problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// What the problem is in: `policy "<id>"`, `schema`, `entity <uid>`, `issuer <iss>`, or a
    /// file name.
    pub source: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// 1-based line and column of the first labelled span, when Cedar gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    #[serde(skip)]
    text: Option<Arc<str>>,
    #[serde(skip)]
    span: Option<(usize, usize)>,
}

impl Problem {
    /// A problem without a position.
    pub fn plain(source: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            message: message.into(),
            help: None,
            line: None,
            column: None,
            text: None,
            span: None,
        }
    }

    /// Problems from a Cedar diagnostic about `text` (and the diagnostics related to it).
    pub fn from_diagnostic(source: &str, text: &Arc<str>, d: &dyn Diagnostic) -> Vec<Self> {
        let mut out = vec![Self::one(source, text, d)];
        if let Some(related) = d.related() {
            out.extend(related.map(|r| Self::one(source, text, r)));
        }
        out
    }

    fn one(source: &str, text: &Arc<str>, d: &dyn Diagnostic) -> Self {
        let span = d
            .labels()
            .and_then(|mut l| l.next())
            .map(|l| (l.offset(), l.len()))
            .filter(|(o, l)| o.saturating_add(*l) <= text.len());
        let (line, column) = match span {
            Some((offset, _)) => {
                let (l, c) = line_column(text, offset);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Self {
            source: source.to_owned(),
            message: d.to_string(),
            help: d.help().map(|h| h.to_string()),
            line,
            column,
            text: Some(Arc::clone(text)),
            span,
        }
    }

    /// A miette report of this problem, with the source snippet when there is one.
    pub fn report(&self) -> miette::Report {
        let text = self.text.clone();
        let report = miette::Report::new(self.clone());
        match text {
            Some(t) => report.with_source_code(NamedSource::new(&self.source, t.to_string())),
            None => report,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.source, self.message),
            _ => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.span.map(|(offset, len)| {
            Box::new(std::iter::once(LabeledSpan::new_with_span(
                None,
                SourceSpan::new(offset.into(), len),
            ))) as Box<dyn Iterator<Item = LabeledSpan>>
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Problems as one line each, for logs and plain error messages.
pub fn summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}

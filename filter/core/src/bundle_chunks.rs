//! Parsing a bundle's policies again without parsing what did not change.
//!
//! policy-sync writes every policy of a document on lines of its own, each starting with its
//! `@id("...")` annotation. The text is cut before every line that starts with `@id(`; each
//! piece (chunk) is parsed on its own and kept with the bundle, and the next version reuses the
//! policies of every chunk whose text it carries unchanged. A live update of one policy in a
//! bundle of thousands then parses one policy.
//!
//! The result is the one parsing the whole text gives, or nothing (and the caller parses the
//! whole text): a cut can only fall inside a token if it falls inside a string literal, which
//! leaves the chunk before it with an unterminated string, a parse error. Every chunk must
//! parse, and every policy in it must carry an `@id` (a policy without one is named by its
//! position in the whole text).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Policy, PolicyId, PolicySet};

use crate::bundle::id_annotation;

/// The policies of each chunk of a bundle's text, named by their `@id`s. Cheap to clone.
#[derive(Clone, Default)]
pub struct Chunks(Arc<HashMap<String, Arc<[Policy]>>>);

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunks({} parsed)", self.0.len())
    }
}

impl Chunks {
    /// Number of chunks kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none are kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The chunks of `text`, in order: cut before each line that starts with `@id(`.
fn cut(text: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = Vec::new();
    if text.starts_with("@id(") {
        starts.push(0);
    }
    starts.extend(text.match_indices("\n@id(").map(|(i, _)| i + 1));
    let mut out = Vec::with_capacity(starts.len() + 1);
    let mut from = 0;
    for start in starts {
        if start > from {
            out.push(text.get(from..start).unwrap_or_default());
        }
        from = start;
    }
    out.push(text.get(from..).unwrap_or_default());
    out
}

/// One chunk parsed, its policies named by their `@id`s; `None` if it does not parse, holds a
/// template, or holds a policy without an `@id`.
fn parse_chunk(chunk: &str) -> Option<Arc<[Policy]>> {
    let parsed = PolicySet::from_str(chunk).ok()?;
    if parsed.templates().next().is_some() {
        return None;
    }
    let mut named = Vec::with_capacity(parsed.num_of_policies());
    for p in parsed.policies() {
        named.push(p.new_id(PolicyId::new(id_annotation(p)?)));
    }
    Some(named.into())
}

/// The policies of `text` in order, reusing `previous` for unchanged chunks, and the chunks
/// of this text for the next version; `None` when the whole text must be parsed instead.
pub(crate) fn parse(text: &str, previous: &Chunks) -> Option<(Vec<Policy>, Chunks)> {
    let mut kept: HashMap<String, Arc<[Policy]>> = HashMap::new();
    let mut policies = Vec::new();
    for chunk in cut(text) {
        let parsed = match previous.0.get(chunk).or_else(|| kept.get(chunk)) {
            Some(p) => Arc::clone(p),
            None => parse_chunk(chunk)?,
        };
        policies.extend(parsed.iter().cloned());
        kept.insert(chunk.to_owned(), parsed);
    }
    Some((policies, Chunks(Arc::new(kept))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_before_each_id_line() {
        assert_eq!(cut(""), [""]);
        assert_eq!(
            cut(
                "@id(\"a\") permit(principal, action, resource);\n@id(\"b\")\nforbid(principal, action, resource);\n"
            ),
            [
                "@id(\"a\") permit(principal, action, resource);\n",
                "@id(\"b\")\nforbid(principal, action, resource);\n"
            ]
        );
        assert_eq!(cut("// c\n@id(\"a\")x"), ["// c\n", "@id(\"a\")x"]);
    }

    #[test]
    fn a_cut_inside_a_string_refuses_the_chunks() {
        let text = "@id(\"a\") permit(principal, action, resource) when { context.x == \"\n@id(\\\"b\\\") \" };\n";
        assert!(PolicySet::from_str(text).is_ok());
        assert!(parse(text, &Chunks::default()).is_none());
    }

    #[test]
    fn a_policy_without_an_id_refuses_the_chunks() {
        let text = "@id(\"a\") permit(principal, action, resource);\npermit(principal, action, resource);\n";
        assert!(parse(text, &Chunks::default()).is_none());
    }
}

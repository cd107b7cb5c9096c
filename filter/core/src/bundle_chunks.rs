//! Parsing a bundle's policies again without parsing what did not change.
//!
//! policy-sync writes every policy of a document on lines of its own, each starting with its
//! `@id("...")` annotation. The text is cut before every line that starts with `@id(`; the
//! bundle keeps, for each piece (chunk), the SHA-256 of its text and the ids of its policies,
//! and the next version reuses the policies of every chunk whose text it carries unchanged. A
//! live update of one policy in a bundle of thousands then parses one policy.
//!
//! The chunks not held are parsed together, in batches of up to 64 KiB of text, one call to
//! Cedar's parser each (its lexer starts cold at every call), and each policy goes to the chunk
//! its source span lies in. The result is the one parsing the whole text gives, or nothing (and
//! the caller parses the whole text): a cut can only fall inside a token if it falls inside a
//! string literal, and then a policy's span crosses the cut. Every
//! policy must lie inside one chunk and carry an `@id` (a policy without one is named by its
//! position in the whole text), so each chunk holds whole policies and parses on its own to
//! the same policies.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Policy, PolicyId, PolicySet};
use sha2::{Digest, Sha256};

use crate::bundle::id_annotation;

/// A chunk's text, by its SHA-256.
type Key = [u8; 32];

/// The ids of the policies of each chunk of a bundle's text, and the bundle's policies to take
/// them from. Cheap to clone.
#[derive(Clone, Default)]
pub struct Chunks {
    policies: Arc<PolicySet>,
    ids: Arc<HashMap<Key, Box<[PolicyId]>>>,
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunks({} parsed)", self.ids.len())
    }
}

impl Chunks {
    /// Number of chunks kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none are kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The policies of a chunk, from the bundle it was kept with.
    fn policies(&self, key: &Key) -> Option<Vec<Policy>> {
        self.ids
            .get(key)?
            .iter()
            .map(|id| self.policies.policy(id).cloned())
            .collect()
    }
}

/// The ids by chunk of one text, made into [`Chunks`] once its bundle's policies are.
#[derive(Debug, Default)]
pub(crate) struct ChunkIds(HashMap<Key, Box<[PolicyId]>>);

impl ChunkIds {
    /// These chunks, taking their policies from `policies`.
    pub(crate) fn with(self, policies: &Arc<PolicySet>) -> Chunks {
        if self.0.is_empty() {
            return Chunks::default();
        }
        Chunks {
            policies: Arc::clone(policies),
            ids: Arc::new(self.0),
        }
    }
}

fn key(chunk: &str) -> Key {
    Sha256::digest(chunk.as_bytes()).into()
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

/// The chunks parsed in one call, their policies named by their `@id`s, in the order of
/// `chunks`; `None` if the text does not parse, holds a template, or holds a policy without an
/// `@id` or one that does not lie inside one chunk.
fn parse_together(chunks: &[&str]) -> Option<Vec<Vec<Policy>>> {
    let mut joined = String::with_capacity(chunks.iter().map(|c| c.len()).sum());
    let mut ends = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        joined.push_str(chunk);
        ends.push(joined.len());
    }
    let parsed = PolicySet::from_str(&joined).ok()?;
    if parsed.templates().next().is_some() {
        return None;
    }
    let mut placed: Vec<Vec<(usize, Policy)>> = chunks.iter().map(|_| Vec::new()).collect();
    for p in parsed.policies() {
        let loc = parsed.as_ref().get(p.id().as_ref())?.loc()?;
        let i = ends.partition_point(|end| *end <= loc.start());
        let start = if i == 0 { 0 } else { *ends.get(i - 1)? };
        if loc.start() < start || loc.end() > *ends.get(i)? {
            return None;
        }
        let named = p.new_id(PolicyId::new(id_annotation(p)?));
        placed.get_mut(i)?.push((loc.start(), named));
    }
    Some(
        placed
            .into_iter()
            .map(|mut in_chunk| {
                in_chunk.sort_unstable_by_key(|(at, _)| *at);
                in_chunk.into_iter().map(|(_, p)| p).collect()
            })
            .collect(),
    )
}

/// Text parsed per call to Cedar's parser, at most (a chunk longer than this is one batch).
const BATCH_BYTES: usize = 64 * 1024;

/// `chunks` in consecutive batches of at most [`BATCH_BYTES`] of text (and at least one chunk).
fn batches<'c, 't>(chunks: &'c [&'t str]) -> impl Iterator<Item = &'c [&'t str]> + 'c {
    let mut rest = chunks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut len = 0;
        let n = rest
            .iter()
            .take_while(|c| {
                len += c.len();
                len <= BATCH_BYTES
            })
            .count()
            .max(1);
        let (batch, more) = rest.split_at(n.min(rest.len()));
        rest = more;
        Some(batch)
    })
}

/// The policies of `text` in order, reusing `previous` for unchanged chunks, and the ids by
/// chunk of this text for the next version; `None` when the whole text must be parsed instead.
pub(crate) fn parse(text: &str, previous: &Chunks) -> Option<(Vec<Policy>, ChunkIds)> {
    let chunks = cut(text);
    let keys: Vec<Key> = chunks.iter().map(|c| key(c)).collect();
    let mut seen: HashSet<Key> = HashSet::with_capacity(keys.len());
    let mut by_key: HashMap<Key, Vec<Policy>> = HashMap::new();
    let mut missing: Vec<&str> = Vec::new();
    let mut missing_keys: Vec<Key> = Vec::new();
    for (chunk, k) in chunks.iter().zip(&keys) {
        if !seen.insert(*k) {
            continue;
        }
        match previous.policies(k) {
            Some(policies) => {
                by_key.insert(*k, policies);
            }
            None => {
                missing.push(chunk);
                missing_keys.push(*k);
            }
        }
    }
    // In batches: one call per batch warms the lexer once, and only one batch's syntax tree
    // is held at a time (the high-water mark of a worker's memory is what it keeps).
    let mut batch_keys = missing_keys.into_iter();
    for batch in batches(&missing) {
        let parsed = parse_together(batch)?;
        by_key.extend(batch_keys.by_ref().take(batch.len()).zip(parsed));
    }
    let mut policies = Vec::new();
    let mut ids: HashMap<Key, Box<[PolicyId]>> = HashMap::with_capacity(by_key.len());
    for k in &keys {
        match by_key.remove(k) {
            Some(in_chunk) => {
                ids.insert(*k, in_chunk.iter().map(|p| p.id().clone()).collect());
                policies.extend(in_chunk);
            }
            // A chunk repeated: its ids twice, which the whole text's parse refuses.
            None if ids.get(k).is_none_or(|i| !i.is_empty()) => return None,
            None => {}
        }
    }
    Some((policies, ChunkIds(ids)))
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

    /// The second version parses only the chunk that changed: the policies of the others are
    /// the first version's (their source is the first version's text).
    #[test]
    fn unchanged_chunks_are_reused() {
        let v1 = "@id(\"a\") permit(principal, action, resource);\n@id(\"b\") forbid(principal, action, resource) when { context.x };\n";
        let v2 = "@id(\"a\") permit(principal, action, resource);\n@id(\"b\") forbid(principal, action, resource) when { context.y };\n";
        let compile = |text: &str, previous: &Chunks| {
            let wire = crate::bundle::BundleWire {
                policies: text.to_owned(),
                ..Default::default()
            };
            crate::bundle::Bundle::compile(&wire, previous).unwrap()
        };
        let first = compile(v1, &Chunks::default());
        assert_eq!(first.chunks().len(), 2);
        let second = compile(v2, first.chunks());
        let src = |b: &crate::bundle::Bundle, id: &str| {
            let id = PolicyId::new(id);
            let set: &PolicySet = &b.policies;
            let ast = AsRef::<cedar_policy_core::ast::PolicySet>::as_ref(set)
                .get(id.as_ref())
                .unwrap();
            Arc::clone(&ast.loc().unwrap().src)
        };
        assert!(Arc::ptr_eq(&src(&first, "a"), &src(&second, "a")));
        assert!(!Arc::ptr_eq(&src(&first, "b"), &src(&second, "b")));
        assert!(
            second
                .policies
                .policy(&PolicyId::new("b"))
                .unwrap()
                .to_string()
                .contains("context.y")
        );
        // Unchanged text: nothing parsed again.
        let third = compile(v2, second.chunks());
        assert!(Arc::ptr_eq(&src(&second, "b"), &src(&third, "b")));
    }
}

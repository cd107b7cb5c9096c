//! Parsing a bundle's policies again without parsing what did not change.
//!
//! policy-sync writes every policy of a document on lines of its own, each starting with its
//! `@id("...")` annotation. The text is cut before every line that starts with `@id(`; the
//! bundle keeps, by the SHA-256 of each piece's (chunk's) text, its compiled policies
//! (`bundle_policies`), and the next version reuses those of every chunk whose text it
//! carries unchanged, if its schema is the same. A live update of one policy in a bundle of
//! thousands then parses and validates one policy.
//!
//! The chunks not held are parsed together, in batches of up to 16 KiB of text, one call to
//! Cedar's parser each (its lexer starts cold at every call; a batch's syntax tree, some 30
//! times its text, is the largest thing held while compiling), and each policy goes to the chunk
//! its source span lies in. The result is the one parsing the whole text gives, or nothing (and
//! the caller parses the whole text): a cut can only fall inside a token if it falls inside a
//! string literal, and then a policy's span crosses the cut. Every
//! policy must lie inside one chunk and carry an `@id` (a policy without one is named by its
//! position in the whole text), so each chunk holds whole policies and parses on its own to
//! the same policies.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet};
use sha2::{Digest, Sha256};

use crate::bundle::policies::id_annotation;
use crate::bundle::policies::{CompiledPolicy, Policies, Shared};

/// A chunk's text, or a schema's, by its SHA-256.
pub(crate) type Key = [u8; 32];

/// The compiled policies of each chunk of a bundle's text, and the schema they were validated
/// against (a version with another schema parses everything again). Cheap to clone.
#[derive(Clone, Default)]
pub struct Chunks {
    schema: Option<Key>,
    by_key: Arc<HashMap<Key, Arc<[CompiledPolicy]>>>,
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunks({} parsed)", self.by_key.len())
    }
}

impl Chunks {
    /// Number of chunks kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether none are kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The SHA-256 of `text`.
pub(crate) fn key(text: &str) -> Key {
    Sha256::digest(text.as_bytes()).into()
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

/// The chunks of a batch parsed in one call: Cedar's set (its policies under Cedar's
/// positional ids), and for each chunk in order the ids of its policies, as (`@id`, id in
/// the set).
struct Parsed {
    set: PolicySet,
    chunks: Vec<Vec<(PolicyId, PolicyId)>>,
}

/// `chunks` parsed in one call; `None` if the text does not parse, holds a template, or holds
/// a policy without an `@id` or one that does not lie inside one chunk.
fn parse_together(chunks: &[&str]) -> Option<Parsed> {
    let mut joined = String::with_capacity(chunks.iter().map(|c| c.len()).sum());
    let mut ends = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        joined.push_str(chunk);
        ends.push(joined.len());
    }
    let set = PolicySet::from_str(&joined).ok()?;
    if set.templates().next().is_some() {
        return None;
    }
    let mut placed: Vec<Vec<(usize, PolicyId, PolicyId)>> =
        chunks.iter().map(|_| Vec::new()).collect();
    for p in set.policies() {
        let loc = set.as_ref().get(p.id().as_ref())?.loc()?;
        let i = ends.partition_point(|end| *end <= loc.start());
        let start = if i == 0 { 0 } else { *ends.get(i - 1)? };
        if loc.start() < start || loc.end() > *ends.get(i)? {
            return None;
        }
        let named = PolicyId::new(id_annotation(p)?);
        placed
            .get_mut(i)?
            .push((loc.start(), named, p.id().clone()));
    }
    let chunks = placed
        .into_iter()
        .map(|mut in_chunk| {
            in_chunk.sort_unstable_by_key(|(at, _, _)| *at);
            in_chunk
                .into_iter()
                .map(|(_, named, id)| (named, id))
                .collect()
        })
        .collect();
    Some(Parsed { set, chunks })
}

/// Text parsed per call to Cedar's parser, at most (a chunk longer than this is one batch).
const BATCH_BYTES: usize = 16 * 1024;

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

/// The policies of `text` in order, reusing `previous` for unchanged chunks when it was checked
/// against the same `schema` (its SHA-256), and the chunks of this text for the next version.
/// `check` is given every batch of policies parsed, as Cedar's set (under Cedar's positional
/// ids), before they are kept, and refuses them by returning false. `None` when the whole text must be parsed and
/// checked instead: it does not parse in chunks, a batch is refused, or two policies share an
/// id.
pub(crate) fn parse(
    text: &str,
    previous: &Chunks,
    schema: Option<Key>,
    check: &mut dyn FnMut(&PolicySet) -> bool,
) -> Option<(Policies, Chunks)> {
    let chunks = cut(text);
    let keys: Vec<Key> = chunks.iter().map(|c| key(c)).collect();
    let reusable = previous.schema == schema;
    let mut seen: HashSet<Key> = HashSet::with_capacity(keys.len());
    let mut by_key: HashMap<Key, Arc<[CompiledPolicy]>> = HashMap::with_capacity(keys.len());
    let mut missing: Vec<&str> = Vec::new();
    let mut missing_keys: Vec<Key> = Vec::new();
    for (chunk, k) in chunks.iter().zip(&keys) {
        if !seen.insert(*k) {
            continue;
        }
        match previous.by_key.get(k).filter(|_| reusable) {
            Some(policies) => {
                by_key.insert(*k, Arc::clone(policies));
            }
            None => {
                missing.push(chunk);
                missing_keys.push(*k);
            }
        }
    }
    // In batches: one call per batch warms the lexer once, and only one batch's syntax trees
    // are held at a time (the high-water mark of a worker's memory is what it keeps).
    let mut batch_keys = missing_keys.into_iter();
    let mut shared = Shared::default();
    for batch in batches(&missing) {
        let parsed = parse_together(batch)?;
        if !check(&parsed.set) {
            return None;
        }
        for (k, in_chunk) in batch_keys.by_ref().take(batch.len()).zip(parsed.chunks) {
            let compiled: Option<Vec<CompiledPolicy>> = in_chunk
                .into_iter()
                .map(|(named, id)| CompiledPolicy::new(parsed.set.policy(&id)?, named, &mut shared))
                .collect();
            by_key.insert(k, compiled?.into());
        }
    }
    // A repeated chunk holding policies repeats their ids, refused below.
    let ordered: Vec<Arc<[CompiledPolicy]>> = keys
        .iter()
        .map(|k| by_key.get(k).map(Arc::clone))
        .collect::<Option<_>>()?;
    let mut ids: HashSet<&PolicyId> = HashSet::new();
    for in_chunk in &ordered {
        for p in in_chunk.iter() {
            if !ids.insert(p.id()) {
                return None;
            }
        }
    }
    drop(ids);
    let kept = Chunks {
        schema,
        by_key: Arc::new(by_key),
    };
    Some((Policies::new(ordered), kept))
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
        assert!(parse(text, &Chunks::default(), None, &mut |_| true).is_none());
    }

    #[test]
    fn a_policy_without_an_id_refuses_the_chunks() {
        let text = "@id(\"a\") permit(principal, action, resource);\npermit(principal, action, resource);\n";
        assert!(parse(text, &Chunks::default(), None, &mut |_| true).is_none());
    }

    /// The second version parses only the chunk that changed: the others are the first
    /// version's, shared; and a version with another schema parses everything again.
    #[test]
    fn unchanged_chunks_are_reused() {
        let v1 = "@id(\"a\") permit(principal, action, resource);\n@id(\"b\") forbid(principal, action, resource) when { context.x };\n";
        let v2 = "@id(\"a\") permit(principal, action, resource);\n@id(\"b\") forbid(principal, action, resource) when { context.y };\n";
        let compile = |text: &str, previous: &Chunks, schema: Option<Key>| {
            let mut parsed = 0;
            let (policies, chunks) = parse(text, previous, schema, &mut |batch| {
                parsed += batch.policies().count();
                true
            })
            .unwrap();
            (policies, chunks, parsed)
        };
        let chunk = |p: &Policies, i: usize| Arc::clone(p.chunks().get(i).unwrap());
        let (first, kept, parsed) = compile(v1, &Chunks::default(), None);
        assert_eq!((kept.len(), parsed), (2, 2));
        let (second, kept, parsed) = compile(v2, &kept, None);
        assert_eq!(parsed, 1);
        assert!(Arc::ptr_eq(&chunk(&first, 0), &chunk(&second, 0)));
        assert!(!Arc::ptr_eq(&chunk(&first, 1), &chunk(&second, 1)));
        let b = second.get(&PolicyId::new("b")).unwrap();
        assert!(b.evaluated().unwrap().to_string().contains("context.y"));
        // Unchanged text: nothing parsed again; another schema: everything.
        let (third, kept, parsed) = compile(v2, &kept, None);
        assert_eq!(parsed, 0);
        assert!(Arc::ptr_eq(&chunk(&second, 1), &chunk(&third, 1)));
        let (_, _, parsed) = compile(v2, &kept, Some(key("entity User;")));
        assert_eq!(parsed, 2);
    }

    /// A batch the check refuses refuses the chunks (the caller then checks the whole text).
    #[test]
    fn a_refused_batch_refuses_the_chunks() {
        let text = "@id(\"a\") permit(principal, action, resource);\n";
        assert!(parse(text, &Chunks::default(), None, &mut |_| false).is_none());
    }

    /// Two chunks naming the same id refuse the chunks.
    #[test]
    fn a_repeated_id_refuses_the_chunks() {
        let text = "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") forbid(principal, action, resource);\n";
        assert!(parse(text, &Chunks::default(), None, &mut |_| true).is_none());
    }
}

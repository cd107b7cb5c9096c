//! The bundle: arbitrary bytes split at 0xFF into policies, schema and entities (each any text;
//! entities as JSON when they parse), compiled as `policy-sync` and the filter compile it, then
//! the derived reads, the index and one decision. Nothing may panic; a bundle refused is an
//! error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::bundle::{Bundle, BundleWire};
use portcullis_core::authz::index::PolicyIndex;
use portcullis_core::authz::policy_reads::PolicyReads;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xFF);
    let text = |p: Option<&[u8]>| p.map(|b| String::from_utf8_lossy(b).into_owned());
    let policies = text(parts.next()).unwrap_or_default();
    let schema = text(parts.next()).filter(|s| !s.is_empty());
    let entities = parts
        .next()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    let wire = BundleWire {
        version: 1,
        policies,
        schema,
        entities,
    };
    let Ok(bundle) = Bundle::try_from(&wire) else {
        return;
    };
    let reads = PolicyReads::of_bundle(&bundle.policies);
    let index = PolicyIndex::of(&bundle.policies);
    let _ = (reads.context.reads("source"), index.stats());
});

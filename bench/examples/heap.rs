//! Heap and time of configuring the filter, natively, with the demo configuration and a bundle
//! of N policies (`harness::demo::padded_policies`):
//!
//! * default: bytes live after the configuration is compiled, the high-water mark while it is,
//!   and dhat's allocation sites (`dhat-heap.json`, for dhat's viewer);
//! * `--no-dhat`: time only (no dhat bookkeeping; for a CPU profiler too), with the steps
//!   apart: Cedar's parse of the whole text, the same policies from Cedar's JSON form (EST),
//!   the bundle, the policy index, a version with one policy more compiled from the one before
//!   (what a worker does on a live update), the whole configuration, and a worker's whole
//!   live update (the snapshot with that version in force) beside its parts.
//!
//! `cargo run --profile server -p bench --example heap -- 10000 [--no-dhat]`

use std::error::Error;
use std::time::Instant;

use portcullis_core::authz::index::PolicyIndex;
use portcullis_core::authz::index::cedar::{Policy, PolicyId, PolicySet};
use portcullis_core::bundle::{Bundle, BundleWire};
use portcullis_core::config::FilterConfig;
use portcullis_core::engine::Engine;
use portcullis_core::snapshot::Snapshot;
use serde_json::Value;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The demo configuration with `n` policies, as the bytes the filter is given.
fn config(n: usize) -> Result<Vec<u8>, Box<dyn Error>> {
    let issuer = harness::devkeys::DevIssuer::generate()?;
    Ok(serde_json::to_vec(&harness::demo::padded_plugin_config(
        &issuer, n,
    ))?)
}

/// The steps of compiling `n` policies, timed one by one.
fn steps(n: usize) -> Result<(), Box<dyn Error>> {
    let text = harness::demo::padded_policies(n);
    let t = Instant::now();
    let parsed: PolicySet = text.parse()?;
    let count = parsed.policies().count();
    println!(
        "Cedar's parse of the whole text: {:?} ({count} policies)",
        t.elapsed()
    );
    let est: Vec<(String, Value)> = parsed
        .policies()
        .map(|p| Ok::<_, Box<dyn Error>>((p.id().to_string(), p.to_json()?)))
        .collect::<Result<_, _>>()?;
    let est_text = serde_json::to_string(&est)?;
    let t = Instant::now();
    let back: Vec<(String, Value)> = serde_json::from_str(&est_text)?;
    let mut set = PolicySet::new();
    for (id, json) in back {
        set.add(Policy::from_json(Some(PolicyId::new(id)), json)?)?;
    }
    println!(
        "the same from Cedar's JSON form ({} KiB against {} KiB of text): {:?}",
        est_text.len() / 1024,
        text.len() / 1024,
        t.elapsed()
    );
    let wire = BundleWire {
        policies: text,
        ..BundleWire::default()
    };
    let t = Instant::now();
    let bundle = Bundle::try_from(&wire)?;
    println!("bundle compile: {:?}", t.elapsed());
    let t = Instant::now();
    let index = PolicyIndex::of(&bundle.policies);
    println!("policy index: {:?}, {:?}", t.elapsed(), index.stats());
    // A live update: one policy changed, compiled from the version before (only its chunk is
    // parsed again), then indexed, as a worker does on a new version.
    let last = wire.policies.rfind("@id(").ok_or("no policy to change")?;
    let mut changed = wire.clone();
    changed.policies.insert_str(
        last,
        "@id(\"changed\") forbid(principal, action, resource) when { context.x };\n",
    );
    let t = Instant::now();
    let next = Bundle::compile(&changed, bundle.chunks())?;
    let compiled = t.elapsed();
    let index = PolicyIndex::of(&next.policies);
    println!(
        "one policy added, from the version before: compiled {compiled:?}, with the index {:?} ({} policies)",
        t.elapsed(),
        index.stats().policies
    );
    Ok(())
}

/// What a worker does with a live update, whole: the snapshot in force with its default
/// bundle replaced by one with a policy more (the chunks, the index, the policies' reads, the
/// entity slicer and the tenants' inputs), timed against its parts.
fn worker_update(bytes: &[u8], snapshot: &Snapshot) -> Result<(), Box<dyn Error>> {
    let mut wire = FilterConfig::from_json(bytes)?
        .bundle
        .ok_or("no default bundle")?;
    let previous = snapshot
        .policy_sets()
        .get("default")
        .ok_or("no default set")?
        .engine
        .bundle()
        .chunks()
        .clone();
    wire.policies
        .push_str("\n@id(\"changed\") forbid(principal, action, resource) when { context.x };\n");
    let t = Instant::now();
    let next = snapshot.with_bundle("default", &wire)?;
    let whole = t.elapsed();
    let t = Instant::now();
    let bundle = Bundle::compile(&wire, &previous)?;
    let compiled = t.elapsed();
    let t = Instant::now();
    let index = PolicyIndex::of(&bundle.policies);
    let indexed = t.elapsed();
    println!(
        "a worker's live update (one policy more): {whole:?} in all; of which the bundle {compiled:?} and the index {indexed:?} ({} policies)",
        index.stats().policies
    );
    drop(next);
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("policies {arg:?}: {e}"))?,
        None => 10_000,
    };
    let bytes = config(n)?;
    let kib = bytes.len() / 1024;
    if std::env::args().nth(2).as_deref() == Some("--no-dhat") {
        steps(n)?;
        let t = Instant::now();
        let engine = Engine::from_json(&bytes)?;
        println!(
            "{n} policies, configuration {kib} KiB: configured in {:?}",
            t.elapsed()
        );
        worker_update(&bytes, &engine.snapshot())?;
        drop(engine);
        return Ok(());
    }
    let profiler = dhat::Profiler::new_heap();
    let before = dhat::HeapStats::get();
    let t = Instant::now();
    let engine = Engine::from_json(&bytes)?;
    let took = t.elapsed();
    let after = dhat::HeapStats::get();
    let mib = |b: usize| b as f64 / 1_048_576.0;
    let live = after.curr_bytes - before.curr_bytes;
    println!(
        "{n} policies, configuration {kib} KiB: live {:.1} MiB ({} B/policy), process peak {:.1} MiB, {} allocations, {took:?} (with dhat)",
        mib(live),
        live / n.max(1),
        mib(after.max_bytes),
        after.total_blocks - before.total_blocks,
    );
    drop(profiler);
    drop(engine);
    Ok(())
}

//! Heap used by a configured filter, natively: the bytes live after the demo configuration
//! with a bundle of N policies (`harness::demo::padded_policies`) is compiled, the high-water
//! mark while it is, and dhat's allocation sites (`dhat-heap.json`, for dhat's viewer).
//! `cargo run --profile server -p bench --example heap -- 10000`
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("policies {arg:?}: {e}"))?,
        None => 10_000,
    };
    let issuer = harness::devkeys::DevIssuer::generate()?;
    let mut cfg = harness::demo::plugin_config(&issuer);
    let bundle = serde_json::json!({"version": 1, "policies": harness::demo::padded_policies(n)});
    cfg.as_object_mut()
        .ok_or("the demo configuration is not an object")?
        .insert("bundle".to_owned(), bundle);
    let bytes = serde_json::to_vec(&cfg)?;
    drop(cfg);
    let profiler = dhat::Profiler::new_heap();
    let before = dhat::HeapStats::get();
    let t = std::time::Instant::now();
    let engine = portcullis_core::engine::Engine::from_json(&bytes)?;
    let el = t.elapsed();
    let after = dhat::HeapStats::get();
    let mib = |b: usize| b as f64 / 1048576.0;
    println!(
        "{n} policies, config {} KiB: live {:.1} MiB ({} B/policy), peak {:.1} MiB, {} allocations, {el:?}",
        bytes.len() / 1024,
        mib(after.curr_bytes - before.curr_bytes),
        (after.curr_bytes - before.curr_bytes) / n.max(1),
        mib(after.max_bytes),
        after.total_blocks - before.total_blocks,
    );
    drop(profiler);
    drop(engine);
    Ok(())
}

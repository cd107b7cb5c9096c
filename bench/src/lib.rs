//! Benchmarks live in `benches/`: `cargo bench -p bench`.

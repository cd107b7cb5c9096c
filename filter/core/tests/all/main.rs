//! portcullis-core integration tests: the engine end to end, natively.

mod algorithms;
mod authorization;
mod bundle_chunks;
mod context_reads;
mod decision_cache;
mod engine;
mod entity_slice;
mod index;
mod native_crypto;
mod snapshot;
mod sync_agent;
mod vectors;

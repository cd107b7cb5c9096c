//! portcullis-core integration tests: the engine end to end, natively.

mod algorithms;
mod engine;
mod vectors;

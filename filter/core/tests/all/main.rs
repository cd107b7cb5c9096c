//! portcullis-core integration tests: the engine end to end, natively.

mod engine;

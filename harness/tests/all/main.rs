//! Harness integration tests: the built filter in a real Envoy.

mod envoy_e2e;

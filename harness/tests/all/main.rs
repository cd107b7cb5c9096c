//! Harness integration tests: the built filter in a real Envoy and in the wasmtime host.

mod config_schema;
mod deploy_configs;
mod envoy_e2e;
mod envoy_gateway;
mod envoy_native;
mod host_abi;
mod host_filter;
mod host_sync;
mod k8s_manifests;
mod metric_names;
mod monitoring;
mod oci_image;
mod stats_tags;

//! The filter's OCI image: built in both of Istio's Wasm image formats, pushed to a real
//! registry on loopback, pulled back by digest and checked as Istio's image fetcher reads it.

use std::error::Error;
use std::fs;
use std::path::Path;
use std::process::Command;

use harness::oci::{self, Image, Registry};
use harness::paths;
use portcullis_core::{FilterConfig, Start};
use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

/// Pushes `tag` of `image` to `repo`, pulls it back by the digest the registry reports and
/// returns the pulled directory's manifest (checked against that digest) and the directory.
fn round_trip(
    image: &Image,
    tag: &str,
    repo: &str,
    into: &Path,
) -> Result<(String, Value), Box<dyn Error>> {
    let pushed = oci::push(image, tag, &format!("{repo}:{tag}"), true)?;
    oci::pull(&format!("{repo}@{pushed}"), into, true)?;
    let bytes = fs::read(into.join("manifest.json"))?;
    assert_eq!(
        oci::digest(&bytes),
        pushed,
        "the manifest pulled by digest is the one pushed"
    );
    Ok((pushed, serde_json::from_slice(&bytes)?))
}

fn blob(dir: &Path, descriptor: &Value) -> Result<Vec<u8>, Box<dyn Error>> {
    let digest = descriptor["digest"]
        .as_str()
        .ok_or("descriptor without digest")?;
    let bytes = fs::read(dir.join(digest.trim_start_matches("sha256:")))?;
    assert_eq!(oci::digest(&bytes), digest);
    assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64));
    Ok(bytes)
}

#[test]
fn image_pulled_back_by_digest_holds_the_module_as_istio_reads_it() -> TestResult {
    let module = paths::wasm()?;
    let module_bytes = fs::read(&module)?;
    let work = tempfile::tempdir()?;
    let image = oci::build(&module, &work.path().join("layout"), "0.1.0-test")?;
    assert_eq!(image.module, oci::digest(&module_bytes));
    let registry = Registry::start()?;
    let repo = format!("{}/portcullis/filter", registry.host());

    // The artifact variant: a config layer and the module's bytes as its own layer.
    let pulled = work.path().join("artifact");
    let (digest, manifest) = round_trip(&image, &image.tag, &repo, &pulled)?;
    assert_eq!(
        digest, image.artifact,
        "the digest printed is the registry's"
    );
    assert_eq!(manifest["mediaType"], oci::OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], oci::WASM_CONFIG);
    let layers = manifest["layers"].as_array().ok_or("no layers")?;
    let media: Vec<&str> = layers
        .iter()
        .filter_map(|l| l["mediaType"].as_str())
        .collect();
    // Istio's fetcher wants exactly two layers, one of them the module.
    assert_eq!(media, [oci::WASM_CONFIG, oci::WASM_LAYER]);
    let runtime: Value = serde_json::from_slice(&blob(&pulled, &manifest["config"])?)?;
    assert_eq!(runtime["type"], "envoy_proxy");
    assert_eq!(runtime["config"]["root_ids"][0], oci::ROOT_ID);
    let [_, wasm_layer] = layers.as_slice() else {
        return Err("two layers expected".into());
    };
    assert!(
        blob(&pulled, wasm_layer)? == module_bytes,
        "the module layer is byte-identical to the built module"
    );

    // The compat variant: one standard gzip tar layer holding plugin.wasm.
    let pulled = work.path().join("compat");
    let (digest, manifest) = round_trip(&image, &image.compat_tag(), &repo, &pulled)?;
    assert_eq!(digest, image.compat);
    let layers = manifest["layers"].as_array().ok_or("no layers")?;
    let [layer] = layers.as_slice() else {
        return Err(format!("one layer expected, got {}", layers.len()).into());
    };
    assert_eq!(layer["mediaType"], oci::OCI_LAYER);
    let tarball = work.path().join("layer.tar.gz");
    fs::write(&tarball, blob(&pulled, layer)?)?;
    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked)?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()?;
    assert!(status.success());
    assert!(fs::read(unpacked.join(oci::COMPAT_FILE))? == module_bytes);

    // The WasmPlugin rendered for the pushed image carries the manifest digest Istio checks,
    // and its plugin configuration still compiles.
    let template = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../istio/overlays/sidecars/wasmplugin.yaml"
    ))?;
    let url = format!("oci://{repo}:{}", image.tag);
    let hex = image.artifact.trim_start_matches("sha256:");
    let doc: Value = serde_yaml_ng::from_str(&oci::wasmplugin(&template, &url, hex)?)?;
    assert_eq!(doc["spec"]["url"], url.as_str());
    assert_eq!(doc["spec"]["sha256"], hex);
    assert_eq!(format!("sha256:{}", hex), image.artifact);
    let config: FilterConfig = serde_json::from_value(doc["spec"]["pluginConfig"].clone())?;
    assert!(matches!(Start::new(&config)?, Start::Pending { .. }));
    Ok(())
}

#[test]
fn image_build_refuses_what_is_not_a_module_and_bad_tags() -> TestResult {
    let work = tempfile::tempdir()?;
    let not_wasm = work.path().join("plugin.wasm");
    fs::write(&not_wasm, b"#!/bin/sh\n")?;
    let err = oci::build(&not_wasm, &work.path().join("a"), "t")
        .err()
        .ok_or("a shell script was packed as a module")?;
    assert!(
        err.to_string().contains("not a WebAssembly module"),
        "{err}"
    );
    let err = oci::build(&paths::wasm()?, &work.path().join("b"), "bad tag")
        .err()
        .ok_or("a tag with a space was accepted")?;
    assert!(err.to_string().contains("invalid image tag"), "{err}");
    for bad in ["..", ".hidden", "-x", ""] {
        assert!(oci::check_tag(bad).is_err(), "{bad:?}");
    }
    assert!(oci::check_tag("0.1.0_rc-1").is_ok());
    assert!(!work.path().join("a").exists() && !work.path().join("b").exists());
    Ok(())
}

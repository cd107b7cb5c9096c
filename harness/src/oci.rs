//! The filter as an OCI image in the two formats Istio's Wasm image fetcher reads, and a
//! private OCI registry to push it to.
//!
//! - The *oci* (artifact) variant: a manifest whose config and first layer are the runtime
//!   configuration (`application/vnd.module.wasm.config.v1+json`) and whose second layer is the
//!   module's bytes as they are (`application/vnd.module.wasm.content.layer.v1+wasm`). No image
//!   tool here writes custom media types, so this manifest is written by [`build`]; its digest
//!   depends on the module's bytes only, so the same module always has the same digest.
//! - The *compat* variant: a standard OCI image with one gzip tar layer holding `plugin.wasm`,
//!   built by `umoci` (it writes OCI image layouts directly, needs no daemon and no root) from a
//!   layer GNU `tar` writes.
//!
//! Both go into one OCI image layout (tags `T` and `T-compat`); `skopeo` copies them to a
//! registry unchanged (it keeps an artifact's manifest byte for byte) and back.
//!
//! For an `oci://` URL, Istio compares the WasmPlugin's `sha256` with the image's manifest
//! digest; for an `http(s)://` URL, and for Envoy's `remote` source, with the module's sha256.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::process::{Daemon, run};
use crate::{Error, Result};

/// Media type of the module's layer in the artifact variant.
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Media type of the runtime configuration (the artifact variant's config and first layer).
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of a standard OCI layer (the compat variant's).
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file Istio looks for in a compat variant's layer.
pub const COMPAT_FILE: &str = "plugin.wasm";
/// The root context id the filter registers (the runtime configuration lists it).
pub const ROOT_ID: &str = "portcullis";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A built image layout.
#[derive(Debug, Clone)]
pub struct Image {
    /// The OCI image layout directory holding both variants.
    pub layout: PathBuf,
    /// Tag of the artifact variant; the compat variant is tagged `<tag>-compat`.
    pub tag: String,
    /// `sha256:<hex>` of the module.
    pub module: String,
    /// Manifest digest of the artifact variant.
    pub artifact: String,
    /// Manifest digest of the compat variant.
    pub compat: String,
}

impl Image {
    pub fn compat_tag(&self) -> String {
        compat_tag(&self.tag)
    }
}

/// Builds both variants of `module` into a new OCI image layout at `layout` (which must not
/// exist yet), tagged `tag` and `<tag>-compat`.
pub fn build(module: &Path, layout: &Path, tag: &str) -> Result<Image> {
    let bytes = std::fs::read(module)?;
    if !bytes.starts_with(b"\0asm") {
        return Err(Error::Missing(format!(
            "{} is not a WebAssembly module",
            module.display()
        )));
    }
    check_tag(tag)?;
    let at = |t: &str| format!("{}:{t}", layout.display());
    let compat_tag = compat_tag(tag);
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &at(&compat_tag)])?;
    let staging = tempfile::tempdir()?;
    let file = staging.path().join(COMPAT_FILE);
    std::fs::write(&file, &bytes)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    add_layer(&at(&compat_tag), staging.path(), &[COMPAT_FILE], &[])?;

    let runtime = serde_json::to_vec(&json!({
        "type": "envoy_proxy",
        "abiVersions": ["v0.2.1"],
        "config": { "root_ids": [ROOT_ID] },
    }))
    .map_err(|e| Error::Missing(e.to_string()))?;
    let (config, config_size) = write_blob(layout, &runtime)?;
    let (layer, layer_size) = write_blob(layout, &bytes)?;
    let descriptor = |media: &str, digest: &str, size: usize, annotations: Value| json!({ "mediaType": media, "digest": digest, "size": size, "annotations": annotations });
    let title = |t: &str| json!({ "org.opencontainers.image.title": t });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": WASM_CONFIG, "digest": config, "size": config_size },
        "layers": [
            descriptor(WASM_CONFIG, &config, config_size, title("runtime-config.json")),
            descriptor(WASM_LAYER, &layer, layer_size, title(COMPAT_FILE)),
        ],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::Missing(e.to_string()))?;
    let (manifest_digest, manifest_size) = write_blob(layout, &manifest)?;
    let entry = descriptor(
        OCI_MANIFEST,
        &manifest_digest,
        manifest_size,
        json!({ "org.opencontainers.image.ref.name": tag }),
    );
    let compat = manifest_digest_of(layout, &compat_tag)?;
    let index_path = layout.join("index.json");
    let mut index = read_index(layout)?;
    index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::Missing("umoci's index.json has no manifests".into()))?
        .push(entry);
    std::fs::write(
        &index_path,
        serde_json::to_vec(&index).map_err(|e| Error::Missing(e.to_string()))?,
    )?;
    Ok(Image {
        layout: layout.to_owned(),
        tag: tag.to_owned(),
        module: digest(&bytes),
        artifact: manifest_digest,
        compat,
    })
}

/// Adds a layer holding `entries` of `root` (files and directories with their modes; owner
/// root, time the epoch, so the same files give the same layer) to `image` (`layout:tag`),
/// with umoci's `history` options. umoci's own `insert` writes a tar stream without padding or
/// end-of-archive blocks, which GNU tar refuses; GNU tar writes the layer and umoci adds it as
/// it is.
pub(crate) fn add_layer(
    image: &str,
    root: &Path,
    entries: &[&str],
    history: &[&str],
) -> Result<()> {
    let staging = tempfile::tempdir()?;
    let tarball = staging.path().join("layer.tar");
    let mut tar = Command::new("tar");
    tar.args([
        "--format=ustar",
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mtime=@0",
        "-C",
    ])
    .arg(root)
    .arg("-cf")
    .arg(&tarball)
    .args(entries);
    run(&mut tar, "tar")?;
    let tarball = tarball.display().to_string();
    let mut args = vec!["raw", "add-layer"];
    args.extend_from_slice(history);
    args.extend(["--image", image, tarball.as_str()]);
    umoci(&args)
}

/// Runs `umoci` with `args`.
pub(crate) fn umoci(args: &[&str]) -> Result<()> {
    let mut c = Command::new("umoci");
    c.args(args);
    run(&mut c, "umoci")
}

fn read_index(layout: &Path) -> Result<Value> {
    serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)
        .map_err(|e| Error::Missing(format!("{}/index.json: {e}", layout.display())))
}

/// The digest of the manifest tagged `tag` in the OCI image layout `layout`.
pub fn manifest_digest_of(layout: &Path, tag: &str) -> Result<String> {
    read_index(layout)?
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|all| {
            all.iter().find(|m| {
                m.pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(Value::as_str)
                    == Some(tag)
            })
        })
        .and_then(|m| m.get("digest"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Missing(format!("{} has no manifest tagged {tag}", layout.display())))
}

/// The compat variant's tag beside the artifact variant's `tag`.
fn compat_tag(tag: &str) -> String {
    format!("{tag}-compat")
}

/// An OCI tag (`[A-Za-z0-9_][A-Za-z0-9._-]*`) short enough that `<tag>-compat` is one too.
pub fn check_tag(tag: &str) -> Result<()> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if first_ok
        && tag.len() <= 120
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(Error::Missing(format!("invalid image tag {tag:?}")))
    }
}

/// Stores `bytes` as a blob of the layout; returns its digest and size.
fn write_blob(layout: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let d = digest(bytes);
    let hex = d.trim_start_matches("sha256:");
    std::fs::write(layout.join("blobs/sha256").join(hex), bytes)?;
    Ok((d, bytes.len()))
}

/// Copies `<layout>:<tag>` to `docker://<dest>` with skopeo; returns the digest the registry
/// stored. `insecure`: the registry speaks plain HTTP (a loopback test registry).
pub fn push(image: &Image, tag: &str, dest: &str, insecure: bool) -> Result<String> {
    push_layout(&image.layout, tag, dest, insecure)
}

/// Copies `<layout>:<tag>` of any OCI image layout to `docker://<dest>`; returns the digest
/// the registry stored.
pub fn push_layout(layout: &Path, tag: &str, dest: &str, insecure: bool) -> Result<String> {
    let digest_file = tempfile::NamedTempFile::new()?;
    skopeo_copy(
        &format!("--dest-tls-verify={}", !insecure),
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{dest}"),
        Some(digest_file.path()),
    )?;
    Ok(std::fs::read_to_string(digest_file.path())?
        .trim()
        .to_owned())
}

/// Pulls `docker://<reference>` into a new `dir:` layout at `dest` (the manifest as
/// `manifest.json`, each blob named by its hex digest).
pub fn pull(reference: &str, dest: &Path, insecure: bool) -> Result<()> {
    pull_into(reference, &format!("dir:{}", dest.display()), insecure)
}

/// Pulls `docker://<reference>` into the OCI image layout `layout` (created if missing) as
/// `tag`, the form `umoci unpack` reads.
pub fn pull_layout(reference: &str, layout: &Path, tag: &str, insecure: bool) -> Result<()> {
    pull_into(
        reference,
        &format!("oci:{}:{tag}", layout.display()),
        insecure,
    )
}

fn pull_into(reference: &str, dest: &str, insecure: bool) -> Result<()> {
    skopeo_copy(
        &format!("--src-tls-verify={}", !insecure),
        &format!("docker://{reference}"),
        dest,
        None,
    )
}

/// `skopeo copy` from `src` to `dest` with the registry side's TLS option, writing the stored
/// manifest's digest to `digest_file` if given.
fn skopeo_copy(tls: &str, src: &str, dest: &str, digest_file: Option<&Path>) -> Result<()> {
    let mut c = Command::new("skopeo");
    c.arg("copy").arg(tls);
    if let Some(f) = digest_file {
        c.arg("--digestfile").arg(f);
    }
    c.arg(src).arg(dest);
    run(&mut c, "skopeo copy")
}

/// Unpacks `<layout>:<tag>` into a runtime bundle at `bundle` (which must not exist):
/// `config.json` (the OCI runtime configuration the image's config becomes) and `rootfs/`.
/// Rootless: the files belong to the caller.
pub fn unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<()> {
    umoci(&[
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:{tag}", layout.display()),
        &bundle.display().to_string(),
    ])
}

/// The WasmPlugin in `template` (YAML) with its `url` and `sha256` set: the object a user
/// applies after pushing the image.
pub fn wasmplugin(template: &str, url: &str, sha256_hex: &str) -> Result<String> {
    let mut doc: Value =
        serde_yaml_ng::from_str(template).map_err(|e| Error::Template(e.to_string()))?;
    let spec = doc
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::Template("the WasmPlugin has no spec".into()))?;
    spec.insert("url".into(), json!(url));
    spec.insert("sha256".into(), json!(sha256_hex));
    serde_yaml_ng::to_string(&doc).map_err(|e| Error::Template(e.to_string()))
}

/// A private OCI registry (Debian's `docker-registry`) on a free loopback port, storing in a
/// temporary directory; stopped and removed on drop.
#[derive(Debug)]
pub struct Registry {
    daemon: Daemon,
    port: u16,
}

impl Registry {
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-registry-")
            .tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: '127.0.0.1:{port}'}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut daemon = Daemon::spawn(
            Command::new("docker-registry").arg("serve").arg(&config),
            dir,
            "docker-registry",
            "Debian package docker-registry",
        )?;
        daemon.wait_http_ok(&format!("http://127.0.0.1:{port}/v2/"))?;
        Ok(Self { daemon, port })
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

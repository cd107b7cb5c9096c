//! `cargo xtask image`: the filter as an OCI image in Istio's Wasm image formats, with the
//! values a WasmPlugin needs, or policy-sync's container image; optionally pushed to a registry.

use std::path::{Path, PathBuf};

use harness::{oci, server_image};

use crate::Result;
use crate::install;
use crate::process::{repo_root, target_dir};

/// Which image to build.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// The Wasm filter (Istio's artifact and compat variants).
    Filter,
    /// policy-sync's container image (its static binary, run as a non-root user).
    PolicySync,
}

pub struct Options {
    pub kind: Kind,
    pub tag: String,
    /// `REGISTRY/REPOSITORY` to push both variants to.
    pub push: Option<String>,
    /// The registry speaks plain HTTP.
    pub insecure: bool,
}

pub fn run(opts: &Options) -> Result {
    // Before anything is removed: the tag names a directory.
    oci::check_tag(&opts.tag).map_err(|e| e.to_string())?;
    install::apt_install(&["umoci", "skopeo"])?;
    match opts.kind {
        Kind::Filter => filter(opts),
        Kind::PolicySync => policy_sync(opts),
    }
}

/// `$CARGO_TARGET_DIR/image/<name>`, emptied: where a new layout goes.
fn fresh_layout(name: &str) -> Result<PathBuf> {
    let out = target_dir().join("image");
    let layout = out.join(name);
    if layout.exists() {
        std::fs::remove_dir_all(&layout)
            .map_err(|e| format!("cannot remove the old layout {}: {e}", layout.display()))?;
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(layout)
}

fn policy_sync(opts: &Options) -> Result {
    let binary = crate::server::build(crate::server::Profile::Server)?;
    let layout = fresh_layout(&format!("policy-sync-{}", opts.tag))?;
    let image = server_image::build(&binary, &layout, &opts.tag).map_err(|e| e.to_string())?;
    println!("binary          {} ({})", binary.display(), image.binary);
    println!("OCI layout      {}", layout.display());
    println!(
        "  {:<14}{} (entrypoint {}, user {})",
        image.tag,
        image.manifest,
        server_image::ENTRYPOINT,
        server_image::USER
    );
    let Some(repo) = &opts.push else {
        return Ok(());
    };
    let digest = push(&layout, &opts.tag, repo, opts.insecure, &image.manifest)?;
    println!(
        "istio/base      in kustomization.yaml, images: - {{name: policy-sync, newName: {repo}, digest: {digest}}}"
    );
    Ok(())
}

/// Pushes `<layout>:<tag>` to `repo:tag`, checking that the registry stored `expected`.
fn push(layout: &Path, tag: &str, repo: &str, insecure: bool, expected: &str) -> Result<String> {
    let digest = oci::push_layout(layout, tag, &format!("{repo}:{tag}"), insecure)
        .map_err(|e| e.to_string())?;
    println!("pushed          {repo}:{tag} -> {repo}@{digest}");
    if digest == expected {
        Ok(digest)
    } else {
        Err(format!(
            "the registry stored {repo}:{tag} as {digest}, not {expected}"
        ))
    }
}

fn filter(opts: &Options) -> Result {
    let module = crate::wasm::build()?;
    let out = target_dir().join("image");
    let layout = fresh_layout(&opts.tag)?;
    let image = oci::build(&module, &layout, &opts.tag).map_err(|e| e.to_string())?;
    println!("module          {}", module.display());
    println!("module sha256   {}", image.module);
    println!("OCI layout      {}", layout.display());
    println!("  {:<14}{} (Wasm artifact)", image.tag, image.artifact);
    println!(
        "  {:<14}{} (compat: plugin.wasm in a tar layer)",
        image.compat_tag(),
        image.compat
    );
    let Some(repo) = &opts.push else {
        println!(
            "WasmPlugin      sha256 {} for an oci:// url of this image; {} for an http(s):// url of the module",
            hex(&image.artifact),
            hex(&image.module)
        );
        return Ok(());
    };
    push(&layout, &image.tag, repo, opts.insecure, &image.artifact)?;
    push(
        &layout,
        &image.compat_tag(),
        repo,
        opts.insecure,
        &image.compat,
    )?;
    let template = repo_root().join("istio/overlays/sidecars/wasmplugin.yaml");
    let template =
        std::fs::read_to_string(&template).map_err(|e| format!("{}: {e}", template.display()))?;
    let url = format!("oci://{repo}:{}", image.tag);
    let rendered =
        oci::wasmplugin(&template, &url, hex(&image.artifact)).map_err(|e| e.to_string())?;
    let file: PathBuf = out.join(format!("wasmplugin-{}.yaml", image.tag));
    std::fs::write(&file, rendered).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("WasmPlugin      url {url}, sha256 {}", hex(&image.artifact));
    println!("                written to {}", file.display());
    Ok(())
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

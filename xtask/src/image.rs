//! `cargo xtask image`: the filter as an OCI image in Istio's Wasm image formats, optionally
//! pushed to a registry, with the values a WasmPlugin needs.

use std::path::PathBuf;

use harness::oci;

use crate::Result;
use crate::tools::{self, repo_root, target_dir};

pub struct Options {
    pub tag: String,
    /// `REGISTRY/REPOSITORY` to push both variants to.
    pub push: Option<String>,
    /// The registry speaks plain HTTP.
    pub insecure: bool,
}

pub fn run(opts: &Options) -> Result {
    // Before anything is removed: the tag names a directory.
    oci::check_tag(&opts.tag).map_err(|e| e.to_string())?;
    tools::apt_install(&["umoci", "skopeo"])?;
    let module = crate::wasm::build()?;
    let out = target_dir().join("image");
    let layout = out.join(&opts.tag);
    if layout.exists() {
        std::fs::remove_dir_all(&layout)
            .map_err(|e| format!("cannot remove the old layout {}: {e}", layout.display()))?;
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
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
    let mut pushed = Vec::new();
    for tag in [image.tag.clone(), image.compat_tag()] {
        let digest = oci::push(&image, &tag, &format!("{repo}:{tag}"), opts.insecure)
            .map_err(|e| e.to_string())?;
        println!("pushed          {repo}:{tag} -> {repo}@{digest}");
        pushed.push(digest);
    }
    if pushed.first() != Some(&image.artifact) {
        return Err(format!(
            "the registry stored the artifact as {:?}, not {}",
            pushed.first(),
            image.artifact
        ));
    }
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

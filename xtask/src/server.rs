//! policy-sync built to run alone in its container image: statically linked against musl, so
//! the image needs no libraries. The image is built from the `server` profile (the one
//! production runs); `cargo xtask test` builds the `image-test` profile (a test build without
//! debug info) for the image test, which a change to policy-sync then rebuilds in seconds
//! instead of minutes.

use std::path::PathBuf;

use crate::Result;
use crate::install;
use crate::process::{cargo_build, target_dir};

/// The musl target for this machine's architecture.
fn target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// The Cargo profile to build.
#[derive(Debug, Clone, Copy)]
pub enum Profile {
    /// `server`: what the image holds.
    Server,
    /// `image-test`: what the image test runs.
    ImageTest,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::ImageTest => "image-test",
        }
    }
}

/// Builds the static policy-sync (installing the musl target and Debian's `musl-tools`, whose
/// `musl-gcc` compiles `ring`'s C and assembly, when missing); returns the binary's path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let target = target();
    let installed =
        || crate::wasm::sysroot().is_some_and(|root| crate::wasm::has_target(&root, &target));
    let available = installed() || (crate::wasm::rustup_add(&target) && installed());
    if !available {
        return Err(format!(
            "the {target} standard library is not installed and rustup could not add it \
             (`rustup target add {target}`)"
        ));
    }
    install::apt_install(&["musl-tools"])?;
    eprintln!(
        "xtask: building policy-sync for {target} (profile {})",
        profile.name()
    );
    cargo_build(
        "static policy-sync",
        &[
            "--profile",
            profile.name(),
            "--target",
            &target,
            "-p",
            "policy-sync",
        ],
        target_dir()
            .join(&target)
            .join(profile.name())
            .join("policy-sync"),
    )
}

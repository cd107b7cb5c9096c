//! `cargo xtask native`: the filter as an Envoy dynamic module, `libportcullis_native.so`
//! (filter/native), for the Envoy the project ships.

use std::path::PathBuf;

use crate::Result;
use crate::process::{cargo_build, target_dir};

const PACKAGE: &str = "portcullis-native";
const ARTIFACT: &str = "libportcullis_native.so";

/// Which build.
#[derive(Debug, Clone, Copy)]
pub enum Profile {
    /// `native`: what Envoy runs in production and what `measure` compares.
    Release,
    /// `dev`: what the end-to-end tests load (rebuilt in seconds after a core change).
    Test,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Release => "native",
            Self::Test => "dev",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Release => "native",
            Self::Test => "debug",
        }
    }
}

/// Builds the module; returns its path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    if std::env::consts::OS != "linux" {
        return Err("the native module is built for Linux, where Envoy loads it".into());
    }
    eprintln!(
        "xtask: building the native module (profile {})",
        profile.name()
    );
    cargo_build(
        "the native module",
        &["--profile", profile.name(), "-p", PACKAGE],
        target_dir().join(profile.dir()).join(ARTIFACT),
    )
}

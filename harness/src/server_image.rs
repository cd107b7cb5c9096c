//! policy-sync as a container image, the one `istio/base` deploys: a single layer holding the
//! statically linked binary and the account the manifests run it as, nothing else (no shell,
//! no libc, no package manager), built with `umoci` from a layer GNU `tar` writes, as the
//! filter's compat variant is.
//!
//! Every timestamp in it (files, configuration, history) is the epoch, so the same binary
//! always gives the same image digest.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Endianness, elf};

use crate::oci::{self, add_layer, umoci};
use crate::{Error, Result};

/// Where the binary is in the image, and the image's entrypoint.
pub const ENTRYPOINT: &str = "/usr/local/bin/policy-sync";
/// The account the image runs as (the manifests' `runAsUser` and `runAsGroup`).
pub const USER: &str = "65532:65532";
/// The port `istio/base` serves on.
pub const PORT: &str = "8080/tcp";
/// The image's `/etc/passwd`: root for tools that expect it, and the unprivileged account.
pub const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
    nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";
/// The image's `/etc/group`.
pub const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A built policy-sync image in an OCI image layout.
#[derive(Debug, Clone)]
pub struct ServerImage {
    /// The OCI image layout directory.
    pub layout: PathBuf,
    pub tag: String,
    /// `sha256:<hex>` of the image manifest.
    pub manifest: String,
    /// `sha256:<hex>` of the binary.
    pub binary: String,
}

/// Builds the image of `binary` (a statically linked Linux executable, refused otherwise:
/// the image has no libraries to load) into a new OCI image layout at `layout`, tagged `tag`.
pub fn build(binary: &Path, layout: &Path, tag: &str) -> Result<ServerImage> {
    oci::check_tag(tag)?;
    let bytes = fs::read(binary)?;
    check_static(&bytes).map_err(|why| {
        Error::Missing(format!(
            "{} cannot run alone in an image: {why} (build it for x86_64-unknown-linux-musl)",
            binary.display()
        ))
    })?;
    let staging = tempfile::tempdir()?;
    let root = staging.path().join("rootfs");
    let entry = ENTRYPOINT.trim_start_matches('/');
    place(&root, entry, &bytes, 0o755)?;
    place(&root, "etc/passwd", PASSWD.as_bytes(), 0o644)?;
    place(&root, "etc/group", GROUP.as_bytes(), 0o644)?;
    let image = format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &image])?;
    add_layer(
        &image,
        &root,
        &["etc", "usr"],
        &[
            "--history.created",
            EPOCH,
            "--history.created_by",
            "cargo xtask image policy-sync",
        ],
    )?;
    let version = format!("org.opencontainers.image.version={tag}");
    umoci(&[
        "config",
        "--no-history",
        "--created",
        EPOCH,
        "--config.entrypoint",
        ENTRYPOINT,
        "--config.user",
        USER,
        "--config.exposedports",
        PORT,
        "--config.workingdir",
        "/",
        "--config.label",
        "org.opencontainers.image.title=policy-sync",
        "--config.label",
        &version,
        "--config.label",
        "org.opencontainers.image.licenses=Apache-2.0",
        "--image",
        &image,
    ])?;
    Ok(ServerImage {
        layout: layout.to_owned(),
        tag: tag.to_owned(),
        manifest: oci::manifest_digest_of(layout, tag)?,
        binary: oci::digest(&bytes),
    })
}

/// Writes `bytes` to `root/rel` with `mode`, its directories with 0755 (whatever the umask).
fn place(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = root.join(rel);
    let mut dir = path.parent();
    fs::create_dir_all(dir.unwrap_or(root))?;
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        dir = d.parent();
    }
    fs::write(&path, bytes)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Whether `bytes` is a 64-bit Linux executable the kernel runs without a loader: no
/// `PT_INTERP` program header, so no shared library is ever loaded.
pub fn check_static(bytes: &[u8]) -> std::result::Result<(), String> {
    let file =
        ElfFile64::<Endianness>::parse(bytes).map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let endian = file.endian();
    let header = file.elf_header();
    let kind = header.e_type.get(endian);
    if kind != elf::ET_EXEC && kind != elf::ET_DYN {
        return Err(format!("ELF type {kind} is not an executable"));
    }
    if file
        .elf_program_headers()
        .iter()
        .any(|p| p.p_type(endian) == elf::PT_INTERP)
    {
        return Err("it is dynamically linked (it names a program interpreter)".into());
    }
    if !file
        .elf_program_headers()
        .iter()
        .any(|p| p.p_type(endian) == elf::PT_LOAD)
    {
        return Err("it has nothing to load".into());
    }
    Ok(())
}

//! The workspace's paths and what xtask builds there: the guest (kernel and initramfs,
//! through the cache) and petrel's release binaries.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::Cache;
use crate::error::{Error, IoContext, Result};
use crate::{host, initramfs, kernel};

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The built guest: kernel images and initramfs.
#[derive(Debug)]
pub struct Guest {
    /// The kernel images.
    pub kernel: kernel::Kernel,
    /// The initramfs.
    pub initramfs: PathBuf,
}

/// Installs what is missing, then builds or finds the kernel and the initramfs.
pub fn build_guest(extra_packages: &[&str]) -> Result<Guest> {
    let mut packages = host::GUEST_BUILD_PACKAGES.to_vec();
    packages.extend_from_slice(extra_packages);
    host::ensure_packages(&packages)?;
    let cache = Cache::from_env()?;
    println!("cache: {}", cache.root().display());
    let kernel = kernel::build(&cache, &workspace_root())?;
    let initramfs = initramfs::build(&cache)?;
    let guest = Guest { kernel, initramfs };
    let env = guest_env(&guest);
    let env_file = cache.root().join("guest.env");
    fs::write(&env_file, &env).ctx(|| format!("writing {}", env_file.display()))?;
    Ok(guest)
}

/// `PETREL_GUEST_*=path` lines naming the artefacts.
pub fn guest_env(g: &Guest) -> String {
    format!(
        "PETREL_GUEST_VMLINUX={}\nPETREL_GUEST_BZIMAGE={}\nPETREL_GUEST_INITRAMFS={}\n",
        g.kernel.vmlinux.display(),
        g.kernel.bzimage.display(),
        g.initramfs.display()
    )
}

pub fn build_guest_command() -> Result<()> {
    let guest = build_guest(&[])?;
    for (what, path) in [
        ("vmlinux", &guest.kernel.vmlinux),
        ("bzImage", &guest.kernel.bzimage),
        ("initramfs", &guest.initramfs),
        ("config", &guest.kernel.config),
    ] {
        println!(
            "{what:<10} {} ({} bytes)",
            path.display(),
            initramfs::file_size(path)
        );
    }
    print!("{}", guest_env(&guest));
    println!(
        "(also written to {})",
        Cache::from_env()?.root().join("guest.env").display()
    );
    Ok(())
}

/// The target the static petrel is built for (a `--target` build keeps its artefacts apart
/// from the ordinary, dynamically linked petrel's).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// RUSTFLAGS of the static build: glibc linked in, and the v0 symbols that
/// `.cargo/config.toml` asks for (RUSTFLAGS replaces its `rustflags`), so that
/// `crates/vmm-bin/hot-text.ld` finds the functions it names.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C symbol-mangling-version=v0";

/// Builds petrel in release mode, statically linked (as it is shipped: the jailer needs a
/// binary that runs alone in a chroot, and without the shared libraries the VMM holds less
/// memory and starts sooner), and returns the binary's path.
pub fn build_petrel(root: &Path) -> Result<PathBuf> {
    build_release(root, &target_dir(root), "petrel", "petrel", true)
}

/// Builds `package`'s release binaries: statically linked for [`STATIC_TARGET`] when
/// `static_target`; returns the binary `bin`'s path under `target`.
pub fn build_release(
    root: &Path,
    target: &Path,
    package: &str,
    bin: &str,
    static_target: bool,
) -> Result<PathBuf> {
    cargo_build_release(root, target, &["-p", package], bin, static_target)
}

/// Builds Petrel's own page-fault handler for the `Uffd` memory backend (petrel-vmm's
/// `uffd_handler` example), statically linked as petrel is, and returns its path.
pub fn build_uffd_handler(root: &Path) -> Result<PathBuf> {
    cargo_build_release(
        root,
        &target_dir(root),
        &["-p", "petrel-vmm", "--example", "uffd_handler"],
        "examples/uffd_handler",
        true,
    )
}

/// `cargo build --release` with `select` (package and target); returns the path `bin` has
/// under the release directory (see [`build_release`]).
fn cargo_build_release(
    root: &Path,
    target: &Path,
    select: &[&str],
    bin: &str,
    static_target: bool,
) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release"])
        .args(select);
    let path = if static_target {
        // crt-static for an explicit --target only: a host build would also apply it to
        // proc-macro crates, which cannot be linked statically.
        cmd.args(["--target", STATIC_TARGET])
            .env("RUSTFLAGS", STATIC_RUSTFLAGS)
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        target.join(STATIC_TARGET).join("release").join(bin)
    } else {
        target.join("release").join(bin)
    };
    println!("{bin}: {}", host::describe(&cmd));
    host::run(&mut cmd)?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Other(format!(
            "cargo built {} but {} is not there",
            select.join(" "),
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_env_lines() {
        let guest = Guest {
            kernel: kernel::Kernel {
                vmlinux: "/v".into(),
                bzimage: "/b".into(),
                config: "/c".into(),
            },
            initramfs: "/i".into(),
        };
        assert_eq!(
            guest_env(&guest),
            "PETREL_GUEST_VMLINUX=/v\nPETREL_GUEST_BZIMAGE=/b\nPETREL_GUEST_INITRAMFS=/i\n"
        );
    }
}

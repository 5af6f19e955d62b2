//! The boot test's guest kernel: Debian's linux-source-6.12 with the patches in
//! `xtask/kernel/patches/`, `make tinyconfig` plus the fragment in
//! `xtask/kernel/petrel.config`, built into `vmlinux` (ELF, PVH entry) and `bzImage`, and
//! cached by a hash of everything that goes into it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cache::{publish_dir, Cache, KeyBuilder, Lock};
use crate::elf;
use crate::error::{Error, IoContext, Result};
use crate::host;

/// Changes whenever the build steps below change in a way that alters the output.
pub const RECIPE_VERSION: &str = "petrel-kernel-recipe-2";

/// The config fragment, relative to the workspace root.
pub const FRAGMENT: &str = "xtask/kernel/petrel.config";

/// The kernel patches, relative to the workspace root: every `*.patch` file there, applied
/// with `patch -p1` in the order of their names (GPL-2.0, like the kernel).
pub const PATCHES_DIR: &str = "xtask/kernel/patches";

/// The kernel source tarball installed by [`host::LINUX_SOURCE_PACKAGE`].
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// The top directory inside [`SOURCE_TARBALL`].
const SOURCE_TOP: &str = "linux-source-6.12";

/// The built kernel, in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The ELF image (PVH entry).
    pub vmlinux: PathBuf,
    /// The bzImage (Linux boot protocol).
    pub bzimage: PathBuf,
    /// The final .config, for reference.
    pub config: PathBuf,
}

/// What a config fragment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The option, with its `CONFIG_` prefix.
    pub option: String,
    /// The value as written after `=` (`y`, a number, a quoted string), or `None` for
    /// `# CONFIG_X is not set`.
    pub value: Option<String>,
}

/// The `CONFIG_X=value` and `# CONFIG_X is not set` lines of a fragment. `=m` is refused:
/// the guest kernel has no modules.
pub fn parse_fragment(text: &str) -> Result<Vec<Requirement>> {
    let mut reqs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(opt) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            if opt.starts_with("CONFIG_") {
                reqs.push(Requirement {
                    option: opt.to_owned(),
                    value: None,
                });
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((opt, value))
                if opt.starts_with("CONFIG_")
                    && !opt.contains(char::is_whitespace)
                    && !value.is_empty()
                    && value != "m" =>
            {
                reqs.push(Requirement {
                    option: opt.to_owned(),
                    value: Some(value.to_owned()),
                })
            }
            _ => {
                return Err(Error::Other(format!(
                    "{FRAGMENT}:{}: expected `CONFIG_X=value` (not =m) or \
                     `# CONFIG_X is not set`, got {line:?}",
                    n + 1
                )))
            }
        }
    }
    Ok(reqs)
}

/// The requirements that the final `.config` text does not meet, as `CONFIG_X=value` or
/// `CONFIG_X off` strings; a changed value is shown as `CONFIG_X=want (got have)`.
pub fn unmet(reqs: &[Requirement], dot_config: &str) -> Vec<String> {
    reqs.iter()
        .filter_map(|r| {
            let have = dot_config.lines().find_map(|l| {
                l.strip_prefix(r.option.as_str())
                    .and_then(|rest| rest.strip_prefix('='))
            });
            match (r.value.as_deref(), have) {
                (None, None | Some("n")) => None,
                (None, Some(have)) => Some(format!("{} off (got {have})", r.option)),
                (Some(want), Some(have)) if want == have => None,
                (Some(want), None) => Some(format!("{}={want}", r.option)),
                (Some(want), Some(have)) => Some(format!("{}={want} (got {have})", r.option)),
            }
        })
        .collect()
}

/// One kernel patch: its file name and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// The file name (it orders the patches).
    pub name: String,
    /// The patch text.
    pub text: Vec<u8>,
}

/// The `*.patch` files in `dir`, in the order of their names.
pub fn read_patches(dir: &Path) -> Result<Vec<Patch>> {
    let entries = fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))?;
    let mut patches = Vec::new();
    for entry in entries {
        let path = entry.ctx(|| format!("reading {}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name.filter(|n| n.ends_with(".patch")) else {
            continue;
        };
        let text = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        patches.push(Patch { name, text });
    }
    patches.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(patches)
}

/// What of a patch changes the source tree: its text from the first `diff ` or `--- ` line
/// on. The header before it (the reasoning, the license) is for readers, and `patch` skips
/// it, so rewording it does not rebuild the kernel.
fn patch_body(text: &[u8]) -> &[u8] {
    let mut at = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"diff ") || line.starts_with(b"--- ") {
            return &text[at..];
        }
        at += line.len();
    }
    text
}

/// A key for the source tree `source_version` with `patches` applied.
fn source_key(source_version: &str, patches: &[Patch]) -> String {
    let mut key = KeyBuilder::new("kernel-source");
    key.add("source-version", source_version.as_bytes());
    for p in patches {
        key.add("patch-name", p.name.as_bytes())
            .add("patch-body", patch_body(&p.text));
    }
    key.finish()
}

/// The cache key of a kernel built from `fragment` and linux-source `source_version` with
/// `patches`.
pub fn cache_key(fragment: &[u8], source_version: &str, patches: &[Patch]) -> String {
    KeyBuilder::new("kernel")
        .add("recipe", RECIPE_VERSION.as_bytes())
        .add("source", source_key(source_version, patches).as_bytes())
        .add("fragment", fragment)
        .finish()
}

/// Builds the kernel, or finds it in the cache. The packages in
/// [`host::GUEST_BUILD_PACKAGES`] must be installed.
pub fn build(cache: &Cache, workspace: &Path) -> Result<Kernel> {
    let fragment_path = workspace.join(FRAGMENT);
    let fragment =
        fs::read(&fragment_path).ctx(|| format!("reading {}", fragment_path.display()))?;
    let reqs = parse_fragment(&String::from_utf8_lossy(&fragment))?;
    let version = host::package_version(host::LINUX_SOURCE_PACKAGE)?;
    let patches = read_patches(&workspace.join(PATCHES_DIR))?;
    let key = cache_key(&fragment, &version, &patches);

    let top = cache.dir("kernel")?;
    let entry = top.join(&key);
    let kernel = Kernel {
        vmlinux: entry.join("vmlinux"),
        bzimage: entry.join("bzImage"),
        config: entry.join("config"),
    };
    let cached = |k: &Kernel| k.vmlinux.is_file() && k.bzimage.is_file();
    if cached(&kernel) {
        println!("kernel: cached ({key}; linux-source {version})");
        return Ok(kernel);
    }
    let _lock = Lock::acquire(&top.join(format!("{key}.lock")))?;
    if cached(&kernel) {
        println!("kernel: cached ({key}), built by another run");
        return Ok(kernel);
    }

    let start = Instant::now();
    let src = unpack_source(cache, &version, &patches, workspace)?;
    let build_dir = cache.dir("build")?.join(format!("kernel-{key}"));
    fs::create_dir_all(&build_dir).ctx(|| format!("creating {}", build_dir.display()))?;
    let log = build_dir.join("petrel-build.log");
    let _ = fs::remove_file(&log);
    println!(
        "kernel: building ({key}; linux-source {version}) in {}; log {}",
        build_dir.display(),
        log.display()
    );

    let make = |targets: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.current_dir(&src)
            .arg("ARCH=x86_64")
            .arg(format!("O={}", build_dir.display()))
            .args(targets);
        cmd
    };
    let dot_config = build_dir.join(".config");
    host::run_logged(&mut make(&["tinyconfig"]), &log)?;
    let mut merge = Command::new("scripts/kconfig/merge_config.sh");
    merge
        .current_dir(&src)
        .env("ARCH", "x86_64")
        .arg("-m")
        .arg("-O")
        .arg(&build_dir)
        .arg(&dot_config)
        .arg(&fragment_path);
    host::run_logged(&mut merge, &log)?;
    host::run_logged(&mut make(&["olddefconfig"]), &log)?;

    let config_text =
        fs::read_to_string(&dot_config).ctx(|| format!("reading {}", dot_config.display()))?;
    let dropped = unmet(&reqs, &config_text);
    if !dropped.is_empty() {
        return Err(Error::ConfigDropped {
            fragment: FRAGMENT.into(),
            options: dropped.join(", "),
        });
    }
    println!(
        "kernel: all {} options of {FRAGMENT} hold in .config",
        reqs.len()
    );

    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut compile = make(&["vmlinux", "bzImage"]);
    compile.arg(format!("-j{jobs}"));
    println!("kernel: {}", host::describe(&compile));
    host::run_logged(&mut compile, &log)?;

    let vmlinux_out = build_dir.join("vmlinux");
    let image = fs::read(&vmlinux_out).ctx(|| format!("reading {}", vmlinux_out.display()))?;
    if !elf::has_pvh_note(&image) {
        return Err(Error::Other(format!(
            "{} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH on?",
            vmlinux_out.display()
        )));
    }
    drop(image);

    let tmp = top.join(format!("{key}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    for (from, to) in [
        (vmlinux_out, "vmlinux"),
        (build_dir.join("arch/x86/boot/bzImage"), "bzImage"),
        (dot_config, "config"),
    ] {
        fs::copy(&from, tmp.join(to))
            .ctx(|| format!("copying {} into the cache", from.display()))?;
    }
    publish_dir(&tmp, &entry)?;
    // The objects are not needed once the images are cached.
    let _ = fs::remove_dir_all(&build_dir);
    let secs = start.elapsed().as_secs();
    println!(
        "kernel: built in {}m{:02}s ({jobs} jobs)",
        secs / 60,
        secs % 60
    );
    Ok(kernel)
}

/// Unpacks the kernel source and applies `patches` (found in [`PATCHES_DIR`] under
/// `workspace`), once per package version and set of patches; returns the top directory.
fn unpack_source(
    cache: &Cache,
    version: &str,
    patches: &[Patch],
    workspace: &Path,
) -> Result<PathBuf> {
    let top = cache.dir("src")?;
    let name: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir_name = format!("linux-{name}-{}", source_key(version, patches));
    let dir = top.join(&dir_name);
    let stamp = dir.join(".petrel-unpacked");
    let src = dir.join(SOURCE_TOP);
    if stamp.is_file() {
        return Ok(src);
    }
    // Not `dir.with_extension`: the version's dots would cut the name at `linux-6.12`.
    let _lock = Lock::acquire(&top.join(format!("{dir_name}.lock")))?;
    if stamp.is_file() {
        return Ok(src);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    println!("kernel: unpacking {SOURCE_TARBALL} into {}", dir.display());
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(SOURCE_TARBALL).arg("-C").arg(&dir);
    host::run(&mut tar)?;
    if !src.join("Makefile").is_file() {
        return Err(Error::Other(format!(
            "{SOURCE_TARBALL} did not unpack to {}",
            src.display()
        )));
    }
    for p in patches {
        let path = workspace.join(PATCHES_DIR).join(&p.name);
        println!("kernel: applying {}", path.display());
        let mut apply = Command::new("patch");
        apply
            .current_dir(&src)
            .args(["-p1", "--batch", "--forward", "-i"])
            .arg(&path);
        host::run(&mut apply)?;
    }
    fs::write(&stamp, version).ctx(|| format!("writing {}", stamp.display()))?;
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(option: &str, value: Option<&str>) -> Requirement {
        Requirement {
            option: option.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn fragment_parsing() {
        let text =
            "# comment\n\nCONFIG_A=y\n  CONFIG_B=8  \n# CONFIG_PCI is not set\nCONFIG_S=\"x y\"\n";
        assert_eq!(
            parse_fragment(text).unwrap(),
            vec![
                req("CONFIG_A", Some("y")),
                req("CONFIG_B", Some("8")),
                req("CONFIG_PCI", None),
                req("CONFIG_S", Some("\"x y\"")),
            ]
        );
        for bad in [
            "CONFIG_A=m\n",
            "A=y\n",
            "CONFIG_A=\n",
            "CONFIG_A y\n",
            "CONFIG A=y\n",
        ] {
            assert!(parse_fragment(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unmet_options_are_named() {
        let reqs = parse_fragment(
            "CONFIG_A=y\nCONFIG_AB=y\nCONFIG_GONE=y\nCONFIG_N=8\n\
             # CONFIG_PCI is not set\n# CONFIG_ACPI is not set\n",
        )
        .unwrap();
        // CONFIG_A must not be satisfied by CONFIG_AB's line, and vice versa.
        let config = "CONFIG_AB=y\n# CONFIG_GONE is not set\nCONFIG_N=2\nCONFIG_PCI=y\n";
        assert_eq!(
            unmet(&reqs, config),
            vec![
                "CONFIG_A=y",
                "CONFIG_GONE=y",
                "CONFIG_N=8 (got 2)",
                "CONFIG_PCI off (got y)"
            ]
        );
        let good = "CONFIG_A=y\nCONFIG_AB=y\nCONFIG_GONE=y\nCONFIG_N=8\n# CONFIG_PCI is not set\n";
        assert!(unmet(&reqs, good).is_empty());
    }

    #[test]
    fn shipped_fragment_parses_and_names_the_essentials() {
        let text = include_str!("../kernel/petrel.config");
        let reqs = parse_fragment(text).unwrap();
        for o in [
            "CONFIG_PVH",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_SERIO_I8042",
            "CONFIG_KEYBOARD_ATKBD",
            "CONFIG_RTC_DRV_CMOS",
            "CONFIG_BLK_DEV_INITRD",
            "CONFIG_BINFMT_SCRIPT",
            // The bzImage decompressor runs emulated on a PVM host: the fastest decoder.
            "CONFIG_KERNEL_LZ4",
            // Petrel's ACPI tables, and the VM generation ID a restored snapshot changes.
            "CONFIG_ACPI",
            "CONFIG_VMGENID",
            // Linux's ACPI interpreter needs PCI support (its PCI_Config region handler).
            "CONFIG_PCI",
            // Emulated guest kernel code costs per instruction: -O2, not -Os.
            "CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE",
        ] {
            assert!(
                reqs.contains(&req(o, Some("y"))),
                "{o} missing from the fragment"
            );
        }
        for o in [
            // The suite's kernel finds its CPUs through ACPI alone (the boot test checks it).
            "CONFIG_X86_MPPARSE",
            "CONFIG_MODULES",
            "CONFIG_RELOCATABLE",
            "CONFIG_RANDOMIZE_BASE",
            // 40 s of an emulated boot (see docs/guest-kernel.md).
            "CONFIG_LEGACY_PTYS",
            // Hardware Petrel does not have.
            "CONFIG_INPUT_MOUSE",
            "CONFIG_SERIO_SERPORT",
        ] {
            assert!(reqs.contains(&req(o, None)), "{o} should be off");
        }
        // Petrel has one UART: the driver probes no other.
        assert!(reqs.contains(&req("CONFIG_SERIAL_8250_RUNTIME_UARTS", Some("1"))));
        assert!(
            host::GUEST_BUILD_PACKAGES.contains(&"lz4"),
            "an LZ4 kernel needs the lz4 tool"
        );
    }

    #[test]
    fn key_depends_on_fragment_version_and_patches() {
        let p = |name: &str, text: &[u8]| Patch {
            name: name.into(),
            text: text.to_vec(),
        };
        let one = [p("0001-a.patch", b"x")];
        let k = cache_key(b"CONFIG_A=y\n", "6.12.117-1", &one);
        assert_eq!(k, cache_key(b"CONFIG_A=y\n", "6.12.117-1", &one));
        assert_ne!(k, cache_key(b"CONFIG_A=y\n", "6.12.118-1", &one));
        assert_ne!(k, cache_key(b"CONFIG_B=y\n", "6.12.117-1", &one));
        assert_ne!(k, cache_key(b"CONFIG_A=y\n", "6.12.117-1", &[]));
        assert_ne!(
            k,
            cache_key(b"CONFIG_A=y\n", "6.12.117-1", &[p("0001-a.patch", b"y")])
        );
        assert_ne!(
            k,
            cache_key(b"CONFIG_A=y\n", "6.12.117-1", &[p("0002-a.patch", b"x")])
        );

        // The header is prose: rewording it keeps the key; a change to the hunks does not.
        let hunks = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-x\n+y\n";
        let with = |header: &str, body: &str| {
            cache_key(
                b"",
                "v",
                &[p("0001-a.patch", format!("{header}{body}").as_bytes())],
            )
        };
        let k = with("Why: one reason\n\n", hunks);
        assert_eq!(k, with("Why: another reason, longer\n", hunks));
        assert_ne!(k, with("Why: one reason\n\n", &hunks.replace("+y", "+z")));
        assert_eq!(
            patch_body(b"text\ndiff -ruN a b\n--- a\n"),
            b"diff -ruN a b\n--- a\n"
        );
        assert_eq!(patch_body(b"no hunks at all\n"), b"no hunks at all\n");
    }

    #[test]
    fn shipped_patches_are_read_in_order_and_enabled_by_the_fragment() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel/patches");
        let patches = read_patches(&dir).unwrap();
        assert!(!patches.is_empty(), "no patches in {}", dir.display());
        let names: Vec<_> = patches.iter().map(|p| p.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let syscalls = patches
            .iter()
            .find(|p| String::from_utf8_lossy(&p.text).contains("config KVM_GUEST_SYSCALL_FIXUP"))
            .expect("the system-call patch");
        let text = String::from_utf8_lossy(&syscalls.text);
        assert!(
            text.contains("GPL-2.0"),
            "the patch header names its license"
        );
        // The fragment turns the option on, and xtask's check of .config then proves the
        // patch was applied: without it, olddefconfig drops the unknown option.
        let reqs = parse_fragment(include_str!("../kernel/petrel.config")).unwrap();
        assert!(reqs.contains(&req("CONFIG_KVM_GUEST_SYSCALL_FIXUP", Some("y"))));
    }
}

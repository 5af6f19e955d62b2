//! `cargo xtask`: Petrel's project tasks.
//!
//! - `boot-test`: boots a small Linux guest under petrel (ELF and bzImage, 1 and 2 vCPUs)
//!   and checks the serial log and exit status;
//! - `build-guest`: builds and caches the guest kernel and initramfs, printing their paths;
//! - `qemu-check`: boots the same guest under QEMU with TCG to check the guest itself;
//! - `test`: the whole test suite (packages, fmt, clippy, `cargo test`, boot-test);
//! - `bench`: Petrel's VMM-side costs side by side with QEMU, as a table and JSON;
//! - `boot-profile`: where a guest's boot goes: slowest initcalls, biggest log gaps;
//! - `fuzz`: runs the cargo-fuzz targets of `fuzz/`, keeping crashes as regression inputs.
//! - `crate-graph`, `api-listing`: the library crates' dependency graph and public APIs.
//!
//! Run `cargo xtask --help` for the options.

mod api_boot;
mod bench;
mod bootprof;
mod boottest;
mod cache;
mod cli;
mod crates;
mod elf;
mod error;
mod fcapi;
mod fuzz;
mod guest_script;
mod host;
mod initramfs;
mod jail_boot;
mod kernel;
mod live;
mod net_boot;
mod shell_boot;
mod snapshot_boot;
mod suite;
mod virtio_boot;
mod vsock_boot;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use boottest::{KernelFormat, Scenario, Vmm};
use cache::Cache;
use clap::{CommandFactory, Parser};
use cli::{BootTestArgs, Cli, Cmd, QemuCheckArgs};
use error::{Error, IoContext, Result};
use host::HostKvm;

/// The standard boot-test scenarios: (name, kernel format, vCPUs).
const SCENARIOS: &[(&str, KernelFormat, u32)] = &[
    ("vmlinux-1vcpu", KernelFormat::Elf, 1),
    ("bzimage-1vcpu", KernelFormat::BzImage, 1),
];

/// The scenario name used with `boot-test --kernel`.
const CUSTOM_SCENARIO: &str = "custom-1vcpu";

/// The package that provides `qemu-system-x86_64`.
const QEMU_PACKAGE: &str = "qemu-system-x86";

fn main() -> ExitCode {
    let Some(cmd) = Cli::parse().cmd else {
        // No command: the help, as `cargo xtask --help` prints it.
        return match Cli::command().print_long_help() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE, // stdout closed
        };
    };
    match cmd {
        Cmd::BuildGuest => done(build_guest_command()),
        Cmd::BootTest(args) => ExitCode::from(boot_test(&args)),
        Cmd::QemuCheck(args) => ExitCode::from(qemu_check(&args)),
        Cmd::Test(args) => ExitCode::from(suite::run(&args)),
        Cmd::Bench(args) => ExitCode::from(bench::run(&args)),
        Cmd::Fuzz(args) => match fuzz::run(&workspace_root(), &args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::CrateGraph(args) => done(crates::crate_graph(&workspace_root(), args.mode())),
        Cmd::ApiListing(args) => done(crates::api_listing(&workspace_root(), args.check)),
        Cmd::BootProfile(args) => done(bootprof::run(&args)),
    }
}

/// Exit code 0, or 1 after printing the error.
fn done(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace's top directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The built guest: kernel images and initramfs.
#[derive(Debug)]
struct Guest {
    kernel: kernel::Kernel,
    initramfs: PathBuf,
}

/// Installs what is missing, then builds or finds the kernel and the initramfs.
fn build_guest(extra_packages: &[&str]) -> Result<Guest> {
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
fn guest_env(g: &Guest) -> String {
    format!(
        "PETREL_GUEST_VMLINUX={}\nPETREL_GUEST_BZIMAGE={}\nPETREL_GUEST_INITRAMFS={}\n",
        g.kernel.vmlinux.display(),
        g.kernel.bzimage.display(),
        g.initramfs.display()
    )
}

fn build_guest_command() -> Result<()> {
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

/// Builds petrel in release mode, statically linked (as it is shipped: the jailer needs a
/// binary that runs alone in a chroot, and without the shared libraries the VMM holds less
/// memory and starts sooner), and returns the binary's path.
fn build_petrel(root: &Path) -> Result<PathBuf> {
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
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "-p", package]);
    let path = if static_target {
        // crt-static for an explicit --target only: a host build would also apply it to
        // proc-macro crates, which cannot be linked statically.
        cmd.args(["--target", STATIC_TARGET])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
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
            "cargo built {package} but {} is not there",
            path.display()
        )))
    }
}

/// ELF or bzImage, by the file's first bytes.
fn kernel_format(path: &Path) -> Result<KernelFormat> {
    let bytes = fs::read(path).ctx(|| format!("reading kernel {}", path.display()))?;
    Ok(if bytes.starts_with(b"\x7fELF") {
        KernelFormat::Elf
    } else {
        KernelFormat::BzImage
    })
}

/// Keeps the scenarios that `only` names (all when it is empty); an unknown name is an
/// error.
fn select<'a>(all: &[&'a str], only: &[String]) -> Result<Vec<&'a str>> {
    if let Some(bad) = only.iter().find(|o| !all.contains(&o.as_str())) {
        return Err(Error::Usage(format!(
            "no scenario {bad:?}; there are: {}",
            all.join(", ")
        )));
    }
    Ok(all
        .iter()
        .copied()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s))
        .collect())
}

/// Like [`select`], where `only` may also name the `opt_in` scenarios, which run only when
/// named; with no `only`, the `defaults`.
fn select_with_opt_in<'a>(
    defaults: &[&'a str],
    opt_in: &[&'a str],
    only: &[String],
) -> Result<Vec<&'a str>> {
    let all: Vec<&str> = defaults.iter().chain(opt_in).copied().collect();
    if only.is_empty() {
        Ok(defaults.to_vec())
    } else {
        select(&all, only)
    }
}

/// The standard scenarios named in `names`, booting the built kernel with `initrd`.
fn standard_scenarios(names: &[&str], guest: &Guest, initrd: &Path) -> Vec<Scenario> {
    SCENARIOS
        .iter()
        .filter(|(name, _, _)| names.contains(name))
        .map(|&(name, format, vcpus)| {
            let kernel = match format {
                KernelFormat::Elf => &guest.kernel.vmlinux,
                KernelFormat::BzImage => &guest.kernel.bzimage,
            };
            Scenario::new(name, kernel, format, initrd, vcpus)
        })
        .collect()
}

/// Runs `boot-test`; returns the exit code: 0 when every scenario passed, 1 when one failed
/// or setup did, 2 for a bad scenario name.
fn boot_test(args: &BootTestArgs) -> u8 {
    let (defaults, opt_in): (Vec<&str>, &[&str]) = if args.kernel.is_some() {
        (vec![CUSTOM_SCENARIO], &[])
    } else {
        let standard = SCENARIOS.iter().map(|s| s.0);
        let all = standard
            .chain(virtio_boot::SCENARIOS.iter().copied())
            .chain(api_boot::SCENARIOS.iter().copied())
            .chain(jail_boot::SCENARIOS.iter().copied())
            .chain(snapshot_boot::SCENARIOS.iter().copied())
            .chain(shell_boot::SCENARIOS.iter().copied())
            .collect();
        (all, api_boot::OPT_IN_SCENARIOS)
    };
    let names = match select_with_opt_in(&defaults, opt_in, &args.only) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let setup = || -> Result<(Vec<Scenario>, PathBuf)> {
        let scenarios = match &args.kernel {
            Some(kernel) => {
                let initrd = match &args.initrd {
                    Some(i) => i.clone(),
                    None => initramfs::build(&Cache::from_env()?)?,
                };
                let format = kernel_format(kernel)?;
                vec![Scenario::new(CUSTOM_SCENARIO, kernel, format, &initrd, 1)]
            }
            None => {
                let guest = build_guest(&[])?;
                let initrd = args
                    .initrd
                    .clone()
                    .unwrap_or_else(|| guest.initramfs.clone());
                let mut scenarios = standard_scenarios(&names, &guest, &initrd);
                let disks = target_dir(&workspace_root()).join("boot-test");
                let vmlinux = &guest.kernel.vmlinux;
                scenarios.extend(virtio_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios.extend(api_boot::scenarios(&names, vmlinux, &initrd, &disks)?);
                scenarios.extend(jail_boot::scenarios(&names, vmlinux, &initrd, &disks)?);
                scenarios.extend(snapshot_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios.extend(shell_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios
            }
        };
        let petrel = match &args.petrel {
            Some(p) => p.clone(),
            None => build_petrel(&workspace_root())?,
        };
        Ok((scenarios, petrel))
    };
    let (scenarios, petrel) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            println!("setup failed, so no scenario ran");
            println!("{}", boottest::summary_line(0, names.len()));
            return 1;
        }
    };
    let host = match host::host_kvm() {
        HostKvm::Hardware => "hardware KVM".to_owned(),
        HostKvm::Emulating(why) => format!(
            "KVM that emulates guest kernel code ({why}); the guest kernel's patch makes \
             user-mode system calls work"
        ),
    };
    println!(
        "host: {host}; every scenario needs its guest's user-mode marker {}",
        initramfs::MARKER
    );
    run_all(&Vmm::Petrel(petrel), &scenarios, args.timeout)
}

/// Runs `qemu-check`; returns the exit code, as [`boot_test`] does.
fn qemu_check(args: &QemuCheckArgs) -> u8 {
    let all: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
    let names = match select(&all, &args.only) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let guest = match build_guest(&[QEMU_PACKAGE]) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            println!("{}", boottest::summary_line(0, names.len()));
            return 1;
        }
    };
    let scenarios: Vec<Scenario> = standard_scenarios(&names, &guest, &guest.initramfs)
        .into_iter()
        .map(|mut s| {
            s.name = format!("qemu-{}", s.name);
            s
        })
        .collect();
    println!("QEMU with TCG runs guest user mode: the init marker is required");
    run_all(&Vmm::Qemu, &scenarios, args.timeout)
}

/// Runs the scenarios one after another and prints the closing `N passed, N failed`;
/// returns 0 when all passed, else 1.
fn run_all(vmm: &Vmm, scenarios: &[Scenario], timeout: Duration) -> u8 {
    let log_dir = target_dir(&workspace_root()).join("boot-test");
    let start = Instant::now();
    let mut results = Vec::new();
    for s in scenarios {
        let result = match boottest::run_scenario(vmm, s, &log_dir, timeout) {
            Ok(outcome) => (
                outcome.verdict.passed(),
                format!(
                    "{:>6.1} s; {}",
                    outcome.wall.as_secs_f64(),
                    boottest::times_text(outcome.run_init, outcome.marker)
                ),
            ),
            Err(e) => {
                println!("{}: FAIL: {e}", s.name);
                (false, "did not run".to_owned())
            }
        };
        results.push((s.name.as_str(), result.0, result.1));
    }
    println!("results:");
    for (name, ok, wall) in &results {
        println!(
            "    {name:<20} {} {wall}",
            if *ok { "PASS" } else { "FAIL" }
        );
    }
    let passed = results.iter().filter(|r| r.1).count();
    let failed = results.len() - passed;
    println!(
        "total {:.1} s; logs in {}",
        start.elapsed().as_secs_f64(),
        log_dir.display()
    );
    println!("{}", boottest::summary_line(passed, failed));
    if failed == 0 {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_selection() {
        let all = ["a", "b", "c"];
        assert_eq!(select(&all, &[]).unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            select(&all, &["c".into(), "a".into()]).unwrap(),
            vec!["a", "c"]
        );
        assert!(matches!(select(&all, &["d".into()]), Err(Error::Usage(_))));
    }

    #[test]
    fn opt_in_scenarios_run_only_when_named() {
        let (defaults, opt_in) = (["a", "b"], ["x"]);
        assert_eq!(
            select_with_opt_in(&defaults, &opt_in, &[]).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            select_with_opt_in(&defaults, &opt_in, &["x".into(), "a".into()]).unwrap(),
            ["a", "x"]
        );
        let e = select_with_opt_in(&defaults, &opt_in, &["y".into()]).unwrap_err();
        assert!(e.to_string().contains("a, b, x"), "{e}");
    }

    #[test]
    fn standard_scenarios_use_the_right_images() {
        let guest = Guest {
            kernel: kernel::Kernel {
                vmlinux: "/c/vmlinux".into(),
                bzimage: "/c/bzImage".into(),
                config: "/c/config".into(),
            },
            initramfs: "/c/i.cpio".into(),
        };
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
        let s = standard_scenarios(&names, &guest, &guest.initramfs);
        let summary: Vec<(&str, &str, u32)> = s
            .iter()
            .map(|s| (s.name.as_str(), s.kernel.to_str().unwrap(), s.vcpus))
            .collect();
        assert_eq!(
            summary,
            [
                ("vmlinux-1vcpu", "/c/vmlinux", 1),
                ("bzimage-1vcpu", "/c/bzImage", 1),
            ]
        );
        assert!(s
            .iter()
            .all(|s| s.initrd.as_deref() == Some(Path::new("/c/i.cpio"))));
    }

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

//! The command line of `cargo xtask`, parsed by clap (derive API).
//!
//! The help texts are the doc comments below, kept verbatim (wrapped by hand): `cargo xtask
//! --help` lists every command with its explanation, `cargo xtask <COMMAND> --help` adds the
//! command's options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Default limit for one boot-test scenario.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the help prints after the commands: the environment and what every boot shares.
const AFTER_HELP: &str = "\
ENVIRONMENT:
    PETREL_CACHE     Cache directory (default $XDG_CACHE_HOME/petrel, else ~/.cache/petrel).
    VMM_REQUIRE_KVM  `1`: tests that need /dev/kvm fail without it instead of skipping.

The guest kernel is Debian's linux-source-6.12 with `make tinyconfig` plus
xtask/kernel/petrel.config; missing Debian packages are installed with apt-get.
boot-test ends with a line `N passed, N failed` and exits non-zero if any failed; each
scenario's result gives the time from the VMM's start to the kernel's `Run /init as init
process` line, as seen in the serial log. Logs are in target/boot-test/.
Run `cargo xtask <COMMAND> --help` for a command's options.";

/// `cargo xtask`: the parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Petrel project tasks",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The command; none prints the help.
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// A command and its options.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Cmd {
    /// The whole test suite, as CI runs it: install missing Debian packages and
    /// rustfmt/clippy, then `cargo fmt --all -- --check`, `cargo clippy
    /// --workspace --all-targets -- -D warnings`, `cargo test --workspace`,
    /// `cargo package --offline` of the library crates, their runnable examples
    /// (`cargo run --example`, listed in xtask/src/suite.rs), `crate-graph
    /// --check`, `api-listing --check` (skipped, saying so, without nightly) and
    /// boot-test.
    /// Stops at the first failing step (exit 1); a summary per step closes the run.
    /// VMM_REQUIRE_KVM=1 in the environment makes the KVM tests fail rather than
    /// skip where /dev/kvm is missing.
    #[command(verbatim_doc_comment)]
    Test(TestArgs),
    /// Build the guest kernel, initramfs and petrel (release), boot Linux under
    /// petrel in each scenario and check the serial log, the guest's own
    /// checks from user mode, the host side and the exit status.
    /// Scenarios: vmlinux-1vcpu and bzimage-1vcpu (the kernel finds the ACPI
    /// tables through either boot protocol), vmlinux-2vcpu (a busy loop pinned
    /// to each vCPU; both CPUs found through ACPI's MADT, no MP table used),
    /// virtio-blk-root (a pattern written with dd and found on the host;
    /// /dev/hwrng), virtio-blk-ro (writes refused, image unchanged; ends with
    /// `poweroff -f`: ACPI S5, petrel exits 0 for a power-off),
    /// virtio-net-dhcp (DHCP, HTTP and a guest listener over a
    /// tap), vsock-echo (a guest program over vsock both ways),
    /// api-vmlinux-blk (kernel and root drive configured over Firecracker's
    /// API socket; SendCtrlAltDel reaches the guest's init as SIGINT through
    /// the i8042 found through ACPI), mmds-v1 and mmds-v2 (through
    /// --config-file with an mmds-config on a tap's interface and --metadata:
    /// the guest's busybox wget reads the metadata as IMDS text and JSON,
    /// V2 with a token got by PUT with nc, refused 401 without one; the host
    /// compares the answers and the mmds metrics), jailer-vmlinux-blk (a
    /// static petrel with a disk under petrel-jailer as an unprivileged uid),
    /// snapshot-linux-blk (a shell loop counting to the console and a file,
    /// snapshotted on SIGUSR1 and restored by `petrel restore` in another
    /// process, where it counts on, and its kernel reseeds its random number
    /// generator for the new VM generation ID), serial-shell (typing into the
    /// guest's shell on a pseudo-terminal); and, only when named
    /// with --only, config-file-vmlinux-blk (a kernel, initramfs and data
    /// drive through --config-file and --no-api).
    #[command(verbatim_doc_comment)]
    BootTest(BootTestArgs),
    /// Build (or find in the cache) the guest kernel and initramfs and print
    /// their paths, also as PETREL_GUEST_* lines.
    #[command(verbatim_doc_comment)]
    BuildGuest,
    /// Boot the guest kernel and initramfs under QEMU with TCG (no KVM) to check
    /// the guest itself: the init marker must appear.
    #[command(verbatim_doc_comment)]
    QemuCheck(QemuCheckArgs),
    /// Build petrel (release) and measure its VMM-side costs side by side with
    /// QEMU (microvm, KVM) on the same demo guest: start-up, memory overhead,
    /// exit cost (against a bare KVM_RUN loop), density, Linux boot time, and
    /// Firecracker's API (socket ready, InstanceStart to the first guest byte,
    /// memory added; against Firecracker's figures measured earlier).
    /// Prints a table with PASS/FAIL per target and writes
    /// target/bench/results.json; exits 1 when a target is missed, a measurement
    /// fails, or QEMU or /dev/kvm is missing (unless --allow-missing).
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Boot the guest kernel under petrel (release) with `initcall_debug
    /// ignore_loglevel printk.time=1` added, keep the serial log in
    /// target/boot-profile/, and print where the boot went: the slowest 15
    /// initcalls, the 10 biggest gaps between log lines (with the line before
    /// and the initcall running), beside petrel's --boot-timer timeline.
    /// Initcalls printed as addresses (no kallsyms) are named from the
    /// vmlinux's symbol table. docs/guest-kernel.md says what to do with it.
    #[command(verbatim_doc_comment)]
    BootProfile(BootProfileArgs),
    /// Run the cargo-fuzz targets of fuzz/ (nightly; installs cargo-fuzz when
    /// missing): all of them in turn, or the one named (`fuzz TARGET`), each for
    /// --time seconds (default 60) under `nice -n 19`, one process at a time,
    /// from the seeds in fuzz/corpus/. A crash is minimised and copied into
    /// fuzz/regressions/TARGET/, which `cargo test` replays on stable; exits 1
    /// then. Prints exec/s, edges and corpus size per target. docs/fuzzing.md.
    #[command(verbatim_doc_comment)]
    Fuzz(FuzzArgs),
    /// Print the library crates' dependency graph (from `cargo metadata`), as
    /// kept in docs/using-the-crates.md and docs/architecture.md; --check fails
    /// when a doc's copy is out of date, --write updates both.
    #[command(verbatim_doc_comment)]
    CrateGraph(CrateGraphArgs),
    /// Write each library crate's public API (from nightly rustdoc JSON) to
    /// crates/CRATE/api.txt; --check fails, with the differing lines, when a
    /// listing is not the crate's API.
    #[command(verbatim_doc_comment)]
    ApiListing(ApiListingArgs),
    /// Write crates/vmm-bin/hot-text.ld: run petrel (release) under gdb
    /// (installed when missing) on the demo guest, a spinning guest from the
    /// command line and through Firecracker's API (boot, snapshot, load) and
    /// Linux to /init, record the functions it enters, and list them for the
    /// linker to lay out ahead of the rest of .text, so that a VMM keeps less of
    /// its code resident. Run it again after larger changes.
    #[command(verbatim_doc_comment)]
    HotText,
}

/// Options of `test`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TestArgs {
    /// Run the boot-test step (`--no-boot-test` leaves it out).
    #[arg(long = "no-boot-test", action = ArgAction::SetFalse, help = "Leave out the boot-test step.")]
    pub boot_test: bool,
    /// Run the fmt and clippy steps (`--no-lint` leaves them out).
    #[arg(long = "no-lint", action = ArgAction::SetFalse, help = "Leave out the fmt and clippy steps.")]
    pub lint: bool,
}

/// Options of `boot-test`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BootTestArgs {
    /// Boot this kernel instead (one scenario, `custom-1vcpu`, 1 vCPU);
    /// a file starting with the ELF magic is an ELF, else a bzImage.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub kernel: Option<PathBuf>,
    /// Use this initramfs instead of the built one.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub initrd: Option<PathBuf>,
    /// Per-scenario time limit (default 600); the VMM and its process group
    /// are killed after it, its logs kept, and the next scenario runs.
    #[arg(long, value_name = "SECS", default_value = "600", hide_default_value = true,
          value_parser = secs, verbatim_doc_comment)]
    pub timeout: Duration,
    /// Run only this scenario (may be repeated).
    #[arg(long, value_name = "NAME", verbatim_doc_comment)]
    pub only: Vec<String>,
    /// Use this petrel binary instead of building the static one
    /// (target/x86_64-unknown-linux-gnu/release/petrel).
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub petrel: Option<PathBuf>,
}

impl Default for BootTestArgs {
    /// The standard scenarios with the built kernel, initramfs and petrel.
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            timeout: DEFAULT_BOOT_TIMEOUT,
            only: Vec::new(),
            petrel: None,
        }
    }
}

/// Options of `boot-profile`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BootProfileArgs {
    /// Profile this kernel (ELF vmlinux for symbol names) instead of the
    /// built one; with it, no initramfs unless --initrd names one.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub kernel: Option<PathBuf>,
    /// Use this initramfs instead of the built one.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub initrd: Option<PathBuf>,
    /// Append EXTRA to the guest's command line (e.g. `pty.legacy_count=0`).
    #[arg(long, value_name = "EXTRA", verbatim_doc_comment)]
    pub cmdline: Option<String>,
    /// Do not boot: profile this serial log (names from --kernel's symbols).
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub log: Option<PathBuf>,
    /// Time limit for the boot (default 600); the log so far is profiled.
    #[arg(long, value_name = "SECS", default_value = "600", hide_default_value = true,
          value_parser = secs, verbatim_doc_comment)]
    pub timeout: Duration,
    /// Use this petrel binary instead of building target/release/petrel.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub petrel: Option<PathBuf>,
}

impl Default for BootProfileArgs {
    /// The built kernel and initramfs, booted by a freshly built petrel.
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            cmdline: None,
            log: None,
            timeout: DEFAULT_BOOT_TIMEOUT,
            petrel: None,
        }
    }
}

/// Options of `qemu-check`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct QemuCheckArgs {
    /// Per-boot time limit (default 300).
    #[arg(long, value_name = "SECS", default_value = "300", hide_default_value = true,
          value_parser = secs, verbatim_doc_comment)]
    pub timeout: Duration,
    /// Run only this scenario (may be repeated).
    #[arg(long, value_name = "NAME", verbatim_doc_comment)]
    pub only: Vec<String>,
}

/// Options of `bench`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BenchArgs {
    /// Runs per case (default 10; the memory cases do at most 5, density
    /// at most 3).
    #[arg(long, value_name = "N", default_value = "10", hide_default_value = true,
          value_parser = clap::value_parser!(u32).range(1..), verbatim_doc_comment)]
    pub runs: u32,
    /// Port-write exits per exit-cost run (default 10000).
    #[arg(long, value_name = "N", default_value = "10000", hide_default_value = true,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)), verbatim_doc_comment)]
    pub exits: u64,
    /// VMs per density measurement (default 20).
    #[arg(long, value_name = "N", default_value = "20", hide_default_value = true,
          value_parser = clap::value_parser!(u32).range(1..), verbatim_doc_comment)]
    pub vms: u32,
    /// Clones of one snapshot alive at once in the clones case (default
    /// 100).
    #[arg(long, value_name = "N", default_value = "100", hide_default_value = true,
          value_parser = clap::value_parser!(u32).range(1..), verbatim_doc_comment)]
    pub clones: u32,
    /// Halted 16 MiB VMs alive at once in the alive case (default 200;
    /// each has 5 threads: a few thousand need kernel.pid_max raised).
    #[arg(long, value_name = "N", default_value = "200", hide_default_value = true,
          value_parser = clap::value_parser!(u32).range(1..), verbatim_doc_comment)]
    pub alive: u32,
    /// Run the Linux boot and sandbox cases (`--no-linux` leaves them out).
    #[arg(long = "no-linux", action = ArgAction::SetFalse,
          help = "Leave out the Linux boot and the two sandbox cases (the table says so).")]
    pub linux: bool,
    /// Linux boots per VMM (default 1).
    #[arg(long, value_name = "N", default_value = "1", hide_default_value = true,
          value_parser = clap::value_parser!(u32).range(1..), verbatim_doc_comment)]
    pub linux_runs: u32,
    /// Limit for one Linux boot (default 600).
    #[arg(long, value_name = "SECS", default_value = "600", hide_default_value = true,
          value_parser = secs, verbatim_doc_comment)]
    pub linux_timeout: Duration,
    /// Run only this case (may be repeated): startup, memory, exits,
    /// density, linux, api-socket, api-start, api-memory, snapshot,
    /// clones, alive, sandbox, sandbox-acpi.
    #[arg(long, value_name = "NAME", verbatim_doc_comment)]
    pub only: Vec<String>,
    /// Exit 0 even if QEMU or /dev/kvm is missing (still shown as MISSING).
    #[arg(long, verbatim_doc_comment)]
    pub allow_missing: bool,
    /// Use this petrel binary instead of building the static one
    /// (target/x86_64-unknown-linux-gnu/release/petrel).
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub petrel: Option<PathBuf>,
}

impl Default for BenchArgs {
    /// Every case, 10 runs each.
    fn default() -> Self {
        Self {
            runs: 10,
            exits: 10_000,
            vms: 20,
            clones: 100,
            alive: 200,
            linux: true,
            linux_runs: 1,
            linux_timeout: DEFAULT_BOOT_TIMEOUT,
            only: Vec::new(),
            allow_missing: false,
            petrel: None,
        }
    }
}

/// Options of `fuzz`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct FuzzArgs {
    /// Run only this target (all of them when left out).
    #[arg(value_name = "TARGET", verbatim_doc_comment)]
    pub target: Option<String>,
    /// Seconds each target runs (default 60).
    #[arg(long, value_name = "SECS", default_value = "60", hide_default_value = true,
          value_parser = secs, verbatim_doc_comment)]
    pub time: Duration,
}

/// Options of `crate-graph`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CrateGraphArgs {
    /// Fail when a copy in docs/using-the-crates.md or docs/architecture.md is out of date.
    #[arg(long, conflicts_with = "write", verbatim_doc_comment)]
    pub check: bool,
    /// Update both copies (docs/using-the-crates.md, docs/architecture.md).
    #[arg(long, verbatim_doc_comment)]
    pub write: bool,
}

impl CrateGraphArgs {
    /// What to do with the graph.
    pub fn mode(&self) -> crate::crates::Mode {
        use crate::crates::Mode;
        match (self.check, self.write) {
            (true, _) => Mode::Check,
            (false, true) => Mode::Write,
            (false, false) => Mode::Print,
        }
    }
}

/// Options of `api-listing`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ApiListingArgs {
    /// Compare the listings with the crates' APIs instead of writing them.
    #[arg(long, verbatim_doc_comment)]
    pub check: bool,
}

/// Parses a positive whole number of seconds.
fn secs(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err("wants a positive whole number of seconds".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    /// Parses `args` (without the program name).
    fn parse<const N: usize>(args: [&str; N]) -> Result<Option<Cmd>, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args)).map(|c| c.cmd)
    }

    fn parsed<const N: usize>(args: [&str; N]) -> Cmd {
        parse(args).unwrap().unwrap()
    }

    fn boot<const N: usize>(args: [&str; N]) -> BootTestArgs {
        match parse(args).unwrap() {
            Some(Cmd::BootTest(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn assert_refused<const N: usize>(args: [&str; N]) {
        let e = parse(args).expect_err(&format!("{args:?} accepted"));
        assert!(
            !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion),
            "{args:?}: {e}"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_forms() {
        assert_eq!(parse([]).unwrap(), None);
        for e in [
            parse(["help"]),
            parse(["--help"]),
            parse(["-h"]),
            parse(["boot-test", "--help"]),
            parse(["help", "bench"]),
        ] {
            assert_eq!(e.unwrap_err().kind(), ErrorKind::DisplayHelp);
        }
    }

    #[test]
    fn help_keeps_every_command_and_explanation() {
        let help = Cli::command().render_long_help().to_string();
        for command in [
            "test",
            "boot-test",
            "build-guest",
            "qemu-check",
            "bench",
            "boot-profile",
            "fuzz",
            "crate-graph",
            "api-listing",
            "help",
        ] {
            assert!(help.contains(&format!("  {command} ")), "{command}: {help}");
        }
        for words in [
            "VMM_REQUIRE_KVM=1 in the environment",
            "config-file-vmlinux-blk",
            "mmds-v1 and mmds-v2",
            "PETREL_CACHE",
            "Logs are in target/boot-test/.",
        ] {
            assert!(help.contains(words), "{words}");
        }
        let mut cmd = Cli::command();
        let bench = cmd.find_subcommand_mut("bench").unwrap();
        let bench = bench.render_long_help().to_string();
        assert!(bench.contains("--allow-missing") && bench.contains("--linux-timeout <SECS>"));
        let mut cmd = Cli::command();
        let profile = cmd.find_subcommand_mut("boot-profile").unwrap();
        assert!(profile
            .render_long_help()
            .to_string()
            .contains("--log <PATH>"));
    }

    #[test]
    fn boot_test_defaults() {
        let a = boot(["boot-test"]);
        assert_eq!(a, BootTestArgs::default());
        assert_eq!(a.timeout, Duration::from_secs(600));
        assert_eq!((a.kernel, a.initrd, a.petrel), (None, None, None));
        assert!(a.only.is_empty());
    }

    #[test]
    fn boot_test_options() {
        let a = boot([
            "boot-test",
            "--kernel",
            "/boot/vmlinuz",
            "--initrd=/tmp/i.cpio",
            "--timeout",
            "30",
            "--only",
            "a",
            "--only=b",
            "--petrel",
            "/p",
        ]);
        assert_eq!(a.kernel, Some(PathBuf::from("/boot/vmlinuz")));
        assert_eq!(a.initrd, Some(PathBuf::from("/tmp/i.cpio")));
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert_eq!(a.only, vec!["a", "b"]);
        assert_eq!(a.petrel, Some(PathBuf::from("/p")));
    }

    #[test]
    fn bad_command_lines() {
        assert_refused(["frobnicate"]);
        assert_refused(["boot-test", "--timeout"]);
        assert_refused(["boot-test", "--timeout", "0"]);
        assert_refused(["boot-test", "--timeout", "ten"]);
        assert_refused(["boot-test", "--kernel", "--initrd", "x"]);
        assert_refused(["boot-test", "--bogus", "1"]);
        assert_refused(["boot-test", "stray"]);
        assert_refused(["build-guest", "--kernel", "x"]);
        assert_refused(["qemu-check", "--kernel", "x"]);
        assert_refused(["crate-graph", "--check", "--write"]);
        assert_refused(["api-listing", "--bogus"]);
    }

    #[test]
    fn test_command() {
        let all = TestArgs {
            boot_test: true,
            lint: true,
        };
        assert_eq!(parsed(["test"]), Cmd::Test(all.clone()));
        assert_eq!(
            parsed(["test", "--no-boot-test"]),
            Cmd::Test(TestArgs {
                boot_test: false,
                ..all.clone()
            })
        );
        assert_eq!(
            parsed(["test", "--no-lint", "--no-boot-test"]),
            Cmd::Test(TestArgs {
                boot_test: false,
                lint: false
            })
        );
        assert_refused(["test", "--no-boot"]);
        assert_refused(["test", "--timeout", "5"]);
        assert_refused(["test", "stray"]);
    }

    #[test]
    fn bench_command() {
        assert_eq!(parsed(["bench"]), Cmd::Bench(BenchArgs::default()));
        let a = match parsed([
            "bench",
            "--runs",
            "3",
            "--no-linux",
            "--exits=500",
            "--vms",
            "8",
            "--clones=1000",
            "--alive",
            "3000",
            "--allow-missing",
            "--only",
            "startup",
            "--only=exits",
            "--linux-runs",
            "2",
            "--linux-timeout",
            "90",
            "--petrel",
            "/p",
        ]) {
            Cmd::Bench(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            a,
            BenchArgs {
                runs: 3,
                exits: 500,
                vms: 8,
                clones: 1000,
                alive: 3000,
                linux: false,
                linux_runs: 2,
                linux_timeout: Duration::from_secs(90),
                only: vec!["startup".into(), "exits".into()],
                allow_missing: true,
                petrel: Some("/p".into()),
            }
        );
        assert_refused(["bench", "--runs", "0"]);
        assert_refused(["bench", "--runs"]);
        assert_refused(["bench", "--vms", "many"]);
        assert_refused(["bench", "--clones", "0"]);
        assert_refused(["bench", "--alive", "0"]);
        assert_refused(["bench", "--no-linux=1"]);
        assert_refused(["bench", "--bogus", "1"]);
        assert_refused(["bench", "stray"]);
    }

    #[test]
    fn boot_profile_command() {
        assert_eq!(
            parsed(["boot-profile"]),
            Cmd::BootProfile(BootProfileArgs::default())
        );
        let a = match parsed([
            "boot-profile",
            "--kernel",
            "/k/vmlinux",
            "--initrd=/i.cpio",
            "--cmdline",
            "pty.legacy_count=0 quiet",
            "--timeout",
            "120",
            "--petrel",
            "/p",
            "--log",
            "/s.log",
        ]) {
            Cmd::BootProfile(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            a,
            BootProfileArgs {
                kernel: Some("/k/vmlinux".into()),
                initrd: Some("/i.cpio".into()),
                cmdline: Some("pty.legacy_count=0 quiet".into()),
                log: Some("/s.log".into()),
                timeout: Duration::from_secs(120),
                petrel: Some("/p".into()),
            }
        );
        assert_refused(["boot-profile", "--cmdline"]);
        assert_refused(["boot-profile", "--only", "x"]);
        assert_refused(["boot-profile", "stray"]);
    }

    #[test]
    fn fuzz_command() {
        assert_eq!(
            parsed(["fuzz"]),
            Cmd::Fuzz(FuzzArgs {
                target: None,
                time: Duration::from_secs(60)
            })
        );
        assert_eq!(
            parsed(["fuzz", "virtio_blk", "--time", "120"]),
            Cmd::Fuzz(FuzzArgs {
                target: Some("virtio_blk".into()),
                time: Duration::from_secs(120)
            })
        );
        assert_eq!(
            parsed(["fuzz", "--time=5"]),
            Cmd::Fuzz(FuzzArgs {
                target: None,
                time: Duration::from_secs(5)
            })
        );
        assert_refused(["fuzz", "--jobs", "4"]);
        assert_refused(["fuzz", "a", "b"]);
        assert_refused(["fuzz", "--time", "x"]);
    }

    #[test]
    fn other_commands() {
        use crate::crates::Mode;
        assert_eq!(parsed(["build-guest"]), Cmd::BuildGuest);
        assert_eq!(
            parsed(["qemu-check", "--timeout", "90"]),
            Cmd::QemuCheck(QemuCheckArgs {
                timeout: Duration::from_secs(90),
                only: vec![],
            })
        );
        match parsed(["qemu-check"]) {
            Cmd::QemuCheck(a) => assert_eq!(a.timeout, Duration::from_secs(300)),
            other => panic!("{other:?}"),
        }
        let graph = |args| match args {
            Cmd::CrateGraph(a) => a.mode(),
            other => panic!("{other:?}"),
        };
        assert_eq!(graph(parsed(["crate-graph"])), Mode::Print);
        assert_eq!(graph(parsed(["crate-graph", "--check"])), Mode::Check);
        assert_eq!(graph(parsed(["crate-graph", "--write"])), Mode::Write);
        assert_eq!(
            parsed(["api-listing", "--check"]),
            Cmd::ApiListing(ApiListingArgs { check: true })
        );
    }
}

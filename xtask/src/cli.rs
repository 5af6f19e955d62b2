//! The command line of `cargo xtask`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default limit for one boot-test scenario.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Default limit for one QEMU TCG boot.
pub const DEFAULT_QEMU_TIMEOUT: Duration = Duration::from_secs(300);

/// The help text.
pub const HELP: &str = "\
cargo xtask: Petrel project tasks

USAGE:
    cargo xtask <COMMAND> [OPTIONS]

COMMANDS:
    test          The whole test suite, as CI runs it: install missing Debian packages and
                  rustfmt/clippy, then `cargo fmt --all -- --check`, `cargo clippy
                  --workspace --all-targets -- -D warnings`, `cargo test --workspace`,
                  `cargo package --offline` of the library crates, their examples (`cargo run
                  --example` lwn_demo, serial_on_a_bus, load_kernel), `crate-graph --check`,
                  `api-listing --check` (skipped, saying so, without nightly) and boot-test. Stops at the first failing step (exit 1); a summary per step
                  closes the run. VMM_REQUIRE_KVM=1 in the environment makes the KVM tests
                  fail rather than skip where /dev/kvm is missing.
    boot-test     Build the guest kernel, initramfs and petrel (release), boot Linux under
                  petrel in each scenario and check the serial log, the guest's own
                  checks from user mode, the host side and the exit status.
                  Scenarios: vmlinux-1vcpu, bzimage-1vcpu, vmlinux-2vcpu (a busy loop
                  pinned to each vCPU), virtio-blk-root (a pattern written with dd and
                  found on the host; /dev/hwrng), virtio-blk-ro (writes refused, image
                  unchanged), virtio-net-dhcp (DHCP, HTTP and a guest listener over a
                  tap), vsock-echo (a guest program over vsock both ways),
                  api-vmlinux-blk (kernel, initramfs and a drive configured over
                  Firecracker's API socket), jailer-vmlinux-blk (a
                  static petrel with a disk under petrel-jailer as an unprivileged uid),
                  snapshot-linux-blk (a shell loop counting to the console and a file,
                  snapshotted on SIGUSR1 and restored by `petrel restore` in another
                  process, where it counts on), serial-shell (typing into the guest's
                  shell on a pseudo-terminal); and, only when named
                  with --only, config-file-vmlinux-blk (the same through --config-file
                  and --no-api).
    build-guest   Build (or find in the cache) the guest kernel and initramfs and print
                  their paths, also as PETREL_GUEST_* lines.
    qemu-check    Boot the guest kernel and initramfs under QEMU with TCG (no KVM) to check
                  the guest itself: the init marker must appear.
    bench         Build petrel (release) and measure its VMM-side costs side by side with
                  QEMU (microvm, KVM) on the same demo guest: start-up, memory overhead,
                  exit cost (against a bare KVM_RUN loop), density, Linux boot time, and
                  Firecracker's API (socket ready, InstanceStart to the first guest byte,
                  memory added; against Firecracker's figures measured earlier).
                  Prints a table with PASS/FAIL per target and writes
                  target/bench/results.json; exits 1 when a target is missed, a measurement
                  fails, or QEMU or /dev/kvm is missing (unless --allow-missing).
    boot-profile  Boot the guest kernel under petrel (release) with `initcall_debug
                  ignore_loglevel printk.time=1` added, keep the serial log in
                  target/boot-profile/, and print where the boot went: the slowest 15
                  initcalls, the 10 biggest gaps between log lines (with the line before
                  and the initcall running), beside petrel's --boot-timer timeline.
                  Initcalls printed as addresses (no kallsyms) are named from the
                  vmlinux's symbol table. docs/guest-kernel.md says what to do with it.
    fuzz          Run the cargo-fuzz targets of fuzz/ (nightly; installs cargo-fuzz when
                  missing): all of them in turn, or the one named (`fuzz TARGET`), each for
                  --time seconds (default 60) under `nice -n 19`, one process at a time,
                  from the seeds in fuzz/corpus/. A crash is minimised and copied into
                  fuzz/regressions/TARGET/, which `cargo test` replays on stable; exits 1
                  then. Prints exec/s, edges and corpus size per target. docs/fuzzing.md.
    crate-graph   Print the library crates' dependency graph (from `cargo metadata`), as
                  kept in docs/using-the-crates.md; --check fails when the doc's copy is out
                  of date, --write updates it.
    api-listing   Write each library crate's public API (from nightly rustdoc JSON) to
                  crates/CRATE/api.txt; --check fails, with the differing lines, when a
                  listing is not the crate's API.
    help          Print this help (also -h, --help; `<COMMAND> --help` too).

TEST OPTIONS:
    --no-boot-test   Leave out the boot-test step.
    --no-lint        Leave out the fmt and clippy steps.

BOOT-TEST OPTIONS:
    --kernel PATH    Boot this kernel instead (one scenario, `custom-1vcpu`, 1 vCPU);
                     a file starting with the ELF magic is an ELF, else a bzImage.
    --initrd PATH    Use this initramfs instead of the built one.
    --timeout SECS   Per-scenario time limit (default 600); the VMM and its process group
                     are killed after it, its logs kept, and the next scenario runs.
    --only NAME      Run only this scenario (may be repeated).
    --petrel PATH    Use this petrel binary instead of building the static one
                     (target/x86_64-unknown-linux-gnu/release/petrel).

BOOT-PROFILE OPTIONS:
    --kernel PATH    Profile this kernel (ELF vmlinux for symbol names) instead of the
                     built one; with it, no initramfs unless --initrd names one.
    --initrd PATH    Use this initramfs instead of the built one.
    --cmdline EXTRA  Append EXTRA to the guest's command line (e.g. `pty.legacy_count=0`).
    --log PATH       Do not boot: profile this serial log (names from --kernel's symbols).
    --timeout SECS   Time limit for the boot (default 600); the log so far is profiled.
    --petrel PATH    Use this petrel binary instead of building target/release/petrel.

QEMU-CHECK OPTIONS:
    --timeout SECS   Per-boot time limit (default 300).
    --only NAME      Run only this scenario (may be repeated).

BENCH OPTIONS:
    --runs N         Runs per case (default 10; the memory cases do at most 5, density
                     at most 3).
    --exits N        Port-write exits per exit-cost run (default 10000).
    --vms N          VMs per density measurement (default 20).
    --no-linux       Leave out the Linux boot case (the table says so).
    --linux-runs N   Linux boots per VMM (default 1).
    --linux-timeout SECS  Limit for one Linux boot (default 600).
    --only NAME      Run only this case (may be repeated): startup, memory, exits,
                     density, linux, api-socket, api-start, api-memory.
    --allow-missing  Exit 0 even if QEMU or /dev/kvm is missing (still shown as MISSING).
    --petrel PATH    Use this petrel binary instead of building the static one
                     (target/x86_64-unknown-linux-gnu/release/petrel).

ENVIRONMENT:
    PETREL_CACHE     Cache directory (default $XDG_CACHE_HOME/petrel, else ~/.cache/petrel).
    VMM_REQUIRE_KVM  `1`: tests that need /dev/kvm fail without it instead of skipping.

The guest kernel is Debian's linux-source-6.12 with `make tinyconfig` plus
xtask/kernel/petrel.config; missing Debian packages are installed with apt-get.
boot-test ends with a line `N passed, N failed` and exits non-zero if any failed; each
scenario's result gives the time from the VMM's start to the kernel's `Run /init as init
process` line, as seen in the serial log. Logs are in target/boot-test/.
";

/// Options of `boot-test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTestArgs {
    /// A kernel to boot instead of the built one.
    pub kernel: Option<PathBuf>,
    /// An initramfs to use instead of the built one.
    pub initrd: Option<PathBuf>,
    /// Per-scenario limit.
    pub timeout: Duration,
    /// Scenario names to run; empty means all.
    pub only: Vec<String>,
    /// A petrel binary to use instead of building one.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootProfileArgs {
    /// A kernel to boot instead of the built one.
    pub kernel: Option<PathBuf>,
    /// An initramfs to use instead of the built one.
    pub initrd: Option<PathBuf>,
    /// Words appended to the guest's command line.
    pub cmdline: Option<String>,
    /// A serial log to profile instead of booting.
    pub log: Option<PathBuf>,
    /// Limit for the boot.
    pub timeout: Duration,
    /// A petrel binary to use instead of building one.
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

/// Options of `test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestArgs {
    /// Run the boot-test step.
    pub boot_test: bool,
    /// Run the fmt and clippy steps.
    pub lint: bool,
}

/// Options of `qemu-check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCheckArgs {
    /// Per-boot limit.
    pub timeout: Duration,
    /// Scenario names to run; empty means all.
    pub only: Vec<String>,
}

/// Options of `bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// Runs per case.
    pub runs: u32,
    /// Exits per exit-cost run.
    pub exits: u64,
    /// VMs per density measurement.
    pub vms: u32,
    /// Run the Linux boot case.
    pub linux: bool,
    /// Linux boots per VMM.
    pub linux_runs: u32,
    /// Limit for one Linux boot.
    pub linux_timeout: Duration,
    /// Cases to run; empty means all.
    pub only: Vec<String>,
    /// Exit 0 even when QEMU or KVM is missing.
    pub allow_missing: bool,
    /// A petrel binary to use instead of building one.
    pub petrel: Option<PathBuf>,
}

impl Default for BenchArgs {
    /// Every case, 10 runs each.
    fn default() -> Self {
        Self {
            runs: 10,
            exits: 10_000,
            vms: 20,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzArgs {
    /// The one target to run; all when `None`.
    pub target: Option<String>,
    /// How long each target runs.
    pub time: Duration,
}

/// Default run time of each target of `fuzz`.
pub const DEFAULT_FUZZ_TIME: Duration = Duration::from_secs(60);

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Print the help.
    Help,
    /// `build-guest`.
    BuildGuest,
    /// `boot-test`.
    BootTest(BootTestArgs),
    /// `qemu-check`.
    QemuCheck(QemuCheckArgs),
    /// `test`.
    Test(TestArgs),
    /// `bench`.
    Bench(BenchArgs),
    /// `boot-profile`.
    BootProfile(BootProfileArgs),
    /// `fuzz`.
    Fuzz(FuzzArgs),
    /// `crate-graph`.
    CrateGraph(crate::crates::Mode),
    /// `api-listing`, with `--check` or not.
    ApiListing {
        /// Compare instead of writing.
        check: bool,
    },
}

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Cmd>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let Some(command) = args.next() else {
        return Ok(Cmd::Help);
    };
    let mut rest: Vec<String> = args.collect();
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Cmd::Help);
    }
    let cmd = match command.as_str() {
        "help" | "-h" | "--help" => return Ok(Cmd::Help),
        "build-guest" => Cmd::BuildGuest,
        "test" => {
            let mut a = TestArgs {
                boot_test: true,
                lint: true,
            };
            for flag in rest.drain(..) {
                match flag.as_str() {
                    "--no-boot-test" => a.boot_test = false,
                    "--no-lint" => a.lint = false,
                    _ => return Err(Error::Usage(format!("test: unknown option {flag}"))),
                }
            }
            Cmd::Test(a)
        }
        "crate-graph" => {
            use crate::crates::Mode;
            let mode = match rest.first().map(String::as_str) {
                None => Mode::Print,
                Some("--check") => Mode::Check,
                Some("--write") => Mode::Write,
                Some(other) => {
                    return Err(Error::Usage(format!("crate-graph: unknown option {other}")))
                }
            };
            if mode != Mode::Print {
                rest.remove(0);
            }
            Cmd::CrateGraph(mode)
        }
        "api-listing" => {
            let check = rest.first().is_some_and(|a| a == "--check");
            if check {
                rest.remove(0);
            }
            Cmd::ApiListing { check }
        }
        "boot-test" => {
            let mut a = BootTestArgs::default();
            while let Some((flag, value)) = next_option(&mut rest)? {
                match flag.as_str() {
                    "--kernel" => a.kernel = Some(value.into()),
                    "--initrd" => a.initrd = Some(value.into()),
                    "--timeout" => a.timeout = parse_secs(&value)?,
                    "--only" => a.only.push(value),
                    "--petrel" => a.petrel = Some(value.into()),
                    _ => return Err(Error::Usage(format!("boot-test: unknown option {flag}"))),
                }
            }
            Cmd::BootTest(a)
        }
        "boot-profile" => {
            let mut a = BootProfileArgs::default();
            while let Some((flag, value)) = next_option(&mut rest)? {
                match flag.as_str() {
                    "--kernel" => a.kernel = Some(value.into()),
                    "--initrd" => a.initrd = Some(value.into()),
                    "--cmdline" => a.cmdline = Some(value),
                    "--log" => a.log = Some(value.into()),
                    "--timeout" => a.timeout = parse_secs(&value)?,
                    "--petrel" => a.petrel = Some(value.into()),
                    _ => return Err(Error::Usage(format!("boot-profile: unknown option {flag}"))),
                }
            }
            Cmd::BootProfile(a)
        }
        "fuzz" => {
            let mut a = FuzzArgs {
                target: None,
                time: DEFAULT_FUZZ_TIME,
            };
            if rest.first().is_some_and(|t| !t.starts_with('-')) {
                a.target = Some(rest.remove(0));
            }
            while let Some((flag, value)) = next_option(&mut rest)? {
                match flag.as_str() {
                    "--time" => a.time = parse_secs(&value)?,
                    _ => return Err(Error::Usage(format!("fuzz: unknown option {flag}"))),
                }
            }
            Cmd::Fuzz(a)
        }
        "qemu-check" => {
            let mut a = QemuCheckArgs {
                timeout: DEFAULT_QEMU_TIMEOUT,
                only: Vec::new(),
            };
            while let Some((flag, value)) = next_option(&mut rest)? {
                match flag.as_str() {
                    "--timeout" => a.timeout = parse_secs(&value)?,
                    "--only" => a.only.push(value),
                    _ => return Err(Error::Usage(format!("qemu-check: unknown option {flag}"))),
                }
            }
            Cmd::QemuCheck(a)
        }
        "bench" => {
            let mut a = BenchArgs::default();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "--no-linux" => a.linux = false,
                    "--allow-missing" => a.allow_missing = true,
                    _ => {
                        let Some((flag, value)) = next_option(&mut rest)? else {
                            break;
                        };
                        match flag.as_str() {
                            "--runs" => a.runs = parse_count(&flag, &value)?,
                            "--exits" => a.exits = parse_count(&flag, &value)?.into(),
                            "--vms" => a.vms = parse_count(&flag, &value)?,
                            "--linux-runs" => a.linux_runs = parse_count(&flag, &value)?,
                            "--linux-timeout" => a.linux_timeout = parse_secs(&value)?,
                            "--only" => a.only.push(value),
                            "--petrel" => a.petrel = Some(value.into()),
                            _ => return Err(Error::Usage(format!("bench: unknown option {flag}"))),
                        }
                        continue;
                    }
                }
                rest.remove(0);
            }
            Cmd::Bench(a)
        }
        other => return Err(Error::Usage(format!("unknown command {other:?}"))),
    };
    if let Some(extra) = rest.first() {
        return Err(Error::Usage(format!("unexpected argument {extra:?}")));
    }
    Ok(cmd)
}

/// Takes `--flag value` or `--flag=value` off the front of `args`.
fn next_option(args: &mut Vec<String>) -> Result<Option<(String, String)>> {
    if args.is_empty() {
        return Ok(None);
    }
    let first = args.remove(0);
    if !first.starts_with("--") {
        return Err(Error::Usage(format!("unexpected argument {first:?}")));
    }
    if let Some((flag, value)) = first.split_once('=') {
        return Ok(Some((flag.to_owned(), value.to_owned())));
    }
    if args.is_empty() || args[0].starts_with("--") {
        return Err(Error::Usage(format!("{first} needs a value")));
    }
    let value = args.remove(0);
    Ok(Some((first, value)))
}

/// Parses a positive number of seconds.
fn parse_secs(text: &str) -> Result<Duration> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(Error::Usage(format!(
            "--timeout wants a positive whole number of seconds, got {text:?}"
        ))),
    }
}

/// Parses a positive whole number given to `flag`.
fn parse_count(flag: &str, text: &str) -> Result<u32> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::Usage(format!(
            "{flag} wants a positive whole number, got {text:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(args: &[&str]) -> BootTestArgs {
        let mut all = vec!["boot-test"];
        all.extend_from_slice(args);
        match parse(all).unwrap() {
            Cmd::BootTest(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_forms() {
        let none: [&str; 0] = [];
        assert_eq!(parse(none).unwrap(), Cmd::Help);
        for args in [
            &["help"][..],
            &["--help"],
            &["-h"],
            &["boot-test", "--help"],
        ] {
            assert_eq!(parse(args.iter().copied()).unwrap(), Cmd::Help, "{args:?}");
        }
    }

    #[test]
    fn boot_test_defaults() {
        let a = boot(&[]);
        assert_eq!(a.timeout, Duration::from_secs(600));
        assert_eq!((a.kernel, a.initrd, a.petrel), (None, None, None));
        assert!(a.only.is_empty());
    }

    #[test]
    fn boot_test_options() {
        let a = boot(&[
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
        for args in [
            &["frobnicate"][..],
            &["boot-test", "--timeout"],
            &["boot-test", "--timeout", "0"],
            &["boot-test", "--timeout", "ten"],
            &["boot-test", "--kernel", "--initrd", "x"],
            &["boot-test", "--bogus", "1"],
            &["boot-test", "stray"],
            &["build-guest", "--kernel", "x"],
            &["qemu-check", "--kernel", "x"],
        ] {
            assert!(
                matches!(parse(args.iter().copied()), Err(Error::Usage(_))),
                "{args:?} accepted"
            );
        }
    }

    #[test]
    fn test_command() {
        let all = TestArgs {
            boot_test: true,
            lint: true,
        };
        assert_eq!(parse(["test"]).unwrap(), Cmd::Test(all.clone()));
        assert_eq!(
            parse(["test", "--no-boot-test"]).unwrap(),
            Cmd::Test(TestArgs {
                boot_test: false,
                ..all.clone()
            })
        );
        assert_eq!(
            parse(["test", "--no-lint", "--no-boot-test"]).unwrap(),
            Cmd::Test(TestArgs {
                boot_test: false,
                lint: false
            })
        );
        assert_eq!(parse(["test", "--help"]).unwrap(), Cmd::Help);
        for bad in [
            &["test", "--no-boot"][..],
            &["test", "--timeout", "5"],
            &["test", "stray"],
        ] {
            assert!(
                matches!(parse(bad.iter().copied()), Err(Error::Usage(_))),
                "{bad:?} accepted"
            );
        }
        assert!(HELP.contains("--no-boot-test") && HELP.contains("    test "));
    }

    #[test]
    fn bench_command() {
        assert_eq!(parse(["bench"]).unwrap(), Cmd::Bench(BenchArgs::default()));
        let a = match parse([
            "bench",
            "--runs",
            "3",
            "--no-linux",
            "--exits=500",
            "--vms",
            "8",
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
        ])
        .unwrap()
        {
            Cmd::Bench(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            a,
            BenchArgs {
                runs: 3,
                exits: 500,
                vms: 8,
                linux: false,
                linux_runs: 2,
                linux_timeout: Duration::from_secs(90),
                only: vec!["startup".into(), "exits".into()],
                allow_missing: true,
                petrel: Some("/p".into()),
            }
        );
        for bad in [
            &["bench", "--runs", "0"][..],
            &["bench", "--runs"],
            &["bench", "--vms", "many"],
            &["bench", "--no-linux=1"],
            &["bench", "--bogus", "1"],
            &["bench", "stray"],
        ] {
            assert!(
                matches!(parse(bad.iter().copied()), Err(Error::Usage(_))),
                "{bad:?} accepted"
            );
        }
        assert!(HELP.contains("    bench ") && HELP.contains("--allow-missing"));
    }

    #[test]
    fn boot_profile_command() {
        assert_eq!(
            parse(["boot-profile"]).unwrap(),
            Cmd::BootProfile(BootProfileArgs::default())
        );
        let a = match parse([
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
        ])
        .unwrap()
        {
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
        for bad in [
            &["boot-profile", "--cmdline"][..],
            &["boot-profile", "--only", "x"],
            &["boot-profile", "stray"],
        ] {
            assert!(
                matches!(parse(bad.iter().copied()), Err(Error::Usage(_))),
                "{bad:?} accepted"
            );
        }
        assert!(HELP.contains("    boot-profile ") && HELP.contains("--log PATH"));
    }

    #[test]
    fn fuzz_command() {
        assert_eq!(
            parse(["fuzz"]).unwrap(),
            Cmd::Fuzz(FuzzArgs {
                target: None,
                time: DEFAULT_FUZZ_TIME
            })
        );
        assert_eq!(
            parse(["fuzz", "virtio_blk", "--time", "120"]).unwrap(),
            Cmd::Fuzz(FuzzArgs {
                target: Some("virtio_blk".into()),
                time: Duration::from_secs(120)
            })
        );
        assert_eq!(
            parse(["fuzz", "--time=5"]).unwrap(),
            Cmd::Fuzz(FuzzArgs {
                target: None,
                time: Duration::from_secs(5)
            })
        );
        for bad in [
            &["fuzz", "--jobs", "4"][..],
            &["fuzz", "a", "b"],
            &["fuzz", "--time", "x"],
        ] {
            assert!(
                matches!(parse(bad.iter().copied()), Err(Error::Usage(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse(["build-guest"]).unwrap(), Cmd::BuildGuest);
        assert_eq!(
            parse(["qemu-check", "--timeout", "90"]).unwrap(),
            Cmd::QemuCheck(QemuCheckArgs {
                timeout: Duration::from_secs(90),
                only: vec![],
            })
        );
    }
}

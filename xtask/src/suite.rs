//! `cargo xtask test`: the whole test suite, as CI runs it, one step after another.
//!
//! Steps: `packages` (install missing Debian packages), `toolchain` (rustfmt and clippy),
//! `fmt`, `clippy`, `test` (`cargo test --workspace`), `package` (`cargo package` of the
//! library crates, offline), `examples` (the crates' runnable examples), `crate-graph` (the
//! graph in docs/using-the-crates.md and docs/architecture.md is current), `api-listing` (the checked-in public APIs
//! are current; needs nightly) and `boot-test` (in-process). Each step prints a header and
//! its wall time; the first failing step stops the run, and a summary line per step closes
//! it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{BootTestArgs, TestArgs};
use crate::error::{Error, Result};
use crate::host;

/// Packages the suite needs beyond [`host::GUEST_BUILD_PACKAGES`]: `mkfs.ext4` for the
/// virtio-blk boot tests' disk images, `ip` and dnsmasq for the virtio-net boot test's
/// namespace and DHCP server, QEMU for `qemu-check` and side-by-side benchmarks, and
/// Python's venv for the test that drives Petrel through a Firecracker client library from
/// PyPI (`crates/vmm-bin/tests/fc_client.rs`). (The boot tests also check for their own;
/// installing all here, first, keeps the install in one place in the log.)
pub const EXTRA_PACKAGES: &[&str] = &[
    "e2fsprogs",
    "iproute2",
    "dnsmasq-base",
    "qemu-system-x86",
    "python3-venv",
];

/// The environment variable that makes KVM tests fail, not skip, without /dev/kvm.
const REQUIRE_KVM_VAR: &str = "VMM_REQUIRE_KVM";

/// The work of one step.
type Action<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

/// One step of the suite.
pub struct Step<'a> {
    /// Short name, used in the header and the summary.
    pub name: &'static str,
    /// What it does, in a few words (often the command line).
    pub what: String,
    /// The work, or why it is left out.
    plan: Plan<'a>,
}

enum Plan<'a> {
    Run(Action<'a>),
    Skip(&'static str),
}

impl std::fmt::Debug for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plan = match &self.plan {
            Plan::Run(_) => "run",
            Plan::Skip(why) => why,
        };
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("what", &self.what)
            .field("plan", &plan)
            .finish()
    }
}

impl<'a> Step<'a> {
    /// A step that runs `action`.
    pub fn run(
        name: &'static str,
        what: impl Into<String>,
        action: impl FnOnce() -> Result<()> + 'a,
    ) -> Self {
        Self {
            name,
            what: what.into(),
            plan: Plan::Run(Box::new(action)),
        }
    }

    /// A step left out, for the reason given (an option, usually).
    pub fn skip(name: &'static str, what: impl Into<String>, why: &'static str) -> Self {
        Self {
            name,
            what: what.into(),
            plan: Plan::Skip(why),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It ran and succeeded.
    Passed,
    /// It ran and failed, for this reason.
    Failed(String),
    /// It was left out, for this reason.
    Skipped(&'static str),
    /// An earlier step failed, so it did not run.
    NotRun,
}

/// A step's name, how it ended and how long it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// The step's name.
    pub name: &'static str,
    /// How it ended.
    pub status: Status,
    /// Its wall time, if it ran.
    pub wall: Option<Duration>,
}

/// Runs the steps in order, printing a header and a closing line with the wall time for
/// each, until one fails; the steps after it are [`Status::NotRun`].
pub fn run_steps(steps: Vec<Step<'_>>) -> Vec<StepResult> {
    let total = steps.len();
    let mut failed = false;
    let mut results = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let header = format!("==> [{}/{total}] {}: {}", i + 1, step.name, step.what);
        let (status, wall) = match step.plan {
            Plan::Skip(why) => {
                println!("\n{header}\n<== {}: skipped ({why})", step.name);
                (Status::Skipped(why), None)
            }
            Plan::Run(_) if failed => (Status::NotRun, None),
            Plan::Run(action) => {
                println!("\n{header}");
                let start = Instant::now();
                let outcome = action();
                let wall = start.elapsed();
                match outcome {
                    Ok(()) => {
                        println!("<== {}: passed in {}", step.name, secs(wall));
                        (Status::Passed, Some(wall))
                    }
                    Err(e) => {
                        println!("<== {}: FAILED in {}: {e}", step.name, secs(wall));
                        failed = true;
                        (Status::Failed(e.to_string()), Some(wall))
                    }
                }
            }
        };
        results.push(StepResult {
            name: step.name,
            status,
            wall,
        });
    }
    results
}

/// `12.3 s`.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The summary: a line per step, then the verdict.
pub fn summary(results: &[StepResult], total: Duration) -> Vec<String> {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut lines = vec!["summary:".to_owned()];
    for r in results {
        let wall = r.wall.map(secs).unwrap_or_default();
        let (word, detail) = match &r.status {
            Status::Passed => ("PASS", String::new()),
            Status::Failed(why) => ("FAIL", first_line(why).to_owned()),
            Status::Skipped(why) => ("SKIP", format!("({why})")),
            Status::NotRun => ("NOT RUN", "(an earlier step failed)".to_owned()),
        };
        let line = format!("    {:<width$}  {word:<7}  {wall:>8}  {detail}", r.name);
        lines.push(line.trim_end().to_owned());
    }
    let verdict = match results
        .iter()
        .find(|r| matches!(r.status, Status::Failed(_)))
    {
        Some(r) => format!("test: FAILED at step {} after {}", r.name, secs(total)),
        None => {
            let ran = results
                .iter()
                .filter(|r| r.status == Status::Passed)
                .count();
            format!(
                "test: all {ran} steps that ran passed in {}{}",
                secs(total),
                match results.len() - ran {
                    0 => String::new(),
                    n => format!(" ({n} skipped)"),
                }
            )
        }
    };
    lines.push(verdict);
    lines
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Runs `cargo xtask test`; returns the exit code (0 when every step that ran passed).
pub fn run(args: &TestArgs) -> u8 {
    let root = crate::build::workspace_root();
    let start = Instant::now();
    let results = run_steps(steps(args, &root));
    println!();
    for line in summary(&results, start.elapsed()) {
        println!("{line}");
    }
    let failed = results
        .iter()
        .any(|r| matches!(r.status, Status::Failed(_)));
    u8::from(failed)
}

/// The cargo that runs xtask (`$CARGO`), else `cargo` from PATH.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo ARGS` in `root`.
fn cargo_cmd(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(args);
    cmd
}

/// `cargo ARGS` as it is printed in a header.
fn cargo_line(args: &[&str]) -> String {
    format!("cargo {}", args.join(" "))
}

const FMT: &[&str] = &["fmt", "--all", "--", "--check"];
const CLIPPY: &[&str] = &[
    "clippy",
    "--workspace",
    "--all-targets",
    "--",
    "-D",
    "warnings",
];
const TEST: &[&str] = &["test", "--workspace"];
/// The examples CI runs, as `cargo run` arguments.
const EXAMPLES: &[&[&str]] = &[
    &["run", "-q", "-p", "petrel-hv-sys", "--example", "lwn_demo"],
    &["run", "-q", "-p", "petrel-vmm", "--example", "uffd_handler"],
    &[
        "run",
        "-q",
        "-p",
        "petrel-devices",
        "--example",
        "serial_on_a_bus",
    ],
    &[
        "run",
        "-q",
        "-p",
        "petrel-loader",
        "--example",
        "load_kernel",
    ],
    &[
        "run",
        "-q",
        "-p",
        "petrel-api",
        "--example",
        "answer_request",
    ],
    &[
        "run",
        "-q",
        "-p",
        "petrel-snapshot",
        "--example",
        "state_file",
    ],
    &["run", "-q", "-p", "petrel-vmm", "--example", "embed"],
];

/// `cargo package` of the library crates, in dependency order over a local overlay (so that
/// each is verified against the others as packaged), with only the cargo cache.
fn package_args(libs: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["package", "--offline", "--allow-dirty"]
        .map(String::from)
        .to_vec();
    for lib in libs {
        args.push("-p".into());
        args.push(lib.clone());
    }
    args
}

/// Packages and verifies every library crate.
/// Cargo's home: `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> std::path::PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// Removes the copies of our own crates that an earlier `cargo package` unpacked under
/// `CARGO_HOME/registry/src/` while verifying.
///
/// `cargo package` verifies each crate against the others through a temporary local registry
/// and unpacks them into a directory named after a hash of that registry's path. An earlier run
/// from a checkout at the same path leaves `NAME-VERSION` there, marked complete, and cargo
/// then reuses it instead of unpacking the new package: a later run verified against the old
/// source and failed (a clean clone at /tmp/ci met the loader and hv-sys of a run an hour
/// older). The directories are only an unpacking cache; other crates' copies stay.
fn forget_unpacked_packages(cargo_home: &Path, libs: &[String]) -> Result<()> {
    let Ok(registries) = std::fs::read_dir(cargo_home.join("registry").join("src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        let Ok(entries) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = libs.iter().any(|lib| {
                name.strip_prefix(lib.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
            });
            if ours {
                std::fs::remove_dir_all(entry.path()).map_err(|e| {
                    Error::Other(format!("removing {}: {e}", entry.path().display()))
                })?;
            }
        }
    }
    Ok(())
}

fn package_step(root: &Path) -> Result<()> {
    let libs: Vec<String> = crate::crates::libraries(root)?
        .into_iter()
        .map(|l| l.name)
        .collect();
    forget_unpacked_packages(&cargo_home(), &libs)?;
    let args = package_args(&libs);
    println!("cargo {}", args.join(" "));
    host::run(Command::new(cargo()).current_dir(root).args(&args))
}

/// The steps of `cargo xtask test`.
fn steps<'a>(args: &TestArgs, root: &'a Path) -> Vec<Step<'a>> {
    let mut packages = host::GUEST_BUILD_PACKAGES.to_vec();
    packages.extend_from_slice(EXTRA_PACKAGES);
    let mut steps = vec![Step::run(
        "packages",
        format!("install what is missing of: {}", packages.join(" ")),
        move || host::ensure_packages(&packages),
    )];
    let cargo_step = |name, argv: &'static [&'static str]| {
        Step::run(name, cargo_line(argv), move || {
            host::run(&mut cargo_cmd(root, argv))
        })
    };
    const NO_LINT: &str = "--no-lint";
    if args.lint {
        steps.push(Step::run(
            "toolchain",
            "rustfmt and clippy (added with rustup if missing)",
            ensure_lint_tools,
        ));
        steps.push(cargo_step("fmt", FMT));
        steps.push(cargo_step("clippy", CLIPPY));
    } else {
        steps.push(Step::skip(
            "toolchain",
            "rustfmt and clippy (added with rustup if missing)",
            NO_LINT,
        ));
        steps.push(Step::skip("fmt", cargo_line(FMT), NO_LINT));
        steps.push(Step::skip("clippy", cargo_line(CLIPPY), NO_LINT));
    }
    steps.push(Step::run("test", cargo_line(TEST), move || {
        println!("{}", kvm_note());
        host::run(&mut cargo_cmd(root, TEST))
    }));
    steps.push(Step::run(
        "package",
        "cargo package --offline --allow-dirty -p LIB... (every library crate)",
        move || package_step(root),
    ));
    let examples_what = EXAMPLES
        .iter()
        .map(|a| a[a.len() - 1])
        .collect::<Vec<_>>()
        .join(", ");
    steps.push(Step::run(
        "examples",
        format!("cargo run --example: {examples_what}"),
        move || {
            EXAMPLES
                .iter()
                .try_for_each(|argv| host::run(&mut cargo_cmd(root, argv)))
        },
    ));
    steps.push(Step::run(
        "crate-graph",
        format!(
            "cargo xtask crate-graph --check ({})",
            crate::crates::GRAPH_DOCS.join(", ")
        ),
        move || crate::crates::crate_graph(root, crate::crates::Mode::Check),
    ));
    let api_what = "cargo xtask api-listing --check (crates/*/api.txt, nightly rustdoc JSON)";
    if crate::crates::nightly_available() {
        steps.push(Step::run("api-listing", api_what, move || {
            crate::crates::api_listing(root, true)
        }));
    } else {
        steps.push(Step::skip(
            "api-listing",
            api_what,
            "no nightly toolchain: `cargo +nightly` fails",
        ));
    }
    let boot_what = "cargo xtask boot-test (in-process): boot Linux under petrel";
    if args.boot_test {
        steps.push(Step::run(
            "boot-test",
            boot_what,
            || match crate::boottest::boot_test(&BootTestArgs::default()) {
                0 => Ok(()),
                code => Err(Error::Other(format!(
                    "boot-test failed (exit code {code}; see its results above)"
                ))),
            },
        ));
    } else {
        steps.push(Step::skip("boot-test", boot_what, "--no-boot-test"));
    }
    steps
}

/// What the KVM tests will do here: run, skip or fail, by /dev/kvm and `VMM_REQUIRE_KVM`.
fn kvm_note() -> String {
    let dev = Path::new("/dev/kvm").exists();
    let require = std::env::var(REQUIRE_KVM_VAR).ok();
    describe_kvm(dev, require.as_deref())
}

fn describe_kvm(dev_kvm: bool, require: Option<&str>) -> String {
    let var = match require {
        Some(v) => format!("{REQUIRE_KVM_VAR}={v}"),
        None => format!("{REQUIRE_KVM_VAR} unset"),
    };
    let what = match (dev_kvm, require == Some("1")) {
        (true, _) => "/dev/kvm is there: the KVM tests run",
        (false, true) => "/dev/kvm is missing: the KVM tests will fail",
        (false, false) => "/dev/kvm is missing: the KVM tests print SKIPPED and pass",
    };
    format!("{var}; {what}")
}

/// Checks that `cargo fmt` and `cargo clippy` work; adds the components with rustup when
/// they do not, and fails when that is not possible.
fn ensure_lint_tools() -> Result<()> {
    let tools = [("fmt", "rustfmt"), ("clippy", "clippy")];
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(sub, _)| tool_version(sub).is_none())
        .map(|&(_, component)| component)
        .collect();
    if !missing.is_empty() {
        println!(
            "toolchain: missing {}; adding with rustup",
            missing.join(" ")
        );
        let mut add = Command::new("rustup");
        add.args(["component", "add"]).args(&missing);
        host::run(&mut add).map_err(|e| {
            Error::Other(format!(
                "cargo {} is not available and rustup could not add {}: {e}",
                missing.join("/"),
                missing.join(" ")
            ))
        })?;
    }
    for (sub, component) in tools {
        match tool_version(sub) {
            Some(v) => println!("toolchain: {v}"),
            None => {
                return Err(Error::Other(format!(
                    "`cargo {sub} --version` still fails; is the {component} component there?"
                )))
            }
        }
    }
    Ok(())
}

/// The first line of `cargo SUB --version`, if it succeeds.
fn tool_version(sub: &str) -> Option<String> {
    let out = Command::new(cargo())
        .args([sub, "--version"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| first_line(&String::from_utf8_lossy(&out.stdout)).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn stops_at_the_first_failure() {
        let ran = RefCell::new(Vec::new());
        let step = |name: &'static str, ok: bool| {
            let ran = &ran;
            Step::run(name, "x", move || {
                ran.borrow_mut().push(name);
                if ok {
                    Ok(())
                } else {
                    Err(Error::Other(format!("{name} broke\nsecond line")))
                }
            })
        };
        let results = run_steps(vec![
            step("a", true),
            Step::skip("b", "y", "--no-b"),
            step("c", false),
            step("d", true),
            Step::skip("e", "z", "--no-e"),
        ]);
        assert_eq!(*ran.borrow(), ["a", "c"], "d must not run after c failed");
        let statuses: Vec<_> = results.iter().map(|r| (r.name, r.status.clone())).collect();
        assert_eq!(
            statuses,
            [
                ("a", Status::Passed),
                ("b", Status::Skipped("--no-b")),
                ("c", Status::Failed("c broke\nsecond line".into())),
                ("d", Status::NotRun),
                ("e", Status::Skipped("--no-e")),
            ]
        );
        assert!(results[0].wall.is_some() && results[2].wall.is_some());
        assert!(results[1].wall.is_none() && results[3].wall.is_none());

        let lines = summary(&results, Duration::from_millis(1500));
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[0], "summary:");
        assert!(lines[1].starts_with("    a  PASS "), "{lines:?}");
        assert!(lines[1].ends_with(" s"), "{lines:?}");
        assert_eq!(lines[2], "    b  SKIP               (--no-b)");
        assert!(
            lines[3].starts_with("    c  FAIL ") && lines[3].ends_with("c broke"),
            "{lines:?}"
        );
        assert_eq!(
            lines[4],
            "    d  NOT RUN            (an earlier step failed)"
        );
        assert_eq!(lines[6], "test: FAILED at step c after 1.5 s");
    }

    #[test]
    fn all_passed_summary() {
        let results = run_steps(vec![
            Step::run("fmt", "f", || Ok(())),
            Step::skip("boot-test", "b", "--no-boot-test"),
        ]);
        let lines = summary(&results, Duration::from_secs(83));
        assert_eq!(
            lines.last().unwrap(),
            "test: all 1 steps that ran passed in 83.0 s (1 skipped)"
        );
    }

    #[test]
    fn step_lists_follow_the_options() {
        let root = Path::new("/w");
        let plan = |boot_test, lint| -> Vec<(&'static str, bool)> {
            steps(&TestArgs { boot_test, lint }, root)
                .iter()
                .map(|s| (s.name, matches!(s.plan, Plan::Run(_))))
                .collect()
        };
        let names = [
            "packages",
            "toolchain",
            "fmt",
            "clippy",
            "test",
            "package",
            "examples",
            "crate-graph",
            "api-listing",
            "boot-test",
        ];
        let nightly = crate::crates::nightly_available();
        let all = plan(true, true);
        assert_eq!(all.iter().map(|s| s.0).collect::<Vec<_>>(), names);
        assert!(all
            .iter()
            .all(|s| s.1 || (s.0 == "api-listing" && !nightly)));
        let bare = plan(false, false);
        let run: Vec<_> = bare
            .iter()
            .filter(|s| s.1 && s.0 != "api-listing")
            .map(|s| s.0)
            .collect();
        assert_eq!(
            run,
            ["packages", "test", "package", "examples", "crate-graph"]
        );
        assert_eq!(bare.len(), names.len(), "left-out steps still show");
    }

    #[test]
    fn commands_are_the_documented_ones() {
        assert_eq!(cargo_line(FMT), "cargo fmt --all -- --check");
        assert_eq!(
            cargo_line(CLIPPY),
            "cargo clippy --workspace --all-targets -- -D warnings"
        );
        assert_eq!(cargo_line(TEST), "cargo test --workspace");
        assert_eq!(
            package_args(&["a".into(), "b".into()]).join(" "),
            "package --offline --allow-dirty -p a -p b"
        );
        for argv in EXAMPLES {
            assert!(argv.starts_with(&["run", "-q", "-p"]) && argv.contains(&"--example"));
        }
        let steps = steps(
            &TestArgs {
                boot_test: true,
                lint: true,
            },
            Path::new("/w"),
        );
        let packages = &steps[0].what;
        for p in [
            "linux-source-6.12",
            "busybox-static",
            "e2fsprogs",
            "iproute2",
            "dnsmasq-base",
            "qemu-system-x86",
        ] {
            assert!(packages.contains(p), "{p} missing from {packages}");
        }
    }

    #[test]
    fn kvm_descriptions() {
        assert_eq!(
            describe_kvm(true, Some("1")),
            "VMM_REQUIRE_KVM=1; /dev/kvm is there: the KVM tests run"
        );
        assert!(describe_kvm(false, Some("1")).ends_with("will fail"));
        assert!(describe_kvm(false, None).contains("VMM_REQUIRE_KVM unset"));
        assert!(describe_kvm(false, Some("0")).ends_with("SKIPPED and pass"));
    }

    #[test]
    fn only_our_unpacked_packages_are_forgotten() {
        let home = std::env::temp_dir().join(format!("xtask-cargo-home-{}", std::process::id()));
        let src = home.join("registry").join("src");
        for dir in [
            "-7d36319c136135d3/petrel-loader-0.1.0",
            "-7d36319c136135d3/petrel-loader-extra-0.1.0",
            "index.crates.io-1949cf8c6b5b557f/libc-0.2.170",
            "index.crates.io-1949cf8c6b5b557f/petrel-vmm-0.1.0",
        ] {
            std::fs::create_dir_all(src.join(dir)).unwrap();
        }
        let libs = ["petrel-loader".to_string(), "petrel-vmm".to_string()];
        forget_unpacked_packages(&home, &libs).unwrap();
        let left = |d: &str| src.join(d).exists();
        assert!(!left("-7d36319c136135d3/petrel-loader-0.1.0"));
        assert!(!left("index.crates.io-1949cf8c6b5b557f/petrel-vmm-0.1.0"));
        assert!(left("-7d36319c136135d3/petrel-loader-extra-0.1.0"));
        assert!(left("index.crates.io-1949cf8c6b5b557f/libc-0.2.170"));
        std::fs::remove_dir_all(&home).unwrap();
        // No registry at all is not an error.
        forget_unpacked_packages(&home, &libs).unwrap();
    }
}

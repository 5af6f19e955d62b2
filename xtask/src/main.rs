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
//! - `crate-graph`, `api-listing`: the library crates' dependency graph and public APIs;
//! - `hot-text`: the functions a VMM runs, for the linker to lay out first.
//!
//! Run `cargo xtask --help` for the options.
//!
//! Modules import one way only, down this list (none imports one above it):
//!
//! - `main` → the commands: `cli` (the flags, clap), `suite` (`test`), `boottest`
//!   (`boot-test`, `qemu-check`), `bench`, `bootprof`, `fuzz`, `crates` (`crate-graph`,
//!   `api-listing`), `hot_text` (`hot-text`).
//! - `boottest`, the boot test's runner → the scenario modules: `jail_boot` → `api_boot`;
//!   `snapshot_boot`, `shell_boot`, `net_boot`, `vsock_boot`; all of them → `virtio_boot`
//!   (root disks, metrics).
//! - the scenario modules → `scenario` (what a scenario is; judging and reporting a boot),
//!   `guest_script` (the guests' init scripts), `live` (host-side checks while a VM runs) →
//!   `log_watch` (following a serial log).
//! - under everything: `build` (workspace paths, building the guest and petrel) → `kernel`,
//!   `initramfs` → `cache`, `elf`; and `host`, `fcapi`, `error`.

mod api_boot;
mod balloon_boot;
mod bench;
mod bootprof;
mod boottest;
mod build;
mod cache;
mod cli;
mod crates;
mod elf;
mod error;
mod fcapi;
mod fuzz;
mod guest_script;
mod host;
mod hot_text;
mod initramfs;
mod jail_boot;
mod kernel;
mod live;
mod log_watch;
mod mmds_boot;
mod net_boot;
mod scenario;
mod shell_boot;
mod snapshot_boot;
mod suite;
mod uffd_handler;
mod virtio_boot;
mod vsock_boot;

use std::process::ExitCode;

use build::{build_guest_command, workspace_root};
use clap::{CommandFactory, Parser};
use cli::{Cli, Cmd};
use error::Result;

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
        Cmd::BootTest(args) => ExitCode::from(boottest::boot_test(&args)),
        Cmd::QemuCheck(args) => ExitCode::from(boottest::qemu_check(&args)),
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
        Cmd::HotText => done(hot_text::run()),
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

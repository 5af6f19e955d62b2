//! `petrel`: a virtual machine monitor for Linux KVM on x86_64.
//!
//! ```text
//! petrel --kernel PATH [--initrd PATH] [--cmdline STR] [--mem 256M] [--vcpus N]
//!        [--serial stdio|file:PATH|none] [--host-compat on|off] [--exit-stats[=json]]
//!        [--boot-timer] [--metrics PATH]
//! petrel demo
//! petrel run --raw FILE --real-mode [--load-addr ADDR] [--entry ADDR] [--reg rax=2 ...]
//!            [--max-exits N] [--exit-stats[=table|json]] [--mem SIZE]
//! ```
//!
//! The binary owns what is process-wide: the stop signals (blocked before any thread starts,
//! watched through signalfds on the VM's event loop, and left to end the process once it has
//! cleaned up), the terminal (raw while an interactive guest
//! console runs, restored on every path, a panic included), and stdin (read with `read(2)` into
//! the guest's serial port). The VM itself is `petrel_vmm::Vmm`.

mod cli;
mod error;
mod fc;
mod parse;
mod seccomp;
mod signals;
mod terminal;
mod watch;

use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use petrel_vmm::config::SerialConfig;
use petrel_vmm::{Notice, RunSummary, StatsFormat, StopReason, Timeline, Vmm, EXIT_BAD_INPUT};

use crate::error::CliError;
use crate::signals::StopSignals;
use crate::terminal::RawTerminal;
use crate::watch::SignalWatcher;

// Unwinding comes from libgcc's static unwinder (libgcc_eh.a) rather than libgcc_s.so.1, which
// std links otherwise on a dynamically linked glibc target: one shared library fewer for the
// dynamic loader to map and relocate at each start, and no run of libgcc_s's constructor
// (`__cpu_indicator_init`, a dozen CPUID instructions, which trap to the hypervisor on a
// nested host). The statically linked build (crt-static) takes libgcc_eh already. Panics
// unwind as before (the same unwinder, linked in).
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
))]
#[link(name = "gcc_eh", kind = "static")]
extern "C" {}

fn main() -> ExitCode {
    let timeline = Timeline::new(Instant::now());
    one_malloc_arena();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = argv.first().and_then(|a| a.to_str()).unwrap_or_default();
    if argv.get(1).is_some_and(|a| a == "__seccomp-selftest") {
        let args: Vec<String> = argv[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return seccomp::selftest(&args);
    }
    let as_firecracker = fc::flags::called_firecracker(argv0);
    let default_sock = as_firecracker.then_some(fc::flags::DEFAULT_API_SOCK);
    // The API socket listens before the command line is even parsed: a launcher that waits
    // for it waits least. A command line that turns out wrong drops it (the file goes).
    let early_socket = fc::early_api_socket(&argv[1..], default_sock);
    if as_firecracker {
        let cli = match fc::flags::FirecrackerCli::try_parse_from(&argv) {
            Ok(cli) => cli,
            Err(e) => {
                // clap's exit would skip the socket's removal.
                drop(early_socket);
                e.exit()
            }
        };
        if cli.version {
            print!(
                "{}",
                fc::flags::version_text(petrel_api::model::FIRECRACKER_API_VERSION)
            );
            return ExitCode::SUCCESS;
        }
        timeline.mark("command line parsed");
        return fc::run(
            cli.flags,
            cli.boot_timer,
            default_sock,
            early_socket,
            timeline,
        );
    }
    let cli = match cli::Cli::try_parse_from(cli::hoist_global_flags(argv)) {
        Ok(cli) => cli,
        Err(e) => {
            // clap's exit would skip the socket's removal.
            drop(early_socket);
            e.exit()
        }
    };
    let (what, outputs) = match cli.into_launch() {
        Ok(cli::Launch::Direct(config, outputs)) => (What::Boot(config), outputs),
        Ok(cli::Launch::Restore(config, outputs)) => (What::Restore(config), outputs),
        Ok(cli::Launch::RebaseSnap { base, diff }) => {
            drop(early_socket);
            return rebase_snap(&base, &diff);
        }
        Ok(cli::Launch::Firecracker { flags, boot_timer }) => {
            timeline.mark("command line parsed");
            return fc::run(flags, boot_timer, None, early_socket, timeline);
        }
        Err(e) => return fail(&e),
    };
    // Petrel's own command line serves no API (an --api-sock would have made it Firecracker's).
    drop(early_socket);
    timeline.mark("command line parsed");
    // Before any thread starts (building the VM starts the console writer).
    let filters = match seccomp::enable(&outputs.seccomp) {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    if let Some(s) = &outputs.snapshot {
        if let Err(e) = std::fs::create_dir_all(&s.dir) {
            return fail(&CliError::InvalidFlag {
                flag: "--snapshot-on-signal",
                value: s.dir.display().to_string(),
                why: format!("cannot create the directory: {e}"),
            });
        }
    }
    // Blocked before any thread starts (building the VM starts the console writer), so that
    // every thread inherits the mask and the signals arrive only through the signalfds. Held
    // here to the end: a stop signal stays pending until then (see `signals`).
    let signals = match StopSignals::new(outputs.snapshot.is_some()) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(&CliError::Signals(e)),
    };
    let received = Arc::new(Mutex::new(None));
    let summary = match boot(
        &what,
        &outputs,
        timeline,
        (signals.clone(), received.clone()),
        filters.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let received = *petrel_util::lock_ignoring_poison(&received);
    report_stop(&summary, received.map(crate::signals::name));
    summary.timeline.mark("process end");
    match outputs.stats {
        Some(StatsFormat::Table) => eprint!("{}", summary.stats.table()),
        Some(StatsFormat::Json) => println!("{}", summary.stats.json()),
        None => {}
    }
    if outputs.boot_timer {
        eprint!("{}", summary.timeline.table());
    }
    if let Some(path) = &outputs.metrics {
        if let Err(e) = petrel_vmm::metrics::write_atomically(path, &metrics_json(&summary)) {
            eprintln!("petrel: cannot write metrics to {}: {e}", path.display());
            return ExitCode::from(petrel_vmm::EXIT_FAILURE as u8);
        }
    }
    // Everything is cleaned up (the terminal was restored when `boot` returned): a stop
    // signal now ends the process, as it would have ended one that did not catch it.
    if let Some(sig) = received {
        return signals.end(sig);
    }
    ExitCode::from(summary.exit_code() as u8)
}

/// Keeps glibc's allocator to its one main heap for every thread. By default glibc gives each
/// new thread that allocates an arena of its own (a 64 MiB reservation, trimmed with munmap and
/// opened with mprotect, and its first pages touched): the console writer, each vCPU, the API
/// thread. Petrel's threads allocate little and seldom outside start-up, and glibc's per-thread
/// cache (tcache) still serves their small allocations without the lock. Called first, before
/// any thread exists.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists. A refusal (return value 0) leaves glibc's default, which is harmless.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The VM to run: a new one, or one restored from a snapshot.
enum What {
    Boot(Box<petrel_vmm::VmConfig>),
    Restore(Box<petrel_vmm::snapshot::RestoreConfig>),
}

/// `petrel rebase-snap`: applies a Diff memory file onto its base, in place.
fn rebase_snap(base: &std::path::Path, diff: &std::path::Path) -> ExitCode {
    let open = |p: &std::path::Path, write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(p)
            .map_err(|e| format!("cannot open {}: {e}", p.display()))
    };
    let result = open(base, true).and_then(|b| {
        let d = open(diff, false)?;
        petrel_guest_mem::apply_diff(&b, &d).map_err(|e| {
            format!(
                "cannot apply {} to {}: {}",
                diff.display(),
                base.display(),
                petrel_vmm::error_chain(&e)
            )
        })
    });
    match result {
        Ok(bytes) => {
            eprintln!(
                "petrel: applied {} KiB of {} to {}",
                bytes >> 10,
                diff.display(),
                base.display()
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("petrel: {why}");
            ExitCode::from(EXIT_BAD_INPUT as u8)
        }
    }
}

/// Builds (or restores) the VM, plugs the signals (their watcher records the first stop
/// signal in `received`) and the console into its event loop, and runs it.
fn boot(
    what: &What,
    outputs: &cli::Outputs,
    timeline: Timeline,
    (signals, received): (Arc<StopSignals>, Arc<Mutex<Option<libc::c_int>>>),
    filters: Option<&seccomp::Filters>,
) -> Result<RunSummary, CliError> {
    let (mut vmm, serial) = match what {
        What::Boot(config) => (
            Vmm::build_with_timeline(config, timeline.clone())?,
            &config.serial,
        ),
        What::Restore(config) => (
            Vmm::restore_with_timeline(config, timeline.clone())?,
            &config.serial,
        ),
    };
    for notice in vmm.notices() {
        match notice {
            Notice::EmulatedHostWorkarounds => {
                eprintln!("petrel: {notice} (--host-compat off to leave it alone)")
            }
            Notice::WorkingSetPrefetched { .. } | Notice::WorkingSetIgnored { .. } => {
                eprintln!("petrel: {notice}")
            }
        }
    }
    let watcher = SignalWatcher::new(
        signals,
        vmm.handle(),
        timeline,
        received,
        outputs.snapshot.clone(),
    );
    vmm.add_subscriber(Arc::new(Mutex::new(watcher)));
    // Keyboard (or piped) input goes to the guest for a console on stdio; a background job
    // leaves stdin alone (reading it would stop Petrel with SIGTTIN).
    let interactive = *serial == SerialConfig::Stdio && terminal::may_use_stdin();
    if interactive {
        vmm.attach_serial_input(console_input().map_err(CliError::Stdin)?)?;
    }
    vmm.start()?;
    let _raw_terminal = interactive.then(RawTerminal::enter);
    if let Some(filters) = filters {
        // The event loop handles the guest's I/O from here on.
        seccomp::confine_current_thread(filters, seccomp::Kind::Vmm)?;
    }
    Ok(vmm.run_until_stopped()?)
}

/// Stdin for the guest's serial port, as a descriptor of its own where possible.
///
/// The serial input makes its descriptor non-blocking. A terminal's stdin usually shares one
/// open file description with stdout and stderr, so a `dup` would make Petrel's console output
/// non-blocking too; a terminal or a pipe is opened afresh through `/proc/self/fd/0` instead
/// (a new open file description of the same tty or pipe). Anything else (a regular file, a
/// socket) is duplicated.
pub(crate) fn console_input() -> std::io::Result<OwnedFd> {
    let stdin = std::io::stdin();
    let kind = std::fs::metadata("/proc/self/fd/0").map(|m| m.file_type());
    let reopen = std::io::IsTerminal::is_terminal(&stdin)
        || kind.is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_fifo(&t));
    if reopen {
        if let Ok(f) = std::fs::File::open("/proc/self/fd/0") {
            return Ok(f.into());
        }
    }
    stdin.as_fd().try_clone_to_owned()
}

fn report_stop(summary: &RunSummary, signal: Option<&'static str>) {
    match &summary.stop {
        StopReason::GuestFault { what, details } => {
            eprintln!("petrel: guest error: {what}\n{details}");
        }
        StopReason::VmmError(msg) => eprintln!("petrel: error: {msg}"),
        StopReason::ExitLimit(n) => eprintln!("petrel: stopped after {n} exits (--max-exits)"),
        _ => {}
    }
    if let Some(sig) = signal {
        eprintln!("petrel: stopped the guest on {sig}");
    }
    report_working_set(summary);
}

/// Says on stderr where the working set of a VM restored with `--working-set record` went, or
/// why it could not be saved.
pub(crate) fn report_working_set(summary: &RunSummary) {
    match &summary.working_set {
        Some(Ok(recorded)) => eprintln!("petrel: {recorded}"),
        Some(Err(why)) => eprintln!("petrel: {why}"),
        None => {}
    }
}

/// The `--metrics` document: why the VM stopped, the boot timeline, and the exit statistics.
fn metrics_json(summary: &RunSummary) -> String {
    let doc = serde_json::json!({
        "running": false,
        "stop": format!("{:?}", summary.stop),
        "exit_code": summary.exit_code(),
        "timeline": summary.timeline.events(),
        "exit_stats": summary.stats,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Prints an error with its whole chain of causes, and returns its exit code.
fn fail(e: &CliError) -> ExitCode {
    eprintln!("petrel: {}", error::chain(e));
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_BAD_INPUT as u8))
}

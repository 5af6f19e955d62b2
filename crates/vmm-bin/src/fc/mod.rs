//! Running as Firecracker does: configured through Firecracker's REST API on a Unix socket
//! (`--api-sock`) or its JSON config file (`--config-file`), so that the tools built on
//! Firecracker (its SDKs, Kata Containers, flintlock, sandbox libraries) drive Petrel unchanged.
//!
//! Threads: the API server runs on its own thread (`fc_api`) and hands each parsed request to
//! the VMM thread ([`pump`]); before the guest starts, the VMM thread waits for requests and
//! stop signals; after `InstanceStart`, requests arrive on the VM's event loop beside the
//! devices. vCPU threads are named `fc_vcpu N`, as tools that pin them look for.

pub mod flags;
pub mod pump;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use petrel_api::model::FIRECRACKER_API_VERSION;
use petrel_api::server::ApiSocket;
use petrel_util::lock_ignoring_poison;
use petrel_vmm::{Notice, StopReason, Timeline, EXIT_BAD_INPUT, EXIT_FAILURE};

use petrel_controller::logger::{Level, LogFormat, Logger};
use petrel_controller::{metrics, Controller, Handled, Origin};

use self::flags::{FirecrackerFlags, DEFAULT_INSTANCE_ID};
use crate::signals::{self, StopSignals};
use crate::watch::SignalWatcher;

/// The API socket bound before the command line was parsed, and the path it was bound at.
pub type EarlySocket = (PathBuf, Result<ApiSocket, petrel_api::server::ServerError>);

/// Binds the API socket a command line names (`--api-sock PATH`, `--api-sock=PATH`, or
/// `default` when it names none), before the command line is parsed, so that it listens as
/// early as the process can make it. `None` when there is nothing to bind: no socket named,
/// `--no-api`, or a request for help or the version.
pub fn early_api_socket(args: &[std::ffi::OsString], default: Option<&str>) -> Option<EarlySocket> {
    let mut path = default.map(PathBuf::from);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("--no-api" | "--help" | "-h" | "--version" | "-V") => return None,
            Some("--api-sock") => path = iter.next().map(PathBuf::from),
            Some(a) if a.starts_with("--api-sock=") => {
                path = Some(PathBuf::from(&a["--api-sock=".len()..]))
            }
            _ => {}
        }
    }
    let path = path?;
    // Before the socket exists, so that a stop signal never ends the process with it left
    // behind (it waits for the signal handling `run` sets up).
    if let Err(e) = signals::block_stop_signals() {
        eprintln!("petrel: cannot block the stop signals: {e}");
    }
    let bound = ApiSocket::bind(&path);
    Some((path, bound))
}

/// How the VMM thread's wait for the first requests ended.
enum PreBoot {
    /// `InstanceStart` built and started the VM.
    Started(Box<petrel_vmm::Vmm>),
    /// A stop signal arrived before the guest started (it is still pending).
    Signal(libc::c_int),
}

fn bad_input(what: &str) -> ExitCode {
    eprintln!("petrel: {what}");
    ExitCode::from(EXIT_BAD_INPUT as u8)
}

fn failure(what: &str) -> ExitCode {
    eprintln!("petrel: {what}");
    ExitCode::from(EXIT_FAILURE as u8)
}

/// Runs Petrel the way Firecracker runs, with these flags. `default_api_sock` is Firecracker's
/// default socket path when the program is called `firecracker` (Petrel's own command line
/// serves an API only when asked).
pub fn run(
    flags: FirecrackerFlags,
    boot_timer: bool,
    default_api_sock: Option<&str>,
    early_socket: Option<EarlySocket>,
    timeline: Timeline,
) -> ExitCode {
    let id = flags
        .id
        .clone()
        .unwrap_or_else(|| DEFAULT_INSTANCE_ID.to_string());
    if let Err(why) = flags::check_instance_id(&id) {
        return bad_input(&format!("invalid --id `{id}`: {why}"));
    }
    if flags.no_api && flags.config_file.is_none() {
        return bad_input(
            "--no-api needs --config-file: without both there is no way to configure the VM",
        );
    }
    // The socket listens first of all, so that a launcher waiting for it waits least; the
    // kernel queues connections until the API thread starts below.
    let api_path = flags
        .api_sock
        .clone()
        .or_else(|| default_api_sock.map(Into::into))
        .filter(|_| !flags.no_api);
    let socket = match &api_path {
        None => None,
        Some(path) => {
            let bound = match early_socket {
                Some((early, bound)) if early == *path => bound,
                _ => ApiSocket::bind(path),
            };
            match bound {
                Ok(s) => Some(s),
                Err(e) => return bad_input(&format!("--api-sock {}: {e}", path.display())),
            }
        }
    };
    if socket.is_some() {
        timeline.mark("API socket listening");
    }
    // Compiled and hooked before any thread starts; the VMM thread confines itself once the
    // VM runs (before that it carries out the pre-boot API requests, which open files).
    let filters =
        match crate::seccomp::Choice::from_flags(flags.no_seccomp, flags.seccomp_filter.clone())
            .and_then(|choice| crate::seccomp::enable(&choice))
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("petrel: {}", crate::error::chain(&e));
                return ExitCode::from(e.exit_code() as u8);
            }
        };
    let level = match flags.level.as_deref().map(Level::parse) {
        None => Level::Info,
        Some(Some(l)) => l,
        Some(None) => {
            return bad_input(&format!(
                "invalid --level `{}`: use Error, Warning, Info, Debug, Trace or Off",
                flags.level.as_deref().unwrap_or_default()
            ))
        }
    };
    let logger = match &flags.log_path {
        None => None,
        Some(path) => {
            let format = LogFormat {
                instance_id: id.clone(),
                level,
                show_level: flags.show_level,
                show_log_origin: flags.show_log_origin,
            };
            match Logger::open(path, format) {
                Ok(l) => Some(Arc::new(l)),
                Err(e) => {
                    return bad_input(&format!("cannot open --log-path {}: {e}", path.display()))
                }
            }
        }
    };
    let mut controller = Controller::new(id, logger, timeline.clone());
    controller.set_vm_setup(Box::new(setup_vm));
    if let Some(path) = &flags.metrics_path {
        if let Err(e) = controller.open_metrics(path) {
            return bad_input(&format!(
                "cannot open --metrics-path {}: {e}",
                path.display()
            ));
        }
    }
    controller.log(
        Level::Info,
        file!(),
        line!(),
        &format!(
            "Running Petrel v{} as Firecracker v{FIRECRACKER_API_VERSION}",
            env!("CARGO_PKG_VERSION")
        ),
    );
    if let Some(mode) = flags.working_set {
        controller.set_working_set_mode(mode);
    }
    if let Some(limit) = flags.mmds_size_limit {
        controller.set_mmds_size_limit(limit);
    }
    if let Some(path) = &flags.metadata {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return bad_input(&format!("cannot read --metadata {}: {e}", path.display())),
        };
        if let Err(why) = controller.populate_mmds(&text) {
            return bad_input(&format!("--metadata {}: {why}", path.display()));
        }
    }
    if let Some(path) = &flags.config_file {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                return bad_input(&format!(
                    "cannot read --config-file {}: {e}",
                    path.display()
                ))
            }
        };
        if let Err(why) = controller.apply_config_file(&text) {
            return bad_input(&format!("--config-file {}: {why}", path.display()));
        }
    }

    // Blocked before any thread starts (the API thread, the console writer), so that every
    // thread inherits the mask and the signals arrive only through the signalfd.
    let signals = match StopSignals::new(false) {
        Ok(s) => Arc::new(s),
        Err(e) => return failure(&format!("cannot set up signal handling: {e}")),
    };
    let (sender, queue) = match pump::channel() {
        Ok(c) => c,
        Err(e) => return failure(&format!("cannot create the API's request channel: {e}")),
    };
    let server = match socket.map(|s| s.serve(move |req| sender.call(req))) {
        None => None,
        Some(Ok(server)) => Some(server),
        Some(Err(e)) => return failure(&format!("cannot start the API server: {e}")),
    };

    // Firecracker's start-up metrics: from the launcher's timestamps to the API being served.
    controller.set_start_times(
        flags
            .start_time_us
            .map(|t| clock_us(libc::CLOCK_MONOTONIC).saturating_sub(t)),
        flags.start_time_cpu_us.map(|t| {
            (clock_us(libc::CLOCK_PROCESS_CPUTIME_ID) + flags.parent_cpu_time_us.unwrap_or(0))
                .saturating_sub(t)
        }),
    );
    let controller = Arc::new(Mutex::new(controller));
    let started = if flags.config_file.is_some() {
        let built = lock_ignoring_poison(&controller).start_vm();
        match built {
            Ok(vmm) => PreBoot::Started(Box::new(vmm)),
            Err(why) => {
                drop(server);
                return failure(&format!("cannot start the VM from --config-file: {why}"));
            }
        }
    } else {
        match wait_for_start(&controller, &queue, &signals) {
            Ok(p) => p,
            Err(e) => return failure(&e),
        }
    };
    let mut vmm = match started {
        PreBoot::Started(vmm) => vmm,
        PreBoot::Signal(sig) => {
            drop(server);
            eprintln!(
                "petrel: stopped on {} before the guest started",
                signals::name(sig)
            );
            return end_on_signal(&signals, sig);
        }
    };
    let received = Arc::new(Mutex::new(None));
    vmm.add_subscriber(Arc::new(Mutex::new(SignalWatcher::new(
        signals.clone(),
        vmm.handle(),
        timeline.clone(),
        received.clone(),
        None,
    ))));
    let metrics_controller = controller.clone();
    match metrics::MetricsTimer::new(metrics::METRICS_PERIOD, move || {
        lock_ignoring_poison(&metrics_controller).flush_metrics()
    }) {
        Ok(timer) => {
            vmm.add_subscriber(Arc::new(Mutex::new(timer)));
        }
        Err(e) => eprintln!("petrel: no periodic metrics: cannot create a timer: {e}"),
    }
    let pump_controller = controller.clone();
    vmm.add_subscriber(pump::RequestPump::new(queue, move |req| {
        match lock_ignoring_poison(&pump_controller).handle(req) {
            Handled::Reply(r) => r,
            // The VM runs already: the controller refuses these itself; this is a safety net.
            Handled::Start | Handled::Load(_) => {
                petrel_api::http::Response::fault("the VM was started already")
            }
        }
    }));
    if let Some(filters) = &filters {
        if let Err(e) = crate::seccomp::confine_current_thread(filters, crate::seccomp::Kind::Vmm) {
            drop(server);
            return failure(&crate::error::chain(&e));
        }
    }
    let summary = vmm.run_until_stopped();
    drop(server);
    let summary = match summary {
        Ok(s) => s,
        Err(e) => return failure(&petrel_vmm::error_chain(&e)),
    };
    lock_ignoring_poison(&controller).finish(&summary);
    crate::report_working_set(&summary);
    match &summary.stop {
        StopReason::GuestFault { what, details } => {
            eprintln!("petrel: guest error: {what}\n{details}")
        }
        StopReason::VmmError(msg) => eprintln!("petrel: error: {msg}"),
        _ => {}
    }
    let received = *lock_ignoring_poison(&received);
    if let Some(sig) = received {
        eprintln!("petrel: stopped the guest on {}", signals::name(sig));
    }
    if boot_timer {
        summary.timeline.mark("process end");
        eprint!("{}", summary.timeline.table());
    }
    if let Some(sig) = received {
        return end_on_signal(&signals, sig);
    }
    ExitCode::from(summary.exit_code() as u8)
}

/// Firecracker's exit code after it intercepted SIGHUP (`FcExitCode::SIGHUP` in its
/// `src/vmm/src/lib.rs`).
const FC_EXIT_SIGHUP: u8 = 156;

/// How Firecracker ends on a stop signal, once Petrel has stopped the VM and cleaned up (the
/// API socket removed, the metrics flushed): Firecracker handles SIGHUP (exit code 156, after
/// writing its metrics) and leaves SIGINT and SIGTERM at their default action, so that those
/// end the process (`src/vmm/src/signal_handler.rs`).
fn end_on_signal(signals: &StopSignals, sig: libc::c_int) -> ExitCode {
    if sig == libc::SIGHUP && signals.take(sig) {
        return ExitCode::from(FC_EXIT_SIGHUP);
    }
    signals.end(sig)
}

/// The process's part of each VM the controller makes, before its vCPUs start: a new VM's
/// notices on stderr, and stdin for the guest's serial port unless Petrel is a background job
/// on a terminal (reading it would stop Petrel with SIGTTIN).
fn setup_vm(vmm: &mut petrel_vmm::Vmm, origin: Origin) {
    for notice in vmm.notices() {
        // A restored VM's working-set notices too (its other notices go to the logger only).
        let working_set = matches!(
            notice,
            Notice::WorkingSetPrefetched { .. } | Notice::WorkingSetIgnored { .. }
        );
        if origin == Origin::Built || working_set {
            eprintln!("petrel: {notice}");
        }
    }
    if crate::terminal::may_use_stdin() {
        if let Ok(fd) = crate::console_input() {
            let _ = vmm.attach_serial_input(fd);
        }
    }
}

/// A clock's reading in microseconds.
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Before the guest starts: answers API requests until `InstanceStart` builds and starts the
/// VM, or a stop signal arrives.
fn wait_for_start(
    controller: &Arc<Mutex<Controller>>,
    queue: &pump::RequestQueue,
    signals: &StopSignals,
) -> Result<PreBoot, String> {
    loop {
        // The request queue, then each stop signal's descriptor.
        let mut fds: Vec<libc::pollfd> = std::iter::once(queue.fd())
            .chain(signals.fds())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pollfds we own; no timeout: the API thread or a signal wakes us.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for API requests failed: {e}"));
        }
        // A stop signal is not read: it stays pending, to end the process (see `signals`).
        if let Some(sig) = fds[1..]
            .iter()
            .filter(|p| p.revents != 0)
            .find_map(|p| signals.stop_signal_of(p.fd))
        {
            return Ok(PreBoot::Signal(sig));
        }
        let mut started = None;
        for (request, reply) in queue.drain() {
            let mut c = lock_ignoring_poison(controller);
            let handled = c.handle(&request);
            // Once a VM is made the controller knows it runs: a second InstanceStart, even in
            // the same batch, is refused as pre-boot only.
            let (response, made) = c.complete(handled);
            if let Some(vmm) = made {
                started = Some(Box::new(vmm));
            }
            let _ = reply.send(response);
        }
        if let Some(vmm) = started {
            return Ok(PreBoot::Started(vmm));
        }
    }
}

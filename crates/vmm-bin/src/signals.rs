//! SIGINT, SIGTERM and SIGHUP as file descriptors for the event loop (`signalfd(2)`), so that
//! the VMM stops the guest and cleans up (threads joined, terminal restored, metrics written,
//! API socket removed) instead of dying mid-way, and then dies by that same signal, as a
//! parent expects of a process it signalled (`WIFSIGNALED`, "signal: terminated").
//!
//! How it dies by the signal without sending it again: each stop signal has a signalfd of its
//! own that is only watched, never read, so a stop signal that arrives stays pending (blocked)
//! while the VM stops and the process cleans up; [`StopSignals::end`] then unblocks it and its
//! default action ends the process. That needs no system call beyond `rt_sigprocmask`, which
//! every thread's seccomp filter allows (Petrel's and Firecracker's alike): no `rt_sigaction`
//! or `tgkill` on a confined thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

/// The signals that stop a VM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signal that asks for a snapshot (with `--snapshot-on-signal`).
pub const SNAPSHOT_SIGNAL: libc::c_int = libc::SIGUSR1;

/// The stop signals (and [`SNAPSHOT_SIGNAL`] when asked for), blocked in the calling thread
/// (and so in every thread it starts afterwards) and watched through signalfds. Dropping it
/// restores the previous signal mask: a stop signal still pending then takes its default
/// action (it ends the process).
#[derive(Debug)]
pub struct StopSignals {
    /// One signalfd per stop signal, never read (see the module's documentation).
    stop: Vec<(libc::c_int, OwnedFd)>,
    /// The signalfd of [`SNAPSHOT_SIGNAL`], read (each SIGUSR1 is one snapshot).
    snapshot: Option<OwnedFd>,
    previous: libc::sigset_t,
}

fn set_of(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// A non-blocking signalfd for `signals` (which the caller has blocked).
fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = set_of(signals);
    // SAFETY: -1 asks for a new fd; `set` is valid; flags are valid signalfd flags.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl StopSignals {
    /// Gives the stop signals their default action (a stop signal that Petrel does not catch
    /// ends the process, whatever the parent left: `nohup`'s ignored SIGHUP included), blocks
    /// them (and [`SNAPSHOT_SIGNAL`] when `snapshot`) and opens the signalfds. Call before
    /// starting any thread.
    pub fn new(snapshot: bool) -> io::Result<Self> {
        for sig in STOP_SIGNALS {
            // SAFETY: a zeroed sigaction with SIG_DFL is a valid action; the old one is not
            // asked for.
            let rc = unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut blocked = STOP_SIGNALS.to_vec();
        if snapshot {
            blocked.push(SNAPSHOT_SIGNAL);
        }
        let set = set_of(&blocked);
        // SAFETY: a zeroed sigset_t is a valid out-parameter for pthread_sigmask.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid sigset_t values owned by this frame.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // From here on, dropping `signals` restores the mask.
        let mut signals = StopSignals {
            stop: Vec::new(),
            snapshot: None,
            previous,
        };
        for sig in STOP_SIGNALS {
            signals.stop.push((sig, signalfd(&[sig])?));
        }
        if snapshot {
            signals.snapshot = Some(signalfd(&[SNAPSHOT_SIGNAL])?);
        }
        Ok(signals)
    }

    /// The descriptors to watch: each stop signal's, then the snapshot signal's if any.
    pub fn fds(&self) -> Vec<RawFd> {
        self.stop
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .chain(self.snapshot.as_ref().map(AsRawFd::as_raw_fd))
            .collect()
    }

    /// The stop signal whose descriptor is `fd`, if it is one of them.
    pub fn stop_signal_of(&self, fd: RawFd) -> Option<libc::c_int> {
        self.stop
            .iter()
            .find(|(_, f)| f.as_raw_fd() == fd)
            .map(|&(sig, _)| sig)
    }

    /// Whether `fd` is the snapshot signal's descriptor.
    pub fn is_snapshot_fd(&self, fd: RawFd) -> bool {
        self.snapshot.as_ref().is_some_and(|f| f.as_raw_fd() == fd)
    }

    /// Reads (consumes) one pending [`SNAPSHOT_SIGNAL`]; whether there was one.
    pub fn take_snapshot_signal(&self) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|fd| read_one(fd.as_raw_fd()))
    }

    /// Reads (consumes) a pending `sig`, so that it no longer ends the process (Firecracker's
    /// mode answers SIGHUP with an exit code of its own).
    pub fn take(&self, sig: libc::c_int) -> bool {
        self.stop
            .iter()
            .find(|&&(s, _)| s == sig)
            .is_some_and(|(_, fd)| read_one(fd.as_raw_fd()))
    }

    /// The end of a process that a stop signal stopped: unblocks `sig`, still pending, so that
    /// its default action ends the process now and the parent sees it killed by `sig`. Call
    /// after every clean-up. Where the signal cannot end the process (the init process of a
    /// PID namespace is not killed by a signal it does not handle) this returns the shell's
    /// code for it, 128 + `sig`.
    pub fn end(&self, sig: libc::c_int) -> ExitCode {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let set = set_of(&[sig]);
        // SAFETY: a valid set; no old mask asked for. The signal's action is the default one
        // (set in `new`), so this normally does not return.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        ExitCode::from(128 + sig as u8)
    }
}

/// Reads one signal from the signalfd `fd`; whether there was one.
fn read_one(fd: RawFd) -> bool {
    // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most `size` bytes into `info`, which is that large.
    let n = unsafe { libc::read(fd, &mut info as *mut _ as *mut libc::c_void, size) };
    n as usize == size
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // A pending SIGUSR1 would end the process once unblocked: drain it first. A pending
        // stop signal is left to do just that.
        while self.take_snapshot_signal() {}
        // SAFETY: restoring the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

/// Blocks the stop signals on the calling thread, before the process makes something it must
/// clean up on them (the API socket bound before the command line is parsed): one that
/// arrives before [`StopSignals::new`] then waits there, to be taken and acted on like any
/// other, instead of ending the process at once with the socket left behind. A process that
/// ends before `StopSignals::new` (bad input) exits with its own code.
pub fn block_stop_signals() -> io::Result<()> {
    let set = set_of(&STOP_SIGNALS);
    // SAFETY: a valid set; no old mask asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The name of a stop signal, for messages.
pub fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

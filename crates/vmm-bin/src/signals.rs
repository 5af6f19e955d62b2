//! SIGINT, SIGTERM and SIGHUP as a file descriptor for the event loop (`signalfd(2)`), so the VMM
//! stops the guest and cleans up (threads joined, terminal restored) instead of dying mid-way.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The signals that stop a VM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signalfd for [`STOP_SIGNALS`], with those signals blocked in the calling thread (and so in
/// every thread it starts afterwards). Dropping it restores the previous signal mask.
#[derive(Debug)]
pub struct StopSignals {
    fd: OwnedFd,
    previous: libc::sigset_t,
}

/// The signal that asks for a snapshot (with `--snapshot-on-signal`).
pub const SNAPSHOT_SIGNAL: libc::c_int = libc::SIGUSR1;

fn stop_set(snapshot: bool) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        if snapshot {
            libc::sigaddset(&mut set, SNAPSHOT_SIGNAL);
        }
        set
    }
}

impl StopSignals {
    /// Blocks the stop signals (and [`SNAPSHOT_SIGNAL`] when `snapshot`) and opens the
    /// signalfd. Call before starting any thread.
    pub fn new(snapshot: bool) -> io::Result<Self> {
        let set = stop_set(snapshot);
        // SAFETY: a zeroed sigset_t is a valid out-parameter for pthread_sigmask.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid sigset_t values owned by this frame.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new fd; `set` is valid; flags are valid signalfd flags.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: restoring the mask we saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
            return Err(e);
        }
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignals { fd, previous })
    }

    /// Reads one pending signal, if any.
    pub fn read(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                size,
            )
        };
        (n as usize == size).then_some(info.ssi_signo as libc::c_int)
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // Signals that arrived meanwhile were read from the fd or stay pending; restoring the
        // mask would deliver a pending one with its default action, so drain them first.
        while self.read().is_some() {}
        // SAFETY: restoring the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
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

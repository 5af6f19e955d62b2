//! The host terminal in raw mode while a guest owns the console, restored on every exit path:
//! normal return, error, panic (a hook), and SIGINT/SIGTERM (handled through a signalfd, which
//! ends the run normally and drops the guard).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use vmm_sys_util::terminal::Terminal;

static RAW: AtomicBool = AtomicBool::new(false);

/// Restores canonical mode if a [`RawTerminal`] set raw mode and has not restored it yet.
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

/// Whether a [`RawTerminal`] has stdin in raw mode now.
pub fn is_raw() -> bool {
    RAW.load(Ordering::SeqCst)
}

/// Whether Petrel may read stdin and change its mode: always when stdin is not a terminal; when
/// it is, only if Petrel is in the terminal's foreground process group. A background job that
/// touched the terminal would be stopped by SIGTTOU or SIGTTIN (POSIX job control).
pub fn may_use_stdin() -> bool {
    if !std::io::stdin().is_terminal() {
        return true;
    }
    // SAFETY: tcgetpgrp and getpgrp only read process state; fd 0 is stdin.
    unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp() }
}

/// While alive, stdin is in raw mode (keys reach the guest unprocessed, Ctrl-C included).
#[derive(Debug)]
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Puts stdin in raw mode if it is a terminal; otherwise does nothing.
    pub fn enter() -> Self {
        static HOOK: Once = Once::new();
        let stdin = std::io::stdin();
        if !stdin.is_terminal() || !may_use_stdin() {
            return RawTerminal { active: false };
        }
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                // A confined thread may not change the terminal (its filter traps the ioctl);
                // its panic is caught, and the guard restores the terminal on the main thread.
                if !crate::seccomp::panic_report::is_confined() {
                    restore();
                }
                previous(info);
            }));
        });
        let active = stdin.lock().set_raw_mode().is_ok();
        RAW.store(active, Ordering::SeqCst);
        RawTerminal { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}

//! The report of a forbidden system call: the filters answer it with `SECCOMP_RET_TRAP`, the
//! kernel sends the thread SIGSYS with the call's number, and this handler writes which
//! thread made which call to stderr, then ends the process with [`EXIT_BAD_SYSCALL`].
//!
//! The handler runs under the thread's filter and in signal context: it only reads a
//! thread-local label written when the filter was installed, formats into a stack buffer, and
//! calls `write(2)` and `_exit(2)` (both allowed by every filter). The forbidden call itself
//! never runs: with SIGSYS blocked or ignored the kernel kills the process instead.

use std::cell::Cell;
use std::io;

use super::names::NAMES;

/// The exit code after a forbidden system call: Firecracker's (`BadSyscall`), so that tools
/// written for it read it the same way.
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// The longest thread label kept (a thread name is at most 15 bytes; the rest is the kind).
const LABEL_LEN: usize = 48;

thread_local! {
    /// This thread's `name (kind filter)`, set when its filter is installed. A const-initialised
    /// plain array: reading it takes no lock and allocates nothing, so a signal handler may.
    static LABEL: Cell<([u8; LABEL_LEN], usize)> = const { Cell::new(([0; LABEL_LEN], 0)) };
}

/// Records how the SIGSYS report names the calling thread.
pub fn set_thread_label(name: &str, kind: &str) {
    let text = format!("{name} ({kind} filter)");
    let mut buf = [0u8; LABEL_LEN];
    let n = text.len().min(LABEL_LEN);
    buf[..n].copy_from_slice(&text.as_bytes()[..n]);
    LABEL.with(|l| l.set((buf, n)));
}

/// The SIGSYS fields of `siginfo_t` on x86_64 (`_sigsys` in the kernel's `siginfo.h`).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: libc::c_int = 1;

/// A fixed-size buffer the handler formats into.
struct Message {
    buf: [u8; 256],
    len: usize,
}

impl Message {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Builds the report line for system call `nr` made by the thread labelled `label`.
fn report(label: &[u8], nr: i64) -> Message {
    let mut m = Message {
        buf: [0; 256],
        len: 0,
    };
    m.push(b"petrel: seccomp: thread ");
    m.push(if label.is_empty() { b"?" } else { label });
    m.push(b" made system call ");
    m.push_number(nr.unsigned_abs());
    let name = usize::try_from(nr)
        .ok()
        .and_then(|n| NAMES.get(n))
        .filter(|s| !s.is_empty());
    if let Some(name) = name {
        m.push(b" (");
        m.push(name.as_bytes());
        m.push(b")");
    }
    m.push(b", which its filter forbids; exiting with code ");
    m.push_number(EXIT_BAD_SYSCALL as u64);
    m.push(b"\n");
    m
}

extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; for SIGSYS its
    // union holds `_sigsys`, which `SigsysInfo` lays out.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let nr = if info.code == SYS_SECCOMP {
        i64::from(info.syscall)
    } else {
        -1
    };
    let (label, len) = LABEL.with(Cell::get);
    let m = report(&label[..len], nr);
    // SAFETY: write(2) of a buffer we own, then _exit(2): both async-signal-safe, and both
    // allowed by every filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, m.buf.as_ptr().cast(), m.len);
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

/// Installs the SIGSYS handler for the whole process (before any filter).
pub fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; we fill in the handler, flags and an empty mask.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is ours to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: a valid action for SIGSYS; the old action is not wanted.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Every thread inherits the mask: make sure SIGSYS is not blocked in this one.
    // SAFETY: a sigset we own, then pthread_sigmask with it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Message) -> String {
        String::from_utf8(m.buf[..m.len].to_vec()).unwrap()
    }

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        assert_eq!(
            text(&report(b"petrel-vcpu0 (vcpu filter)", 41)),
            "petrel: seccomp: thread petrel-vcpu0 (vcpu filter) made system call 41 (socket), \
             which its filter forbids; exiting with code 148\n"
        );
        assert_eq!(
            text(&report(b"", 100_000)),
            "petrel: seccomp: thread ? made system call 100000, which its filter forbids; \
             exiting with code 148\n"
        );
        assert_eq!(NAMES[59], "execve");
        assert_eq!(NAMES[libc::SYS_openat as usize], "openat");
    }

    #[test]
    fn the_label_is_kept_per_thread() {
        set_thread_label("main", "vmm");
        std::thread::spawn(|| {
            set_thread_label("fc_api", "api");
            let (buf, n) = LABEL.with(Cell::get);
            assert_eq!(&buf[..n], b"fc_api (api filter)");
        })
        .join()
        .unwrap();
        let (buf, n) = LABEL.with(Cell::get);
        assert_eq!(&buf[..n], b"main (vmm filter)");
    }
}

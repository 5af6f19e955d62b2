#![doc = include_str!("../README.md")]

use std::any::Any;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};

/// Sends what it can of `buf` on the socket `fd` with `send(2)`, adding `MSG_NOSIGNAL` to
/// `flags`: a peer that has gone away comes back as an `EPIPE` error instead of raising
/// `SIGPIPE`, whatever the process does with that signal. Returns the bytes sent.
///
/// `flags` are `send(2)` flags such as `libc::MSG_DONTWAIT`; seccomp policies that match the
/// flags argument see exactly `flags | MSG_NOSIGNAL`.
pub fn send_nosignal(fd: &impl AsRawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: send() reads at most `buf.len()` bytes from `buf`, which is valid for reads for
    // that long and borrowed for the call; a stale descriptor only makes the call fail with EBADF.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent.unsigned_abs())
    }
}

/// The file status flags of `fd` (`fcntl(F_GETFL)`), e.g. `O_NONBLOCK`, `O_APPEND`.
pub fn status_flags(fd: &impl AsRawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no argument and touches no memory; a stale descriptor only fails with EBADF.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(flags)
    }
}

/// Sets the file status flags of `fd` (`fcntl(F_SETFL)`). They belong to the open file
/// description, so every descriptor duplicated from it sees the change.
pub fn set_status_flags(fd: &impl AsRawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int by value and touches no memory; a stale descriptor only fails with EBADF.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `fd` non-blocking (`O_NONBLOCK`), keeping its other status flags.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let flags = status_flags(fd)?;
    set_status_flags(fd, flags | libc::O_NONBLOCK)
}

/// Fills `buf` from the host's entropy pool with `getrandom(2)` and `GRND_NONBLOCK` (so it
/// never waits, and seccomp policies that match the flags argument see exactly that flag),
/// retrying after a signal. Fails with `EAGAIN` only before the host's pool is initialised.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        // SAFETY: getrandom writes at most `rest.len()` bytes to `rest`, which is valid,
        // writable memory we hold exclusively.
        let r =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // `r` is non-negative here and at most `rest.len()`.
        done += r.unsigned_abs();
    }
    Ok(())
}

/// Locks `m`, taking the guard even if another thread panicked while holding it.
///
/// Petrel's state behind these locks stays consistent between statements (a panicking thread
/// is reported on its own), so a poisoned lock carries no news worth failing for.
pub fn lock_ignoring_poison<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `e`'s message followed by each of its sources', joined by `": "` (outermost first).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The message of a panic payload: the `&str` or `String` given to `panic!`, or a note that
/// the payload was something else.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn send_to_a_closed_peer_is_epipe_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(send_nosignal(&a, b"hi", 0).unwrap(), 2);
        let mut got = [0u8; 2];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        drop(b);
        // With SIGPIPE at its default this test process would die here without MSG_NOSIGNAL.
        let err = send_nosignal(&a, b"gone", libc::MSG_DONTWAIT).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn nonblocking_keeps_the_other_flags() {
        let (a, _b) = UnixStream::pair().unwrap();
        let before = status_flags(&a).unwrap();
        assert_eq!(before & libc::O_NONBLOCK, 0);
        set_nonblocking(&a).unwrap();
        assert_eq!(status_flags(&a).unwrap(), before | libc::O_NONBLOCK);
        let mut buf = [0u8; 1];
        let err = (&a).read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        set_status_flags(&a, before).unwrap();
        assert_eq!(status_flags(&a).unwrap(), before);
    }

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock_ignoring_poison(&m), 5);
    }

    #[derive(Debug)]
    struct Outer(io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("opening the disk")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chain_names_every_source_outermost_first() {
        let e = Outer(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        assert_eq!(error_chain(&e), "opening the disk: no such file");
    }

    #[test]
    fn panic_messages_of_each_payload_kind() {
        let s = std::panic::catch_unwind(|| panic!("static text")).unwrap_err();
        assert_eq!(panic_message(&*s), "static text");
        let n = 7;
        let f = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(&*f), "formatted 7");
        let o = std::panic::catch_unwind(|| std::panic::panic_any(42u8)).unwrap_err();
        assert_eq!(panic_message(&*o), "(a panic payload that is not a string)");
    }

    #[test]
    fn random_bytes_fill_the_whole_buffer() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        assert_ne!(a, [0u8; 64]);
        assert_ne!(a, b);
        fill_random(&mut []).unwrap();
    }
}

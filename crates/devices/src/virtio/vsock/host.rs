//! Host-side plumbing of the vsock device: the listening socket file and non-blocking
//! connects to the per-port sockets.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A listening Unix socket bound at a path, which is removed again when this is dropped.
#[derive(Debug)]
pub(super) struct BoundListener {
    pub listener: UnixListener,
    path: PathBuf,
}

impl BoundListener {
    /// Binds and listens at `path` (which must not exist), non-blocking.
    pub fn bind(path: &Path) -> io::Result<BoundListener> {
        let listener = UnixListener::bind(path)?;
        let bound = BoundListener {
            listener,
            path: path.to_path_buf(),
        };
        bound.listener.set_nonblocking(true)?;
        Ok(bound)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        // Nothing useful can be done about a failure here (the file may be gone already).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `<uds_path>_<port>`: where host software listens for guest connections to `port`
/// (Firecracker's convention).
pub(super) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p: Vec<u8> = uds_path.as_os_str().as_bytes().to_vec();
    p.extend_from_slice(format!("_{port}").as_bytes());
    PathBuf::from(OsString::from_vec(p))
}

/// Connects a new non-blocking, close-on-exec stream socket to the Unix socket at `path`.
///
/// Never waits: a listener whose backlog is full answers `EAGAIN` (an error here) instead of
/// making the caller block the event loop.
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: `sockaddr_un` is plain data (an integer and a byte array); all zeroes is a valid
    // value of it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // One byte must stay for the terminating NUL; a NUL inside would cut the path short.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a Unix socket address",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid `sockaddr_un` that outlives the call, and `len` (at most its
    // size, checked above) says how much of it the kernel may read.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Writes what it can of `buf` to `stream` without blocking and without raising SIGPIPE if
/// the peer is gone (the error comes back as `EPIPE` instead).
pub(super) fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    petrel_util::send_nosignal(stream, buf, libc::MSG_DONTWAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_paths_and_connect_errors() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let missing = std::env::temp_dir().join(format!("petrel-no-such-{}", std::process::id()));
        assert!(connect_nonblocking(&missing).is_err());
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(send_nosignal(&a, b"hi").unwrap(), 2);
        drop(b);
        let err = send_nosignal(&a, b"hi").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}

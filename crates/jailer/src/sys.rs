//! Thin, checked wrappers over the system calls the jailer needs and `std` lacks.
//!
//! Each returns the host's error as an [`io::Error`]; callers name the step.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `-1` from a system call becomes the thread's `errno`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; a path with a NUL byte is an `InvalidInput` error.
fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Closes every descriptor from 3 up: `close_range(2)`, or one by one from `/proc/self/fd`
/// on kernels before 5.9.
pub fn close_fds_from_3() -> io::Result<()> {
    // SAFETY: close_range takes integers only and touches no memory of ours; nothing in this
    // process holds descriptors above 2 that it will use again (this runs first in main).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number owns no Rust object: the read_dir handle that
        // listed them is already dropped, and one that no longer exists gives EBADF, ignored.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// `unshare(2)` with `flags` (`CLONE_NEWNS`, `CLONE_NEWPID`).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer and changes only this process's namespaces.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// `mount(2)` with no file system type and no data: propagation changes and bind mounts.
pub fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let source_ptr = source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: both strings are NUL-terminated and outlive the call; a null source, type and
    // data are allowed for these flags.
    let ret = unsafe {
        libc::mount(
            source_ptr,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(ret.into()).map(drop)
}

/// `pivot_root(2)`: `new_root` becomes `/`, the old root moves to `put_old`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstr(new_root)?;
    let put_old = cstr(put_old)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; libc has no wrapper, so
    // the raw system call is used with its two pointer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(ret).map(drop)
}

/// `umount2(2)` with `MNT_DETACH`.
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: the string is NUL-terminated and outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }.into()).map(drop)
}

/// `mknod(2)` of a character device with `mode` permission bits and device number `rdev`.
pub fn mknod_char(path: &Path, mode: libc::mode_t, rdev: libc::dev_t) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: the string is NUL-terminated and outlives the call.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, rdev) }.into()).map(drop)
}

/// `setns(2)` into the namespace `fd` refers to, of type `nstype`.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the borrow.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }.into()).map(drop)
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments; it changes only this process's session.
    check(unsafe { libc::setsid() }.into()).map(drop)
}

/// `dup2(2)` of `fd` onto the descriptor number `target`.
pub fn dup2(fd: BorrowedFd<'_>, target: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is open for the duration of the borrow; `target` is one of 0..=2, which the
    // jailer owns and replaces on purpose.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }.into()).map(drop)
}

/// `setrlimit(2)` with the same soft and hard limit.
pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    check(unsafe { libc::setrlimit(resource, &limit) }.into()).map(drop)
}

/// Drops to `uid`/`gid` for good: no supplementary groups, then the gid, then the uid (all
/// of real, effective and saved), then `PR_SET_NO_NEW_PRIVS`.
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: an empty group list with a null pointer is allowed by setgroups.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }.into())?;
    // SAFETY: integers only; they change this process's credentials.
    check(unsafe { libc::setresgid(gid, gid, gid) }.into())?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }.into())?;
    set_no_new_privs()
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: exec can no longer grant privileges (set-uid bits, file
/// capabilities), and seccomp filters may be installed without CAP_SYS_ADMIN.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: integers only; it sets a flag of this process.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into()).map(drop)
}

/// What [`fork`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(libc::pid_t),
    /// In the child.
    Child,
}

/// `fork(2)`. The jailer is single-threaded, so the child may do anything the parent could.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the jailer starts no threads, so the child is a full copy with no lock held by
    // a thread that does not exist there.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `execve(2)` of `path` with `args` (the first is the program name) and an empty
/// environment. Returns only on failure.
pub fn exec_with_empty_env(path: &Path, args: &[&OsStr]) -> io::Error {
    let path = match cstr(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let args: Vec<CString> = match args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(_) => {
            return io::Error::new(
                io::ErrorKind::InvalidInput,
                "an argument contains a NUL byte",
            )
        }
    };
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: path, argv and envp are NUL-terminated strings and null-terminated pointer
    // arrays that live until the call, which only returns on failure.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

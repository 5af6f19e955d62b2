//! Kicking a vCPU thread out of `KVM_RUN`: `immediate_exit` plus a real-time signal.
//!
//! The signal handler sets `kvm_run.immediate_exit` for the vCPU bound to the receiving thread.
//! If the thread is inside `KVM_RUN`, the signal itself makes it return `EINTR`; if it is
//! between two calls, the flag makes the next `KVM_RUN` return at once (api.rst 5,
//! "immediate_exit"). Either way no kick is lost (the scheme Firecracker's `VcpuHandle` uses).

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Once;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;

use crate::{Error, Result};

thread_local! {
    static BOUND_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks: the first real-time signal glibc leaves to applications.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a const-initialised thread local and one byte store.
    let run = BOUND_RUN.with(|p| p.get());
    if !run.is_null() {
        // SAFETY: a non-null pointer is only bound by `Vcpu::run` on this very thread and
        // unbound before that vCPU's mapping goes away (see `unbind_current_thread`).
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal handler (once per process; later calls do nothing).
pub fn install_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
            .map_err(Error::KickHandler);
    });
    result
}

pub(crate) fn bind_current_thread(run: *mut kvm_run) {
    BOUND_RUN.with(|p| p.set(run));
}

/// Forgets the vCPU bound to this thread; call before the thread drops its vCPU.
pub fn unbind_current_thread() {
    BOUND_RUN.with(|p| p.set(std::ptr::null_mut()));
}

/// Kicks the vCPU running on `thread` out of `KVM_RUN`. Call only before `thread` is joined.
pub fn kick<T>(thread: &JoinHandle<T>) -> Result<()> {
    // SAFETY: the pthread_t comes from a live (not yet joined) JoinHandle, so it is valid even
    // if the thread has already finished; the signal has a handler installed.
    let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
    if rc != 0 && rc != libc::ESRCH {
        return Err(Error::Kick(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

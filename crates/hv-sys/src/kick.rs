//! Kicking a vCPU thread out of `KVM_RUN`: `immediate_exit` plus a real-time signal.
//!
//! A [`Vcpu`](crate::Vcpu) binds itself to the thread that runs it
//! ([`Vcpu::bind_kicks`](crate::Vcpu::bind_kicks), also done by the first
//! [`Vcpu::run`](crate::Vcpu::run) on a thread). From then on the kick signal's handler sets
//! `kvm_run.immediate_exit` for that vCPU. If the thread is inside `KVM_RUN`, the signal itself
//! makes it return `EINTR`; if it is between two calls, the flag makes the next `KVM_RUN` return
//! at once (api.rst 5, "immediate_exit"). Either way no kick that arrives after the binding is
//! lost (the scheme Firecracker's `VcpuHandle` uses). A caller that sends commands must bind the
//! thread first and look at its commands after binding and before the first `KVM_RUN`, so that a
//! kick sent before the binding is not lost either (petrel-vcpu's runner does this).
//!
//! Soundness: the binding is a [`KickSlot`] shared between the vCPU and the thread (the thread
//! holds a strong reference, so the slot outlives any handler that reads it). The slot holds the
//! address of the vCPU's `kvm_run` mapping; the vCPU clears it in its `Drop`, and waits for a
//! handler that may be using it on another thread, before the mapping goes away. No safe code
//! can make the handler write to memory that is no longer the vCPU's `kvm_run`.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;

use crate::{Error, Result};

/// Where a kick lands: the `kvm_run` of one vCPU, while that vCPU exists.
#[derive(Debug)]
pub(crate) struct KickSlot {
    /// The vCPU's `kvm_run` mapping; null once the vCPU is being dropped.
    run: AtomicPtr<kvm_run>,
    /// A kick handler is between loading `run` and finishing its store.
    in_handler: AtomicBool,
}

impl KickSlot {
    pub(crate) fn new(run: *mut kvm_run) -> Arc<Self> {
        Arc::new(KickSlot {
            run: AtomicPtr::new(run),
            in_handler: AtomicBool::new(false),
        })
    }

    /// Called by the vCPU's `Drop` before its mapping goes away: after this returns, no kick
    /// handler on any thread touches the mapping.
    pub(crate) fn retire(&self) {
        self.run.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A handler that loaded the pointer before the store above finishes its one byte
        // store first (SeqCst on both sides: either it saw null, or we see it busy).
        while self.in_handler.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
    }
}

thread_local! {
    /// The slot bound to this thread, as a strong reference turned into a raw pointer (so that
    /// the handler needs no destructor-carrying thread local, which is not async-signal-safe).
    static BOUND: Cell<*const KickSlot> = const { Cell::new(std::ptr::null()) };
}

/// The signal used for kicks: the first real-time signal glibc leaves to applications.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a const-initialised thread local and atomics.
    let slot = BOUND.with(|p| p.get());
    if slot.is_null() {
        return;
    }
    // SAFETY: a non-null BOUND holds a strong reference to the slot (taken in `bind`, released
    // only by this thread outside the handler), so the slot is alive.
    let slot = unsafe { &*slot };
    slot.in_handler.store(true, Ordering::SeqCst);
    let run = slot.run.load(Ordering::SeqCst);
    if !run.is_null() {
        // SAFETY: a non-null `run` is the live kvm_run mapping of the vCPU: its `Drop` nulls
        // the pointer and then waits for `in_handler` to fall before unmapping (`retire`).
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
    slot.in_handler.store(false, Ordering::SeqCst);
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

/// Whether `slot` is the one bound to the calling thread.
pub(crate) fn is_bound(slot: &Arc<KickSlot>) -> bool {
    BOUND.with(|p| std::ptr::eq(p.get(), Arc::as_ptr(slot)))
}

/// Binds `slot` to the calling thread, releasing whatever was bound before.
pub(crate) fn bind(slot: &Arc<KickSlot>) {
    let new = Arc::into_raw(slot.clone());
    let old = BOUND.with(|p| p.replace(new));
    release(old);
}

/// Unbinds `slot` if it is the one bound to the calling thread.
pub(crate) fn unbind_if_bound(slot: &Arc<KickSlot>) {
    if is_bound(slot) {
        let old = BOUND.with(|p| p.replace(std::ptr::null()));
        release(old);
    }
}

fn release(old: *const KickSlot) {
    if !old.is_null() {
        // SAFETY: `old` came from `Arc::into_raw` in `bind` and was just removed from BOUND, so
        // this strong reference is given back exactly once. A handler running now (on this
        // thread, between the two statements of the caller) reads BOUND, not `old`.
        drop(unsafe { Arc::from_raw(old) });
    }
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

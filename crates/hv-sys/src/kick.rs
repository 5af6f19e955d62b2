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
//! Soundness: the binding is a `KickSlot` shared between the vCPU and every thread it was
//! bound to (each such thread holds a strong reference, so the slot outlives any handler that
//! reads it). The slot holds the address of the `immediate_exit` byte of the vCPU's `kvm_run`
//! mapping; the vCPU clears it in its `Drop` (`KickSlot::retire`) and then waits until no
//! handler on any thread is between reading that address and finishing its store, before the
//! mapping goes away. The handler writes the byte only with an atomic store, and the vCPU never
//! holds a reference that covers it (see `Vcpu::run`). No safe code can make the handler write
//! to memory that is no longer the vCPU's `kvm_run`.
//!
//! Why retirement cannot race a handler (`H` is a handler on any thread, `R` is `retire` on the
//! thread dropping the vCPU, possibly another one):
//!
//! ```text
//! H1 in_flight.fetch_add(1, SeqCst)      R1 target.store(null, SeqCst)
//! H2 t = target.load(SeqCst)             R2 loop { in_flight.load(SeqCst) } until it reads 0
//! H3 if t is not null: *t = 1 (atomic)   (the caller then unmaps kvm_run)
//! H4 in_flight.fetch_sub(1, Release)
//! ```
//!
//! H1, H2, R1 and R2 are `SeqCst`, so they fall in one total order consistent with each thread's
//! program order. `target` is written only once after the slot is shared (R1, to null), so if H2
//! reads a non-null address, H2 comes before R1 in that order, hence H1 < H2 < R1 < R2. A
//! `SeqCst` load sees the latest `SeqCst` write before it in the order or a later one in the
//! location's modification order, so every load in R2 sees H1's increment or something after
//! it; it can read 0 only once H4's decrement is in the counter's modification order. H4 is a
//! release and every later change of the counter is a read-modify-write (its release
//! sequence), so R2's acquiring load that reads 0 synchronises with H4: H3 happens before R2
//! returns, and so before the unmap. A counter rather than a flag, because one slot may be
//! bound to several threads (`Vcpu::bind_kicks` takes `&self`) and a flag cleared by one
//! handler would hide another still in flight. A handler that starts after R1 reads null and
//! only bumps the counter for a few instructions; the kick signal is blocked while its own
//! handler runs, so at most one handler per thread is ever in flight and R2 ends.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crate::{Error, Result};

/// Where a kick lands: the `immediate_exit` byte of one vCPU's `kvm_run`, while that vCPU
/// exists.
#[derive(Debug)]
pub(crate) struct KickSlot {
    /// The vCPU's `kvm_run.immediate_exit`; null once the vCPU has retired it.
    target: AtomicPtr<u8>,
    /// How many kick handlers (on any threads) are between `enter` and the end of their visit.
    in_flight: AtomicUsize,
}

/// One handler's visit to a slot: between the increment and the decrement of `in_flight`.
struct Visit<'a> {
    slot: &'a KickSlot,
    target: *mut u8,
}

impl Visit<'_> {
    /// Sets `immediate_exit`, if the vCPU has not retired.
    fn kick(&self) {
        if !self.target.is_null() {
            // SAFETY: a non-null target is the `immediate_exit` byte of a live kvm_run mapping:
            // the vCPU's `Drop` nulls `target` and then waits until no visit is in flight
            // before the mapping goes (`retire`; the module docs give the ordering argument).
            // Every Rust access to that byte is atomic (this store, and `Vcpu::run`'s), and
            // a `u8` needs no alignment.
            let flag = unsafe { AtomicU8::from_ptr(self.target) };
            // Relaxed: the only ordering needed is "before the mapping goes", which the
            // release decrement of `in_flight` (on drop) provides. On the vCPU's own thread the
            // store is complete before the interrupted code resumes and enters KVM_RUN.
            flag.store(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Visit<'_> {
    fn drop(&mut self) {
        // Release: makes the store in `kick` happen before a `retire` that reads 0 returns.
        self.slot.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl KickSlot {
    /// A slot for the `immediate_exit` byte at `target`, which must stay valid until
    /// [`retire`](Self::retire) returns.
    pub(crate) fn new(target: *mut u8) -> Arc<Self> {
        Arc::new(KickSlot {
            target: AtomicPtr::new(target),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Starts a handler's visit: counts it in flight, then reads the target (H1, H2).
    fn enter(&self) -> Visit<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Visit {
            slot: self,
            target: self.target.load(Ordering::SeqCst),
        }
    }

    /// What the kick handler does for the slot bound to its thread.
    fn kick(&self) {
        self.enter().kick();
    }

    /// Called by the vCPU's `Drop` before its mapping goes away: after this returns, no kick
    /// handler on any thread touches the mapping (R1, R2 in the module docs).
    pub(crate) fn retire(&self) {
        self.target.store(std::ptr::null_mut(), Ordering::SeqCst);
        let mut spins = 0u32;
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            // A visit is a few instructions, but its thread may be descheduled mid-way.
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// How many handler visits are in flight (for tests).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

thread_local! {
    /// The slot bound to this thread, as a strong reference turned into a raw pointer. An
    /// atomic, because the handler reads it while the code it interrupted may be changing it
    /// (a plain `Cell` would be a data race with the handler); const-initialised and without a
    /// destructor, so the handler's access is async-signal-safe.
    static BOUND: AtomicPtr<KickSlot> = const { AtomicPtr::new(std::ptr::null_mut()) };
}

/// The signal used for kicks: the first real-time signal glibc leaves to applications.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a const-initialised thread local and atomics.
    // SeqCst (here and where BOUND changes): the handler sees either the old or the new
    // binding, never a later release of the slot it read.
    let slot = BOUND.with(|p| p.load(Ordering::SeqCst));
    if slot.is_null() {
        return;
    }
    // SAFETY: a non-null BOUND holds a strong reference to the slot (taken in `bind`, released
    // only by this thread after it removed the pointer from BOUND, so never while this handler,
    // which interrupts that thread, runs), so the slot is alive.
    let slot = unsafe { &*slot };
    slot.kick();
}

/// Installs the kick signal handler (once per process; later calls return the first one's
/// result).
pub fn install_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), vmm_sys_util::errno::Error>> =
        OnceLock::new();
    (*INSTALLED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)))
    .map_err(Error::KickHandler)
}

/// Whether `slot` is the one bound to the calling thread.
pub(crate) fn is_bound(slot: &Arc<KickSlot>) -> bool {
    BOUND.with(|p| std::ptr::eq(p.load(Ordering::SeqCst), Arc::as_ptr(slot)))
}

/// Binds `slot` to the calling thread, releasing whatever was bound before.
pub(crate) fn bind(slot: &Arc<KickSlot>) {
    let new = Arc::into_raw(slot.clone()).cast_mut();
    let old = BOUND.with(|p| p.swap(new, Ordering::SeqCst));
    release(old);
}

/// Unbinds `slot` if it is the one bound to the calling thread.
pub(crate) fn unbind_if_bound(slot: &Arc<KickSlot>) {
    if is_bound(slot) {
        let old = BOUND.with(|p| p.swap(std::ptr::null_mut(), Ordering::SeqCst));
        release(old);
    }
}

fn release(old: *mut KickSlot) {
    if !old.is_null() {
        // SAFETY: `old` came from `Arc::into_raw` in `bind` and was just removed from BOUND, so
        // this strong reference is given back exactly once. A handler running now (on this
        // thread, between the two statements of the caller) reads BOUND, not `old`.
        drop(unsafe { Arc::from_raw(old) });
    }
}

/// Kicks the vCPU running on `thread` out of `KVM_RUN` (installing the handler first if need
/// be: the signal's default action would end the process).
pub fn kick<T>(thread: &JoinHandle<T>) -> Result<()> {
    install_handler()?;
    // SAFETY: the pthread_t comes from a JoinHandle we borrow, so the thread has been neither
    // joined nor detached and its id stays valid even if it has already finished (ESRCH at
    // worst); the signal has a handler installed (just above), so it cannot end the process.
    let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
    if rc != 0 && rc != libc::ESRCH {
        return Err(Error::Kick(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// A stand-in for a vCPU's `immediate_exit` byte, freed only after the slot retired.
    struct Target(*mut u8);

    impl Target {
        fn new() -> Self {
            Target(Box::into_raw(Box::new(0u8)))
        }
        fn flag(&self) -> &AtomicU8 {
            // SAFETY: the byte is a live Box allocation until `drop`, only accessed atomically.
            unsafe { AtomicU8::from_ptr(self.0) }
        }
    }

    impl Drop for Target {
        fn drop(&mut self) {
            // SAFETY: the pointer came from `Box::into_raw` in `new` and is freed only here.
            drop(unsafe { Box::from_raw(self.0) });
        }
    }

    #[test]
    fn a_handler_still_in_flight_holds_retirement_back() {
        // One slot bound to two threads (Vcpu::bind_kicks takes &self), kicked on both. The
        // handler on thread A has read the target and is about to store; the one on thread B
        // runs to its end. Retirement must wait for A.
        let target = Target::new();
        let slot = KickSlot::new(target.0);
        let on_a = slot.enter();
        let on_b = slot.enter();
        on_b.kick();
        drop(on_b);
        let retired = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                slot.retire();
                retired.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !retired.load(Ordering::SeqCst),
                "retire() returned while a kick handler was still about to write"
            );
            on_a.kick();
            drop(on_a);
        });
        assert!(retired.load(Ordering::SeqCst));
        assert_eq!(slot.in_flight(), 0);
        // After retirement a kick writes nothing.
        target.flag().store(0, Ordering::SeqCst);
        slot.kick();
        assert_eq!(target.flag().load(Ordering::SeqCst), 0);
    }

    /// Sets a flag when dropped, so that threads waiting on it end even if an assertion fails.
    struct SetOnDrop<'a>(&'a AtomicBool);

    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri does not deliver signals (pthread_kill)")]
    fn kicks_racing_retirement_never_write_after_it() {
        install_handler().expect("kick handler");
        const ROUNDS: usize = 300;
        const BOUND_THREADS: usize = 2;
        const KICKS_AFTER_RETIRE: usize = 20;
        for round in 0..ROUNDS {
            let target = Target::new();
            let slot = KickSlot::new(target.0);
            let kicker_done = AtomicBool::new(false);
            let stop_kicking = AtomicBool::new(false);
            let retired = AtomicBool::new(false);
            let after_retire = AtomicUsize::new(0);
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            std::thread::scope(|s| {
                for _ in 0..BOUND_THREADS {
                    let (slot, kicker_done, tid_tx) = (&slot, &kicker_done, tid_tx.clone());
                    s.spawn(move || {
                        bind(slot);
                        // SAFETY: pthread_self has no preconditions.
                        tid_tx.send(unsafe { libc::pthread_self() }).unwrap();
                        // Waiting in the kernel, as a vCPU thread in KVM_RUN does: each kick
                        // interrupts the sleep and runs the handler. Ends only after the
                        // kicker, so that every thread it signals is alive.
                        while !kicker_done.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        unbind_if_bound(slot);
                    });
                }
                let tids: Vec<libc::pthread_t> = tid_rx.iter().take(BOUND_THREADS).collect();
                // A thread whose kicks keep arriving before, during and after retirement.
                let _stop_kicking = SetOnDrop(&stop_kicking);
                let (stop, retired, after_retire) = (&stop_kicking, &retired, &after_retire);
                let kicker_done = &kicker_done;
                s.spawn(move || {
                    let _done = SetOnDrop(kicker_done);
                    while !stop.load(Ordering::SeqCst) {
                        let late = retired.load(Ordering::SeqCst);
                        for &t in &tids {
                            // SAFETY: the bound threads run until `kicker_done`, which this
                            // thread sets when it ends (`_done`, also on a panic), so `t` names
                            // a live thread; the kick signal has its handler installed.
                            let rc = unsafe { libc::pthread_kill(t, kick_signal()) };
                            assert_eq!(rc, 0);
                        }
                        if late {
                            after_retire.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::yield_now();
                    }
                });
                // Let the kicks land, then retire while they keep coming.
                let deadline = Instant::now() + Duration::from_secs(10);
                while target.flag().load(Ordering::SeqCst) == 0 {
                    assert!(Instant::now() < deadline, "round {round}: no kick landed");
                    std::thread::yield_now();
                }
                for _ in 0..(round % 7) * 50 {
                    std::hint::spin_loop();
                }
                slot.retire();
                // From here on no handler may write: clear the flag and watch it. (Handlers
                // that start now may still be counted in flight; they read a null target.)
                target.flag().store(0, Ordering::SeqCst);
                retired.store(true, Ordering::SeqCst);
                while after_retire.load(Ordering::SeqCst) < KICKS_AFTER_RETIRE {
                    assert!(Instant::now() < deadline, "round {round}: kicker stalled");
                    std::thread::yield_now();
                }
                assert_eq!(
                    target.flag().load(Ordering::SeqCst),
                    0,
                    "round {round}: a kick wrote immediate_exit after retire() returned"
                );
            });
        }
    }
}

//! A hook the embedder registers once, which Petrel's library threads call first thing when
//! they start, with the kind of thread they are.
//!
//! The libraries hold no process-wide policy: with no hook registered (a library test, an
//! embedder that wants none), [`thread_started`] does nothing. The `petrel` binary registers
//! one that installs the seccomp filter for the thread's kind before the thread reads any
//! guest or client input.
//!
//! Why a registered hook rather than a parameter threaded through each constructor: the
//! threads start in several crates and deep inside them (the console writer inside
//! `Vmm::build`, the vCPUs in `Vmm::start`, the API server in `ApiServer::spawn`); one
//! registration point covers each of them, and any thread added later only has to call
//! [`thread_started`] with its kind.

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

use std::fmt;
use std::sync::OnceLock;

/// The kinds of thread Petrel's libraries start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread (`petrel-vcpuN`, or `fc_vcpu N` in Firecracker's mode): runs `KVM_RUN`
    /// and the port and MMIO exits.
    Vcpu,
    /// The API server thread (`fc_api`): accepts and parses HTTP requests.
    Api,
    /// The console output thread (`petrel-console`): drains the guest's serial output.
    Console,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Api, ThreadKind::Console];

    /// A short lower-case name: `vcpu`, `api`, `console`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Console => "console",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a hook is: called on the new thread, before it does its work.
///
/// It cannot fail from the thread's point of view: a hook whose work fails decides itself what
/// follows (the `petrel` binary ends the process rather than let an unconfined thread run).
pub type ThreadHook = Box<dyn Fn(ThreadKind) + Send + Sync>;

/// This crate's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`set_thread_hook`] was called a second time.
    #[error("a thread hook is registered already")]
    AlreadySet,
}

static HOOK: OnceLock<ThreadHook> = OnceLock::new();

/// Registers the hook, once per process, before the first thread starts.
pub fn set_thread_hook(hook: ThreadHook) -> Result<(), Error> {
    HOOK.set(hook).map_err(|_| Error::AlreadySet)
}

/// Called by each of Petrel's threads as the first thing it does: runs the registered hook,
/// if there is one, for `kind`.
pub fn thread_started(kind: ThreadKind) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_hook_runs_on_the_new_thread_with_its_kind_and_registers_once() {
        // Before registration nothing runs (and nothing fails).
        thread_started(ThreadKind::Api);
        static SEEN: Mutex<Vec<(ThreadKind, Option<String>)>> = Mutex::new(Vec::new());
        set_thread_hook(Box::new(|kind| {
            let name = std::thread::current().name().map(str::to_owned);
            SEEN.lock().unwrap().push((kind, name));
        }))
        .unwrap();
        assert!(matches!(
            set_thread_hook(Box::new(|_| {})),
            Err(Error::AlreadySet)
        ));
        std::thread::Builder::new()
            .name("petrel-vcpu3".into())
            .spawn(|| thread_started(ThreadKind::Vcpu))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            *SEEN.lock().unwrap(),
            [(ThreadKind::Vcpu, Some("petrel-vcpu3".to_string()))]
        );
        assert_eq!(ThreadKind::Console.to_string(), "console");
    }
}

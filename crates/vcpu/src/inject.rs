//! Fault injection for tests (feature `fault-injection`, off by default: nothing of it is
//! compiled without it).
//!
//! With the environment variable [`VARIABLE`] naming one of the exits below, the first exit
//! that a vCPU's `KVM_RUN` hands Petrel is replaced by that exit. The `petrel` binary's tests
//! use it to take, with the seccomp filters on, the fault-report paths that no guest can
//! reach on a given host (a failed VM entry, an exit reason KVM does not name, ...); the
//! report that follows is the real one, made by the vCPU thread from the vCPU's real state.

use petrel_hv_sys::exit::INTERNAL_ERROR_MAX_DATA;
use petrel_hv_sys::{SystemEvent, VmExit};

/// The environment variable that names the fault to inject.
pub const VARIABLE: &str = "PETREL_INJECT_FAULT";

/// `KVM_INTERNAL_ERROR_DELIVERY_EV` (api.rst 5, `internal.suberror`).
const SUBERROR_DELIVERY_EV: u32 = 3;

/// The exit that [`VARIABLE`] asks for, if it names one of this crate's.
pub(crate) fn exit_from_env() -> Option<VmExit<'static>> {
    let name = std::env::var(VARIABLE).ok()?;
    exit_named(&name)
}

/// The exit called `name`: `fail-entry`, `unknown-exit`, `unsupported-exit`, `internal-error`
/// (event delivery failed), `emulation-failure-without-bytes` (suberror 1 with no instruction
/// bytes in `kvm_run`, so the report reads them through the guest's page tables),
/// `crash-event` or `debug-exit`.
fn exit_named(name: &str) -> Option<VmExit<'static>> {
    let mut data = [0u64; INTERNAL_ERROR_MAX_DATA];
    Some(match name {
        "fail-entry" => VmExit::FailEntry {
            hardware_reason: 0x21,
            cpu: 0,
        },
        "unknown-exit" => VmExit::Unknown {
            hardware_reason: 0x7f,
        },
        "unsupported-exit" => VmExit::Unsupported { reason: 99 },
        "internal-error" => {
            data[0] = 0x8000_0b0e;
            VmExit::InternalError {
                suberror: SUBERROR_DELIVERY_EV,
                data,
                ndata: 1,
            }
        }
        "emulation-failure-without-bytes" => VmExit::InternalError {
            suberror: 1,
            data,
            ndata: 0,
        },
        "crash-event" => VmExit::SystemEvent(SystemEvent::Crash),
        "debug-exit" => VmExit::Debug,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_gives_its_exit_and_others_none() {
        for (name, reason) in [
            ("fail-entry", "fail-entry"),
            ("unknown-exit", "unknown"),
            ("unsupported-exit", "unsupported"),
            ("internal-error", "internal-error"),
            ("emulation-failure-without-bytes", "internal-error"),
            ("crash-event", "system-event"),
            ("debug-exit", "debug"),
        ] {
            assert_eq!(exit_named(name).unwrap().reason_name(), reason, "{name}");
        }
        assert_eq!(exit_named("vcpu-device-panic"), None);
        assert_eq!(exit_named(""), None);
    }
}

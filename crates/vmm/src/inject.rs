//! Fault injection for tests (feature `fault-injection`, off by default: nothing of it is
//! compiled without it).
//!
//! The environment variable [`VARIABLE`] names one fault. Besides the vCPU exits of
//! [`petrel_vcpu::inject`], two device panics, so that the `petrel` binary's tests can check
//! how a panicking device ends the VM with the seccomp filters on (no device here panics on
//! any input the fuzz targets found):
//! - `vcpu-device-panic`: the guest's first port write panics where the devices run on the
//!   vCPU thread (the VMM's [`IoHandler`](petrel_vcpu::IoHandler));
//! - `vmm-device-panic`: the serial input panics on the VMM thread's event loop when host
//!   input arrives for the guest's UART.

use std::sync::OnceLock;

/// The environment variable naming the fault. Re-exported from `petrel-vcpu`, which reads it for
/// the vCPU faults, so that the device panics here answer to the same variable.
pub use petrel_vcpu::inject::VARIABLE;

/// Panics if [`VARIABLE`] names `fault`.
pub(crate) fn device_panic(fault: &str) {
    static ASKED: OnceLock<Option<String>> = OnceLock::new();
    let asked = ASKED.get_or_init(|| std::env::var(VARIABLE).ok());
    if asked.as_deref() == Some(fault) {
        panic!("injected device panic ({VARIABLE}={fault})");
    }
}

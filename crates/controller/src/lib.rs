//! Firecracker's API requests turned into actions on a Petrel VM: the request-to-action logic
//! of a Firecracker-compatible VMM, without the HTTP server, the socket or the process (those
//! stay with the embedder, as Firecracker keeps them in its binary and this logic in its
//! library's `rpc_interface.rs`).
//!
//! Before `InstanceStart` a [`Controller`] collects the configuration in Firecracker's own
//! types; `InstanceStart` (or a config file) builds and starts the VM from it, and
//! `PUT /snapshot/load` restores one instead. After that, requests act on the running VM
//! through its [`petrel_vmm::VmmHandle`]. [`logger`] writes Firecracker's log lines and
//! [`metrics`] its metrics lines, to files or named pipes, as requests configure them.
//!
//! An embedder receives requests however it likes (Petrel's binary runs
//! [`petrel_api::server`] on its own thread), hands each parsed request to
//! [`Controller::handle_request`] (or an HTTP request to [`Controller::handle`]), and lets
//! [`Controller::complete`] make the VM when a request asks for one; then it runs the VM's
//! event loop, answering further requests beside it, and reports the end with
//! [`Controller::finish`]:
//!
//! ```no_run
//! use petrel_api::routes::ApiRequest;
//! use petrel_controller::Controller;
//! use petrel_vmm::Timeline;
//!
//! # fn next_request() -> ApiRequest { ApiRequest::GetInstanceInfo }
//! let mut controller = Controller::new("vm1".into(), None, Timeline::new(std::time::Instant::now()));
//! let vmm = loop {
//!     let handled = controller.handle_request(next_request());
//!     let (response, vmm) = controller.complete(handled);
//!     println!("{} {:?}", response.status, response.body); // send it to the client
//!     if let Some(vmm) = vmm {
//!         break vmm;
//!     }
//! };
//! let summary = vmm.run_until_stopped().expect("the VM's event loop");
//! controller.finish(&summary);
//! ```

mod controller;
pub mod logger;
pub mod metrics;
pub mod mmds;
mod vm_config;

// The README's code blocks, compiled as doctests so that the README cannot drift from the API
// (`cargo test --doc`; `no_run`: it boots a VM).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use controller::{Controller, Handled, Origin, VmSetup, APP_NAME};
pub use vm_config::{rate_limit, vm_config};

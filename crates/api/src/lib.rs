//! Firecracker's API for Petrel: the request and config-file schema (serde types taken from
//! Firecracker's OpenAPI description, `src/firecracker/swagger/firecracker.yaml`), an HTTP/1.1
//! parser with hard limits, the routes that turn a request into an [`routes::ApiRequest`], and
//! a server on a Unix socket that runs on its own thread with its own epoll loop, so that a
//! slow or hostile client can never stall a vCPU or the VM's device loop.
//!
//! This crate knows no KVM: the VMM receives parsed requests and answers them.

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod balloon;
pub mod config_file;
pub mod http;
pub mod mmds;
pub mod model;
pub mod reply;
pub mod routes;
pub mod server;

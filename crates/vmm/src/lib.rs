//! Petrel's `vmm` crate (being built).

//! Petrel's `hv-sys` crate (being built).

//! Petrel's `loader` crate (being built).

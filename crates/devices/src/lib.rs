//! Petrel's `devices` crate (being built).

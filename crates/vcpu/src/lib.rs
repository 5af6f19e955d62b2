//! Petrel's `vcpu` crate (being built).

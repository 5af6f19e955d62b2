#![doc = include_str!("../README.md")]

pub mod net;
pub mod store;

pub use store::{DataStore, StoreError};

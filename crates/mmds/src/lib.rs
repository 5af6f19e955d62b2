#![doc = include_str!("../README.md")]

pub mod store;

pub use store::{DataStore, StoreError};

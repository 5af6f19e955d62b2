#![doc = include_str!("../README.md")]

pub mod metrics;
pub mod store;
pub mod token;

pub use metrics::MmdsMetrics;
pub use store::{DataStore, StoreError};
pub use token::TokenError;

#![doc = include_str!("../README.md")]

pub mod http;
pub mod metrics;
pub mod net;
pub mod service;
pub mod store;
pub mod token;

pub use metrics::MmdsMetrics;
pub use service::{Mmds, MmdsVersion, Reply};
pub use store::{DataStore, StoreError};
pub use token::TokenError;

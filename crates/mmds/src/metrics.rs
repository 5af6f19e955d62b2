//! The `mmds` group of Firecracker's metrics: the same field names as Firecracker's
//! `MmdsMetrics`, so that a metrics reader written for Firecracker finds them.
//!
//! Every counter is an atomic, so the HTTP side ([`crate::service::Mmds`]) and the network side
//! can bump the same [`MmdsMetrics`] through a shared reference (an `Arc`). Counters are
//! cumulative since start, as all of Petrel's metrics are (Firecracker's are deltas since the
//! last flush); each serializes as a plain number.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

/// A counter that only goes up, safe to bump from any thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.get())
    }
}

/// Firecracker's `mmds` metrics group.
#[derive(Debug, Default, Serialize)]
pub struct MmdsMetrics {
    /// Frames the guest sent that were taken by MMDS instead of the tap.
    pub rx_accepted: Counter,
    /// Errors while handling a frame taken by MMDS.
    pub rx_accepted_err: Counter,
    /// Unusual events while handling frames taken by MMDS (e.g. a segment for no connection).
    pub rx_accepted_unusual: Counter,
    /// Frames that could not be parsed as Ethernet frames by MMDS.
    pub rx_bad_eth: Counter,
    /// `GET` requests with a token that is not valid (in V1 they are still answered).
    pub rx_invalid_token: Counter,
    /// `GET` requests without a token (in V1 they are still answered).
    pub rx_no_token: Counter,
    /// Successful receive operations by MMDS.
    pub rx_count: Counter,
    /// Bytes sent by MMDS to the guest.
    pub tx_bytes: Counter,
    /// Successful send operations by MMDS.
    pub tx_count: Counter,
    /// Errors while MMDS sent frames, packets or segments.
    pub tx_errors: Counter,
    /// Frames sent by MMDS to the guest.
    pub tx_frames: Counter,
    /// Connections accepted by MMDS's TCP handler.
    pub connections_created: Counter,
    /// Connections MMDS's TCP handler cleaned up.
    pub connections_destroyed: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_and_serialize_under_firecrackers_names() {
        let metrics = MmdsMetrics::default();
        metrics.rx_no_token.inc();
        metrics.rx_no_token.inc();
        metrics.tx_bytes.add(1500);
        assert_eq!(metrics.rx_no_token.get(), 2);
        let json = serde_json::to_value(&metrics).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "rx_accepted": 0,
                "rx_accepted_err": 0,
                "rx_accepted_unusual": 0,
                "rx_bad_eth": 0,
                "rx_invalid_token": 0,
                "rx_no_token": 2,
                "rx_count": 0,
                "tx_bytes": 1500,
                "tx_count": 0,
                "tx_errors": 0,
                "tx_frames": 0,
                "connections_created": 0,
                "connections_destroyed": 0
            })
        );
    }
}

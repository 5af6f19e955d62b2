//! The MMDS on a guest interface: a virtio-net frame detour ([`FrameDetour`]) that hands the
//! guest's frames for the MMDS address to a bounded TCP/IP responder
//! ([`petrel_mmds::net::MmdsStack`]) and answers each complete HTTP request with the shared
//! metadata service ([`petrel_mmds::Mmds`]); every other frame goes to the tap untouched. The
//! responder's frame and connection counts go into the service's `mmds` metrics, beside the
//! token counts its HTTP side keeps.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use petrel_devices::virtio::net::FrameDetour;
use petrel_mmds::net::{MmdsStack, NetStats, DEFAULT_MAC};
use petrel_mmds::{DataStore, Mmds, MmdsMetrics, MmdsVersion as ServiceVersion};
use petrel_util::lock_ignoring_poison as lock;

use crate::config::{MmdsConfig, MmdsVersion, SharedMmds, VmConfig};
use crate::{Error, Result};

/// The service a VM's interfaces answer with: the one given, or a new one with an empty store;
/// its version and `imds_compat` set from `config`.
pub(crate) fn service(config: &MmdsConfig, given: Option<&SharedMmds>) -> Result<SharedMmds> {
    let shared = match given {
        Some(s) => s.clone(),
        None => {
            let store = Arc::new(Mutex::new(DataStore::default()));
            let mmds = Mmds::with_store(store).map_err(|e| Error::Mmds(e.to_string()))?;
            SharedMmds(Arc::new(Mutex::new(mmds)))
        }
    };
    {
        let mut mmds = lock(&shared.0);
        mmds.set_version(match config.version {
            MmdsVersion::V1 => ServiceVersion::V1,
            MmdsVersion::V2 => ServiceVersion::V2,
        });
        mmds.set_imds_compat(config.imds_compat);
    }
    Ok(shared)
}

/// The detour for one interface of a VM whose configuration has an MMDS.
pub(crate) fn detour(config: &VmConfig, service: &SharedMmds) -> Option<Box<dyn FrameDetour>> {
    let mmds = config.mmds.as_ref()?;
    Some(Box::new(MmdsDetour::new(
        MmdsStack::new(mmds.ipv4_address, DEFAULT_MAC),
        service.0.clone(),
    )))
}

/// One interface's responder and the shared service.
struct MmdsDetour {
    stack: MmdsStack,
    service: Arc<Mutex<Mmds>>,
    /// The service's metrics, where the responder's counts go.
    metrics: Arc<MmdsMetrics>,
    /// The responder's counts already added to `metrics`.
    reported: NetStats,
}

impl MmdsDetour {
    fn new(stack: MmdsStack, service: Arc<Mutex<Mmds>>) -> Self {
        let metrics = lock(&service).metrics().clone();
        MmdsDetour {
            stack,
            service,
            metrics,
            reported: NetStats::default(),
        }
    }

    /// Adds what the responder counted since the last call to the service's metrics.
    fn report(&mut self) {
        let now = self.stack.stats();
        let was = std::mem::replace(&mut self.reported, now);
        let m = &self.metrics;
        for (counter, now, was) in [
            (&m.rx_accepted, now.rx_accepted, was.rx_accepted),
            (&m.rx_accepted_err, now.rx_accepted_err, was.rx_accepted_err),
            (
                &m.rx_accepted_unusual,
                now.rx_accepted_unusual,
                was.rx_accepted_unusual,
            ),
            (&m.rx_bad_eth, now.rx_bad_eth, was.rx_bad_eth),
            (&m.rx_count, now.rx_count, was.rx_count),
            (&m.tx_bytes, now.tx_bytes, was.tx_bytes),
            (&m.tx_count, now.tx_count, was.tx_count),
            (&m.tx_errors, now.tx_errors, was.tx_errors),
            (&m.tx_frames, now.tx_frames, was.tx_frames),
            (
                &m.connections_created,
                now.connections_created,
                was.connections_created,
            ),
            (
                &m.connections_destroyed,
                now.connections_destroyed,
                was.connections_destroyed,
            ),
        ] {
            if now > was {
                counter.add(now - was);
            }
        }
    }
}

impl FrameDetour for MmdsDetour {
    fn detour_tx(&mut self, frame: &[u8]) -> bool {
        let now = Instant::now();
        if !self.stack.detour(frame, now) {
            self.report();
            return false;
        }
        {
            let service = lock(&self.service);
            self.stack
                .poll(now, &mut |request| service.answer(request, now));
        }
        self.report();
        true
    }

    fn next_rx(&mut self, buf: &mut [u8]) -> Option<usize> {
        let len = self.stack.next_frame(buf);
        self.report();
        len
    }

    fn has_rx(&self) -> bool {
        self.stack.has_frames()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ARP request from the guest (169.254.0.2) for `target`, broadcast.
    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let guest_mac = [0x06, 0, 0xac, 0x10, 0, 2];
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&guest_mac);
        f.extend_from_slice(&[0x08, 0x06]); // ARP
        f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        f.extend_from_slice(&guest_mac);
        f.extend_from_slice(&[169, 254, 0, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    #[test]
    fn the_responders_counts_reach_the_services_metrics() {
        let service = Arc::new(Mutex::new(Mmds::new(1024).unwrap()));
        let mut detour = MmdsDetour::new(
            MmdsStack::new(petrel_mmds::net::DEFAULT_IPV4, DEFAULT_MAC),
            service.clone(),
        );
        let metrics = lock(&service).metrics().clone();

        // Not the MMDS's: left for the tap, nothing counted.
        assert!(!detour.detour_tx(&arp_request([169, 254, 0, 1])));
        assert_eq!(metrics.rx_accepted.get(), 0);

        // ARP for the MMDS address: taken, answered with one frame for the guest.
        assert!(detour.detour_tx(&arp_request([169, 254, 169, 254])));
        assert!(detour.has_rx());
        let mut buf = [0u8; 1514];
        let len = detour.next_rx(&mut buf).unwrap();
        assert_eq!(&buf[..6], &[0x06, 0, 0xac, 0x10, 0, 2], "to the guest");
        assert_eq!(detour.next_rx(&mut buf), None);
        assert_eq!(metrics.rx_accepted.get(), 1);
        assert_eq!(metrics.rx_count.get(), 1);
        assert_eq!(metrics.tx_frames.get(), 1);
        assert_eq!(metrics.tx_count.get(), 1);
        assert_eq!(metrics.tx_bytes.get(), len as u64);

        // A runt frame: counted as a bad Ethernet frame, left for the tap; the earlier
        // counts are not added twice.
        assert!(!detour.detour_tx(&[0u8; 5]));
        assert_eq!(metrics.rx_bad_eth.get(), 1);
        assert_eq!(metrics.rx_accepted.get(), 1);
        assert_eq!(metrics.tx_frames.get(), 1);
    }
}

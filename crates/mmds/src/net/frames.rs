//! The frames between the guest and the MMDS's stack: which guest frames are for the MMDS, and
//! the bounded queues that stand in for smoltcp's network device.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use super::MAX_FRAME_LEN;

/// Frames each queue holds at most: what the guest sent and the stack has not read yet, and
/// what the stack sent and the guest has not taken yet.
pub(super) const QUEUE_FRAMES: usize = 64;

/// Length of an Ethernet header (no VLAN tag).
const ETH_HEADER_LEN: usize = 14;
/// EtherType of ARP.
const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Offset of the target protocol address in an Ethernet/IPv4 ARP packet (RFC 826).
const ARP_TPA: usize = ETH_HEADER_LEN + 24;
/// Offset of the protocol number in an IPv4 header (RFC 791).
const IPV4_PROTOCOL: usize = ETH_HEADER_LEN + 9;
/// Offset of the destination address in an IPv4 header.
const IPV4_DST: usize = ETH_HEADER_LEN + 16;
/// IPv4 protocol number of TCP.
const PROTOCOL_TCP: u8 = 6;

/// What a guest frame is to the MMDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Too short for an Ethernet header: not the MMDS's business.
    BadEthernet,
    /// Not addressed to the MMDS: for the tap.
    NotOurs,
    /// ARP whose target is the MMDS address (a request, or a reply to the stack's request).
    Arp,
    /// IPv4 carrying TCP to the MMDS address.
    Tcp,
    /// IPv4 to the MMDS address carrying anything else: consumed and dropped, as Firecracker
    /// does.
    OtherIpv4,
}

/// Sorts a guest frame by its addresses alone, as Firecracker does: anything that names the
/// MMDS address is the MMDS's, well-formed or not, so it never reaches the tap.
pub(super) fn classify(frame: &[u8], ipv4: Ipv4Addr) -> Class {
    let Some(ethertype) = frame.get(12..ETH_HEADER_LEN) else {
        return Class::BadEthernet;
    };
    let ours = |at: usize| frame.get(at..at + 4) == Some(&ipv4.octets()[..]);
    match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
        ETHERTYPE_ARP if ours(ARP_TPA) => Class::Arp,
        ETHERTYPE_IPV4 if ours(IPV4_DST) => {
            if frame.get(IPV4_PROTOCOL) == Some(&PROTOCOL_TCP) {
                Class::Tcp
            } else {
                Class::OtherIpv4
            }
        }
        _ => Class::NotOurs,
    }
}

/// smoltcp's network device: two bounded queues of frames. `receive` hands the stack the next
/// guest frame only while the outgoing queue has room for its answer, and `transmit` refuses
/// when that queue is full, so the stack keeps unsent data in its sockets' bounded buffers
/// instead of growing the queue.
#[derive(Debug, Default)]
pub(super) struct FrameQueues {
    ingress: VecDeque<Vec<u8>>,
    egress: VecDeque<Vec<u8>>,
}

impl FrameQueues {
    /// Queues a guest frame for the stack, its destination MAC set to `mac` (a guest that
    /// routes the MMDS address through a gateway addresses the gateway's MAC). False when the
    /// frame is too large or the queue full: the frame is dropped (TCP sends it again).
    pub(super) fn push_ingress(&mut self, frame: &[u8], mac: [u8; 6]) -> bool {
        if frame.len() > MAX_FRAME_LEN || self.ingress.len() >= QUEUE_FRAMES {
            return false;
        }
        let mut copy = frame.to_vec();
        copy[..6].copy_from_slice(&mac);
        self.ingress.push_back(copy);
        true
    }

    /// The next frame for the guest.
    pub(super) fn pop_egress(&mut self) -> Option<Vec<u8>> {
        self.egress.pop_front()
    }

    /// Whether frames wait for the guest.
    pub(super) fn has_egress(&self) -> bool {
        !self.egress.is_empty()
    }

    /// Frames and bytes held in both queues.
    pub(super) fn held(&self) -> (usize, usize) {
        let frames = self.ingress.len() + self.egress.len();
        let bytes = self.ingress.iter().chain(&self.egress).map(Vec::len).sum();
        (frames, bytes)
    }
}

/// A guest frame handed to the stack.
pub(super) struct GuestFrame(Vec<u8>);

impl RxToken for GuestFrame {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

/// Room for one frame to the guest.
pub(super) struct EgressSlot<'a>(&'a mut VecDeque<Vec<u8>>);

impl TxToken for EgressSlot<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

impl Device for FrameQueues {
    type RxToken<'a> = GuestFrame;
    type TxToken<'a> = EgressSlot<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(GuestFrame, EgressSlot<'_>)> {
        if self.egress.len() >= QUEUE_FRAMES {
            return None;
        }
        let frame = self.ingress.pop_front()?;
        Some((GuestFrame(frame), EgressSlot(&mut self.egress)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<EgressSlot<'_>> {
        (self.egress.len() < QUEUE_FRAMES).then_some(EgressSlot(&mut self.egress))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME_LEN;
        caps
    }
}

//! The MMDS's network side: a bounded TCP/IP responder for the frames one guest interface
//! sends to the MMDS address.
//!
//! [`MmdsStack`] sits on a guest interface's transmit path. [`MmdsStack::detour`] takes the
//! guest's frames that name the MMDS address (ARP for it, IPv4 to it) and leaves every other
//! frame for the tap; [`MmdsStack::poll`] runs TCP (smoltcp's, on Ethernet, ARP and IPv4 only)
//! and asks its caller for the answer to each complete HTTP request; [`MmdsStack::next_frame`]
//! hands out the frames for the guest (ARP replies, TCP segments).
//!
//! The guest is untrusted, so everything is bounded:
//!
//! - at most [`MAX_CONNECTIONS`] connections (Firecracker's 30); a SYN beyond them is refused
//!   with a reset. Each connection has a 4 KiB receive and an 8 KiB send buffer, allocated when
//!   it is accepted and freed when it ends;
//! - a request is at most [`REQUEST_LIMIT`] bytes: one that reaches it unanswered aborts its
//!   connection;
//! - a connection with no progress from the guest for [`TIMEOUT`], or waiting that long for a
//!   complete request (an idle keep-alive one too), is aborted;
//! - the frames waiting in either direction are at most 64 each way, each at most
//!   [`MAX_FRAME_LEN`] bytes: when the guest does not take its frames, the stack stops
//!   sending (the data waits in the bounded socket buffers); when the stack is not polled,
//!   further guest frames are dropped (and TCP sends them again);
//! - IP fragments, frames over [`MAX_FRAME_LEN`], bad checksums and anything smoltcp finds
//!   malformed are dropped; non-TCP IPv4 to the MMDS address is dropped, as Firecracker does.
//!
//! Timeouts and retransmissions run when the stack is polled: [`MmdsStack::poll_at`] says when
//! it next needs to be, and every guest frame is a chance too.

mod conn;
mod frames;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use conn::Conn;
use frames::{Class, FrameQueues};

/// The MMDS's MAC address, Firecracker's: the source of every frame the MMDS sends.
pub const DEFAULT_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The MMDS's default IPv4 address (Firecracker's and EC2's).
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The TCP port the MMDS answers on.
pub const PORT: u16 = 80;
/// The most connections open at once (Firecracker's limit).
pub const MAX_CONNECTIONS: usize = 30;
/// The most bytes of one request (head and body) a connection gathers.
pub const REQUEST_LIMIT: usize = 16 * 1024;
/// How long a connection may go without progress, or wait for a complete request.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame taken from or given to the guest: a 1500-byte IP packet in an Ethernet
/// frame (no VLAN tag, no FCS).
pub const MAX_FRAME_LEN: usize = 1514;

/// A connection's receive buffer (its TCP window).
const RX_BUFFER: usize = 4096;
/// A connection's send buffer.
const TX_BUFFER: usize = 8192;

/// The network side's counters, named as the fields of Firecracker's `mmds` metrics group
/// that count frames and connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Guest frames taken by the MMDS.
    pub rx_accepted: u64,
    /// Frames taken but dropped unprocessed (too large, the queue full) and requests that
    /// reached [`REQUEST_LIMIT`] unanswered.
    pub rx_accepted_err: u64,
    /// Frames to the MMDS address that carried neither ARP nor TCP.
    pub rx_accepted_unusual: u64,
    /// Guest frames too short for an Ethernet header.
    pub rx_bad_eth: u64,
    /// Frames the TCP/IP stack processed.
    pub rx_count: u64,
    /// Bytes of the frames given to the guest.
    pub tx_bytes: u64,
    /// Frames given to the guest (Firecracker counts each send in both).
    pub tx_count: u64,
    /// Frames dropped because the guest's buffer was too small for them.
    pub tx_errors: u64,
    /// Frames given to the guest.
    pub tx_frames: u64,
    /// Connections accepted.
    pub connections_created: u64,
    /// Connections ended (closed, reset, timed out or aborted).
    pub connections_destroyed: u64,
}

/// The TCP/IP responder for one guest interface.
pub struct MmdsStack {
    ipv4: Ipv4Addr,
    mac: [u8; 6],
    iface: Interface,
    sockets: SocketSet<'static>,
    frames: FrameQueues,
    /// The socket waiting for the next connection (none while [`MAX_CONNECTIONS`] are open).
    listener: Option<SocketHandle>,
    conns: Vec<Conn>,
    /// The stack's clock starts here.
    epoch: Instant,
    /// The latest time a caller gave.
    now: Instant,
    stats: NetStats,
}

impl fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmdsStack")
            .field("ipv4", &self.ipv4)
            .field("mac", &self.mac)
            .field("connections", &self.conns.len())
            .field("queued_frames", &self.frames.held().0)
            .field("stats", &self.stats)
            .finish()
    }
}

/// A seed for the stack's initial TCP sequence numbers, different in each process.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

impl MmdsStack {
    /// A responder at `ipv4`, sending from `mac` (usually [`DEFAULT_IPV4`] and
    /// [`DEFAULT_MAC`]). It answers guests on any address: the MMDS address is on-link to
    /// every sender.
    pub fn new(ipv4: Ipv4Addr, mac: [u8; 6]) -> Self {
        Self::with_seed(ipv4, mac, random_seed())
    }

    /// [`new`](Self::new) with the seed of the initial TCP sequence numbers given, so that a
    /// run replays exactly (tests, fuzzing). A guest that knows the seed can predict them: use
    /// [`new`](Self::new) for guests.
    pub fn with_seed(ipv4: Ipv4Addr, mac: [u8; 6], seed: u64) -> Self {
        let epoch = Instant::now();
        let mut frames = FrameQueues::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut frames, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // A prefix of 0: every guest address is a neighbour, answered through ARP. The
            // list has room for one address, and it starts empty.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ipv4), 0));
        });
        let mut stack = MmdsStack {
            ipv4,
            mac,
            iface,
            sockets: SocketSet::new(Vec::new()),
            frames,
            listener: None,
            conns: Vec::new(),
            epoch,
            now: epoch,
            stats: NetStats::default(),
        };
        stack.ensure_listener();
        stack
    }

    /// The MMDS's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The MMDS's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Takes `frame` (an Ethernet frame from the guest, without virtio header) when it is for
    /// the MMDS: ARP whose target is the MMDS address, or IPv4 to it. True when it was taken:
    /// it must not reach the tap, and [`poll`](Self::poll) should run. False: the frame is not
    /// the MMDS's and goes to the tap untouched.
    pub fn detour(&mut self, frame: &[u8], now: Instant) -> bool {
        self.now = self.now.max(now);
        match frames::classify(frame, self.ipv4) {
            Class::NotOurs => false,
            Class::BadEthernet => {
                self.stats.rx_bad_eth += 1;
                false
            }
            Class::OtherIpv4 => {
                self.stats.rx_accepted += 1;
                self.stats.rx_accepted_unusual += 1;
                true
            }
            Class::Arp | Class::Tcp => {
                self.stats.rx_accepted += 1;
                if !self.frames.push_ingress(frame, self.mac) {
                    self.stats.rx_accepted_err += 1;
                }
                true
            }
        }
    }

    /// Runs the stack: times out stale connections, processes the frames taken, offers each
    /// connection's request bytes to `answer` (which returns the whole HTTP response once the
    /// request is complete, `None` while it is not), and queues what is to be sent.
    pub fn poll(&mut self, now: Instant, answer: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) {
        self.now = self.now.max(now);
        let now = self.now;
        let t = self.stack_time(now);
        for conn in &self.conns {
            if now >= conn.deadline() {
                self.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
            }
        }
        // One frame at a time, so that each SYN finds a fresh listener while there is room.
        loop {
            self.ensure_listener();
            let result = self
                .iface
                .poll_ingress_single(t, &mut self.frames, &mut self.sockets);
            self.adopt_listener(now);
            if matches!(result, PollIngressSingleResult::None) {
                break;
            }
            self.stats.rx_count += 1;
        }
        for conn in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            conn.receive(socket, now, answer, &mut self.stats);
        }
        self.flush(now);
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        self.frames.has_egress()
    }

    /// Writes the next frame for the guest (an Ethernet frame, without virtio header) into
    /// `buf` and returns its length; `None` when there is none. A frame larger than `buf` is
    /// dropped (counted in `tx_errors`) and `None` returned. Taking frames makes room for the
    /// stack to send more, so the queue is refilled as it empties.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        if !self.frames.has_egress() {
            self.flush(self.now);
        }
        let frame = self.frames.pop_egress()?;
        if !self.frames.has_egress() {
            self.flush(self.now);
        }
        let Some(dst) = buf.get_mut(..frame.len()) else {
            self.stats.tx_errors += 1;
            return None;
        };
        dst.copy_from_slice(&frame);
        self.stats.tx_frames += 1;
        self.stats.tx_count += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Some(frame.len())
    }

    /// When the stack next needs [`poll`](Self::poll) for its timers (retransmissions,
    /// timeouts) if no frame comes first: `None` when nothing is pending.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let t = self.stack_time(now);
        let stack = self
            .iface
            .poll_at(t, &self.sockets)
            .map(|at| self.epoch + Duration::from_micros(at.total_micros().max(0) as u64));
        let conns = self.conns.iter().map(Conn::deadline).min();
        match (stack, conns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Frames and bytes queued in either direction (for measurements and tests).
    pub fn queued(&self) -> (usize, usize) {
        self.frames.held()
    }

    /// The stack's clock at `now`.
    fn stack_time(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Moves answers into their sockets, sends what the sockets have, and drops connections
    /// that are over.
    fn flush(&mut self, now: Instant) {
        for conn in &mut self.conns {
            conn.send(self.sockets.get_mut::<tcp::Socket>(conn.handle), now);
        }
        let t = self.stack_time(now);
        self.iface
            .poll_egress(t, &mut self.frames, &mut self.sockets);
        let MmdsStack {
            sockets,
            conns,
            stats,
            ..
        } = self;
        conns.retain(|conn| {
            let socket = sockets.get::<tcp::Socket>(conn.handle);
            let over = match socket.state() {
                // Reset by the guest before it was established: the socket listens again.
                tcp::State::Listen => true,
                // Closed, its reset (if any) sent; or stuck long past its deadline.
                tcp::State::Closed => {
                    socket.remote_endpoint().is_none() || now >= conn.deadline() + TIMEOUT
                }
                _ => false,
            };
            if over {
                sockets.remove(conn.handle);
                stats.connections_destroyed += 1;
            }
            !over
        });
        self.ensure_listener();
    }

    /// Opens a listening socket when none listens and there is room for a connection.
    fn ensure_listener(&mut self) {
        if self.listener.is_some() || self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        // Answers go out whole and at once; ACKs without delay, since the stack may not be
        // polled again soon; and smoltcp's own timeout for unacknowledged data.
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(TIMEOUT.as_secs())));
        if socket.listen(PORT).is_ok() {
            self.listener = Some(self.sockets.add(socket));
        }
    }

    /// Makes the listener a connection once a SYN reached it.
    fn adopt_listener(&mut self, now: Instant) {
        let Some(handle) = self.listener else {
            return;
        };
        if self.sockets.get::<tcp::Socket>(handle).is_listening() {
            return;
        }
        self.listener = None;
        self.conns.push(Conn::new(handle, now));
        self.stats.connections_created += 1;
    }
}

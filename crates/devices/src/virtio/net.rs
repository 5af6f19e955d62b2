//! virtio-net over a host tap device (virtio v1.2, 5.1 Network Device).
//!
//! One receive queue (0) and one transmit queue (1), [`QUEUE_SIZE`] entries each; the MAC
//! address in the configuration space (VIRTIO_NET_F_MAC); no offloads, no mergeable receive
//! buffers, no control queue. Every frame carries the 12-byte `virtio_net_hdr_v1` in front of
//! it, on the rings and on the tap alike (the tap is opened with `IFF_VNET_HDR` and a header
//! size of 12, so the header passes through unchanged).
//!
//! - Transmit: each chain's device-readable bytes are gathered into one buffer and written to
//!   the tap as one frame. Since no offload was negotiated, the header is zeroed first, so a
//!   guest cannot hand the host kernel checksum or segmentation requests it never agreed to.
//! - Receive: when the tap is readable (an edge-triggered event source) or the guest adds
//!   receive buffers (a notification of queue 0), the device reads frames until the tap has
//!   none left, each into the next receive chain. With no chain available the frame is kept,
//!   never dropped, and delivered when the guest adds buffers. A frame larger than the chain
//!   offered can never be delivered in it: that frame is dropped and counted, the chain kept.
//!
//! Each direction has its own [`RateLimiter`](crate::RateLimiter) (none unless
//! [`Net::set_rate_limiters`] sets them), as Firecracker's `rx_rate_limiter` and
//! `tx_rate_limiter`: a frame costs one operation and its length in bytes, header included.
//! A transmit chain the limiter holds back stays in the ring; a received frame stays with the
//! device (and the frames after it in the tap). Either way the direction stops until its timer,
//! one of the device's [`event_sources`](VirtioDevice::event_sources), fires: frames are
//! delayed, never dropped for the limit.
//!
//! A [`FrameDetour`] (the VMM's MMDS) may be set on the device: it is offered each transmitted
//! frame and takes those that are its own, which never reach the tap; its frames for the guest
//! are delivered in turn with the tap's.
//!
//! Chains in the wrong direction (a device-writable buffer to transmit, a device-readable one
//! to receive into), with buffers outside guest RAM, or too short for the header are returned
//! unused and counted; broken chains stop the device (DEVICE_NEEDS_RESET). The tap is
//! non-blocking: no guest action can make the event loop wait on it.

mod detour;
#[cfg(test)]
mod detour_tests;
mod tap;

pub use detour::FrameDetour;

use std::any::Any;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::virtio::{GuestMemoryMmap, VirtioMemory};
use virtio_queue::Queue;
use vm_memory::GuestMemory;

use super::chain::{self, BatchEnd, Budget, ChainBuffers, Step};
use super::state::{DeviceState, NetState};
use super::{
    read_config_bytes, EventSource, GuestFault, Interrupt, Processed, Throttle, VirtioDevice,
    TYPE_NET, VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::RateLimiterConfig;
use crate::virtio::Error as VirtioError;

/// Errors from the virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tap name that cannot be an interface name.
    #[error("tap name {name:?} is not a valid interface name (1 to 15 bytes, no '/')")]
    TapName {
        /// The name given.
        name: String,
    },
    /// No tap device of that name exists.
    #[error(
        "tap device {name:?} does not exist (create it first: ip tuntap add dev {name} mode tap)"
    )]
    TapNotFound {
        /// The name given.
        name: String,
    },
    /// `/dev/net/tun` could not be opened for the tap, or its descriptor set up.
    #[error("cannot open tap device {name:?}")]
    OpenTap {
        /// The tap's name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An interface of that name exists but is no tap Petrel can use: a tun device, another
    /// kind of interface, or a multi-queue tap.
    #[error(
        "network interface {name:?} is not a tap device (or is a multi-queue one); \
         create a tap: ip tuntap add dev NAME mode tap"
    )]
    NotATap {
        /// The name given.
        name: String,
    },
    /// A tap configuration ioctl failed (busy, no permission).
    #[error("cannot attach to tap device {name:?}: {ioctl} failed")]
    TapIoctl {
        /// The tap's name.
        name: String,
        /// The ioctl that failed.
        ioctl: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A virtio transport or queue failure while setting the device up (an eventfd, a timer).
    #[error(transparent)]
    Virtio(#[from] crate::virtio::Error),
}

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (virtio v1.2, 5.1.2 Virtqueues: receiveq1).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (virtio v1.2, 5.1.2: transmitq1).
pub const TX_QUEUE: usize = 1;
/// Length of `struct virtio_net_hdr` with `num_buffers`, always present with VERSION_1
/// (virtio v1.2, 5.1.6 Device Operation).
pub const NET_HDR_LEN: usize = 12;
/// The largest frame handled, header included: a 64 KiB IP packet in an Ethernet frame with a
/// VLAN tag, plus the header (the size Linux expects of a "big" receive buffer).
pub const MAX_FRAME_LEN: usize = NET_HDR_LEN + 65550;

/// Feature: the device has a MAC address in its configuration (virtio v1.2, 5.1.3).
const VIRTIO_NET_F_MAC: u32 = 5;
/// Offset of `num_buffers` in the header (virtio v1.2, 5.1.6 struct virtio_net_hdr).
const NUM_BUFFERS_OFFSET: usize = 10;
/// The token of the tap among the device's event sources.
const TAP_TOKEN: u32 = 0;
/// The token of the receive rate limiter's timer.
const RX_TIMER_TOKEN: u32 = 1;
/// The token of the transmit rate limiter's timer.
const TX_TIMER_TOKEN: u32 = 2;

/// Counters of a [`Net`] device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest, headers included.
    pub rx_bytes: u64,
    /// Times a frame had to wait for the guest to add receive buffers.
    pub rx_deferred: u64,
    /// Frames dropped because the receive chain offered was too small for them.
    pub rx_too_large: u64,
    /// Frames shorter than the header, or larger than [`MAX_FRAME_LEN`], read from the tap.
    pub rx_bad_frames: u64,
    /// Receive chains returned unused (device-readable buffers, buffers outside guest RAM).
    pub rx_bad_chains: u64,
    /// Reads from the tap that failed (other than "no frame").
    pub rx_errors: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Bytes written to the tap, headers included.
    pub tx_bytes: u64,
    /// Transmit chains dropped: device-writable buffers, buffers outside guest RAM, shorter
    /// than the header, or longer than [`MAX_FRAME_LEN`].
    pub tx_bad_chains: u64,
    /// Writes to the tap that failed (the frame is dropped, as a full NIC queue would).
    pub tx_errors: u64,
    /// Times the receive rate limiter held a frame back.
    pub rx_throttled: u64,
    /// Times the transmit rate limiter held a frame back.
    pub tx_throttled: u64,
    /// Transmitted frames the detour took instead of the tap.
    pub tx_detoured: u64,
    /// Frames taken from the detour for the guest (each then counted as a frame from the tap
    /// is: `rx_frames`, or `rx_too_large` when the chain is too small).
    pub rx_detoured: u64,
}

/// What the device needs once activated.
struct Active<M> {
    mem: M,
    rx: Queue,
    tx: Queue,
}

/// A virtio-net device on a tap.
pub struct Net<M = GuestMemoryMmap> {
    tap: File,
    tap_name: String,
    config: [u8; 6],
    active: Option<Active<M>>,
    /// The frame read from the tap and not yet delivered, in `rx_buf[..len]`.
    rx_pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    bufs: ChainBuffers,
    stats: NetStats,
    rx_throttle: Throttle,
    tx_throttle: Throttle,
    detour: Option<Box<dyn FrameDetour>>,
    /// The detour's turn next when both it and the tap have frames.
    detour_turn: bool,
}

impl<M> fmt::Debug for Net<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap_name)
            .field("mac", &self.config)
            .field("active", &self.active.is_some())
            .field("rx_pending", &self.rx_pending)
            .field("rx_throttle", &self.rx_throttle)
            .field("tx_throttle", &self.tx_throttle)
            .field("detour", &self.detour.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<M> Net<M> {
    /// Opens the existing tap `name` and makes a device with MAC address `mac` on it.
    ///
    /// The tap must exist already, in the calling process's network namespace (`ip tuntap add
    /// dev NAME mode tap`, owned by the VMM's user): this never creates one, and looks for it
    /// with the kernel, not in `/sys` (which may show another namespace, or be absent). Fails,
    /// naming the tap, when the name is invalid, no such interface exists, it is not a tap, or
    /// it cannot be opened or configured (busy, no permission).
    pub fn open_tap(name: &str, mac: [u8; 6]) -> Result<Self, Error> {
        if !tap::valid_name(name) {
            return Err(Error::TapName { name: name.into() });
        }
        let tap = tap::open(name)?;
        Self::from_tap_file(tap, name.into(), mac)
    }

    /// A device on an already configured tap-like descriptor: each read returns one frame and
    /// each write sends one, both with the 12-byte virtio-net header in front. For a tap the
    /// VMM opened itself, or a datagram socket in tests. The descriptor is made non-blocking.
    /// No rate limits.
    pub fn from_tap_file(tap: File, name: String, mac: [u8; 6]) -> Result<Self, Error> {
        petrel_util::set_nonblocking(&tap).map_err(|source| Error::OpenTap {
            name: name.clone(),
            source,
        })?;
        Ok(Net {
            tap,
            tap_name: name,
            config: mac,
            active: None,
            rx_pending: None,
            rx_buf: vec![0; MAX_FRAME_LEN + 1],
            tx_buf: vec![0; MAX_FRAME_LEN],
            bufs: ChainBuffers::default(),
            stats: NetStats::default(),
            rx_throttle: Throttle::new(&RateLimiterConfig::default())?,
            tx_throttle: Throttle::new(&RateLimiterConfig::default())?,
            detour: None,
            detour_turn: false,
        })
    }

    /// Puts `detour` on the device's path (replacing any other): from now on it is offered
    /// every frame the guest sends, and its frames are delivered to the guest.
    pub fn set_detour(&mut self, detour: Box<dyn FrameDetour>) {
        self.detour = Some(detour);
    }

    /// Takes the detour off the device's path.
    pub fn clear_detour(&mut self) -> Option<Box<dyn FrameDetour>> {
        self.detour.take()
    }

    /// Changes the receive and transmit rate limits with Firecracker's PATCH semantics
    /// ([`RateLimiter::update`](crate::RateLimiter::update)), each direction on its own: a
    /// bucket given is replaced by a new full one (removed if its size or refill time is 0), a
    /// bucket not given is kept (an empty config leaves that direction as it is). On a new
    /// device (no limits) this sets the limiters of Firecracker's `PUT /network-interfaces`. A
    /// direction waiting for tokens tries again at once.
    pub fn set_rate_limiters(&mut self, rx: &RateLimiterConfig, tx: &RateLimiterConfig) {
        self.rx_throttle.update(rx);
        self.tx_throttle.update(tx);
    }

    /// The current parameters of the receive and transmit limiters (`None` for absent
    /// buckets).
    pub fn rate_limiters(&self) -> (RateLimiterConfig, RateLimiterConfig) {
        (self.rx_throttle.config(), self.tx_throttle.config())
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.config
    }

    /// The device's counters.
    pub fn stats(&self) -> NetStats {
        NetStats {
            rx_throttled: self.rx_throttle.throttled(),
            tx_throttled: self.tx_throttle.throttled(),
            ..self.stats
        }
    }

    /// Sends transmit chains to the tap (or the detour), one wake-up's budget of them; then,
    /// when the detour took a frame, delivers what it has for the guest.
    fn process_tx(&mut self) -> Result<Processed, VirtioError>
    where
        M: GuestMemory,
    {
        let detoured = self.stats.tx_detoured;
        let mut done = self.send_chains()?;
        if self.stats.tx_detoured != detoured && self.detour.as_ref().is_some_and(|d| d.has_rx()) {
            let rx = self.process_rx()?;
            done.interrupt |= rx.interrupt;
            done.rearm |= rx.rearm;
        }
        Ok(done)
    }

    /// Sends transmit chains to the tap, or to the detour when it takes them.
    fn send_chains(&mut self) -> Result<Processed, VirtioError>
    where
        M: GuestMemory,
    {
        let fault = |fault| VirtioError::VirtioFault {
            device: "virtio-net",
            queue: TX_QUEUE,
            fault,
        };
        let Net {
            tap,
            active,
            tx_buf,
            bufs,
            stats,
            tx_throttle,
            detour,
            ..
        } = self;
        let Some(Active { mem, tx, .. }) = active.as_mut() else {
            return Ok(Processed::IDLE);
        };
        let now = Instant::now();
        // Throttled: the timer brings the device back; notifications meanwhile change nothing.
        if tx_throttle.waiting(now) {
            return Ok(Processed::IDLE);
        }
        let mut budget = Budget::new();
        let batch = chain::process_chains(tx, mem, bufs, &mut budget, |bufs| {
            let len = bufs.readable_len();
            let ok = bufs.writable.is_empty()
                && !bufs.outside_ram
                && (NET_HDR_LEN as u64..=MAX_FRAME_LEN as u64).contains(&len);
            if ok && !tx_throttle.admit(1, len, now) {
                return Ok(Step::Wait);
            }
            // `len <= MAX_FRAME_LEN` when `ok`.
            let frame = &mut tx_buf[..if ok { len as usize } else { 0 }];
            if !ok || !chain::gather(mem, &bufs.readable, 0, frame) {
                stats.tx_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            frame[..NET_HDR_LEN].fill(0);
            if let Some(detour) = detour.as_mut() {
                if detour.detour_tx(&frame[NET_HDR_LEN..]) {
                    stats.tx_detoured += 1;
                    return Ok(Step::Done { len: 0, bytes: len });
                }
            }
            // A tap takes a frame whole or not at all; a short write counts as a failure.
            match tap.write(frame) {
                Ok(n) if n == frame.len() => {
                    stats.tx_frames += 1;
                    stats.tx_bytes += len;
                }
                Ok(_) | Err(_) => stats.tx_errors += 1,
            }
            Ok(Step::Done { len: 0, bytes: len })
        })
        .map_err(fault)?;
        let mut done = Processed::interrupt(batch.interrupt);
        if batch.more() {
            done.rearm_queue(TX_QUEUE);
        }
        Ok(done)
    }

    /// Delivers the pending frame, then frames from the tap, each into the next receive chain,
    /// until the tap has none, the guest has no receive buffer left, or the wake-up's budget is
    /// spent.
    ///
    /// The tap is watched edge-triggered, so epoll does not report it again while frames are
    /// left in it: when the budget runs out with receive chains left, the receive queue is
    /// re-armed instead, and its next wake-up goes on reading the tap. With no chain left, the
    /// guest's next notification of the receive queue does the same.
    fn process_rx(&mut self) -> Result<Processed, VirtioError>
    where
        M: GuestMemory,
    {
        let fault = |fault| VirtioError::VirtioFault {
            device: "virtio-net",
            queue: RX_QUEUE,
            fault,
        };
        let Net {
            tap,
            active,
            rx_pending,
            rx_buf,
            bufs,
            stats,
            rx_throttle,
            detour,
            detour_turn,
            ..
        } = self;
        let Some(Active { mem, rx, .. }) = active.as_mut() else {
            // Frames wait in the tap until the driver is ready and adds buffers.
            return Ok(Processed::IDLE);
        };
        let now = Instant::now();
        // Throttled: frames wait (in `rx_pending` and the tap) until the timer fires.
        if rx_throttle.waiting(now) {
            return Ok(Processed::IDLE);
        }
        let mut budget = Budget::new();
        let batch = chain::process_chains(rx, mem, bufs, &mut budget, |bufs| {
            let len = match *rx_pending {
                Some(len) => len,
                None => {
                    // The detour's turn: its frame, if it has one.
                    let from_detour = if *detour_turn {
                        detour_frame(detour, rx_buf, stats)
                    } else {
                        None
                    };
                    match from_detour {
                        Some(len) => {
                            *detour_turn = false;
                            len
                        }
                        None => match read_frame(tap, rx_buf, stats) {
                            Some(Ok(len)) => {
                                *detour_turn = true;
                                len
                            }
                            // A bad frame was dropped: the chain is offered the next one.
                            Some(Err(())) => return Ok(Step::Retry),
                            // The tap has none: the detour's, if it has one.
                            None => match detour_frame(detour, rx_buf, stats) {
                                Some(len) => len,
                                None => return Ok(Step::Wait),
                            },
                        },
                    }
                }
            };
            *rx_pending = Some(len);
            if !bufs.readable.is_empty() || bufs.outside_ram {
                stats.rx_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            if bufs.writable_len() < len as u64 {
                // Never fits this chain: drop the frame, keep the chain for the next one.
                stats.rx_too_large += 1;
                *rx_pending = None;
                return Ok(Step::Retry);
            }
            if !rx_throttle.admit(1, len as u64, now) {
                // The frame stays pending, the chain in the ring.
                return Ok(Step::Wait);
            }
            let frame = &mut rx_buf[..len];
            // virtio v1.2, 5.1.6.4.1: without VIRTIO_NET_F_MRG_RXBUF, num_buffers is 1.
            frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            // The chain's buffers are all inside guest RAM and hold `len` bytes.
            if !chain::scatter(mem, &bufs.writable, 0, frame) {
                stats.rx_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            *rx_pending = None;
            stats.rx_frames += 1;
            stats.rx_bytes += len as u64;
            // `len <= MAX_FRAME_LEN`.
            Ok(Step::Done {
                len: len as u32,
                bytes: len as u64,
            })
        })
        .map_err(fault)?;
        if batch.end == BatchEnd::Empty {
            // No receive buffer: take one frame off the tap (if it has a good one) and keep it
            // until the guest adds buffers; the rest waits in the tap.
            if rx_pending.is_none() {
                *rx_pending = read_frame(tap, rx_buf, stats).and_then(Result::ok);
            }
            if rx_pending.is_some() {
                stats.rx_deferred += 1;
            }
        }
        let mut done = Processed::interrupt(batch.interrupt);
        if batch.more() {
            done.rearm_queue(RX_QUEUE);
        }
        Ok(done)
    }
}

/// Takes the detour's next frame for the guest into `buf` behind a blank header: its length,
/// header included; `None` when there is no detour or it has no frame.
fn detour_frame(
    detour: &mut Option<Box<dyn FrameDetour>>,
    buf: &mut [u8],
    stats: &mut NetStats,
) -> Option<usize> {
    let detour = detour.as_mut().filter(|d| d.has_rx())?;
    let room = buf.get_mut(NET_HDR_LEN..MAX_FRAME_LEN)?;
    let len = detour.next_rx(room)?.min(room.len());
    buf[..NET_HDR_LEN].fill(0);
    stats.rx_detoured += 1;
    Some(NET_HDR_LEN + len)
}

/// Reads one frame from the tap into `buf`: its length, `Err` for a frame too short for the
/// header or longer than [`MAX_FRAME_LEN`] (dropped and counted), `None` when the tap has no
/// frame (or failed, counted).
fn read_frame(mut tap: &File, buf: &mut [u8], stats: &mut NetStats) -> Option<Result<usize, ()>> {
    loop {
        return match tap.read(buf) {
            Ok(n) if (NET_HDR_LEN..=MAX_FRAME_LEN).contains(&n) => Some(Ok(n)),
            // Too short for a header, or longer than the largest frame (the buffer has one
            // byte more to tell).
            Ok(_) => {
                stats.rx_bad_frames += 1;
                Some(Err(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                stats.rx_errors += 1;
                None
            }
        };
    }
}

impl<M: VirtioMemory> VirtioDevice<M> for Net<M> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("rx_frames", s.rx_frames),
            ("rx_bytes", s.rx_bytes),
            ("rx_deferred", s.rx_deferred),
            ("rx_too_large", s.rx_too_large),
            ("rx_bad_frames", s.rx_bad_frames),
            ("rx_bad_chains", s.rx_bad_chains),
            ("rx_errors", s.rx_errors),
            ("tx_frames", s.tx_frames),
            ("tx_bytes", s.tx_bytes),
            ("tx_bad_chains", s.tx_bad_chains),
            ("tx_errors", s.tx_errors),
            ("rx_throttled", s.rx_throttled),
            ("tx_throttled", s.tx_throttled),
            ("tx_detoured", s.tx_detoured),
            ("rx_detoured", s.rx_detoured),
        ]
    }

    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio v1.2, 5.1.4: `mac` is the first field; the others need features not offered.
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: M,
        queues: Vec<Queue>,
        _interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(VirtioError::VirtioFault {
                device: self.name(),
                queue: TX_QUEUE,
                fault: GuestFault::QueueConfig {
                    what: "the receive or transmit queue is missing",
                },
            });
        };
        self.active = Some(Active { mem, rx, tx });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<Processed, VirtioError> {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => Ok(Processed::IDLE),
        }
    }

    fn event_sources(&self) -> Vec<EventSource> {
        vec![
            EventSource {
                fd: self.tap.as_raw_fd(),
                token: TAP_TOKEN,
                edge_triggered: true,
            },
            self.rx_throttle.event_source(RX_TIMER_TOKEN),
            self.tx_throttle.event_source(TX_TIMER_TOKEN),
        ]
    }

    fn process_event(&mut self, token: u32) -> Result<Processed, VirtioError> {
        match token {
            TAP_TOKEN => self.process_rx(),
            RX_TIMER_TOKEN => {
                self.rx_throttle.fired();
                self.process_rx()
            }
            TX_TIMER_TOKEN => {
                self.tx_throttle.fired();
                self.process_tx()
            }
            _ => Ok(Processed::IDLE),
        }
    }

    fn reset(&mut self) {
        // A frame already read from the tap is kept for the next activation; so are the
        // limiters' tokens (a reset does not buy the guest a fresh budget).
        self.active = None;
        self.rx_throttle.reset();
        self.tx_throttle.reset();
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active.iter().flat_map(|a| [&a.rx, &a.tx]).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(NetState {
            mac: self.config,
            tap_name: self.tap_name.clone(),
            rx_rate_limiter: self.rx_throttle.config(),
            tx_rate_limiter: self.tx_throttle.config(),
        })
    }

    /// Checks the MAC address (the guest knows it; the VMM builds the device with the saved
    /// one) and takes the rate limiters' parameters, with full buckets. The tap may have
    /// another name than the saved one (the user's override).
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        let DeviceState::Net(state) = state else {
            return Err(VirtioError::DeviceStateMismatch {
                device: self.name(),
                saved: state.device_name(),
            });
        };
        if state.mac != self.config {
            let show = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
            return Err(VirtioError::InvalidState {
                device: self.name(),
                why: format!(
                    "the saved MAC address is {}, this device's {} (tap {})",
                    show(state.mac),
                    show(self.config),
                    self.tap_name
                ),
            });
        }
        self.rx_throttle.restore(&state.rx_rate_limiter);
        self.tx_throttle.restore(&state.tx_rate_limiter);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

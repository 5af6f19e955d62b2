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
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::testutil::*;
    use crate::virtio::{VirtioMmio, INTERRUPT_VRING, STATUS_DEVICE_NEEDS_RESET};

    const MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
    const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC;
    const RXB: u64 = 0x4_0000;
    const TXB: u64 = 0x8_0000;

    struct Rig {
        m: VirtioMmio<Net>,
        mem: GuestMemoryMmap,
        rx: TestQueue,
        tx: TestQueue,
        peer: UnixDatagram,
        rx_next: u16,
        tx_next: u16,
    }

    fn rig() -> Rig {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let tap = File::from(OwnedFd::from(ours));
        let net = Net::from_tap_file(tap, "test0".into(), MAC).unwrap();
        let mem = guest_mem();
        let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
        let rx = TestQueue::new(0x1000, QUEUE_SIZE);
        let tx = TestQueue::new(0x3000, QUEUE_SIZE);
        bring_up(&mut m, FEATURES, &[rx, tx]);
        m.process_queue_event(0);
        m.process_queue_event(1);
        Rig {
            m,
            mem,
            rx,
            tx,
            peer,
            rx_next: 0,
            tx_next: 0,
        }
    }

    /// A frame with a virtio-net header (all zero but `flags`) and `payload`.
    fn frame(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; NET_HDR_LEN];
        f[0] = flags;
        f.extend_from_slice(payload);
        f
    }

    impl Rig {
        /// Adds one receive chain of `bufs`, and notifies unless `quiet`.
        fn add_rx(&mut self, bufs: &[Buf], notify: bool) -> u16 {
            let head = self.rx.chain(&self.mem, self.rx_next, bufs);
            self.rx_next += bufs.len() as u16;
            self.rx.publish(&self.mem, head);
            if notify {
                self.m.process_queue_event(RX_QUEUE);
            }
            head
        }

        /// Sends `bytes` split over `splits` descriptors from the guest.
        fn send(&mut self, bytes: &[u8], bufs: &[Buf]) {
            self.mem.write_slice(bytes, GuestAddress(TXB)).unwrap();
            let head = self.tx.chain(&self.mem, self.tx_next, bufs);
            self.tx_next += bufs.len() as u16;
            self.tx.publish(&self.mem, head);
            self.m.process_queue_event(TX_QUEUE);
        }

        fn tap_readable(&mut self) {
            self.m.process_device_event(TAP_TOKEN);
        }

        fn peer_recv(&self) -> Option<Vec<u8>> {
            let mut b = vec![0u8; 70000];
            let n = self.peer.recv(&mut b).ok()?;
            b.truncate(n);
            Some(b)
        }

        fn rx_used(&self) -> Vec<(u32, u32)> {
            (0..self.rx.used_idx(&self.mem))
                .map(|i| self.rx.used_elem(&self.mem, i))
                .collect()
        }

        fn read_guest(&self, addr: u64, len: u32) -> Vec<u8> {
            let mut v = vec![0u8; len as usize];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    #[test]
    fn config_features_and_queues() {
        let mut r = rig();
        assert_eq!(read_config(&mut r.m, 0, 8), [6, 0, 0xac, 0x10, 0, 2, 0, 0]);
        assert_eq!(r.m.device().features(), FEATURES);
        assert_eq!(rd(&mut r.m, 0x008), 1);
        for q in 0..2 {
            wr(&mut r.m, 0x30, q);
            assert_eq!(rd(&mut r.m, 0x34), 256);
        }
        wr(&mut r.m, 0x30, 2);
        assert_eq!(rd(&mut r.m, 0x34), 0);
        assert_eq!(r.m.device().mac(), MAC);
        assert_eq!(r.m.device().tap_name(), "test0");
    }

    #[test]
    fn transmit_gathers_the_chain_into_one_frame() {
        let mut r = rig();
        let f = frame(0, b"hello, world");
        // Header split from the payload, and the payload split too.
        r.send(
            &f,
            &[(TXB, 12, false), (TXB + 12, 5, false), (TXB + 17, 7, false)],
        );
        assert_eq!(r.peer_recv().unwrap(), f);
        assert_eq!(r.tx.used_elem(&r.mem, 0), (0, 0));
        assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
        let s = r.m.device().stats();
        assert_eq!((s.tx_frames, s.tx_bytes), (1, f.len() as u64));
    }

    #[test]
    fn transmit_header_is_zeroed() {
        // NEEDS_CSUM and a GSO type the guest never negotiated do not reach the host.
        let mut r = rig();
        let mut f = frame(1, &[0xab; 60]);
        f[1] = 4; // VIRTIO_NET_HDR_GSO_TCPV6
        f[4..6].copy_from_slice(&1400u16.to_le_bytes());
        r.send(&f, &[(TXB, f.len() as u32, false)]);
        let got = r.peer_recv().unwrap();
        assert_eq!(&got[..NET_HDR_LEN], &[0; NET_HDR_LEN]);
        assert_eq!(&got[NET_HDR_LEN..], &f[NET_HDR_LEN..]);
    }

    #[test]
    fn bad_transmit_chains_are_dropped() {
        let mut r = rig();
        let f = frame(0, &[1; 50]);
        let cases: &[&[Buf]] = &[
            // A device-writable buffer in a transmit chain.
            &[(TXB, 12, false), (TXB + 12, 50, true)],
            // Shorter than the header.
            &[(TXB, 11, false)],
            // Outside guest RAM.
            &[(TXB, 12, false), (0xf_fff0, 50, false)],
            // Longer than the largest frame.
            &[(TXB, 12, false), (TXB, 65551, false)],
        ];
        for (i, bufs) in cases.iter().enumerate() {
            r.send(&f, bufs);
            assert_eq!(r.tx.used_idx(&r.mem), i as u16 + 1, "{bufs:?}");
            assert_eq!(r.peer_recv(), None, "{bufs:?}");
        }
        assert_eq!(r.m.device().stats().tx_bad_chains, 4);
        assert!(r.m.is_running());
        // A good one still goes through.
        r.send(&f, &[(TXB, f.len() as u32, false)]);
        assert_eq!(r.peer_recv().unwrap(), f);
    }

    /// One bucket of `size` tokens refilled over 100 s: in a test, what is taken is gone.
    fn slow(size: u64) -> Option<crate::rate_limiter::TokenBucketConfig> {
        Some(crate::rate_limiter::TokenBucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 100_000,
        })
    }

    #[test]
    fn transmit_waits_for_the_tx_limiter() {
        let mut r = rig();
        let none = RateLimiterConfig::default();
        let tx = RateLimiterConfig {
            bandwidth: None,
            ops: slow(1),
        };
        r.m.device_as_mut::<Net>()
            .unwrap()
            .set_rate_limiters(&none, &tx);
        assert_eq!(r.m.device().rate_limiters(), (none, tx));
        let f = frame(0, &[1; 50]);
        r.send(&f, &[(TXB, f.len() as u32, false)]);
        r.send(&f, &[(TXB, f.len() as u32, false)]);
        // One frame out; the second chain waits in the ring.
        assert_eq!(r.peer_recv().unwrap(), f);
        assert_eq!(r.peer_recv(), None);
        assert_eq!(r.tx.used_idx(&r.mem), 1);
        let s = r.m.device().stats();
        assert_eq!((s.tx_frames, s.tx_throttled, s.rx_throttled), (1, 1, 0));
        // Still waiting on a new notification.
        r.m.process_queue_event(TX_QUEUE);
        assert_eq!(r.tx.used_idx(&r.mem), 1);
        // The host lifts the limit; the waiting direction is woken through its timer.
        r.m.device_mut().set_rate_limiters(
            &none,
            &RateLimiterConfig {
                bandwidth: None,
                ops: Some(Default::default()),
            },
        );
        r.m.process_device_event(TX_TIMER_TOKEN);
        assert_eq!(r.peer_recv().unwrap(), f);
        assert_eq!(r.tx.used_idx(&r.mem), 2);
        assert_eq!(r.m.device().rate_limiters(), (none, none));
        assert!(r.m.device().counters().contains(&("tx_throttled", 1)));
    }

    #[test]
    fn received_frames_wait_for_the_rx_limiter() {
        let mut r = rig();
        let rx = RateLimiterConfig {
            bandwidth: slow(100),
            ops: None,
        };
        r.m.device_mut()
            .set_rate_limiters(&rx, &RateLimiterConfig::default());
        for i in 0..2 {
            r.add_rx(&[(RXB + 0x1000 * i, 2048, true)], true);
        }
        let (a, b) = (frame(0, &[0xa; 48]), frame(0, &[0xb; 48]));
        r.peer.send(&a).unwrap();
        r.peer.send(&b).unwrap();
        r.tap_readable();
        // 60 bytes fit in the bucket of 100, the next 60 do not: the frame is kept.
        assert_eq!(r.rx_used(), [(0, 60)]);
        assert_eq!(r.m.device().stats().rx_throttled, 1);
        assert_eq!(r.m.device().stats().rx_frames, 1);
        // The tap firing again changes nothing while the device waits.
        r.tap_readable();
        assert_eq!(r.rx_used().len(), 1);
        // A PATCH that gives the rx bandwidth a new, full bucket; tx not given, kept.
        r.m.device_mut().set_rate_limiters(
            &RateLimiterConfig {
                bandwidth: slow(1000),
                ops: None,
            },
            &RateLimiterConfig::default(),
        );
        r.m.process_device_event(RX_TIMER_TOKEN);
        assert_eq!(r.rx_used(), [(0, 60), (1, 60)]);
        assert_eq!(&r.read_guest(RXB + 0x1000 + 12, 48), &[0xb; 48]);
        assert_eq!(r.m.device().stats().rx_frames, 2);
    }

    #[test]
    fn receive_into_the_next_chain() {
        let mut r = rig();
        let intr = r.m.interrupt_evt().unwrap().try_clone().unwrap();
        let _ = intr.read();
        let head = r.add_rx(&[(RXB, 12, true), (RXB + 0x1000, 1514, true)], true);
        let f = frame(0, &[0x42; 100]);
        r.peer.send(&f).unwrap();
        r.tap_readable();
        assert_eq!(r.rx_used(), [(u32::from(head), f.len() as u32)]);
        // num_buffers is set to 1.
        let mut want_hdr = f[..NET_HDR_LEN].to_vec();
        want_hdr[10] = 1;
        assert_eq!(r.read_guest(RXB, 12), want_hdr);
        assert_eq!(r.read_guest(RXB + 0x1000, 100), [0x42; 100]);
        assert_eq!(intr.read().unwrap(), 1);
        let s = r.m.device().stats();
        assert_eq!((s.rx_frames, s.rx_bytes), (1, f.len() as u64));
    }

    #[test]
    fn frames_wait_for_buffers_and_are_never_dropped() {
        let mut r = rig();
        for i in 0..3u8 {
            r.peer.send(&frame(0, &[i; 20])).unwrap();
        }
        // No receive buffers: the first frame is read and kept, the others stay in the tap.
        r.tap_readable();
        r.tap_readable();
        assert!(r.rx_used().is_empty());
        assert_eq!(r.m.device().stats().rx_deferred, 2);
        // One buffer at a time, each notification delivers the next frame, in order.
        for i in 0..3u8 {
            r.add_rx(&[(RXB + 0x1000 * u64::from(i), 2048, true)], true);
            assert_eq!(r.rx_used().len(), usize::from(i) + 1);
            assert_eq!(r.read_guest(RXB + 0x1000 * u64::from(i) + 12, 20), [i; 20]);
        }
        assert_eq!(r.m.device().stats().rx_frames, 3);
    }

    #[test]
    fn frame_too_large_for_the_chain_is_dropped_and_the_chain_kept() {
        let mut r = rig();
        let head = r.add_rx(&[(RXB, 64, true)], true);
        r.peer.send(&frame(0, &[9; 100])).unwrap();
        r.peer.send(&frame(0, &[8; 10])).unwrap();
        r.tap_readable();
        assert_eq!(r.rx_used(), [(u32::from(head), 22)]);
        assert_eq!(r.read_guest(RXB + 12, 10), [8; 10]);
        assert_eq!(r.m.device().stats().rx_too_large, 1);
    }

    #[test]
    fn bad_receive_chains_are_returned_unused() {
        let mut r = rig();
        // Device-readable; outside guest RAM; then a good one.
        let a = r.add_rx(&[(RXB, 2048, false)], false);
        let b = r.add_rx(&[(RXB, 12, true), (0xf_ff00, 2048, true)], false);
        let c = r.add_rx(&[(RXB + 0x1000, 2048, true)], false);
        let f = frame(0, &[5; 30]);
        r.peer.send(&f).unwrap();
        r.peer.send(&[1, 2, 3]).unwrap(); // shorter than a header
        r.tap_readable();
        assert_eq!(
            r.rx_used(),
            [
                (u32::from(a), 0),
                (u32::from(b), 0),
                (u32::from(c), f.len() as u32)
            ]
        );
        assert_eq!(r.read_guest(RXB, 4), [0; 4]);
        let s = r.m.device().stats();
        assert_eq!((s.rx_bad_chains, s.rx_bad_frames), (2, 1));
        assert!(r.m.is_running());
    }

    #[test]
    fn broken_chains_need_reset() {
        let mut r = rig();
        r.tx.set_desc(&r.mem, 0, TXB, 64, F_NEXT, 0);
        r.tx.publish(&r.mem, 0);
        r.m.process_queue_event(TX_QUEUE);
        assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(r.peer_recv(), None);

        let mut r = rig();
        r.rx.set_desc(&r.mem, 0, RXB, 64, F_WRITE | F_NEXT, 300);
        r.rx.publish(&r.mem, 0);
        r.peer.send(&frame(0, &[1; 10])).unwrap();
        r.tap_readable();
        assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        // Stopped: tap events no longer reach the device.
        r.peer.send(&frame(0, &[2; 10])).unwrap();
        r.tap_readable();
        assert_eq!(r.m.device().stats().rx_deferred, 0);
    }

    #[test]
    fn a_frame_read_before_reset_is_delivered_after() {
        let mut r = rig();
        r.peer.send(&frame(0, &[3; 40])).unwrap();
        r.tap_readable();
        assert_eq!(r.m.device().stats().rx_deferred, 1);
        wr(&mut r.m, 0x70, 0);
        let rx = TestQueue::new(0x6000, QUEUE_SIZE);
        bring_up(&mut r.m, FEATURES, &[rx, r.tx]);
        let head = rx.chain(&r.mem, 0, &[(RXB, 2048, true)]);
        rx.publish(&r.mem, head);
        r.m.process_queue_event(RX_QUEUE);
        assert_eq!(rx.used_elem(&r.mem, 0), (0, 52));
        assert_eq!(r.read_guest(RXB + 12, 40), [3; 40]);
    }

    #[test]
    fn the_tap_is_watched_edge_triggered_by_the_event_loop() {
        let r = rig();
        let Rig {
            m, mem, rx, peer, ..
        } = r;
        assert!(m.device().event_sources()[0].edge_triggered);
        let dev = Arc::new(Mutex::new(m));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let head = rx.chain(&mem, 0, &[(RXB, 2048, true)]);
        rx.publish(&mem, head);
        dev.lock().unwrap().process_queue_event(RX_QUEUE);
        peer.send(&frame(0, b"ping")).unwrap();
        let mut spins = 0;
        while rx.used_idx(&mem) == 0 && spins < 50 {
            em.run_with_timeout(100).unwrap();
            spins += 1;
        }
        assert_eq!(rx.used_elem(&mem, 0), (0, 16));
        assert_eq!(dev.lock().unwrap().stats().event_registration_failures, 0);
    }

    /// A connected pair of `SOCK_SEQPACKET` sockets: one frame per read and write, like a
    /// tap, without a datagram socket's small queue limit (`net.unix.max_dgram_qlen`).
    fn seqpacket_pair() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which has room for them; the
        // result is checked.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_tap_flood_is_delivered_64_frames_per_round() {
        let (ours, mut peer) = seqpacket_pair();
        let net = Net::from_tap_file(ours, "test0".into(), MAC).unwrap();
        let mem = guest_mem();
        let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
        let rx = TestQueue::new(0x1000, QUEUE_SIZE);
        let tx = TestQueue::new(0x3000, QUEUE_SIZE);
        bring_up(&mut m, FEATURES, &[rx, tx]);
        for evt in m.queue_events() {
            let _ = evt.read();
        }
        // 100 receive buffers, all at one address (only the lengths are checked).
        for i in 0..100u16 {
            let head = rx.chain(&mem, i, &[(RXB, 2048, true)]);
            rx.publish(&mem, head);
        }
        // 100 frames, frame `i` 32 + i bytes long, waiting in the "tap".
        petrel_util::set_nonblocking(&peer).unwrap();
        for i in 0..100u8 {
            peer.write_all(&frame(0, &vec![i; 20 + usize::from(i)]))
                .unwrap();
        }
        let dev = Arc::new(Mutex::new(m));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        // The tap is reported once (edge-triggered); the rest comes through the re-armed
        // receive queue, a budget per round.
        let mut rounds = Vec::new();
        let mut used = 0;
        while used < 100 && rounds.len() < 100 {
            em.run_with_timeout(1000).unwrap();
            let now = rx.used_idx(&mem);
            assert!(now >= used);
            rounds.push(now - used);
            used = now;
        }
        assert_eq!(rounds, [64, 36]);
        // In order, each once.
        for k in 0..100u16 {
            assert_eq!(rx.used_elem(&mem, k), (u32::from(k), 32 + u32::from(k)));
        }
        let m = dev.lock().unwrap();
        assert_eq!((m.device().stats().rx_frames, m.stats().rearms), (100, 1));
    }

    #[test]
    fn open_tap_names_the_tap_in_errors() {
        let err = Net::<GuestMemoryMmap>::open_tap("petrel-nope0", MAC).unwrap_err();
        assert!(matches!(err, Error::TapNotFound { .. }), "{err}");
        assert!(err.to_string().contains("petrel-nope0"), "{err}");
        for bad in ["", "a/b", "sixteen-chars-xx", "..", "a\0b"] {
            let err = Net::<GuestMemoryMmap>::open_tap(bad, MAC).unwrap_err();
            assert!(matches!(err, Error::TapName { .. }), "{bad:?}: {err}");
        }
    }

    /// Opens a real tap when `PETREL_TEST_TAP` names one (e.g. after
    /// `ip tuntap add dev ptap0 mode tap`); skipped otherwise. With `PETREL_TEST_TAP_IP` set
    /// to the tap's IPv4 address (the tap up), the "guest" asks for its MAC with ARP and
    /// expects the host's answer: the 12-byte header works both ways.
    #[test]
    fn open_a_real_tap() {
        let Ok(name) = std::env::var("PETREL_TEST_TAP") else {
            eprintln!("skipped: PETREL_TEST_TAP is not set");
            return;
        };
        let net = Net::<GuestMemoryMmap>::open_tap(&name, MAC).unwrap();
        assert_eq!(net.tap_name(), name);
        let Ok(ip) = std::env::var("PETREL_TEST_TAP_IP") else {
            return;
        };
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let mem = guest_mem();
        let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
        let rx = TestQueue::new(0x1000, QUEUE_SIZE);
        let tx = TestQueue::new(0x3000, QUEUE_SIZE);
        bring_up(&mut m, FEATURES, &[rx, tx]);
        for i in 0..8u16 {
            let head = rx.chain(&mem, i, &[(RXB + 0x1000 * u64::from(i), 2048, true)]);
            rx.publish(&mem, head);
        }
        m.process_queue_event(RX_QUEUE);
        // An ARP who-has for `ip` from 169.254.0.2 (RFC 826 layout).
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&MAC);
        let mut sender = ip.octets();
        sender[3] = sender[3].wrapping_add(1);
        arp.extend_from_slice(&sender);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&ip.octets());
        let f = frame(0, &arp);
        mem.write_slice(&f, GuestAddress(TXB)).unwrap();
        let head = tx.chain(&mem, 0, &[(TXB, f.len() as u32, false)]);
        tx.publish(&mem, head);
        m.process_queue_event(TX_QUEUE);
        assert_eq!(m.device().stats().tx_frames, 1, "{:?}", m.device().stats());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            m.process_device_event(TAP_TOKEN);
            for i in 0..rx.used_idx(&mem) {
                let (id, len) = rx.used_elem(&mem, i);
                let mut got = vec![0u8; len as usize];
                mem.read_slice(&mut got, GuestAddress(RXB + 0x1000 * u64::from(id as u16)))
                    .unwrap();
                // An ARP reply (opcode 2) to our MAC.
                if got.len() >= 42 + NET_HDR_LEN
                    && got[NET_HDR_LEN..NET_HDR_LEN + 6] == MAC
                    && got[NET_HDR_LEN + 12..NET_HDR_LEN + 14] == [0x08, 0x06]
                    && got[NET_HDR_LEN + 20..NET_HDR_LEN + 22] == [0, 2]
                {
                    assert_eq!(&got[10..12], &[1, 0]);
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no ARP reply from {ip} on {name}: {:?}", m.device().stats());
    }

    #[test]
    fn a_restored_interface_transmits_at_the_next_used_index_on_a_new_tap() {
        let mut r = rig();
        let limits = RateLimiterConfig {
            bandwidth: None,
            ops: Some(crate::rate_limiter::TokenBucketConfig {
                size: 1000,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
        };
        r.m.device_mut()
            .set_rate_limiters(&limits, &RateLimiterConfig::default());
        let f = frame(0, b"before");
        r.send(&f, &[(TXB, f.len() as u32, false)]);
        assert_eq!(r.peer_recv().unwrap(), f);
        let state = r.m.save_state();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            serde_json::from_str::<crate::virtio::VirtioMmioState>(&json).unwrap(),
            state
        );

        // Another tap name (the user's override), the same MAC.
        let (ours, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let tap = File::from(OwnedFd::from(ours));
        let net = Net::from_tap_file(tap, "test1".into(), MAC).unwrap();
        let mut m = VirtioMmio::new(net, r.mem.clone()).unwrap();
        m.restore_state(&state).unwrap();
        assert_eq!(
            m.device().rate_limiters(),
            (limits, RateLimiterConfig::default())
        );
        assert_eq!(m.device().tap_name(), "test1");
        assert_eq!(m.interrupt_evt().unwrap().read().unwrap(), 1);
        r.m = m;
        r.peer = peer;
        run_rearmed(&mut r.m);
        let f = frame(0, b"after");
        r.send(&f, &[(TXB, f.len() as u32, false)]);
        assert_eq!(r.peer_recv().unwrap(), f);
        assert_eq!(r.tx.used_idx(&r.mem), 2);
        assert_eq!(r.tx.used_elem(&r.mem, 1), (1, 0));

        // Another MAC is not the interface the guest knew.
        let (ours, _peer) = UnixDatagram::pair().unwrap();
        let other = [0x06, 0, 0, 0, 0, 9];
        let net =
            Net::from_tap_file(File::from(OwnedFd::from(ours)), "test2".into(), other).unwrap();
        let mut m = VirtioMmio::new(net, r.mem.clone()).unwrap();
        let err = m.restore_state(&state).unwrap_err();
        assert!(err.to_string().contains("06:00:ac:10:00:02"), "{err}");
    }
}

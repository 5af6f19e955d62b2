//! virtio-vsock with host-side connections over Unix sockets (virtio v1.2, 5.10 Socket
//! Device), following Firecracker's convention for the host side.
//!
//! Three queues: receive ([`RX_QUEUE`]), transmit ([`TX_QUEUE`]) and event ([`EVENT_QUEUE`],
//! used for one thing only: after a snapshot is restored the device sends the guest
//! VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, since no connection survives a restore). The configuration space is the guest's
//! CID as a little-endian 64-bit value (virtio v1.2, 5.10.4). Only stream sockets are
//! supported: no feature but VIRTIO_F_VERSION_1 is offered, which implies
//! VIRTIO_VSOCK_F_STREAM (virtio v1.2, 5.10.3).
//!
//! The host side (see [`Vsock::new`]):
//!
//! - **Host-initiated connections.** The device listens on a Unix socket at `uds_path`. A host
//!   process connects to it and writes `CONNECT <port>\n`; the device sends the guest an
//!   OP_REQUEST from the host (CID 2) and a local port of its own choosing to `port`. When the
//!   guest accepts (OP_RESPONSE) the device writes `OK <local port>\n` to the host stream, and
//!   from then on the stream carries the connection's bytes both ways. If the guest refuses
//!   (OP_RST), or does not answer within [`CONNECT_TIMEOUT`], the host stream is closed.
//! - **Guest-initiated connections.** An OP_REQUEST from the guest to the host's port `P`
//!   makes the device connect to the Unix socket `<uds_path>_<P>` (without blocking); the guest
//!   gets OP_RESPONSE if that worked, OP_RST if not.
//! - **Closing.** A guest OP_RST closes the host stream at once; a guest OP_SHUTDOWN shuts the
//!   stream's matching direction, and with both directions shut the device answers OP_RST
//!   (once the host has everything the guest sent) and closes the stream. A host that stops
//!   sending (half-close) gets the guest an OP_SHUTDOWN with "send"; a host that closes the
//!   stream gets it an OP_SHUTDOWN with both flags, and an OP_RST after [`SHUTDOWN_TIMEOUT`]
//!   if the guest does not reset the connection itself.
//!
//! **Flow control** is the spec's credit scheme (virtio v1.2, 5.10.6.3): the device advertises
//! [`CONN_BUF_SIZE`] bytes per connection and counts what it has written to the host stream
//! (`fwd_cnt`); a guest sending past that credit gets the connection reset. In the other
//! direction the device reads from the host stream only as much as the guest's advertised
//! credit allows, and asks for credit (OP_CREDIT_REQUEST) when it has none. Data the host
//! sends waits in the host socket, not in the device.
//!
//! **Hostile guests.** Transmit chains that are device-writable, outside guest RAM, shorter
//! than a header, or whose header claims more payload than the chain holds (or more than
//! [`MAX_PAYLOAD`]) are dropped and counted; packets with the wrong source or destination CID
//! are dropped; a wrong socket type or an unknown operation is answered with OP_RST, as is
//! any packet for a connection that does not exist. Connections are capped at
//! [`MAX_CONNECTIONS`]; replies owed to the guest are bounded (when too many wait for receive
//! buffers the device stops taking transmit chains until the guest makes room). Broken chains
//! (loops, descriptors past the table) put the device into DEVICE_NEEDS_RESET, as for every
//! device here.
//!
//! **Event source.** The device watches its listener, its connections and a timer through an
//! epoll instance of its own, which is its single [`EventSource`] (edge-triggered; the device
//! drains it each time). Sockets come and go without the transport having to know.

mod host;
mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::virtio::{GuestMemoryMmap, VirtioMemory};
use virtio_queue::Queue;
use vm_memory::GuestMemory;

use self::muxer::Muxer;
use self::packet::{Header, HDR_LEN, OP_RW};
use super::chain::{self, BatchEnd, Budget, ChainBuffers, Step};
use super::state::{DeviceState, VsockState};
use super::{
    read_config_bytes, EventSource, GuestFault, Interrupt, Processed, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::virtio::Error as VirtioError;

/// Errors from the virtio-vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A virtio-vsock guest CID that is reserved (0, 1, 2) or does not fit below `u32::MAX`.
    #[error("vsock guest CID {cid} is reserved or too large: it must be from 3 to 4294967294")]
    VsockCid {
        /// The CID given.
        cid: u64,
    },
    /// Something exists already where the vsock device's Unix socket was to be created.
    #[error("cannot create the vsock socket {}: the path exists (remove it first)", path.display())]
    VsockPathExists {
        /// The path given.
        path: std::path::PathBuf,
    },
    /// The vsock device's Unix socket could not be bound or listened on.
    #[error("cannot listen on the vsock socket {}", path.display())]
    VsockBind {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The vsock device's epoll instance or timer could not be created or set up.
    #[error("cannot set up the vsock device's {what}")]
    VsockSetup {
        /// What could not be set up.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A virtio transport or queue failure while setting the device up (an eventfd, a timer).
    #[error(transparent)]
    Virtio(#[from] crate::virtio::Error),
}

/// Device type of a socket device (virtio v1.2, 5 Device Types: 19).
pub const TYPE_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (virtio v1.2, 5.10.2 Virtqueues: rx).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (virtio v1.2, 5.10.2: tx).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue (virtio v1.2, 5.10.2: event).
pub const EVENT_QUEUE: usize = 2;
/// The most connections at once, host clients still sending their `CONNECT` line included.
pub const MAX_CONNECTIONS: usize = 1024;
/// The receive buffer the device advertises per connection (`buf_alloc`, virtio v1.2,
/// 5.10.6.3): the most guest data it holds for a host stream that is not reading.
pub const CONN_BUF_SIZE: u32 = 64 * 1024;
/// The largest payload of one packet, either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a host-initiated connection waits for the guest's OP_RESPONSE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the device waits for the guest's OP_RST after its OP_SHUTDOWN, or for a host
/// stream to take the rest of the guest's data after the guest shut the connection, before it
/// resets the connection (virtio v1.2, 5.10.6.5: "If no VIRTIO_VSOCK_OP_RST response is
/// received within an implementation-specific amount of time, a VIRTIO_VSOCK_OP_RST packet is
/// sent to forcibly disconnect the socket").
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The token of the device's one event source (its epoll instance).
const EVENT_TOKEN: u32 = 0;
/// The event ID of a transport reset: the driver must reset its connections and read the
/// guest CID again (virtio v1.2, 5.10.6.7 Device Events: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`
/// = 0, sent as `struct virtio_vsock_event { le32 id; }`).
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Bytes of a `struct virtio_vsock_event` (virtio v1.2, 5.10.6.7).
const EVENT_LEN: u64 = 4;

/// Counters of a [`Vsock`] device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Connections set up (host clients that sent a valid `CONNECT` line, and guest requests
    /// whose host socket accepted).
    pub connections_opened: u64,
    /// Connections closed, for any reason.
    pub connections_closed: u64,
    /// Connections refused because [`MAX_CONNECTIONS`] were open.
    pub connections_refused: u64,
    /// Guest requests for a host port nobody listens on (`<uds_path>_<port>` missing,
    /// refusing, or with a full backlog).
    pub connect_failures: u64,
    /// Host-initiated connections the guest refused (OP_RST instead of OP_RESPONSE).
    pub refused_by_guest: u64,
    /// Payload bytes delivered to the guest.
    pub bytes_to_guest: u64,
    /// Payload bytes written to host streams.
    pub bytes_to_host: u64,
    /// OP_RST packets sent to the guest.
    pub resets_sent: u64,
    /// OP_RST packets received from the guest.
    pub resets_received: u64,
    /// Resets that could not be queued (should stay 0: the queue is bounded above what the
    /// device can owe).
    pub resets_dropped: u64,
    /// Packets from the guest that were malformed (short, payload past the chain, wrong CIDs,
    /// type or operation) or broke the protocol (data before the connection was up, a second
    /// request, data after a shutdown); transmit chains that were device-writable or outside
    /// guest RAM.
    pub bad_packets: u64,
    /// Well-formed packets for connections that do not exist (answered with OP_RST).
    pub unknown_connection: u64,
    /// Guest data beyond the credit the device gave (the connection is reset).
    pub credit_violations: u64,
    /// Receive chains returned unused: device-readable, outside guest RAM, or too short for a
    /// header.
    pub rx_bad_chains: u64,
    /// Times the device stopped taking transmit chains until the guest took the replies owed.
    pub tx_stalls: u64,
    /// Connections given up on after [`CONNECT_TIMEOUT`] or [`SHUTDOWN_TIMEOUT`].
    pub timeouts: u64,
    /// Host clients whose first line was not `CONNECT <port>`.
    pub bad_host_requests: u64,
    /// Failed operations on host sockets, the epoll instance or the timer.
    pub host_errors: u64,
    /// Transport reset events sent to the guest (one after each snapshot restore).
    pub transport_resets_sent: u64,
    /// Event queue chains returned unused: device-readable, outside guest RAM, or shorter
    /// than an event.
    pub event_bad_chains: u64,
}

/// What the device needs once activated.
struct Active<M> {
    mem: M,
    rx: Queue,
    tx: Queue,
    /// The driver's event buffers; the device uses one after a restore.
    event: Queue,
}

/// A virtio-vsock device whose host side is a set of Unix sockets. See the
/// [module docs](self).
pub struct Vsock<M = GuestMemoryMmap> {
    guest_cid: u64,
    mux: Muxer,
    active: Option<Active<M>>,
    tx_stalled: bool,
    bufs: ChainBuffers,
    /// A header and the largest payload, for both directions.
    scratch: Vec<u8>,
    /// A transport reset event is owed to the guest (after a snapshot restore), sent as soon
    /// as the event queue has a buffer.
    reset_event_pending: bool,
}

impl<M> fmt::Debug for Vsock<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.mux.uds_path())
            .field("active", &self.active.is_some())
            .field("connections", &self.mux.connections())
            .field("stats", &self.mux.stats)
            .finish()
    }
}

impl<M> Vsock<M> {
    /// A vsock device for a guest with CID `guest_cid`, listening for host clients on a new
    /// Unix socket at `uds_path` (removed again when the device is dropped).
    ///
    /// Fails, naming the CID, when it is reserved (0, 1 and 2; virtio v1.2, 5.10.4) or does
    /// not fit in 32 bits less `u32::MAX` (`VMADDR_CID_ANY`); and, naming the path, when
    /// something exists at `uds_path` already or it cannot be bound (a missing directory, no
    /// permission, longer than a Unix socket address allows).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, Error> {
        if guest_cid <= packet::HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::VsockCid { cid: guest_cid });
        }
        Ok(Vsock {
            guest_cid,
            mux: Muxer::new(guest_cid, &uds_path)?,
            active: None,
            tx_stalled: false,
            bufs: ChainBuffers::default(),
            scratch: vec![0; HDR_LEN + MAX_PAYLOAD],
            reset_event_pending: false,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The path of the listening socket for host-initiated connections.
    pub fn uds_path(&self) -> &Path {
        self.mux.uds_path()
    }

    /// Open connections (host clients still sending their `CONNECT` line not counted).
    pub fn connections(&self) -> usize {
        self.mux.connections()
    }

    /// The device's counters.
    pub fn stats(&self) -> VsockStats {
        self.mux.stats
    }

    /// Transmit chains, then receive chains, then transmit again while replies made room; all
    /// within one wake-up's budget. Work left when it is spent is asked for again through the
    /// transmit or receive queue (whose wake-ups do the same).
    fn pump(&mut self, tx: bool) -> Result<Processed, VirtioError>
    where
        M: GuestMemory,
    {
        let mut budget = Budget::new();
        let mut irq = false;
        let mut tx_more = false;
        let mut rx_more;
        if tx {
            (irq, tx_more) = self.process_tx(&mut budget)?;
        }
        let (rx_irq, more) = self.process_rx(&mut budget)?;
        irq |= rx_irq;
        rx_more = more;
        // A stalled transmit queue resumes once the guest took the replies it waited on;
        // bounded, since the guest can keep adding chains while we work.
        for _ in 0..4 {
            if !self.tx_stalled || self.mux.tx_must_wait() || budget.is_spent() {
                break;
            }
            let (tx_irq, more) = self.process_tx(&mut budget)?;
            tx_more = more;
            let (rx_irq, more) = self.process_rx(&mut budget)?;
            rx_more = more;
            irq |= tx_irq | rx_irq;
        }
        self.mux.rearm_timer();
        let mut done = Processed::interrupt(irq);
        if tx_more {
            done.rearm_queue(TX_QUEUE);
        }
        if rx_more {
            done.rearm_queue(RX_QUEUE);
        }
        Ok(done)
    }

    /// Handles the packets the guest transmitted (unless too many replies are owed). Returns
    /// whether to interrupt and whether chains were left for lack of budget.
    fn process_tx(&mut self, budget: &mut Budget) -> Result<(bool, bool), VirtioError>
    where
        M: GuestMemory,
    {
        let fault = |fault| VirtioError::VirtioFault {
            device: "virtio-vsock",
            queue: TX_QUEUE,
            fault,
        };
        let Vsock {
            active,
            mux,
            bufs,
            scratch,
            tx_stalled,
            ..
        } = self;
        let Some(Active { mem, tx, .. }) = active.as_mut() else {
            return Ok((false, false));
        };
        let batch = chain::process_chains(tx, mem, bufs, budget, |bufs| {
            if mux.tx_must_wait() {
                if !*tx_stalled {
                    mux.stats.tx_stalls += 1;
                    *tx_stalled = true;
                }
                return Ok(Step::Wait);
            }
            *tx_stalled = false;
            let bytes = match read_packet(mem, bufs, scratch) {
                Some((hdr, len)) => {
                    mux.handle_guest_packet(&hdr, &scratch[..len]);
                    len as u64
                }
                None => {
                    mux.stats.bad_packets += 1;
                    0
                }
            };
            // The device writes nothing into a transmit chain.
            Ok(Step::Done { len: 0, bytes })
        })
        .map_err(fault)?;
        if batch.end == BatchEnd::Empty {
            *tx_stalled = false;
        }
        Ok((batch.interrupt, batch.more()))
    }

    /// Fills receive chains with the packets owed to the guest. Returns whether to interrupt
    /// and whether packets and chains were left for lack of budget.
    fn process_rx(&mut self, budget: &mut Budget) -> Result<(bool, bool), VirtioError>
    where
        M: GuestMemory,
    {
        let fault = |fault| VirtioError::VirtioFault {
            device: "virtio-vsock",
            queue: RX_QUEUE,
            fault,
        };
        let Vsock {
            active,
            mux,
            bufs,
            scratch,
            ..
        } = self;
        let Some(Active { mem, rx, .. }) = active.as_mut() else {
            return Ok((false, false));
        };
        if !mux.has_rx_work() {
            return Ok((false, false));
        }
        let batch = chain::process_chains(rx, mem, bufs, budget, |bufs| {
            if !mux.has_rx_work() {
                return Ok(Step::Wait);
            }
            if !bufs.readable.is_empty() || bufs.outside_ram || bufs.writable_len() < HDR_LEN as u64
            {
                mux.stats.rx_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            // At most the scratch buffer: a header and MAX_PAYLOAD.
            let cap = bufs.writable_len().min(scratch.len() as u64) as usize;
            let Some(n) = mux.next_packet(&mut scratch[..cap]) else {
                // Nothing fits (or nothing is owed after all): the chain waits.
                return Ok(Step::Wait);
            };
            // Every writable buffer is inside guest RAM (checked above) and they hold `n`
            // bytes, so this cannot fail; if it did the packet would be lost, not the device.
            if !chain::scatter(mem, &bufs.writable, 0, &scratch[..n]) {
                mux.stats.rx_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            // `n <= HDR_LEN + MAX_PAYLOAD`.
            Ok(Step::Done {
                len: n as u32,
                bytes: n as u64,
            })
        })
        .map_err(fault)?;
        Ok((batch.interrupt, batch.more() && mux.has_rx_work()))
    }
}

impl<M> Vsock<M> {
    /// Sends the transport reset event owed after a restore into the first buffer of the
    /// event queue, if there is one; otherwise it stays owed until the guest adds one.
    fn send_reset_event(&mut self) -> Result<Processed, VirtioError>
    where
        M: GuestMemory,
    {
        let Vsock {
            active,
            mux,
            bufs,
            reset_event_pending,
            ..
        } = self;
        let Some(Active { mem, event, .. }) = active.as_mut().filter(|_| *reset_event_pending)
        else {
            return Ok(Processed::IDLE);
        };
        let mut budget = Budget::new();
        let batch = chain::process_chains(event, mem, bufs, &mut budget, |bufs| {
            if !*reset_event_pending {
                return Ok(Step::Wait);
            }
            if !bufs.readable.is_empty() || bufs.outside_ram || bufs.writable_len() < EVENT_LEN {
                mux.stats.event_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            if !chain::scatter(mem, &bufs.writable, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
                mux.stats.event_bad_chains += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            *reset_event_pending = false;
            mux.stats.transport_resets_sent += 1;
            Ok(Step::Done {
                len: EVENT_LEN as u32,
                bytes: EVENT_LEN,
            })
        })
        .map_err(|fault| VirtioError::VirtioFault {
            device: "virtio-vsock",
            queue: EVENT_QUEUE,
            fault,
        })?;
        Ok(Processed::interrupt(batch.interrupt))
    }
}

/// The header and payload length of the transmit chain in `bufs`, with the payload of an
/// OP_RW copied into `scratch`; `None` if the chain cannot hold a valid packet.
fn read_packet<G: GuestMemory>(
    mem: &G,
    bufs: &ChainBuffers,
    scratch: &mut [u8],
) -> Option<(Header, usize)> {
    if !bufs.writable.is_empty() || bufs.outside_ram {
        return None;
    }
    let mut raw = [0u8; HDR_LEN];
    if !chain::gather(mem, &bufs.readable, 0, &mut raw) {
        return None;
    }
    let hdr = Header::from_bytes(&raw);
    let len = usize::try_from(hdr.len)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)?;
    if (HDR_LEN + len) as u64 > bufs.readable_len() {
        return None;
    }
    if hdr.op != OP_RW {
        return Some((hdr, 0));
    }
    let payload = scratch.get_mut(..len)?;
    chain::gather(mem, &bufs.readable, HDR_LEN as u64, payload).then_some((hdr, len))
}

impl<M: VirtioMemory> VirtioDevice<M> for Vsock<M> {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio v1.2, 5.10.4: `le64 guest_cid`.
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: M,
        queues: Vec<Queue>,
        _interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), Some(event)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(VirtioError::VirtioFault {
                device: self.name(),
                queue: EVENT_QUEUE,
                fault: GuestFault::QueueConfig {
                    what: "a vsock queue is missing",
                },
            });
        };
        self.active = Some(Active { mem, rx, tx, event });
        self.tx_stalled = false;
        // Host events that came while the device was stopped are handled on the event loop.
        self.mux.kick();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<Processed, VirtioError> {
        match index {
            RX_QUEUE => self.pump(false),
            TX_QUEUE => self.pump(true),
            // Events are sent only after a restore; otherwise the buffers just wait there.
            EVENT_QUEUE => self.send_reset_event(),
            _ => Ok(Processed::IDLE),
        }
    }

    fn event_sources(&self) -> Vec<EventSource> {
        vec![EventSource {
            fd: self.mux.epoll_fd(),
            token: EVENT_TOKEN,
            edge_triggered: true,
        }]
    }

    fn process_event(&mut self, token: u32) -> Result<Processed, VirtioError> {
        if token != EVENT_TOKEN {
            return Ok(Processed::IDLE);
        }
        self.mux.process_host_events();
        self.pump(false)
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_stalled = false;
        self.reset_event_pending = false;
        self.mux.reset();
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active
            .iter()
            .flat_map(|a| [&a.rx, &a.tx, &a.event])
            .collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Vsock(VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.mux.uds_path().to_path_buf(),
        })
    }

    /// Checks the guest CID (the guest knows it; the VMM builds the device with the saved
    /// one); the socket may be at another path than the saved one (the user's override).
    /// Connections did not survive: any this device has are closed, and once activated it
    /// sends the guest a transport reset event (virtio v1.2, 5.10.6.7; what Firecracker does),
    /// after which the driver resets its sockets.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        let DeviceState::Vsock(state) = state else {
            return Err(VirtioError::DeviceStateMismatch {
                device: self.name(),
                saved: state.device_name(),
            });
        };
        if state.guest_cid != self.guest_cid {
            return Err(VirtioError::InvalidState {
                device: self.name(),
                why: format!(
                    "the saved guest CID is {}, this device's {}",
                    state.guest_cid, self.guest_cid
                ),
            });
        }
        self.mux.reset();
        self.tx_stalled = false;
        self.reset_event_pending = true;
        Ok(())
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("connections_opened", s.connections_opened),
            ("connections_closed", s.connections_closed),
            ("connections_refused", s.connections_refused),
            ("connect_failures", s.connect_failures),
            ("refused_by_guest", s.refused_by_guest),
            ("bytes_to_guest", s.bytes_to_guest),
            ("bytes_to_host", s.bytes_to_host),
            ("resets_sent", s.resets_sent),
            ("resets_received", s.resets_received),
            ("resets_dropped", s.resets_dropped),
            ("bad_packets", s.bad_packets),
            ("unknown_connection", s.unknown_connection),
            ("credit_violations", s.credit_violations),
            ("rx_bad_chains", s.rx_bad_chains),
            ("tx_stalls", s.tx_stalls),
            ("timeouts", s.timeouts),
            ("bad_host_requests", s.bad_host_requests),
            ("host_errors", s.host_errors),
            ("transport_resets_sent", s.transport_resets_sent),
            ("event_bad_chains", s.event_bad_chains),
        ]
    }
}

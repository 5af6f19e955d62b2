//! The host side of the vsock device: the listening socket, the connection table and the
//! per-connection state machines, independent of the virtqueues.
//!
//! The device hands [`Muxer::handle_guest_packet`] each packet the guest transmits and asks
//! [`Muxer::next_packet`] for packets to put into the guest's receive buffers. Host sockets are
//! watched through one epoll instance of the muxer's own ([`Muxer::epoll_fd`]), which is the
//! device's only event source; [`Muxer::process_host_events`] drains it.
//!
//! Every host socket is non-blocking. Interest in a socket's readiness is kept in step with
//! what the muxer can do about it (read only while it has not already been told the socket is
//! readable, write only while data waits), so a level-triggered socket never keeps the event
//! loop spinning while the guest gives no buffers or credit.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::host::{send_nosignal, BoundListener};
use super::packet::*;
use super::Error;
use super::{VsockStats, CONN_BUF_SIZE, MAX_CONNECTIONS, MAX_PAYLOAD, SHUTDOWN_TIMEOUT};
use crate::virtio::{new_eventfd, new_timer};

mod from_guest;
mod host_events;

/// Replies to guest packets waiting for receive buffers above which the device stops taking
/// transmit chains, until the guest makes room (backpressure instead of unbounded queueing).
pub(super) const RST_QUEUE_CAP: usize = 256;
/// The most replies ever held: the backpressure threshold plus one reset per connection plus
/// slack for the packet being handled. Beyond it (which should not happen) resets are dropped.
const RST_QUEUE_HARD_CAP: usize = RST_QUEUE_CAP + MAX_CONNECTIONS + 64;
/// Send the guest a credit update once the free space it knows of falls below this, and the
/// real free space is larger (virtio v1.2, 5.10.6.3).
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;
/// The longest `CONNECT <port>\n` line accepted from a host client ("CONNECT 4294967295\n"
/// is 19 bytes).
const MAX_REQUEST_LINE: usize = 32;
/// The first local port handed to host-initiated connections; ports count up from here and
/// wrap back to it.
const LOCAL_PORT_FIRST: u32 = 1 << 30;
/// Connections accepted per listener event (the listener is level-triggered: more come next
/// round).
const ACCEPTS_PER_EVENT: usize = 64;
/// Events taken from the epoll instance at once, and rounds of that per call.
const EVENT_BATCH: usize = 32;
const EVENT_ROUNDS: usize = 8;
/// How long accepting pauses after `accept` failed for want of resources (EMFILE, ENOBUFS).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Epoll tokens; connection ids start after them and are never reused.
const LISTENER_TOKEN: u64 = 0;
const TIMER_TOKEN: u64 = 1;
const KICK_TOKEN: u64 = 2;
const FIRST_CONN_ID: u64 = 3;

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLERR: u32 = libc::EPOLLERR as u32;
const EPOLLHUP: u32 = libc::EPOLLHUP as u32;

/// A connection's address: the host-side port and the guest-side port (the CIDs are always the
/// host and the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: OP_REQUEST owed or sent, OP_RESPONSE awaited.
    Requesting,
    /// Data flows.
    Established,
    /// The host side is gone; OP_SHUTDOWN (both) owed or sent, the guest's OP_RST awaited.
    Closing,
}

#[derive(Debug)]
struct Conn {
    key: ConnKey,
    stream: UnixStream,
    state: State,
    /// When the connection is given up on (no response, no RST after shutdown, no flush).
    deadline: Option<Instant>,
    /// The events the stream is registered for; `None` once out of the epoll set.
    interest: Option<u32>,

    // Packets owed to the guest.
    send_request: bool,
    request_sent: bool,
    send_response: bool,
    send_credit_update: bool,
    send_credit_request: bool,
    send_shutdown: u32,
    in_rx_queue: bool,

    // The host stream's read side.
    host_readable: bool,
    host_eof: bool,
    host_hup: bool,

    // Guest to host: bytes received, bytes written to the host stream, the `fwd_cnt` the
    // guest was last told, and what waits for the host stream (at most CONN_BUF_SIZE).
    tx_buf: VecDeque<u8>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    peer_shutdown: u32,
    host_write_shut: bool,
    close_after_flush: bool,

    // Host to guest: the guest's credit and what we sent it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    credit_requested: bool,
}

impl Conn {
    fn new(key: ConnKey, stream: UnixStream, state: State, interest: u32) -> Conn {
        Conn {
            key,
            stream,
            state,
            deadline: None,
            interest: Some(interest),
            send_request: false,
            request_sent: false,
            send_response: false,
            send_credit_update: false,
            send_credit_request: false,
            send_shutdown: 0,
            in_rx_queue: false,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            tx_buf: VecDeque::new(),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            peer_shutdown: 0,
            host_write_shut: false,
            close_after_flush: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            credit_requested: false,
        }
    }

    /// Bytes the guest can still take (virtio v1.2, 5.10.6.3: `peer_buf_alloc - (tx_cnt -
    /// peer_fwd_cnt)`); a guest claiming to have consumed more than it was sent gets nothing
    /// extra for it.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data could go to the guest now, if the stream has any.
    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_F_RECEIVE == 0
            && self.peer_credit() > 0
    }

    fn wants_rx(&self) -> bool {
        self.send_request
            || self.send_response
            || self.send_credit_update
            || self.send_credit_request
            || self.send_shutdown != 0
            || self.can_send_data()
    }

    /// The events worth watching the stream for now.
    fn wanted_interest(&self) -> u32 {
        let mut e = 0;
        if self.state == State::Established
            && !self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_F_RECEIVE == 0
        {
            e |= EPOLLIN;
        }
        if !self.tx_buf.is_empty() {
            e |= EPOLLOUT;
        }
        e
    }

    /// Whether the guest has heard of this connection (so that closing it needs an OP_RST).
    fn guest_knows(&self) -> bool {
        self.state != State::Requesting || self.request_sent
    }

    /// A header from this connection to the guest; it carries our credit, so any packet
    /// doubles as a credit update.
    fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        self.last_fwd_sent = self.fwd_cnt;
        self.send_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Asks for a credit update when the guest's view of our free space ran low and there is
    /// more to tell it.
    fn maybe_credit_update(&mut self) {
        let view_used = (self.rx_cnt - self.last_fwd_sent).0;
        let view_free = CONN_BUF_SIZE.saturating_sub(view_used);
        if self.fwd_cnt != self.last_fwd_sent && view_free < CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    /// Writes what it can of `tx_buf` to the stream. Returns the bytes written, or the error
    /// that makes the connection unusable.
    fn flush(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > 4096 {
            self.tx_buf = VecDeque::new();
        }
        self.fwd_cnt += Wrapping(total as u32);
        Ok(total)
    }
}

/// A host client that connected to the listening socket and has not finished its
/// `CONNECT <port>\n` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What reading the host stream gave.
enum HostRead {
    Data(usize),
    Eof,
    Empty,
    Failed,
    Skip,
}

/// The connection table and the host sockets. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Muxer {
    guest_cid: u64,
    listener: BoundListener,
    epoll: Epoll,
    /// Non-blocking, one-shot, armed for the earliest deadline.
    timer: TimerFd,
    /// When the timer is armed to fire.
    timer_at: Option<Instant>,
    /// Written to get another turn of the event loop when events were left over.
    kick: EventFd,
    conns: HashMap<u64, Conn>,
    by_key: HashMap<ConnKey, u64>,
    handshakes: HashMap<u64, Handshake>,
    next_id: u64,
    next_local_port: u32,
    /// Connections with packets for the guest, each at most once.
    rx_queue: VecDeque<u64>,
    /// Resets owed to the guest for connections that are gone or never were.
    rst_queue: VecDeque<Header>,
    /// Accepting is paused after a resource error, until then.
    accept_paused_until: Option<Instant>,
    /// Connections (with handshakes) allowed at once.
    pub max_connections: usize,
    pub stats: VsockStats,
}

fn io_setup(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::VsockSetup { what, source }
}

impl Muxer {
    /// Binds the listening socket at `uds_path` and sets up the epoll instance.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Muxer, Error> {
        let epoll = Epoll::new().map_err(io_setup("epoll instance"))?;
        let timer = new_timer().map_err(io_setup("timer"))?;
        let kick = new_eventfd()?;
        if uds_path.symlink_metadata().is_ok() {
            return Err(Error::VsockPathExists {
                path: uds_path.to_path_buf(),
            });
        }
        let listener = BoundListener::bind(uds_path).map_err(|source| Error::VsockBind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(listener.listener.as_raw_fd(), LISTENER_TOKEN)
            .and_then(|()| add(timer.as_raw_fd(), TIMER_TOKEN))
            .and_then(|()| add(kick.as_raw_fd(), KICK_TOKEN))
            .map_err(io_setup("epoll registration"))?;
        Ok(Muxer {
            guest_cid,
            listener,
            epoll,
            timer,
            timer_at: None,
            kick,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            handshakes: HashMap::new(),
            next_id: FIRST_CONN_ID,
            next_local_port: LOCAL_PORT_FIRST,
            rx_queue: VecDeque::new(),
            rst_queue: VecDeque::new(),
            accept_paused_until: None,
            max_connections: MAX_CONNECTIONS,
            stats: VsockStats::default(),
        })
    }

    /// The epoll instance that becomes readable when any host socket or the timer needs
    /// attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The path of the listening socket.
    pub fn uds_path(&self) -> &Path {
        self.listener.path()
    }

    /// Live connections (handshakes not counted).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Asks the event loop for another turn (the device's event source becomes readable).
    pub fn kick(&self) {
        let _ = self.kick.write(1);
    }

    /// Whether packets wait for the guest's receive buffers.
    pub fn has_rx_work(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    /// Whether the device should stop taking transmit chains until the guest takes the
    /// replies already owed.
    pub fn tx_must_wait(&self) -> bool {
        self.rst_queue.len() >= RST_QUEUE_CAP
    }

    /// Closes every connection (the guest's driver reset the device; the guest has forgotten
    /// them). The listening socket stays.
    pub fn reset(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.remove_conn(id);
        }
        for (_, h) in self.handshakes.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.rx_queue.clear();
        self.rst_queue.clear();
        self.rearm_timer();
        // Host events may have been left unhandled while the device was stopped.
        self.kick();
    }

    // ---------------------------------------------------------------------------------------
    // Host to guest.

    /// Writes the next packet for the guest into `buf` (a receive chain of `buf.len()` bytes)
    /// and returns its length, header included; `None` if nothing fits or nothing is owed.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<usize> {
        let hdr_buf = buf.get_mut(..HDR_LEN)?;
        if let Some(h) = self.rst_queue.pop_front() {
            hdr_buf.copy_from_slice(&h.to_bytes());
            self.stats.resets_sent += 1;
            return Some(HDR_LEN);
        }
        for _ in 0..self.rx_queue.len() {
            let Some(id) = self.rx_queue.pop_front() else {
                break;
            };
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.in_rx_queue = false;
            let got = self.conn_next_packet(id, buf);
            self.refresh(id);
            if got.is_some() {
                return got;
            }
            // The connection may have failed and owe a reset now.
            if let Some(h) = self.rst_queue.pop_front() {
                buf[..HDR_LEN].copy_from_slice(&h.to_bytes());
                self.stats.resets_sent += 1;
                return Some(HDR_LEN);
            }
        }
        None
    }

    /// The next packet of connection `id`: control packets first, then data, then the
    /// shutdown that follows the data.
    fn conn_next_packet(&mut self, id: u64, buf: &mut [u8]) -> Option<usize> {
        let cid = self.guest_cid;
        let c = self.conns.get_mut(&id)?;
        let control = if c.send_request {
            c.send_request = false;
            c.request_sent = true;
            Some(OP_REQUEST)
        } else if c.send_response {
            c.send_response = false;
            Some(OP_RESPONSE)
        } else if c.send_credit_update {
            Some(OP_CREDIT_UPDATE)
        } else {
            None
        };
        if let Some(op) = control {
            let h = c.header(cid, op, 0, 0);
            buf[..HDR_LEN].copy_from_slice(&h.to_bytes());
            return Some(HDR_LEN);
        }
        let read = if c.can_send_data() && buf.len() > HDR_LEN {
            let max = (buf.len() - HDR_LEN)
                .min(MAX_PAYLOAD)
                .min(c.peer_credit() as usize);
            loop {
                match (&c.stream).read(&mut buf[HDR_LEN..HDR_LEN + max]) {
                    Ok(0) => break HostRead::Eof,
                    Ok(n) => break HostRead::Data(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break HostRead::Empty,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break HostRead::Failed,
                }
            }
        } else {
            HostRead::Skip
        };
        match read {
            HostRead::Data(n) => {
                // `n <= MAX_PAYLOAD`.
                c.tx_cnt += Wrapping(n as u32);
                let h = c.header(cid, OP_RW, 0, n as u32);
                buf[..HDR_LEN].copy_from_slice(&h.to_bytes());
                self.stats.bytes_to_guest += n as u64;
                return Some(HDR_LEN + n);
            }
            HostRead::Eof => {
                c.host_eof = true;
                c.host_readable = false;
                if c.host_hup {
                    self.begin_close(id);
                } else {
                    // Half-closed: the host sends no more but may still read.
                    c.send_shutdown |= SHUTDOWN_F_SEND;
                }
            }
            HostRead::Empty => c.host_readable = false,
            HostRead::Failed => {
                self.stats.host_errors += 1;
                self.reset_conn(id);
                return None;
            }
            HostRead::Skip => {}
        }
        let c = self.conns.get_mut(&id)?;
        let (op, flags) = if c.send_shutdown != 0 {
            let f = c.send_shutdown;
            c.send_shutdown = 0;
            (OP_SHUTDOWN, f)
        } else if c.send_credit_request {
            c.send_credit_request = false;
            (OP_CREDIT_REQUEST, 0)
        } else {
            return None;
        };
        let h = c.header(cid, op, flags, 0);
        buf[..HDR_LEN].copy_from_slice(&h.to_bytes());
        Some(HDR_LEN)
    }

    /// The host side of `id` is gone for good: tell the guest (OP_SHUTDOWN, both) and wait a
    /// while for its OP_RST.
    fn begin_close(&mut self, id: u64) {
        self.deregister(id);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.state = State::Closing;
        c.send_shutdown = SHUTDOWN_F_BOTH;
        c.host_readable = false;
        c.tx_buf = VecDeque::new();
        c.close_after_flush = false;
        c.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
    }

    // ---------------------------------------------------------------------------------------
    // Bookkeeping.

    /// After any change to `id`: ask for credit if starved, queue it for the guest if it has
    /// something to say, and watch its stream for what it can handle now.
    fn refresh(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == State::Established
            && c.host_readable
            && !c.host_eof
            && c.peer_shutdown & SHUTDOWN_F_RECEIVE == 0
            && c.peer_credit() == 0
            && !c.credit_requested
        {
            c.send_credit_request = true;
            c.credit_requested = true;
        }
        if c.wants_rx() && !c.in_rx_queue {
            c.in_rx_queue = true;
            self.rx_queue.push_back(id);
        }
        let Some(current) = c.interest else {
            return;
        };
        let want = c.wanted_interest();
        if want == current {
            return;
        }
        let event = EpollEvent::new(EventSet::from_bits_truncate(want), id);
        if self
            .epoll
            .ctl(ControlOperation::Modify, c.stream.as_raw_fd(), event)
            .is_ok()
        {
            c.interest = Some(want);
        } else {
            self.stats.host_errors += 1;
            self.reset_conn(id);
        }
    }

    fn deregister(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            if c.interest.take().is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
    }

    /// Forgets connection `id` and closes its host stream.
    fn remove_conn(&mut self, id: u64) -> Option<Conn> {
        self.deregister(id);
        let c = self.conns.remove(&id)?;
        self.by_key.remove(&c.key);
        if c.in_rx_queue {
            self.rx_queue.retain(|&q| q != id);
        }
        self.stats.connections_closed += 1;
        Some(c)
    }

    /// Closes connection `id` and owes the guest an OP_RST for it, if it knows of it.
    fn reset_conn(&mut self, id: u64) {
        if let Some(c) = self.remove_conn(id) {
            if c.guest_knows() {
                let h = Header {
                    src_cid: HOST_CID,
                    dst_cid: self.guest_cid,
                    src_port: c.key.local_port,
                    dst_port: c.key.peer_port,
                    type_: TYPE_STREAM,
                    op: OP_RST,
                    ..Header::default()
                };
                self.queue_rst(h);
            }
        }
    }

    /// Owes the guest an OP_RST answering `hdr` (virtio v1.2, 5.10.6.2: a packet for no
    /// connection, or one that cannot be served, is answered with a reset).
    fn reply_rst(&mut self, hdr: &Header) {
        let h = Header {
            src_cid: hdr.dst_cid,
            dst_cid: hdr.src_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: hdr.type_,
            op: OP_RST,
            ..Header::default()
        };
        self.queue_rst(h);
    }

    fn queue_rst(&mut self, h: Header) {
        if self.rst_queue.len() >= RST_QUEUE_HARD_CAP {
            self.stats.resets_dropped += 1;
        } else {
            self.rst_queue.push_back(h);
        }
    }
}

#[cfg(test)]
impl Muxer {
    /// Moves every pending deadline to `at` and rearms the timer for it.
    pub fn move_deadlines(&mut self, at: Instant) {
        for c in self.conns.values_mut() {
            if c.deadline.is_some() {
                c.deadline = Some(at);
            }
        }
        self.rearm_timer();
    }
}

/// The port of a `CONNECT <port>` line (the newline already stripped), in decimal.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +5",
            b"CONNECT 5 ",
            b"connect 5",
            b"CONNECT\t5",
            b"",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    fn conn() -> Conn {
        let (a, _b) = UnixStream::pair().unwrap();
        Conn::new(
            ConnKey {
                local_port: 1,
                peer_port: 2,
            },
            a,
            State::Established,
            EPOLLIN,
        )
    }

    #[test]
    fn peer_credit_follows_the_spec_formula() {
        let mut c = conn();
        c.peer_buf_alloc = 100;
        assert_eq!(c.peer_credit(), 100);
        c.tx_cnt = Wrapping(60);
        assert_eq!(c.peer_credit(), 40);
        c.peer_fwd_cnt = Wrapping(50);
        assert_eq!(c.peer_credit(), 90);
        // Counters wrap.
        c.tx_cnt = Wrapping(5);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 4);
        assert_eq!(c.peer_credit(), 90);
        // A guest claiming more consumed than sent, or shrinking its buffer, gets no credit
        // from the wrap.
        c.peer_fwd_cnt = Wrapping(6);
        assert_eq!(c.peer_credit(), 0);
        c.peer_fwd_cnt = Wrapping(0);
        c.peer_buf_alloc = 3;
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn credit_updates_only_when_the_guest_view_runs_low() {
        let mut c = conn();
        c.rx_cnt = Wrapping(1000);
        c.fwd_cnt = Wrapping(1000);
        c.maybe_credit_update();
        assert!(!c.send_credit_update);
        c.rx_cnt = Wrapping(CONN_BUF_SIZE);
        c.fwd_cnt = Wrapping(CONN_BUF_SIZE);
        c.maybe_credit_update();
        assert!(c.send_credit_update);
        let h = c.header(3, OP_RW, 0, 0);
        assert_eq!(h.fwd_cnt, CONN_BUF_SIZE);
        assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
        assert!(!c.send_credit_update);
        c.maybe_credit_update();
        assert!(!c.send_credit_update);
    }
}

//! The muxer's host side: the listener's accepts, the handshakes of new host connections, and
//! the events of established ones, read from its epoll set without blocking.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::{
    parse_connect, Conn, ConnKey, Handshake, Muxer, State, ACCEPTS_PER_EVENT, ACCEPT_RETRY,
    EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EVENT_BATCH, EVENT_ROUNDS, KICK_TOKEN, LISTENER_TOKEN,
    LOCAL_PORT_FIRST, MAX_REQUEST_LINE, TIMER_TOKEN,
};
use crate::virtio::vsock::packet::{SHUTDOWN_F_RECEIVE, SHUTDOWN_F_SEND};
use crate::virtio::vsock::CONNECT_TIMEOUT;
use crate::virtio::{arm_timer, drain_eventfd, drain_timer};

impl Muxer {
    /// Handles whatever the host sockets and the timer have to say, without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        for _ in 0..EVENT_ROUNDS {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stats.host_errors += 1;
                    break;
                }
            };
            if n == 0 {
                self.rearm_timer();
                return;
            }
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.events());
            }
        }
        // Still busy: finish on the next turn of the event loop rather than hog it.
        self.kick();
        self.rearm_timer();
    }

    fn dispatch(&mut self, token: u64, events: u32) {
        match token {
            LISTENER_TOKEN => self.accept_ready(),
            TIMER_TOKEN => {
                drain_timer(&mut self.timer);
                self.timer_at = None;
                self.expire(Instant::now());
            }
            KICK_TOKEN => drain_eventfd(&self.kick),
            id if self.handshakes.contains_key(&id) => self.handshake_event(id),
            id => self.conn_event(id, events),
        }
    }

    pub(super) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Accepts host clients; each must then send `CONNECT <port>\n`.
    fn accept_ready(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.listener.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.handshakes.len() >= self.max_connections {
                        // Closed at once: the client sees EOF.
                        self.stats.connections_refused += 1;
                        continue;
                    }
                    let id = self.new_id();
                    let ok = stream.set_nonblocking(true).is_ok()
                        && self
                            .epoll
                            .ctl(
                                ControlOperation::Add,
                                stream.as_raw_fd(),
                                EpollEvent::new(EventSet::IN, id),
                            )
                            .is_ok();
                    if ok {
                        self.handshakes.insert(
                            id,
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    } else {
                        self.stats.host_errors += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                Err(_) => {
                    // Out of descriptors or memory: the client stays in the backlog; look
                    // again a little later instead of spinning on a readable listener.
                    self.stats.host_errors += 1;
                    self.set_listener_interest(0);
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn set_listener_interest(&mut self, events: u32) {
        if self
            .epoll
            .ctl(
                ControlOperation::Modify,
                self.listener.listener.as_raw_fd(),
                EpollEvent::new(EventSet::from_bits_truncate(events), LISTENER_TOKEN),
            )
            .is_err()
        {
            self.stats.host_errors += 1;
        }
    }

    /// Reads a handshake's `CONNECT <port>\n` line, byte by byte so that nothing after it is
    /// taken from the stream.
    fn handshake_event(&mut self, id: u64) {
        let Some(h) = self.handshakes.get_mut(&id) else {
            return;
        };
        let mut complete = false;
        let mut drop_it = false;
        loop {
            let mut b = [0u8; 1];
            match (&h.stream).read(&mut b) {
                Ok(0) => {
                    drop_it = true;
                    break;
                }
                Ok(_) if b[0] == b'\n' => {
                    complete = true;
                    break;
                }
                Ok(_) => {
                    h.line.push(b[0]);
                    if h.line.len() > MAX_REQUEST_LINE {
                        self.stats.bad_host_requests += 1;
                        drop_it = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    drop_it = true;
                    break;
                }
            }
        }
        if !complete && !drop_it {
            return;
        }
        let Some(h) = self.handshakes.remove(&id) else {
            return;
        };
        let port = complete.then(|| parse_connect(&h.line)).flatten();
        let Some(port) = port else {
            if complete {
                self.stats.bad_host_requests += 1;
            }
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            return;
        };
        let local_port = self.alloc_local_port(port);
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut c = Conn::new(key, h.stream, State::Requesting, EPOLLIN);
        c.send_request = true;
        c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.insert_conn(id, c);
    }

    /// A local port not in use with `peer_port`.
    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(LOCAL_PORT_FIRST);
            let key = ConnKey {
                local_port: p,
                peer_port,
            };
            // At most `max_connections` keys are taken, so this ends.
            if !self.by_key.contains_key(&key) {
                return p;
            }
        }
    }

    pub(super) fn insert_conn(&mut self, id: u64, c: Conn) {
        self.by_key.insert(c.key, id);
        self.conns.insert(id, c);
        self.stats.connections_opened += 1;
        self.refresh(id);
    }

    fn conn_event(&mut self, id: u64, events: u32) {
        let Some(c) = self.conns.get_mut(&id) else {
            // Removed earlier in this batch.
            return;
        };
        if events & (EPOLLHUP | EPOLLERR) != 0 {
            c.host_hup = true;
            match c.state {
                State::Requesting => {
                    // The client gave up before the guest answered.
                    self.reset_conn(id);
                    return;
                }
                State::Closing => {}
                State::Established => {
                    if c.close_after_flush {
                        self.reset_conn(id);
                        return;
                    }
                    if c.host_eof || c.peer_shutdown & SHUTDOWN_F_RECEIVE != 0 {
                        self.begin_close(id);
                    } else {
                        // Forward what is left in the stream; its EOF then closes.
                        c.host_readable = true;
                    }
                }
            }
            // HUP cannot be masked: out of the epoll set, for good.
            self.deregister(id);
            self.refresh(id);
            return;
        }
        if events & EPOLLOUT != 0 {
            match c.flush() {
                Ok(n) => self.stats.bytes_to_host += n as u64,
                Err(_) => {
                    self.stats.host_errors += 1;
                    self.reset_conn(id);
                    return;
                }
            }
            c.maybe_credit_update();
            if c.tx_buf.is_empty() {
                if c.close_after_flush {
                    self.reset_conn(id);
                    return;
                }
                if c.peer_shutdown & SHUTDOWN_F_SEND != 0 && !c.host_write_shut {
                    let _ = c.stream.shutdown(Shutdown::Write);
                    c.host_write_shut = true;
                }
            }
        }
        if events & EPOLLIN != 0 {
            c.host_readable = true;
        }
        self.refresh(id);
    }

    /// Gives up on connections past their deadline, and resumes accepting after a pause.
    pub fn expire(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.set_listener_interest(EPOLLIN);
        }
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.stats.timeouts += 1;
            self.reset_conn(id);
        }
        self.rearm_timer();
    }

    /// Arms the timer for the earliest deadline.
    pub fn rearm_timer(&mut self) {
        let next = self
            .conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min();
        if next == self.timer_at {
            return;
        }
        let result = match next {
            Some(t) => arm_timer(&mut self.timer, t.saturating_duration_since(Instant::now())),
            None => self.timer.clear().map_err(io::Error::from),
        };
        match result {
            Ok(()) => self.timer_at = next,
            Err(_) => self.stats.host_errors += 1,
        }
    }
}

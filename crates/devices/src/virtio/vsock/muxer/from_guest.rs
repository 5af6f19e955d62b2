//! Packets from the guest: connection requests, data, credit updates and shutdowns, each
//! sent to its host connection or answered with a reset.

use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::{Conn, ConnKey, Muxer, State, EPOLLIN};
use crate::virtio::vsock::host::{connect_nonblocking, port_path, send_nosignal};
use crate::virtio::vsock::packet::{
    Header, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_F_BOTH, SHUTDOWN_F_RECEIVE, SHUTDOWN_F_SEND, TYPE_STREAM,
};
use crate::virtio::vsock::{CONN_BUF_SIZE, SHUTDOWN_TIMEOUT};

impl Muxer {
    /// Handles one packet from the guest. `payload` is the packet's data for [`OP_RW`] (the
    /// caller checked that `hdr.len` bytes were there), empty otherwise.
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        // A guest may only speak for itself, and only to the host (virtio v1.2, 5.10.6.2).
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.stats.bad_packets += 1;
            return;
        }
        if hdr.type_ != TYPE_STREAM || !hdr.op_is_known() {
            self.stats.bad_packets += 1;
            if hdr.op != OP_RST {
                self.reply_rst(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match (hdr.op, self.by_key.get(&key).copied()) {
            (OP_REQUEST, None) => self.guest_connect(hdr, key),
            (OP_REQUEST, Some(id)) => {
                // A second request on a live connection: neither side can trust the old one.
                self.stats.bad_packets += 1;
                self.reset_conn(id);
            }
            (OP_RST, Some(id)) => {
                self.stats.resets_received += 1;
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.state == State::Requesting)
                {
                    self.stats.refused_by_guest += 1;
                }
                self.remove_conn(id);
            }
            // Nothing to answer a reset of nothing with.
            (OP_RST, None) => self.stats.resets_received += 1,
            (_, None) => {
                self.stats.unknown_connection += 1;
                self.reply_rst(hdr);
            }
            (_, Some(id)) => self.conn_packet(id, hdr, payload),
        }
    }

    /// An OP_REQUEST from the guest to host port `key.local_port`: connect to
    /// `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() + self.handshakes.len() >= self.max_connections {
            self.stats.connections_refused += 1;
            self.reply_rst(hdr);
            return;
        }
        let path = port_path(self.listener.path(), key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(_) => {
                self.stats.connect_failures += 1;
                self.reply_rst(hdr);
                return;
            }
        };
        let id = self.new_id();
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, id),
            )
            .is_err()
        {
            self.stats.host_errors += 1;
            self.reply_rst(hdr);
            return;
        }
        let mut c = Conn::new(key, stream, State::Established, EPOLLIN);
        c.send_response = true;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.insert_conn(id, c);
    }

    /// A packet for the live connection `id`.
    fn conn_packet(&mut self, id: u64, hdr: &Header, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // Every packet carries the sender's credit (virtio v1.2, 5.10.6.3).
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if c.peer_credit() > 0 {
            c.credit_requested = false;
        }
        match (c.state, hdr.op) {
            (_, OP_CREDIT_UPDATE) => {}
            (_, OP_CREDIT_REQUEST) => c.send_credit_update = true,
            (State::Requesting, OP_RESPONSE) if c.request_sent => {
                // The stream has received nothing from us yet: the line fits its buffer.
                let line = format!("OK {}\n", c.key.local_port);
                match send_nosignal(&c.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        c.state = State::Established;
                        c.deadline = None;
                    }
                    _ => {
                        self.stats.host_errors += 1;
                        self.reset_conn(id);
                        return;
                    }
                }
            }
            (State::Established, OP_RW) => {
                self.guest_data(id, payload);
                return;
            }
            // The host side is gone; what the guest still sends has nowhere to go.
            (State::Closing, OP_RW) => {}
            (State::Established | State::Closing, OP_SHUTDOWN) => {
                self.guest_shutdown(id, hdr.flags);
                return;
            }
            // A response nobody asked for, data or shutdown before the connection is up.
            _ => {
                self.stats.bad_packets += 1;
                self.reset_conn(id);
                return;
            }
        }
        self.refresh(id);
    }

    /// Guest data for the host stream: written at once if the stream takes it, else kept
    /// (within the credit the guest was given).
    fn guest_data(&mut self, id: u64, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.peer_shutdown & SHUTDOWN_F_SEND != 0 {
            // Data after the guest said it would send no more.
            self.stats.bad_packets += 1;
            self.reset_conn(id);
            return;
        }
        let in_flight = u64::from((c.rx_cnt - c.fwd_cnt).0);
        if in_flight + payload.len() as u64 > u64::from(CONN_BUF_SIZE) {
            // More than the credit we gave (virtio v1.2, 5.10.6.3: the sender MUST NOT).
            self.stats.credit_violations += 1;
            self.reset_conn(id);
            return;
        }
        c.rx_cnt += Wrapping(payload.len() as u32);
        c.tx_buf.extend(payload);
        match c.flush() {
            Ok(n) => self.stats.bytes_to_host += n as u64,
            Err(_) => {
                self.stats.host_errors += 1;
                self.reset_conn(id);
                return;
            }
        }
        c.maybe_credit_update();
        self.refresh(id);
    }

    /// OP_SHUTDOWN from the guest (virtio v1.2, 5.10.6.5).
    fn guest_shutdown(&mut self, id: u64, flags: u32) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == State::Closing {
            // Our shutdown crossed the guest's: the reset ends it for both.
            self.reset_conn(id);
            return;
        }
        c.peer_shutdown |= flags & SHUTDOWN_F_BOTH;
        if c.peer_shutdown == SHUTDOWN_F_BOTH {
            // A clean close: answered with OP_RST once the host has what the guest sent.
            if c.tx_buf.is_empty() {
                self.reset_conn(id);
                return;
            }
            c.close_after_flush = true;
            c.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
        } else {
            if flags & SHUTDOWN_F_RECEIVE != 0 {
                let _ = c.stream.shutdown(Shutdown::Read);
            }
            if flags & SHUTDOWN_F_SEND != 0 && c.tx_buf.is_empty() && !c.host_write_shut {
                let _ = c.stream.shutdown(Shutdown::Write);
                c.host_write_shut = true;
            }
        }
        self.refresh(id);
    }
}

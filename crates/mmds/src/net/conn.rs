//! One guest connection to the MMDS: the request bytes gathered so far, the answer being
//! sent, and the clocks that close a connection which stops making progress.

use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use super::{NetStats, REQUEST_LIMIT, TIMEOUT};

/// The state kept beside a connected socket.
#[derive(Debug)]
pub(super) struct Conn {
    /// The socket in the stack's set.
    pub(super) handle: SocketHandle,
    /// Request bytes received and not yet answered (at most [`REQUEST_LIMIT`]).
    request: Vec<u8>,
    /// Bytes arrived since the request was last offered to the answerer.
    fresh: bool,
    /// The answer being sent, and how much of it the socket has taken.
    response: Vec<u8>,
    sent: usize,
    /// Close once the answer is sent: the request's extent was unclear, so nothing after it
    /// can be read as the next request.
    close_after: bool,
    /// Since when the connection waits for a complete request with nothing to send.
    waiting_since: Instant,
    /// When the guest last sent bytes or acknowledged some.
    last_progress: Instant,
    /// The socket's send queue at the last look, to see acknowledgements.
    send_queue: usize,
}

impl Conn {
    /// A connection the listener just accepted at `now`.
    pub(super) fn new(handle: SocketHandle, now: Instant) -> Self {
        Conn {
            handle,
            request: Vec::new(),
            fresh: false,
            response: Vec::new(),
            sent: 0,
            close_after: false,
            waiting_since: now,
            last_progress: now,
            send_queue: 0,
        }
    }

    /// Reads what the guest sent and, with no answer in flight, offers the request to
    /// `answer`. A request that reaches [`REQUEST_LIMIT`] unanswered aborts the connection.
    pub(super) fn receive(
        &mut self,
        socket: &mut tcp::Socket,
        now: Instant,
        answer: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
        stats: &mut NetStats,
    ) {
        let mut chunk = [0u8; 1024];
        while socket.can_recv() && self.request.len() < REQUEST_LIMIT {
            let room = (REQUEST_LIMIT - self.request.len()).min(chunk.len());
            match socket.recv_slice(&mut chunk[..room]) {
                Ok(n) if n > 0 => {
                    self.request.extend_from_slice(&chunk[..n]);
                    self.fresh = true;
                    self.last_progress = now;
                }
                _ => break,
            }
        }
        if !self.response.is_empty() || !self.fresh {
            return;
        }
        self.fresh = false;
        match answer(&self.request) {
            Some(response) => {
                match request_len(&self.request) {
                    Some(len) => {
                        self.request.drain(..len);
                        // A pipelined request follows: offered once this answer is sent.
                        self.fresh = !self.request.is_empty();
                    }
                    None => {
                        self.request.clear();
                        self.close_after = true;
                    }
                }
                self.response = response;
                self.sent = 0;
                if self.response.is_empty() && self.close_after {
                    socket.close();
                }
            }
            None if self.request.len() >= REQUEST_LIMIT => {
                stats.rx_accepted_err += 1;
                socket.abort();
            }
            None => {}
        }
    }

    /// Moves as much of the answer into the socket as it takes, and closes the connection when
    /// its answer is sent and the guest has closed its side (or the request's end was unclear).
    pub(super) fn send(&mut self, socket: &mut tcp::Socket, now: Instant) {
        if socket.send_queue() < self.send_queue {
            self.last_progress = now;
        }
        if !self.response.is_empty() && socket.can_send() {
            if let Ok(n) = socket.send_slice(&self.response[self.sent..]) {
                self.sent += n;
            }
            if self.sent == self.response.len() {
                self.response = Vec::new();
                self.sent = 0;
                if self.close_after {
                    socket.close();
                }
            }
        }
        self.send_queue = socket.send_queue();
        if !self.response.is_empty() || self.send_queue > 0 {
            // The request clock runs only while nothing is being sent.
            self.waiting_since = now;
        } else if !socket.may_recv() && socket.may_send() {
            // The guest sent FIN and has had every answer: close our side too.
            socket.close();
        }
    }

    /// When the connection times out: [`TIMEOUT`] without progress from the guest, or
    /// [`TIMEOUT`] waiting for a complete request.
    pub(super) fn deadline(&self) -> Instant {
        self.last_progress.min(self.waiting_since) + TIMEOUT
    }
}

/// The length of the first request in `buf`: its head and the body its `Content-Length`
/// announces, when both are there; `None` when its end cannot be told.
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request.parse(buf).ok()? else {
        return None;
    };
    let mut body = 0usize;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value)
                .ok()?
                .trim()
                .parse()
                .ok()?;
        }
    }
    head.checked_add(body).filter(|&len| len <= buf.len())
}

#[cfg(test)]
mod tests {
    use super::request_len;

    #[test]
    fn request_len_covers_head_and_announced_body() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(request_len(get), Some(get.len()));
        let mut two = get.to_vec();
        two.extend_from_slice(b"GET /a HTTP/1.1\r\n\r\n");
        assert_eq!(request_len(&two), Some(get.len()));
        let put = b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        assert_eq!(request_len(put), Some(put.len() - 3));
        // The body is not all there, or cannot be measured.
        assert_eq!(
            request_len(b"PUT /x HTTP/1.1\r\nContent-Length: 9\r\n\r\nab"),
            None
        );
        assert_eq!(
            request_len(b"PUT /x HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            None
        );
        assert_eq!(
            request_len(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            None
        );
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(request_len(b"\xff\xfe garbage\r\n\r\n"), None);
        assert_eq!(
            request_len(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            None
        );
    }
}

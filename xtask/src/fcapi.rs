//! A small client for Firecracker's REST API as `petrel --api-sock` serves it: HTTP/1.1 over
//! a Unix socket, one request at a time on a kept-alive connection. The bench times requests
//! with it, and the boot test configures a VM with it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// The most bytes of one response that are read (the API's answers are small JSON bodies).
const MAX_RESPONSE: usize = 1 << 20;

/// One answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 204, 400...).
    pub status: u16,
    /// The body, as text (empty for 204).
    pub body: String,
}

/// The bytes of one request. `body` (JSON) is sent with its length; none for a `GET`.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(b) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body.unwrap_or(""));
    text.into_bytes()
}

/// Parses one response at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// response and how many bytes it took. Bodies are framed by `Content-Length` (the API sends
/// no chunked bodies); a response without one has an empty body.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let bad = || Error::Other(format!("not an HTTP response: {status_line:?}"));
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad());
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| Error::Other(format!("bad Content-Length: {line:?}")))?;
            }
        }
    }
    let body_start = head_end + 4;
    if length > MAX_RESPONSE {
        return Err(Error::Other(format!("a response body of {length} bytes")));
    }
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[body_start..body_start + length]).into_owned();
    Ok(Some((Response { status, body }, body_start + length)))
}

/// A connection to the API socket.
#[derive(Debug)]
pub struct ApiClient {
    stream: UnixStream,
    /// Bytes read past the last response.
    pending: Vec<u8>,
}

impl ApiClient {
    /// A client on a connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Tries to connect until it works, yielding the CPU between tries, for at most `limit`;
    /// `alive` is asked between tries and ends the wait early when it says the server is
    /// gone. Returns the client and when the connection was accepted, from `start`.
    pub fn connect_when_ready(
        path: &Path,
        start: Instant,
        limit: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<(Self, Duration)> {
        let mut tries = 0u64;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok((Self::from_stream(s), start.elapsed())),
                Err(e) => {
                    tries += 1;
                    if start.elapsed() > limit {
                        return Err(Error::Other(format!(
                            "the API socket {} accepted no connection within {} ms ({tries} \
                             tries; last: {e})",
                            path.display(),
                            limit.as_millis()
                        )));
                    }
                    // Asking after every try would slow the loop down (a waitpid each).
                    if tries % 64 == 0 && !alive() {
                        return Err(Error::Other(format!(
                            "the VMM exited before its API socket {} accepted a connection",
                            path.display()
                        )));
                    }
                    thread::yield_now();
                }
            }
        }
    }

    /// Sends the request's bytes (see [`request_bytes`]) without waiting for the answer.
    pub fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<()> {
        self.stream
            .write_all(&request_bytes(method, path, body))
            .ctx(|| format!("sending {method} {path} to the API"))
    }

    /// Reads the next response.
    pub fn receive(&mut self) -> Result<Response> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some((r, used)) = parse_response(&self.pending)? {
                self.pending.drain(..used);
                return Ok(r);
            }
            if self.pending.len() > MAX_RESPONSE {
                return Err(Error::Other("an API response without an end".into()));
            }
            let n = self
                .stream
                .read(&mut buf)
                .ctx(|| "reading the API's answer".into())?;
            if n == 0 {
                return Err(Error::Other(
                    "the API closed the connection before it answered".into(),
                ));
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// One request and its answer.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<Response> {
        self.send(method, path, body)?;
        self.receive()
    }

    /// A request that must be answered `expect` (e.g. 204 for a `PUT`); the answer's body
    /// otherwise goes into the error.
    pub fn expect(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        expect: u16,
    ) -> Result<Response> {
        let r = self.call(method, path, body)?;
        if r.status == expect {
            Ok(r)
        } else {
            Err(Error::Other(format!(
                "{method} {path} was answered {} (not {expect}): {}",
                r.status,
                r.body.trim()
            )))
        }
    }

    /// Sets a read timeout on the connection (`None`: block).
    pub fn set_timeout(&self, limit: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(limit)
            .ctx(|| "setting the API connection's timeout".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn request_framing() {
        let put = request_bytes(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        );
        assert_eq!(
            String::from_utf8(put).unwrap(),
            "PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: 31\r\n\r\n{\"action_type\":\"InstanceStart\"}"
        );
        let get = request_bytes("GET", "/", None);
        assert_eq!(get, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    }

    #[test]
    fn response_parsing() {
        let two = b"HTTP/1.1 204 \r\nServer: x\r\n\r\nHTTP/1.1 400 Bad Request\r\n\
                    content-length: 21\r\n\r\n{\"fault_message\":\"x\"}";
        let (r, used) = parse_response(two).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        let (r, rest) = parse_response(&two[used..]).unwrap().unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, r#"{"fault_message":"x"}"#);
        assert_eq!(used + rest, two.len());
        // Incomplete: the head, then the body.
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-").unwrap(),
            None
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap(),
            None
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_round_trips_with_a_server() {
        let dir = std::env::temp_dir().join(format!("xtask-fcapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        // The server answers the first request in two pieces, the second in one.
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{")
                .unwrap();
            thread::sleep(Duration::from_millis(20));
            s.write_all(b"}").unwrap();
            let mut second = Vec::new();
            while !second.ends_with(b"{}") {
                let n = s.read(&mut buf).unwrap();
                second.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nnope")
                .unwrap();
            (got, second)
        });
        let (mut c, at) =
            ApiClient::connect_when_ready(&path, Instant::now(), Duration::from_secs(5), || true)
                .unwrap();
        assert!(at < Duration::from_secs(5));
        let r = c.expect("GET", "/", None, 200).unwrap();
        assert_eq!(r.body, "{}");
        let e = c.expect("PUT", "/vm", Some("{}"), 204).unwrap_err();
        assert!(
            e.to_string().contains("answered 400 (not 204): nope"),
            "{e}"
        );
        let (first, second) = server.join().unwrap();
        assert_eq!(first, request_bytes("GET", "/", None));
        assert_eq!(second, request_bytes("PUT", "/vm", Some("{}")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn waiting_for_a_socket_that_never_comes() {
        let path = std::env::temp_dir().join(format!("xtask-fcapi-none-{}", std::process::id()));
        let e =
            ApiClient::connect_when_ready(&path, Instant::now(), Duration::from_millis(50), || {
                true
            })
            .unwrap_err();
        assert!(e.to_string().contains("accepted no connection"), "{e}");
        let e =
            ApiClient::connect_when_ready(&path, Instant::now(), Duration::from_secs(5), || false)
                .unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
    }
}

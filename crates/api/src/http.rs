//! HTTP/1.1 requests and responses as the API uses them.
//!
//! [`parse_request`] reads one request from the front of a connection's buffer; it is meant to
//! be called again whenever more bytes arrive (it keeps no state: the buffer is the state), and
//! it bounds the work and memory a client can cause with [`MAX_HEADER_SECTION_BYTES`],
//! [`MAX_HEADERS`] and [`MAX_PAYLOAD_SIZE`]. The request line and the headers are parsed by
//! `httparse`; the body is framed by `Content-Length` only, as in Firecracker.
//!
//! [`Response::to_bytes`] and [`Response::serialize`] write a response the way Firecracker's
//! server does: `Server: Firecracker API`, a JSON body with `Content-Type` and
//! `Content-Length`, no `Content-Length` on a 204.

/// The request methods the API knows; anything else is kept by name so that it can be refused
/// with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// Any other method, as sent.
    Other(String),
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without a query string (e.g. `/drives/rootfs`).
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

/// One response: a status code and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 204, 400, ...).
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
}

/// The largest request body accepted, in bytes: Firecracker's `MAX_PAYLOAD_SIZE` (50 KiB).
/// A request that announces a longer body is refused with 400 before its body is read.
pub const MAX_PAYLOAD_SIZE: usize = 51_200;

/// The largest header section accepted (request line, headers and the blank line that ends
/// them), in bytes.
pub const MAX_HEADER_SECTION_BYTES: usize = 8 * 1024;

/// The most headers one request may carry.
pub const MAX_HEADERS: usize = 32;

/// The most bytes one complete request can take in a connection's buffer.
pub const MAX_REQUEST_BYTES: usize = MAX_HEADER_SECTION_BYTES + MAX_PAYLOAD_SIZE;

/// The interim response a server sends when a client waits for it before sending its body
/// (`Expect: 100-continue`; curl does so for bodies over 1 KiB).
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a request cannot be read. Each one is answered with 400 (see
/// [`HttpError::to_response`]) and the connection is then closed, because the position of the
/// next request in the stream is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request line or a header is not valid HTTP/1.x (including a path that is not
    /// UTF-8).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The header section is longer than [`MAX_HEADER_SECTION_BYTES`].
    #[error(
        "the request's header section is longer than the limit of {MAX_HEADER_SECTION_BYTES} bytes"
    )]
    HeaderSectionTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    #[error("the request has more than the limit of {MAX_HEADERS} headers")]
    TooManyHeaders,
    /// The announced body is longer than [`MAX_PAYLOAD_SIZE`].
    #[error(
        "the request body is {length} bytes, larger than the limit of {MAX_PAYLOAD_SIZE} bytes"
    )]
    PayloadTooLarge {
        /// The announced length (saturated at `u64::MAX`).
        length: u64,
    },
    /// A `Transfer-Encoding` header (chunked or any other): only `Content-Length` is supported.
    #[error("Transfer-Encoding {0:?} is not supported; send the body with a Content-Length")]
    TransferEncoding(String),
    /// A `Content-Length` that is not a decimal number.
    #[error("invalid Content-Length {0:?}")]
    InvalidContentLength(String),
    /// Several `Content-Length` headers that disagree.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
}

impl HttpError {
    /// The response to send before closing the connection: 400 with a `fault_message`.
    pub fn to_response(&self) -> Response {
        Response::fault(self.to_string())
    }
}

/// What [`parse_request`] found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// The request is not complete yet: read more bytes and call again.
    Incomplete {
        /// The header section is complete, the client sent `Expect: 100-continue` and the
        /// body has not fully arrived: the client may be waiting for [`CONTINUE_RESPONSE`]
        /// before it sends the body.
        expects_continue: bool,
    },
    /// One whole request.
    Complete {
        /// The request.
        request: Request,
        /// How many bytes of the buffer it took; a following (pipelined) request starts there.
        consumed: usize,
        /// Whether the connection stays open after the response: the default for HTTP/1.1,
        /// unless the client sent `Connection: close`; for HTTP/1.0 only with
        /// `Connection: keep-alive`.
        keep_alive: bool,
    },
    /// The bytes are not an acceptable request.
    Error(HttpError),
}

/// The parts of the header section that frame and qualify the request.
struct Framing {
    content_length: Option<u64>,
    keep_alive: bool,
    expects_continue: bool,
}

/// Parses the request at the front of `buf`.
///
/// Call it again with the grown buffer while it answers [`ParseOutcome::Incomplete`]. The work
/// done per call is bounded: at most [`MAX_HEADER_SECTION_BYTES`] are scanned for the headers,
/// and a body longer than [`MAX_PAYLOAD_SIZE`] is refused as soon as its length is known.
/// A request without `Content-Length` has no body (RFC 9112, section 6.3): bytes that follow
/// it are read as the next request.
pub fn parse_request(buf: &[u8]) -> ParseOutcome {
    let window = &buf[..buf.len().min(MAX_HEADER_SECTION_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let header_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEADER_SECTION_BYTES {
                return ParseOutcome::Error(HttpError::HeaderSectionTooLarge);
            }
            return ParseOutcome::Incomplete {
                expects_continue: false,
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return ParseOutcome::Error(HttpError::TooManyHeaders);
        }
        Err(e) => return ParseOutcome::Error(HttpError::Malformed(e.to_string())),
    };
    // `Complete` means that httparse found the method, the path and the version.
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return ParseOutcome::Error(HttpError::Malformed("incomplete request line".to_string()));
    };
    let framing = match framing(parsed.headers, version) {
        Ok(framing) => framing,
        Err(e) => return ParseOutcome::Error(e),
    };

    let body_len = match framing.content_length {
        None => 0,
        Some(length) if length > MAX_PAYLOAD_SIZE as u64 => {
            return ParseOutcome::Error(HttpError::PayloadTooLarge { length });
        }
        // At most MAX_PAYLOAD_SIZE, so it fits a usize.
        Some(length) => length as usize,
    };
    let available = buf.len() - header_len;
    if available < body_len {
        return ParseOutcome::Incomplete {
            expects_continue: framing.expects_continue,
        };
    }

    let path = match target.find(['?', '#']) {
        Some(end) => &target[..end],
        None => target,
    };
    let request = Request {
        method: method_from_token(method),
        path: path.to_string(),
        body: buf[header_len..header_len + body_len].to_vec(),
    };
    ParseOutcome::Complete {
        request,
        consumed: header_len + body_len,
        keep_alive: framing.keep_alive,
    }
}

fn method_from_token(token: &str) -> Method {
    match token {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// Reads the headers that matter here. `version` is httparse's minor version (0 or 1).
fn framing(headers: &[httparse::Header<'_>], version: u8) -> Result<Framing, HttpError> {
    let mut content_length = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(header.value)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(HttpError::ConflictingContentLength);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding(
                String::from_utf8_lossy(header.value).trim().to_string(),
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            // RFC 9110, section 10.1.1: an HTTP/1.0 client's expectation is ignored.
            expect_continue = version >= 1
                && header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
        }
    }
    let keep_alive = if version >= 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    Ok(Framing {
        content_length,
        keep_alive,
        expects_continue: expect_continue && content_length.is_some_and(|length| length > 0),
    })
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::InvalidContentLength(
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(digits.iter().fold(0u64, |acc, &digit| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// The reason phrase sent after a status code (empty for codes this API does not use, which
/// HTTP allows).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

impl Response {
    /// `204 No Content`, Firecracker's answer to a successful `PUT` or `PATCH`.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    /// A response with `status` and a JSON body (the caller's serialized JSON).
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            body: Some(body),
        }
    }

    /// `400 Bad Request` with Firecracker's error body, `{"fault_message": message}`.
    pub fn fault(message: impl Into<String>) -> Response {
        Response::fault_with_status(400, message)
    }

    /// An error with another status (404, 405, 500, ...) and the same
    /// `{"fault_message": message}` body as [`Response::fault`].
    pub fn fault_with_status(status: u16, message: impl Into<String>) -> Response {
        let body = serde_json::json!({ "fault_message": message.into() }).to_string();
        Response::json(status, body)
    }

    /// The response as sent on a connection that stays open (`Connection: keep-alive`).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.serialize(true)
    }

    /// The response as sent, with `Connection: keep-alive` or `Connection: close`.
    ///
    /// A 1xx or 204 response has neither body nor `Content-Length` (RFC 9110, section 8.6;
    /// Firecracker's server does the same); any other response without a body says
    /// `Content-Length: 0` so that a client on a kept-alive connection knows where it ends.
    pub fn serialize(&self, keep_alive: bool) -> Vec<u8> {
        let body = self.body.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(128 + body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status,
                reason_phrase(self.status)
            )
            .as_bytes(),
        );
        out.extend_from_slice(b"Server: Firecracker API\r\n");
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n"
        } else {
            b"Connection: close\r\n"
        });
        let bodiless = self.status == 204 || (100..200).contains(&self.status);
        if !bodiless {
            if self.body.is_some() {
                out.extend_from_slice(b"Content-Type: application/json\r\n");
            }
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !bodiless {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: &[u8] = b"PUT /drives/rootfs?x=1 HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"is_read_only\":1}";

    fn complete(buf: &[u8]) -> (Request, usize, bool) {
        match parse_request(buf) {
            ParseOutcome::Complete {
                request,
                consumed,
                keep_alive,
            } => (request, consumed, keep_alive),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn error(buf: &[u8]) -> HttpError {
        match parse_request(buf) {
            ParseOutcome::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_put_with_a_body() {
        // The body above is 18 bytes; Content-Length says 17, so the last byte is left over.
        let (request, consumed, keep_alive) = complete(PUT);
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path, "/drives/rootfs");
        assert_eq!(request.body, b"{\"is_read_only\":1");
        assert_eq!(consumed, PUT.len() - 1);
        assert!(keep_alive);
    }

    #[test]
    fn every_split_point_gives_the_same_request() {
        let (whole, consumed, _) = complete(PUT);
        for end in 0..consumed {
            match parse_request(&PUT[..end]) {
                ParseOutcome::Incomplete { .. } => {}
                other => panic!("prefix of {end} bytes: {other:?}"),
            }
        }
        // Bytes arriving one at a time into a growing buffer, as the server reads them.
        let mut buf = Vec::new();
        let mut first_complete = None;
        for (i, &byte) in PUT.iter().enumerate() {
            buf.push(byte);
            if let ParseOutcome::Complete { request, .. } = parse_request(&buf) {
                assert_eq!(request, whole);
                first_complete.get_or_insert(i + 1);
            }
        }
        assert_eq!(first_complete, Some(consumed));
    }

    #[test]
    fn methods_query_strings_and_versions() {
        let (request, _, keep_alive) = complete(b"GET /machine-config?a=b#c HTTP/1.1\r\n\r\n");
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.path, "/machine-config");
        assert!(request.body.is_empty());
        assert!(keep_alive);

        let (request, _, _) = complete(b"PATCH /vm HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(request.method, Method::Patch);
        let (request, _, _) = complete(b"DELETE / HTTP/1.1\r\n\r\n");
        assert_eq!(request.method, Method::Other("DELETE".to_string()));

        let (_, _, keep_alive) = complete(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!keep_alive);
        let (_, _, keep_alive) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!keep_alive);
        let (_, _, keep_alive) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(keep_alive);
        assert!(matches!(
            error(b"GET / HTTP/2.0\r\n\r\n"),
            HttpError::Malformed(_)
        ));
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        let mut buf = b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        let first_len = buf.len();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nGET /vm");
        let (first, consumed, _) = complete(&buf);
        assert_eq!(consumed, first_len);
        assert_eq!(
            (first.path.as_str(), first.body.as_slice()),
            ("/actions", &b"{}"[..])
        );
        let rest = &buf[consumed..];
        let (second, consumed, _) = complete(rest);
        assert_eq!((second.method, second.path.as_str()), (Method::Get, "/"));
        assert_eq!(
            parse_request(&rest[consumed..]),
            ParseOutcome::Incomplete {
                expects_continue: false
            }
        );
    }

    #[test]
    fn bad_request_lines_are_errors() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(matches!(error(bad), HttpError::Malformed(_)), "{bad:?}");
        }
    }

    #[test]
    fn non_utf8_paths_are_errors() {
        assert!(matches!(
            error(b"GET /dr\xffives HTTP/1.1\r\n\r\n"),
            HttpError::Malformed(_)
        ));
    }

    #[test]
    fn header_section_limits() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        buf.resize(MAX_HEADER_SECTION_BYTES - 1, b'a');
        assert_eq!(
            parse_request(&buf),
            ParseOutcome::Incomplete {
                expects_continue: false
            }
        );
        // The limit is hit before the header section ends: no need to wait for its end.
        buf.push(b'a');
        assert_eq!(error(&buf), HttpError::HeaderSectionTooLarge);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(error(&buf), HttpError::HeaderSectionTooLarge);

        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            buf.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        let mut exactly = buf.clone();
        exactly.extend_from_slice(b"\r\n");
        complete(&exactly);
        buf.extend_from_slice(b"X-One-Too-Many: v\r\n\r\n");
        assert_eq!(error(&buf), HttpError::TooManyHeaders);
    }

    #[test]
    fn body_size_limit() {
        let head = |length: usize| format!("PUT /vm HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        // Refused as soon as the header section is in, without waiting for the body.
        let e = error(head(MAX_PAYLOAD_SIZE + 1).as_bytes());
        assert_eq!(e, HttpError::PayloadTooLarge { length: 51_201 });
        let fault = e.to_response();
        assert_eq!(fault.status, 400);
        assert!(
            fault.body.as_deref().is_some_and(|b| b.contains("51200")),
            "{fault:?}"
        );
        assert_eq!(
            error(b"PUT /vm HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            HttpError::PayloadTooLarge { length: u64::MAX }
        );

        let mut buf = head(MAX_PAYLOAD_SIZE).into_bytes();
        let header_len = buf.len();
        buf.resize(header_len + MAX_PAYLOAD_SIZE - 1, b'x');
        assert!(matches!(
            parse_request(&buf),
            ParseOutcome::Incomplete { .. }
        ));
        buf.push(b'x');
        let (request, consumed, _) = complete(&buf);
        assert_eq!(
            (request.body.len(), consumed),
            (MAX_PAYLOAD_SIZE, buf.len())
        );
    }

    #[test]
    fn content_length_must_be_a_single_number() {
        assert_eq!(
            error(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            HttpError::InvalidContentLength("-1".to_string())
        );
        assert!(matches!(
            error(b"PUT / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"),
            HttpError::InvalidContentLength(_)
        ));
        assert_eq!(
            error(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::ConflictingContentLength
        );
        let (request, _, _) =
            complete(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx");
        assert_eq!(request.body, b"x");
    }

    #[test]
    fn chunked_bodies_are_refused() {
        let e =
            error(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
        assert_eq!(e, HttpError::TransferEncoding("chunked".to_string()));
        assert!(e.to_string().contains("Content-Length"));
    }

    #[test]
    fn a_body_without_content_length_is_read_as_the_next_request() {
        let buf = b"PUT /vm HTTP/1.1\r\nHost: x\r\n\r\n{\"state\": \"Paused\"}";
        let (request, consumed, _) = complete(buf);
        assert_eq!(request.method, Method::Put);
        assert!(request.body.is_empty());
        assert_eq!(&buf[consumed..], b"{\"state\": \"Paused\"}");
        assert!(matches!(error(&buf[consumed..]), HttpError::Malformed(_)));
    }

    #[test]
    fn expect_100_continue() {
        let head = b"PUT /drives/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        let waiting = ParseOutcome::Incomplete {
            expects_continue: true,
        };
        assert_eq!(parse_request(head), waiting);
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"{}");
        assert_eq!(parse_request(&buf), waiting);
        buf.extend_from_slice(b"  ");
        assert_eq!(complete(&buf).0.body, b"{}  ");
        // Not before the header section is complete.
        assert_eq!(
            parse_request(&head[..head.len() - 2]),
            ParseOutcome::Incomplete {
                expects_continue: false
            }
        );
        // HTTP/1.0 expectations are ignored; without a body nothing is awaited.
        let old = b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(
            parse_request(old),
            ParseOutcome::Incomplete {
                expects_continue: false
            }
        );
        complete(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn serializes_no_content() {
        assert_eq!(
            Response::no_content().to_bytes(),
            b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn serializes_json() {
        let response = Response::json(200, "{\"id\":\"a\"}".to_string());
        assert_eq!(
            response.serialize(false),
            b"HTTP/1.1 200 OK\r\nServer: Firecracker API\r\nConnection: close\r\n\
              Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"id\":\"a\"}"
        );
        let empty = Response {
            status: 404,
            body: None,
        };
        assert_eq!(
            empty.to_bytes(),
            b"HTTP/1.1 404 Not Found\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\
              Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn fault_messages_are_escaped_json() {
        let response = Response::fault("bad \"path\"\n\\");
        assert_eq!(response.status, 400);
        let body: serde_json::Value =
            serde_json::from_str(response.body.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "fault_message": "bad \"path\"\n\\" })
        );
        assert_eq!(Response::fault_with_status(500, "x").status, 500);
    }
}

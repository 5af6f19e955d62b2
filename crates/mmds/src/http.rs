//! HTTP/1.x as the guest speaks it to MMDS: reading one request from the front of a
//! connection's bytes, and writing a response the way Firecracker's MMDS does.
//!
//! [`parse`] keeps no state (the bytes are the state): call it again as more bytes arrive. It
//! bounds what a guest can make the caller hold: a request (header section and body together)
//! of more than [`MAX_REQUEST_BYTES`] is refused as soon as that is known, so a caller that
//! buffers at most [`MAX_REQUEST_BYTES`] bytes per connection always gets an answer. The
//! request line and headers are parsed by `httparse`; a body is framed by `Content-Length`
//! only and is read and dropped (MMDS requests carry none).

/// The most bytes one request (header section and body) may take. Firecracker bounds a
/// request at 2500 bytes; 8 KiB leaves room for long paths and many headers.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The most headers one request may carry.
pub const MAX_HEADERS: usize = 32;

/// One request, as far as MMDS needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (`GET`, `PUT`, ...).
    pub method: String,
    /// The request target as sent (origin form `/a/b` or absolute form `http://host/a/b`).
    pub target: String,
    /// The HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The headers in the order sent: names as sent, values with surrounding blanks removed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether the connection stays open after the answer: HTTP/1.1 unless `Connection:
    /// close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
}

impl Request {
    /// The first header whose name is one of `names` (ASCII case-insensitive): its name as sent
    /// and its value.
    pub fn header(&self, names: &[&str]) -> Option<(&str, &[u8])> {
        self.headers
            .iter()
            .find(|(name, _)| names.iter().any(|n| name.eq_ignore_ascii_case(n)))
            .map(|(name, value)| (name.as_str(), value.as_slice()))
    }

    /// The absolute path of the target, without the scheme and host of an absolute-form
    /// target, and without a query or fragment. Empty when there is none (`http://host`,
    /// `*`), which Firecracker refuses as an invalid URI.
    pub fn path(&self) -> &str {
        let mut target = self.target.as_str();
        if target
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
        {
            target = target[7..].find('/').map_or("", |at| &target[7 + at..]);
        }
        if !target.starts_with('/') {
            return "";
        }
        target.find(['?', '#']).map_or(target, |end| &target[..end])
    }
}

/// What [`parse`] found at the front of a connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: call again when more bytes have arrived.
    Incomplete,
    /// One whole request, which took the first `consumed` bytes.
    Complete {
        /// The request.
        request: Request,
        /// How many bytes it took (header section and body); the next request starts there.
        consumed: usize,
    },
    /// Not an acceptable request: answer with the error and close the connection, since where
    /// the next request would start is unknown.
    Refused(Refusal),
}

/// A request that cannot be served, with the status and the plain-text message it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status code (400 or 413).
    pub status: u16,
    /// The message (micro-http's wording, which Firecracker's MMDS answers with).
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> Parsed {
    Parsed::Refused(Refusal {
        status: 400,
        message: message.into(),
    })
}

/// Parses the request at the front of `buf`; see the [module documentation](self).
///
/// Whenever `buf` holds [`MAX_REQUEST_BYTES`] bytes or more, the answer is not
/// [`Parsed::Incomplete`].
pub fn parse(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(MAX_REQUEST_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_BYTES => {
            return Parsed::Refused(too_large(buf.len()));
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return bad_request(format!("Invalid request: more than {MAX_HEADERS} headers."));
        }
        // micro-http's wording for a request it cannot read.
        Err(_) => return bad_request("Invalid request."),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return bad_request("Invalid request.");
    };

    let mut content_length: Option<u64> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    for header in parsed.headers.iter() {
        let value = header.value.trim_ascii();
        if header.name.eq_ignore_ascii_case("content-length") {
            let Some(length) = decimal(value) else {
                return bad_request(invalid_value(header.name, value));
            };
            if content_length.is_some_and(|previous| previous != length) {
                return bad_request(invalid_value(header.name, value));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case(b"identity")
        {
            // Only Content-Length frames a body here; a chunked body's end cannot be found
            // without decoding it, which MMDS has no use for.
            return bad_request(format!(
                "Invalid header. Reason: Unsupported value. Key:{}; Value:{}",
                header.name,
                String::from_utf8_lossy(value)
            ));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let total = content_length.unwrap_or(0).saturating_add(head_len as u64);
    if total > MAX_REQUEST_BYTES as u64 {
        return Parsed::Refused(too_large(usize::try_from(total).unwrap_or(usize::MAX)));
    }
    // At most MAX_REQUEST_BYTES, so it fits.
    let consumed = total as usize;
    if buf.len() < consumed {
        return Parsed::Incomplete;
    }
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        minor_version,
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.trim_ascii().to_vec()))
            .collect(),
        keep_alive: if minor_version >= 1 {
            !close
        } else {
            keep_alive_token && !close
        },
    };
    Parsed::Complete { request, consumed }
}

fn too_large(size: usize) -> Refusal {
    Refusal {
        status: 413,
        message: format!(
            "Request payload with size {size} is larger than the limit of {MAX_REQUEST_BYTES} \
             allowed by server."
        ),
    }
}

/// micro-http's message for a header value it cannot use.
pub(crate) fn invalid_value(name: &str, value: &[u8]) -> String {
    format!(
        "Invalid header. Reason: Invalid value. Key:{name}; Value:{}",
        String::from_utf8_lossy(value)
    )
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// The body's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `text/plain`: IMDS text, tokens and error messages.
    PlainText,
    /// `application/json`.
    Json,
}

/// One response, before it is written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body's media type.
    pub content_type: ContentType,
    /// The body.
    pub body: String,
    /// Extra headers (`Allow` on a 405, the TTL echoed on a token).
    pub headers: Vec<(String, String)>,
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        _ => "",
    }
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: ContentType::PlainText,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The response as sent: Firecracker's `Server` header, `Connection` as the request asked,
    /// `Content-Type` and `Content-Length` always. `minor_version` is the request's.
    pub fn to_bytes(&self, minor_version: u8, keep_alive: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.{} {} {}\r\nServer: Firecracker API\r\nConnection: {}\r\n",
            minor_version.min(1),
            self.status,
            reason_phrase(self.status),
            if keep_alive { "keep-alive" } else { "close" },
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let content_type = match self.content_type {
            ContentType::PlainText => "text/plain",
            ContentType::Json => "application/json",
        };
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Request, usize) {
        match parse(bytes) {
            Parsed::Complete { request, consumed } => (request, consumed),
            other => panic!("{other:?}"),
        }
    }

    fn refused(bytes: &[u8]) -> Refusal {
        match parse(bytes) {
            Parsed::Refused(refusal) => refusal,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_is_read_whole_and_its_length_reported() {
        let bytes = b"GET /latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                      X-Metadata-Token: abc \r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let (request, consumed) = complete(bytes);
        assert_eq!(request.method, "GET");
        assert_eq!(request.path(), "/latest/meta-data");
        assert_eq!(request.minor_version, 1);
        assert!(request.keep_alive);
        assert_eq!(
            request.header(&["x-metadata-token"]),
            Some(("X-Metadata-Token", &b"abc"[..]))
        );
        assert_eq!(request.header(&["accept"]), None);
        // The pipelined request that follows starts right after.
        assert_eq!(&bytes[consumed..], b"GET /next HTTP/1.1\r\n\r\n");
        assert_eq!(complete(&bytes[consumed..]).0.path(), "/next");
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let bytes = b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody";
        for end in 0..bytes.len() {
            assert_eq!(parse(&bytes[..end]), Parsed::Incomplete, "{end}");
        }
        let (request, consumed) = complete(bytes);
        assert_eq!(consumed, bytes.len());
        assert_eq!(request.method, "PUT");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn paths_lose_scheme_host_query_and_fragment() {
        let path = |target: &str| {
            complete(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes())
                .0
                .path()
                .to_string()
        };
        assert_eq!(path("http://169.254.169.254/latest/x"), "/latest/x");
        assert_eq!(path("HTTP://host/"), "/");
        assert_eq!(path("http://169.254.169.254"), "");
        assert_eq!(path("/a?b=/c#d"), "/a");
        assert_eq!(path("*"), "");
        assert_eq!(path("a/b"), "");
    }

    #[test]
    fn hostile_requests_are_refused_within_the_bound() {
        // Garbage.
        assert_eq!(refused(b"\x00\x01\x02\r\n\r\n").status, 400);
        assert_eq!(refused(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").status, 400);
        assert_eq!(refused(b"GET /\xff\xfe HTTP/1.1\r\n\r\n").status, 400);
        // A 64 KiB header: refused once the bound is reached, whatever follows.
        let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        huge.resize(64 * 1024, b'a');
        let refusal = refused(&huge);
        assert_eq!(refusal.status, 413);
        assert_eq!(parse(&huge[..MAX_REQUEST_BYTES - 1]), Parsed::Incomplete);
        assert_eq!(refused(&huge[..MAX_REQUEST_BYTES]).status, 413);
        // A body that would never end (or is just too long) is refused before it arrives.
        let refusal = refused(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert_eq!(refusal.status, 413);
        assert_eq!(
            refused(b"PUT / HTTP/1.1\r\nContent-Length: 8192\r\n\r\n").status,
            413
        );
        assert_eq!(
            refused(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").message,
            "Invalid header. Reason: Unsupported value. Key:Transfer-Encoding; Value:chunked"
        );
        assert_eq!(
            refused(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").message,
            "Invalid header. Reason: Invalid value. Key:Content-Length; Value:-1"
        );
        assert_eq!(
            refused(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").status,
            400
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).status,
            400
        );
    }

    #[test]
    fn a_full_buffer_always_gets_an_answer() {
        // Whatever the bytes, MAX_REQUEST_BYTES of them are never `Incomplete`.
        let inputs: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nContent-Length: 8000\r\n\r\n",
            b"GET /aaaa",
            b"G",
            b"GET / HTTP/1.1\r\nX: y\r\n",
        ];
        for input in inputs {
            let mut buf = input.to_vec();
            buf.resize(MAX_REQUEST_BYTES, b'a');
            assert_ne!(parse(&buf), Parsed::Incomplete, "{:?}", &input);
        }
    }

    #[test]
    fn responses_are_written_as_firecrackers_mmds_writes_them() {
        let mut response = Response::text(405, "Not allowed HTTP method.");
        response
            .headers
            .push(("Allow".to_string(), "GET, PUT".to_string()));
        assert_eq!(
            String::from_utf8(response.to_bytes(1, true)).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nServer: Firecracker API\r\n\
             Connection: keep-alive\r\nAllow: GET, PUT\r\nContent-Type: text/plain\r\n\
             Content-Length: 24\r\n\r\nNot allowed HTTP method."
        );
        let json = Response {
            status: 200,
            content_type: ContentType::Json,
            body: "\"x\"".to_string(),
            headers: Vec::new(),
        };
        assert_eq!(
            String::from_utf8(json.to_bytes(0, false)).unwrap(),
            "HTTP/1.0 200 OK\r\nServer: Firecracker API\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: 3\r\n\r\n\"x\""
        );
    }
}

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::http::MAX_REQUEST_BYTES;
use crate::store::DEFAULT_SIZE_LIMIT;

/// A response as a guest reads it.
#[derive(Debug)]
struct Seen {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read(bytes: &[u8]) -> Seen {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_string(), v.to_string())
        })
        .collect();
    let seen = Seen {
        status_line,
        headers,
        body: body.to_string(),
    };
    assert_eq!(
        seen.header("Content-Length"),
        Some(seen.body.len().to_string().as_str())
    );
    seen
}

fn ask_at(mmds: &Mmds, request: &str, now: Instant) -> Seen {
    let reply = mmds.answer_request(request.as_bytes(), now).unwrap();
    assert_eq!(reply.consumed, request.len());
    read(&reply.bytes)
}

fn ask(mmds: &Mmds, request: &str) -> Seen {
    ask_at(mmds, request, Instant::now())
}

fn get(mmds: &Mmds, path: &str, headers: &str) -> Seen {
    ask(mmds, &format!("GET {path} HTTP/1.1\r\n{headers}\r\n"))
}

fn new_token(mmds: &Mmds, ttl: u32, now: Instant) -> String {
    let seen = ask_at(
        mmds,
        &format!("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: {ttl}\r\n\r\n"),
        now,
    );
    assert_eq!(seen.status(), 200, "{}", seen.body);
    seen.body
}

/// The document of Firecracker's user guide ("Retrieving metadata").
fn user_guide_mmds() -> Mmds {
    let mmds = Mmds::new(DEFAULT_SIZE_LIMIT).unwrap();
    mmds.store()
        .lock()
        .unwrap()
        .put(json!({
            "latest": {
                "meta-data": {
                    "ami-id": "ami-87654321",
                    "reservation-id": "r-79054aef"
                }
            }
        }))
        .unwrap();
    mmds
}

/// The document of Firecracker's `mmds/mod.rs` tests.
fn people_mmds() -> Mmds {
    let mmds = Mmds::new(DEFAULT_SIZE_LIMIT).unwrap();
    mmds.store()
        .lock()
        .unwrap()
        .put(json!({
            "name": {"first": "John", "second": "Doe"},
            "age": 43,
            "phones": {
                "home": {"RO": "+401234567", "UK": "+441234567"},
                "mobile": "+442345678"
            },
            "list": ["a", "b"]
        }))
        .unwrap();
    mmds
}

const JSON: &str = "Accept: application/json\r\n";

#[test]
fn the_user_guides_examples_in_imds_and_json() {
    let mmds = user_guide_mmds();
    let cases = [
        ("/latest", "", "meta-data/"),
        ("/latest/meta-data", "", "ami-id\nreservation-id"),
        ("/latest/meta-data/", "", "ami-id\nreservation-id"),
        ("/latest/meta-data/ami-id", "", "ami-87654321"),
        (
            "/latest/meta-data",
            JSON,
            r#"{"ami-id":"ami-87654321","reservation-id":"r-79054aef"}"#,
        ),
        ("/latest/meta-data/ami-id", JSON, r#""ami-87654321""#),
        // curl's default and the guide's `plain/text` both mean IMDS.
        ("/latest", "Accept: */*\r\n", "meta-data/"),
        ("/latest", "Accept: plain/text\r\n", "meta-data/"),
        (
            "/latest",
            "accept: APPLICATION/JSON\r\n",
            r#"{"meta-data":{"ami-id":"ami-87654321","reservation-id":"r-79054aef"}}"#,
        ),
    ];
    for (path, headers, body) in cases {
        let seen = get(&mmds, path, headers);
        assert_eq!(seen.status(), 200, "{path} {headers}");
        assert_eq!(seen.body, body, "{path} {headers}");
        let content_type = if body.starts_with(['{', '"']) {
            "application/json"
        } else {
            "text/plain"
        };
        assert_eq!(seen.header("Content-Type"), Some(content_type));
        assert_eq!(seen.header("Server"), Some("Firecracker API"));
    }
}

#[test]
fn imds_text_of_firecrackers_test_document() {
    let mmds = people_mmds();
    assert_eq!(get(&mmds, "/", "").body, "age\nlist\nname/\nphones/");
    assert_eq!(get(&mmds, "/phones", "").body, "home/\nmobile");
    assert_eq!(get(&mmds, "/phones/home/UK", "").body, "+441234567");
    assert_eq!(get(&mmds, "//phones///home//UK/", "").body, "+441234567");
    assert_eq!(get(&mmds, "/list/1", "").body, "b");
    // Numbers, arrays (and booleans, null) have no IMDS text: 501, as in Firecracker.
    for path in ["/age", "/list"] {
        let seen = get(&mmds, path, "");
        assert_eq!(seen.status(), 501, "{path}");
        assert_eq!(
            seen.body,
            "Cannot retrieve value. The value has an unsupported type."
        );
    }
    assert_eq!(get(&mmds, "/age", JSON).body, "43");
    assert_eq!(get(&mmds, "/list", JSON).body, r#"["a","b"]"#);
    // An empty document lists nothing.
    let empty = Mmds::new(DEFAULT_SIZE_LIMIT).unwrap();
    let seen = get(&empty, "/", "");
    assert_eq!((seen.status(), seen.body.as_str()), (200, ""));
    assert_eq!(get(&empty, "/", JSON).body, "{}");
}

#[test]
fn imds_compat_ignores_accept() {
    let mut mmds = user_guide_mmds();
    mmds.set_imds_compat(true);
    assert!(mmds.imds_compat());
    let seen = get(&mmds, "/latest/meta-data", JSON);
    assert_eq!(seen.body, "ami-id\nreservation-id");
    assert_eq!(seen.header("Content-Type"), Some("text/plain"));
    assert_eq!(
        get(&mmds, "/latest/meta-data/ami-id", JSON).body,
        "ami-87654321"
    );
}

#[test]
fn unknown_paths_bad_uris_and_other_methods() {
    let mmds = people_mmds();
    let seen = get(&mmds, "/invalid", "");
    assert_eq!(seen.status(), 404);
    assert_eq!(seen.body, "Resource not found: /invalid.");
    let seen = get(&mmds, "http://169.254.169.254/invalid", "");
    assert_eq!(seen.body, "Resource not found: /invalid.");
    let seen = get(&mmds, "http://169.254.169.254/name/first", JSON);
    assert_eq!(seen.body, r#""John""#);
    let seen = get(&mmds, "http://169.254.169.254", "");
    assert_eq!((seen.status(), seen.body.as_str()), (400, "Invalid URI."));
    for method in ["PATCH", "POST", "DELETE", "HEAD", "OPTIONS", "FOO"] {
        let seen = ask(&mmds, &format!("{method} / HTTP/1.1\r\n\r\n"));
        assert_eq!(seen.status(), 405, "{method}");
        assert_eq!(seen.body, "Not allowed HTTP method.");
        assert_eq!(seen.header("Allow"), Some("GET, PUT"));
    }
}

#[test]
fn v1_serves_gets_with_or_without_a_token_and_counts_them() {
    let mmds = user_guide_mmds();
    assert_eq!(mmds.version(), MmdsVersion::V1);
    let metrics = Arc::clone(mmds.metrics());
    assert_eq!(get(&mmds, "/latest", "").status(), 200);
    assert_eq!(metrics.rx_no_token.get(), 1);
    let seen = get(&mmds, "/latest", "X-metadata-token: forged\r\n");
    assert_eq!(seen.status(), 200);
    assert_eq!(metrics.rx_invalid_token.get(), 1);
    // V1 hands out tokens too (to ease moving to V2); a valid one is not counted.
    let now = Instant::now();
    let token = new_token(&mmds, 60, now);
    let seen = ask_at(
        &mmds,
        &format!("GET /latest HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"),
        now,
    );
    assert_eq!(seen.status(), 200);
    assert_eq!(
        (metrics.rx_no_token.get(), metrics.rx_invalid_token.get()),
        (1, 1)
    );
    // Firecracker's test: an invalid TTL header on a V1 GET is ignored.
    let seen = get(
        &mmds,
        "/latest/meta-data/ami-id",
        "X-metadata-token-ttl-seconds: x\r\n",
    );
    assert_eq!(seen.body, "ami-87654321");
}

#[test]
fn v2_needs_a_valid_unexpired_token() {
    let mut mmds = user_guide_mmds();
    mmds.set_version(MmdsVersion::V2);
    assert_eq!(mmds.version().to_string(), "V2");
    let metrics = Arc::clone(mmds.metrics());
    let t0 = Instant::now();

    let seen = ask_at(&mmds, "GET /latest HTTP/1.1\r\n\r\n", t0);
    assert_eq!(seen.status(), 401);
    assert_eq!(
        seen.body,
        "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header \
         to specify the session token."
    );
    assert_eq!(metrics.rx_no_token.get(), 1);

    let seen = ask_at(
        &mmds,
        "GET /latest HTTP/1.1\r\nX-metadata-token: nope\r\n\r\n",
        t0,
    );
    assert_eq!(
        (seen.status(), seen.body.as_str()),
        (401, "MMDS token not valid.")
    );
    let not_utf8 = b"GET /latest HTTP/1.1\r\nX-metadata-token: \xff\xfe\r\n\r\n";
    let seen = read(&mmds.answer(not_utf8, t0).unwrap());
    assert_eq!(seen.status(), 401);
    assert_eq!(metrics.rx_invalid_token.get(), 2);

    let token = new_token(&mmds, 5, t0);
    for header in ["X-metadata-token", "x-aws-ec2-metadata-token"] {
        let request = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\n{header}: {token}\r\n\r\n");
        let seen = ask_at(&mmds, &request, t0 + Duration::from_secs(4));
        assert_eq!((seen.status(), seen.body.as_str()), (200, "ami-87654321"));
        // Expired.
        let seen = ask_at(&mmds, &request, t0 + Duration::from_secs(5));
        assert_eq!(
            (seen.status(), seen.body.as_str()),
            (401, "MMDS token not valid.")
        );
    }
    // A missing token is refused before a missing path is looked for.
    assert_eq!(get(&mmds, "/nothing", "").status(), 401);

    // A restored VM's MMDS refuses tokens from before.
    let token = new_token(&mmds, 60, t0);
    mmds.invalidate_tokens().unwrap();
    let request = format!("GET /latest HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    assert_eq!(ask_at(&mmds, &request, t0).status(), 401);
}

#[test]
fn token_puts_follow_firecrackers_rules() {
    let mmds = Mmds::new(DEFAULT_SIZE_LIMIT).unwrap();
    let put = |headers: &str| {
        ask(
            &mmds,
            &format!("PUT /latest/api/token HTTP/1.1\r\n{headers}\r\n"),
        )
    };

    let seen = put("X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n");
    assert_eq!(seen.status(), 200);
    assert_eq!(seen.header("Content-Type"), Some("text/plain"));
    assert_eq!(
        seen.header("X-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert!(mmds.tokens.is_valid(&seen.body, Instant::now()));

    let seen = put("");
    assert_eq!(seen.status(), 400);
    assert_eq!(
        seen.body,
        "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or \
         `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime."
    );
    for ttl in ["0", "21601", "4294967295"] {
        let seen = put(&format!("X-metadata-token-ttl-seconds: {ttl}\r\n"));
        assert_eq!(seen.status(), 400);
        assert_eq!(
            seen.body,
            format!(
                "Invalid time to live value provided for token: {ttl}. Please provide a value \
                 between 1 and 21600."
            )
        );
    }
    for ttl in ["abc", "-1", "4294967296", "1.5"] {
        let seen = put(&format!("X-Metadata-Token-TTL-Seconds: {ttl}\r\n"));
        assert_eq!(seen.status(), 400);
        assert_eq!(
            seen.body,
            format!("Invalid header. Reason: Invalid value. Key:X-Metadata-Token-TTL-Seconds; Value:{ttl}")
        );
    }
    let seen = put("X-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.1\r\n");
    assert_eq!(seen.status(), 400);
    assert_eq!(
        seen.body,
        "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For"
    );
    // Only the token path takes a PUT; doubled slashes are fine.
    let seen = ask(
        &mmds,
        "PUT /latest/api/tokens HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert_eq!(
        (seen.status(), seen.body.as_str()),
        (404, "Resource not found: /latest/api/tokens.")
    );
    let seen = ask(
        &mmds,
        "PUT http://169.254.169.254//latest//api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert_eq!(seen.status(), 200);
    // A body (Content-Length) is read and dropped.
    let seen = ask(
        &mmds,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(seen.status(), 200);
}

#[test]
fn versions_connections_and_pipelining() {
    let mmds = user_guide_mmds();
    let seen = ask(&mmds, "GET /latest HTTP/1.0\r\n\r\n");
    assert_eq!(seen.status_line, "HTTP/1.0 200 OK");
    assert_eq!(seen.header("Connection"), Some("close"));
    let two = b"GET /latest HTTP/1.1\r\n\r\nGET /latest/meta-data/ami-id HTTP/1.1\r\nConnection: close\r\n\r\n";
    let first = mmds.answer_request(two, Instant::now()).unwrap();
    assert!(first.keep_alive);
    assert_eq!(read(&first.bytes).body, "meta-data/");
    let second = mmds
        .answer_request(&two[first.consumed..], Instant::now())
        .unwrap();
    assert!(!second.keep_alive);
    assert_eq!(first.consumed + second.consumed, two.len());
    assert_eq!(read(&second.bytes).body, "ami-87654321");
    // The plain form answers the first request only.
    assert_eq!(mmds.answer(two, Instant::now()).unwrap(), first.bytes);
    assert_eq!(
        mmds.answer(b"GET /latest HTTP/1.1\r\n", Instant::now()),
        None
    );
}

#[test]
fn hostile_requests_get_bounded_answers_and_close() {
    let mmds = user_guide_mmds();
    let now = Instant::now();
    let refused = |bytes: &[u8], status: u16| {
        let reply = mmds.answer_request(bytes, now).unwrap();
        assert!(!reply.keep_alive);
        assert_eq!(reply.consumed, bytes.len());
        let seen = read(&reply.bytes);
        assert_eq!(seen.status(), status, "{}", seen.body);
        assert_eq!(seen.header("Connection"), Some("close"));
    };
    refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400);
    refused(b"GET /\xc3\x28 HTTP/1.1\r\n\r\n", 400);
    refused(b"GET / HTTP/2.0\r\n\r\n", 400);
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(64 * 1024, b'x');
    refused(&huge, 413);
    refused(b"GET / HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n", 413);
    // A body that is slow to come: nothing is answered until it is whole, which is within the
    // bound; then it is dropped, and the bytes after it are the next request.
    let head = b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 9\r\nContent-Length: 8000\r\n\r\n";
    let mut slow = head.to_vec();
    slow.resize(head.len() + 7999, b'z');
    assert_eq!(mmds.answer_request(&slow, now), None);
    slow.resize(MAX_REQUEST_BYTES, b'z');
    let reply = mmds.answer_request(&slow, now).unwrap();
    assert_eq!(reply.consumed, head.len() + 8000);
    assert_eq!(read(&reply.bytes).status(), 200);
    // A request line that never ends.
    let mut endless = b"GET /".to_vec();
    endless.resize(MAX_REQUEST_BYTES - 1, b'a');
    assert_eq!(mmds.answer_request(&endless, now), None);
    endless.push(b'a');
    refused(&endless, 413);
}

/// A small deterministic generator (xorshift64), so that the byte soup below is the same on
/// every run.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn byte_soup_never_panics_and_answers_within_the_bound() {
    let mut mmds = people_mmds();
    let now = Instant::now();
    let pieces: [&[u8]; 14] = [
        b"GET ",
        b"PUT ",
        b"/",
        b"latest/api/token",
        b"name",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"X-metadata-token: ",
        b"X-metadata-token-ttl-seconds: 60",
        b"Content-Length: 5",
        b"Accept: application/json",
        b"\xff",
        b":",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20_000 {
        if round == 10_000 {
            mmds.set_version(MmdsVersion::V2);
        }
        let mut request = Vec::new();
        for _ in 0..(xorshift(&mut state) % 12) {
            let r = xorshift(&mut state);
            if r % 4 == 0 {
                request.push((r >> 8) as u8);
            } else {
                request.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]);
            }
        }
        if let Some(reply) = mmds.answer_request(&request, now) {
            assert!(reply.consumed <= request.len());
            assert!(reply.consumed > 0);
            assert!(reply.bytes.starts_with(b"HTTP/1."));
        }
    }
}

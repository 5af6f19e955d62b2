//! The metadata service as the guest sees it: [`Mmds`] holds the data store, the version,
//! `imds_compat`, the token authority and the metrics, and [`Mmds::answer`] turns the bytes a
//! guest sent on a connection into the bytes it gets back.
//!
//! Firecracker's rules (its `mmds/mod.rs`, `data_store.rs` and user guide):
//! - Only `GET` and `PUT` are served; anything else gets 405 with `Allow: GET, PUT`.
//! - `PUT` is for tokens only, in V1 and V2 alike: to `/latest/api/token` (anything else: 404),
//!   with `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` (missing:
//!   400; not a number or outside 1..=21600: 400), and never with `X-Forwarded-For` (400), so
//!   that a proxy in the guest cannot fetch tokens for others.
//! - V2: a `GET` needs `X-metadata-token` or `X-aws-ec2-metadata-token` (missing: 401, counted
//!   in `rx_no_token`), valid and unexpired (otherwise 401, counted in `rx_invalid_token`).
//!   V1 serves the `GET` either way, but counts the same, to show who is ready for V2.
//! - The path is a pointer into the document (doubled and trailing slashes ignored); a path
//!   that reaches nothing gets 404 `Resource not found: <path>.`.
//! - Format: IMDS text unless the request says `Accept: application/json` and `imds_compat`
//!   is off. IMDS text of an object lists its keys one per line, sorted, objects' keys with a
//!   trailing `/`; of a string, the string; any other value gets 501.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::{self, ContentType, Parsed, Request, Response};
use crate::metrics::MmdsMetrics;
use crate::store::DataStore;
use crate::token::{TokenAuthority, TokenError, TOKEN_PATH};

/// The headers that carry a session token.
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
/// The headers that ask for a token's time to live.
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
/// A token `PUT` carrying this header is refused.
const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";

// Firecracker's messages, which guests and their tests may match on.
const MSG_INVALID_TOKEN: &str = "MMDS token not valid.";
const MSG_INVALID_URI: &str = "Invalid URI.";
const MSG_METHOD_NOT_ALLOWED: &str = "Not allowed HTTP method.";
const MSG_NO_TOKEN: &str = "No MMDS token provided. Use `X-metadata-token` or \
                            `X-aws-ec2-metadata-token` header to specify the session token.";
const MSG_NO_TTL: &str = "Token time to live value not found. Use \
                          `X-metadata-token-ttl-seconds` or \
                          `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's \
                          lifetime.";
const MSG_UNSUPPORTED_TYPE: &str = "Cannot retrieve value. The value has an unsupported type.";

/// The MMDS version: how `GET`s are authorized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET`s; a token, if given, is only checked for the metrics (Firecracker's
    /// default, deprecated there).
    #[default]
    V1,
    /// Session-oriented: a `GET` needs a token from `PUT /latest/api/token`.
    V2,
}

impl fmt::Display for MmdsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MmdsVersion::V1 => "V1",
            MmdsVersion::V2 => "V2",
        })
    }
}

/// The answer to the request at the front of a connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response bytes to send.
    pub bytes: Vec<u8>,
    /// How many bytes of the input the request took: drop them; a pipelined request starts
    /// there. A refused request takes all the bytes given.
    pub consumed: usize,
    /// Whether the connection stays open (`false`: close it once `bytes` are sent).
    pub keep_alive: bool,
}

/// The metadata service: data, version, `imds_compat`, tokens and metrics.
#[derive(Debug)]
pub struct Mmds {
    /// Shared with the host side (the API's `PUT`/`PATCH /mmds` change it while the guest
    /// reads it).
    store: Arc<Mutex<DataStore>>,
    version: MmdsVersion,
    imds_compat: bool,
    tokens: TokenAuthority,
    metrics: Arc<MmdsMetrics>,
}

impl Mmds {
    /// An empty service (V1, `imds_compat` off) whose data store holds at most `limit` bytes.
    /// Fails only when the system has no random bytes for the token key.
    pub fn new(limit: usize) -> Result<Self, TokenError> {
        Self::with_store(Arc::new(Mutex::new(DataStore::new(limit))))
    }

    /// A service (V1, `imds_compat` off) answering from `store`, which the host keeps changing
    /// (the API's `/mmds`). Fails only when the system has no random bytes for the token key.
    pub fn with_store(store: Arc<Mutex<DataStore>>) -> Result<Self, TokenError> {
        Ok(Mmds {
            store,
            version: MmdsVersion::default(),
            imds_compat: false,
            tokens: TokenAuthority::new()?,
            metrics: Arc::default(),
        })
    }

    /// The data store, shared: lock it to read, `PUT` or `PATCH`.
    pub fn store(&self) -> &Arc<Mutex<DataStore>> {
        &self.store
    }

    /// The version.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Sets the version.
    pub fn set_version(&mut self, version: MmdsVersion) {
        self.version = version;
    }

    /// Whether answers are always IMDS text, whatever `Accept` says (EC2 IMDS behaviour).
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// Sets `imds_compat`.
    pub fn set_imds_compat(&mut self, imds_compat: bool) {
        self.imds_compat = imds_compat;
    }

    /// The `mmds` metrics; clone the `Arc` to bump them from the network side.
    pub fn metrics(&self) -> &Arc<MmdsMetrics> {
        &self.metrics
    }

    /// Invalidates every token handed out so far (a new token key), as a restored VM needs:
    /// tokens from before the snapshot must not work in a clone.
    pub fn invalidate_tokens(&mut self) -> Result<(), TokenError> {
        self.tokens.rekey()
    }

    /// The response to the request at the front of `bytes`, or `None` while it is incomplete
    /// (call again with more bytes). The caller drops all of `bytes` after a response: a
    /// request pipelined behind the first is lost; [`Mmds::answer_request`] says where the
    /// first ends instead. Whenever `bytes` holds [`http::MAX_REQUEST_BYTES`] or more, the
    /// answer is `Some`.
    pub fn answer(&self, bytes: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.answer_request(bytes, now).map(|reply| reply.bytes)
    }

    /// The answer to the request at the front of `bytes`, with how many bytes it took and
    /// whether the connection stays open; `None` while it is incomplete. Whenever `bytes`
    /// holds [`http::MAX_REQUEST_BYTES`] or more, the answer is `Some`.
    pub fn answer_request(&self, bytes: &[u8], now: Instant) -> Option<Reply> {
        match http::parse(bytes) {
            Parsed::Incomplete => None,
            Parsed::Refused(refusal) => Some(Reply {
                // The version of a request that could not be read is unknown: HTTP/1.1.
                bytes: Response::text(refusal.status, refusal.message).to_bytes(1, false),
                consumed: bytes.len(),
                keep_alive: false,
            }),
            Parsed::Complete { request, consumed } => {
                let response = self.respond(&request, now);
                Some(Reply {
                    bytes: response.to_bytes(request.minor_version, request.keep_alive),
                    consumed,
                    keep_alive: request.keep_alive,
                })
            }
        }
    }

    /// The response to one complete request.
    pub fn respond(&self, request: &Request, now: Instant) -> Response {
        if request.path().is_empty() {
            return Response::text(400, MSG_INVALID_URI);
        }
        match request.method.as_str() {
            "GET" => self.respond_to_get(request, now),
            "PUT" => self.respond_to_put(request, now),
            _ => {
                let mut response = Response::text(405, MSG_METHOD_NOT_ALLOWED);
                response
                    .headers
                    .push(("Allow".to_string(), "GET, PUT".to_string()));
                response
            }
        }
    }

    fn respond_to_get(&self, request: &Request, now: Instant) -> Response {
        let authorized = match request.header(&TOKEN_HEADERS) {
            None => {
                self.metrics.rx_no_token.inc();
                Err(MSG_NO_TOKEN)
            }
            Some((_, token)) => {
                let valid =
                    std::str::from_utf8(token).is_ok_and(|token| self.tokens.is_valid(token, now));
                if !valid {
                    self.metrics.rx_invalid_token.inc();
                }
                if valid {
                    Ok(())
                } else {
                    Err(MSG_INVALID_TOKEN)
                }
            }
        };
        if let (MmdsVersion::V2, Err(message)) = (self.version, authorized) {
            return Response::text(401, message);
        }

        let path = request.path();
        let store = petrel_util::lock_ignoring_poison(&self.store);
        let Some(value) = store.get(path) else {
            return Response::text(404, format!("Resource not found: {path}."));
        };
        let wants_json = request
            .header(&["accept"])
            .is_some_and(|(_, accept)| accept.eq_ignore_ascii_case(b"application/json"));
        if wants_json && !self.imds_compat {
            return Response {
                status: 200,
                content_type: ContentType::Json,
                body: value.to_string(),
                headers: Vec::new(),
            };
        }
        match imds_text(value) {
            Some(body) => Response::text(200, body),
            None => Response::text(501, MSG_UNSUPPORTED_TYPE),
        }
    }

    fn respond_to_put(&self, request: &Request, now: Instant) -> Response {
        if let Some((name, _)) = request.header(&[FORWARDED_FOR_HEADER]) {
            return Response::text(
                400,
                format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
            );
        }
        let path = request.path();
        if squeeze_slashes(path) != TOKEN_PATH {
            return Response::text(404, format!("Resource not found: {path}."));
        }
        let Some((name, value)) = request.header(&TTL_HEADERS) else {
            return Response::text(400, MSG_NO_TTL);
        };
        let Some(ttl) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return Response::text(400, http::invalid_value(name, value));
        };
        match self.tokens.issue(ttl, now) {
            Ok(token) => {
                let mut response = Response::text(200, token);
                // Firecracker echoes the time to live under the name the guest used.
                response.headers.push((name.to_string(), ttl.to_string()));
                response
            }
            Err(e) => Response::text(400, e.to_string()),
        }
    }
}

/// `path` with runs of `/` made single (Firecracker's URI sanitizing).
fn squeeze_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The IMDS text of a value: an object's keys one per line (objects' keys with a trailing `/`),
/// a string as it is; `None` for any other value.
fn imds_text(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map
                .iter()
                .map(|(key, member)| {
                    if member.is_object() {
                        format!("{key}/")
                    } else {
                        key.clone()
                    }
                })
                .collect();
            Some(keys.join("\n"))
        }
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

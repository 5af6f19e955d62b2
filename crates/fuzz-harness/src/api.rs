//! What an API client or a config file hands Petrel: HTTP requests on the API socket, the
//! routes and JSON bodies behind them, and the `--config-file` document.

use arbitrary::Unstructured;
use petrel_api::config_file::parse_config_file;
use petrel_api::http::{parse_request, Method, ParseOutcome, Request};
use petrel_api::model::FullVmConfiguration;
use petrel_api::reply::VmConfigReply;
use petrel_api::routes;

use crate::{put_bytes, take_bytes};

/// Parses the request at the front of the input as the server does, then routes it.
///
/// Checks that a complete request consumed a non-empty part of the buffer, that the same
/// request is found in exactly the bytes it consumed, that every shorter prefix of those bytes
/// is reported incomplete (a server reading in pieces never sees an error or another request),
/// and that a refusal's message is short and one line and its answer serializes.
pub fn http(data: &[u8]) {
    let ParseOutcome::Complete {
        request,
        consumed,
        keep_alive,
    } = parse_request(data)
    else {
        return;
    };
    assert!(
        consumed > 0 && consumed <= data.len(),
        "consumed {consumed} of {}",
        data.len()
    );
    let again = parse_request(&data[..consumed]);
    assert_eq!(
        again,
        ParseOutcome::Complete {
            request: request.clone(),
            consumed,
            keep_alive
        },
        "the request's own bytes parse differently"
    );
    for cut in [consumed - 1, consumed / 2, consumed.saturating_sub(2)] {
        if cut == 0 || cut >= consumed {
            continue;
        }
        let outcome = parse_request(&data[..cut]);
        assert!(
            matches!(outcome, ParseOutcome::Incomplete { .. }),
            "the first {cut} of {consumed} bytes give {outcome:?}"
        );
    }
    route(&request);
}

fn route(request: &Request) {
    match routes::parse_request(request) {
        Ok(api_request) => {
            let _ = format!("{api_request:?}");
        }
        Err(e) => {
            check_refusal(&e.fault_message());
            let _ = e.to_response().serialize(true);
        }
    }
}

/// The input of [`request`], for the seed tools.
pub fn encode_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, method.as_bytes());
    put_bytes(&mut out, path.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Routes a request built from the input: method, path (each length-prefixed), then the body.
/// Checks that a refusal's message is short and one line, and that its answer serializes.
pub fn request(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(method), Ok(path)) = (take_bytes(&mut u), take_bytes(&mut u)) else {
        return;
    };
    let method = match method {
        b"GET" => Method::Get,
        b"PUT" => Method::Put,
        b"PATCH" => Method::Patch,
        other => Method::Other(String::from_utf8_lossy(other).into_owned()),
    };
    let request = Request {
        method,
        path: String::from_utf8_lossy(path).into_owned(),
        body: u.take_rest().to_vec(),
    };
    route(&request);
}

/// Parses a config file (the input as UTF-8, lossily).
///
/// Checks that a refusal's message stays short and on one line (every quoted piece of the
/// input is cut and its control characters escaped), that an accepted file, exported as the
/// configuration a VMM keeps (`FullVmConfiguration`), reads back the same, and that the answer
/// `GET /vm/config` makes of it (`VmConfigReply`, Firecracker's shape) is accepted too: the
/// config-file module promises that what Petrel exports can be fed back.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = match parse_config_file(&text) {
        Ok(file) => file,
        Err(err) => {
            check_refusal(&err.to_string());
            return;
        }
    };
    let exported = serde_json::to_string(&FullVmConfiguration::from(file.clone()))
        .expect("an accepted config file serializes");
    match parse_config_file(&exported) {
        Ok(again) => assert_eq!(again, file, "the exported config reads back differently"),
        Err(err) => panic!("the exported config is refused: {err}\n{exported}"),
    }
    let answer = serde_json::to_string(&VmConfigReply::from(&FullVmConfiguration::from(file)))
        .expect("a GET /vm/config answer serializes");
    if let Err(err) = parse_config_file(&answer) {
        panic!("the GET /vm/config answer is refused: {err}\n{answer}");
    }
}

/// Checks that a refusal's message is short and one line, whatever the input quoted in it.
fn check_refusal(message: &str) {
    assert!(
        message.len() <= MAX_REFUSAL_LEN,
        "a {}-byte refusal: {message:.200}",
        message.len()
    );
    assert!(
        !message.chars().any(char::is_control),
        "a refusal with a control character: {message:?}"
    );
}

/// The longest refusal of a request or a config file: the longest fixed text, two quoted ids
/// and a quoted parser message, with room to spare.
const MAX_REFUSAL_LEN: usize = 2048;

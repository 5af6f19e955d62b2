//! Parse and answer API requests without a socket: raw HTTP bytes, as a client would write
//! them on the API socket, go through petrel-api's HTTP parser and router, and each answer is
//! printed as it would go back on the wire. The "VMM" here only records the boot source.
//!
//! `cargo run -p petrel-api --example answer_request`

use petrel_api::http::{self, ParseOutcome, Response};
use petrel_api::model::{BootSource, FirecrackerVersion, FIRECRACKER_API_VERSION};
use petrel_api::routes::{ok_json, parse_request, ApiRequest};

/// Builds one request as a client writes it: request line, `Content-Length`, body.
fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers one parsed request the way a VMM would, for the two routes this example knows.
fn answer(req: &http::Request, boot_source: &mut Option<BootSource>) -> Response {
    match parse_request(req) {
        Ok(ApiRequest::GetVersion) => ok_json(&FirecrackerVersion {
            firecracker_version: FIRECRACKER_API_VERSION.into(),
        }),
        Ok(ApiRequest::PutBootSource(source)) => {
            *boot_source = Some(source);
            Response::no_content()
        }
        Ok(other) => Response::fault(format!("this example does not handle {other:?}")),
        // Refused by the router: 400 with a fault_message naming the field or the route.
        Err(err) => err.to_response(),
    }
}

fn main() {
    // Three pipelined requests in one read: a good one, one with a bad body, a GET.
    let buffer = [
        request("PUT", "/boot-source", r#"{"kernel_image_path": "vmlinux"}"#),
        request(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "vmlinux", "kernel": 1}"#,
        ),
        request("GET", "/version", ""),
    ]
    .concat();
    let mut boot_source = None;
    let mut rest = buffer.as_bytes();
    while !rest.is_empty() {
        let (req, consumed, keep_alive) = match http::parse_request(rest) {
            ParseOutcome::Complete {
                request,
                consumed,
                keep_alive,
            } => (request, consumed, keep_alive),
            ParseOutcome::Incomplete { .. } => unreachable!("every request here is complete"),
            ParseOutcome::Error(err) => {
                // Unreadable HTTP: answer 400 and close, since the next request's start is lost.
                print!(
                    "{}",
                    String::from_utf8_lossy(&err.to_response().serialize(false))
                );
                break;
            }
        };
        let (sent, next) = rest.split_at(consumed);
        rest = next;
        let response = answer(&req, &mut boot_source);
        let request_line = String::from_utf8_lossy(sent)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        println!("> {request_line} ({} body bytes)", req.body.len());
        println!(
            "{}\n",
            String::from_utf8_lossy(&response.serialize(keep_alive)).trim_end()
        );
    }
    println!("configured boot source: {boot_source:?}");
}

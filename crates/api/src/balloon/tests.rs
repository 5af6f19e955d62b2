//! The balloon's bodies and routes: every route and method, optional and bad bodies, unknown
//! fields, and the memory check.

use super::*;
use crate::http::{Method, Request};
use crate::routes::{parse_request, ApiError, ApiRequest};

fn call(method: Method, path: &str, body: &str) -> Result<ApiRequest, ApiError> {
    parse_request(&Request {
        method,
        path: path.to_owned(),
        body: body.as_bytes().to_vec(),
    })
}

/// The fault message of a refused request.
fn refused(result: Result<ApiRequest, ApiError>) -> String {
    match result {
        Ok(request) => panic!("accepted: {request:?}"),
        Err(err) => err.fault_message(),
    }
}

#[test]
fn put_balloon_takes_firecrackers_body() {
    let full = r#"{"amount_mib": 1000, "deflate_on_oom": true, "stats_polling_interval_s": 5,
                   "free_page_hinting": true, "free_page_reporting": true}"#;
    assert_eq!(
        call(Method::Put, "/balloon", full),
        Ok(ApiRequest::PutBalloon(Balloon {
            amount_mib: 1000,
            deflate_on_oom: true,
            stats_polling_interval_s: 5,
            free_page_hinting: true,
            free_page_reporting: true,
        }))
    );
    // The optional fields default to off.
    assert_eq!(
        call(
            Method::Put,
            "/balloon",
            r#"{"amount_mib": 0, "deflate_on_oom": false}"#
        ),
        Ok(ApiRequest::PutBalloon(Balloon::default()))
    );
    // Both required fields are required.
    for body in [r#"{"amount_mib": 1}"#, r#"{"deflate_on_oom": true}"#] {
        let message = refused(call(Method::Put, "/balloon", body));
        assert!(
            message.starts_with("invalid body for PUT /balloon: missing field"),
            "{message}"
        );
    }
    // Wrong types, out-of-range numbers, unknown fields, not JSON, no body.
    for body in [
        r#"{"amount_mib": "bar", "deflate_on_oom": false}"#,
        r#"{"amount_mib": -1, "deflate_on_oom": false}"#,
        r#"{"amount_mib": 4294967296, "deflate_on_oom": false}"#,
        r#"{"amount_mib": 1, "deflate_on_oom": false, "stats_polling_interval_s": 65536}"#,
        r#"{"amount_mib": 1, "deflate_on_oom": "yes"}"#,
        "invalid_payload",
    ] {
        let message = refused(call(Method::Put, "/balloon", body));
        assert!(
            message.starts_with("invalid body for PUT /balloon: "),
            "{body}: {message}"
        );
    }
    let message = refused(call(
        Method::Put,
        "/balloon",
        r#"{"amount_mib": 1, "deflate_on_oom": false, "is_read_only": false}"#,
    ));
    assert!(
        message.contains("unknown field `is_read_only`"),
        "{message}"
    );
    assert_eq!(
        refused(call(Method::Put, "/balloon", "")),
        "empty PUT request on /balloon: a JSON body is required"
    );
}

#[test]
fn patch_balloon_and_its_statistics() {
    assert_eq!(
        call(Method::Patch, "/balloon", r#"{"amount_mib": 1}"#),
        Ok(ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 1 }))
    );
    assert_eq!(
        call(
            Method::Patch,
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 1}"#
        ),
        Ok(ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
            stats_polling_interval_s: 1
        }))
    );
    // Each takes its own field only (Firecracker's tests: an interval on /balloon, a target
    // on /balloon/statistics).
    let message = refused(call(
        Method::Patch,
        "/balloon",
        r#"{"stats_polling_interval_s": 0}"#,
    ));
    assert!(
        message.contains("unknown field `stats_polling_interval_s`"),
        "{message}"
    );
    let message = refused(call(
        Method::Patch,
        "/balloon/statistics",
        r#"{"amount_mib": 100}"#,
    ));
    assert!(message.contains("unknown field `amount_mib`"), "{message}");
    let message = refused(call(
        Method::Patch,
        "/balloon",
        r#"{"amount_mib": 1000, "deflate_on_oom": true}"#,
    ));
    assert!(
        message.contains("unknown field `deflate_on_oom`"),
        "{message}"
    );
    for (path, body) in [
        ("/balloon", r#"{"amount_mib": -1000}"#),
        ("/balloon", "{}"),
        (
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": "false"}"#,
        ),
        (
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 70000}"#,
        ),
    ] {
        let message = refused(call(Method::Patch, path, body));
        assert!(
            message.starts_with(&format!("invalid body for PATCH {path}: ")),
            "{body}: {message}"
        );
    }
    for path in ["/balloon", "/balloon/statistics"] {
        assert_eq!(
            refused(call(Method::Patch, path, "")),
            format!("empty PATCH request on {path}: a JSON body is required")
        );
    }
}

#[test]
fn the_gets() {
    let get = |path| call(Method::Get, path, "");
    assert_eq!(get("/balloon"), Ok(ApiRequest::GetBalloon));
    assert_eq!(get("/balloon/statistics"), Ok(ApiRequest::GetBalloonStats));
    assert_eq!(
        get("/balloon/hinting/status"),
        Ok(ApiRequest::GetBalloonHintingStatus)
    );
    assert_eq!(
        refused(call(Method::Get, "/balloon/statistics", "{}")),
        "GET request on /balloon/statistics cannot have a body"
    );
}

#[test]
fn hinting_start_takes_an_optional_body() {
    let start = |body| call(Method::Patch, "/balloon/hinting/start", body);
    let ack = |ack| {
        Ok(ApiRequest::StartBalloonHinting(BalloonStartCmd {
            acknowledge_on_stop: ack,
        }))
    };
    assert_eq!(start(r#"{"acknowledge_on_stop": false}"#), ack(Some(false)));
    assert_eq!(start(r#"{"acknowledge_on_stop": true}"#), ack(Some(true)));
    // No body (Firecracker's `required: false`), or an empty object: acknowledged by default.
    assert_eq!(start(""), ack(None));
    assert_eq!(start(" \r\n"), ack(None));
    assert_eq!(start("{}"), ack(None));
    assert!(BalloonStartCmd::default().acknowledge_on_stop());
    let message = refused(start(r#"{"acknowledge_on_stop": "not valid"}"#));
    assert!(
        message.starts_with("invalid body for PATCH /balloon/hinting/start: invalid type"),
        "{message}"
    );
    let message = refused(start(r#"{"acknowledge": true}"#));
    assert!(message.contains("unknown field `acknowledge`"), "{message}");
}

#[test]
fn hinting_stop_takes_no_body() {
    let stop = |body| call(Method::Patch, "/balloon/hinting/stop", body);
    assert_eq!(stop(""), Ok(ApiRequest::StopBalloonHinting));
    assert_eq!(stop("{}"), Ok(ApiRequest::StopBalloonHinting));
    let message = refused(stop(r#"{"acknowledge_on_stop": true}"#));
    assert!(
        message.starts_with("invalid body for PATCH /balloon/hinting/stop: unknown field"),
        "{message}"
    );
    assert!(refused(stop("[")).starts_with("invalid body for PATCH /balloon/hinting/stop: "));
}

#[test]
fn methods_and_paths() {
    let cases = [
        (Method::Put, "/balloon/statistics", "GET, PATCH"),
        (Method::Put, "/balloon/hinting/start", "PATCH"),
        (Method::Get, "/balloon/hinting/start", "PATCH"),
        (Method::Patch, "/balloon/hinting/status", "GET"),
        (Method::Put, "/balloon/hinting/status", "GET"),
        (Method::Get, "/balloon/hinting/stop", "PATCH"),
        (Method::Put, "/balloon/hinting/stop", "PATCH"),
        (
            Method::Other("DELETE".into()),
            "/balloon",
            "GET, PUT, PATCH",
        ),
    ];
    for (method, path, allowed) in cases {
        let name = match &method {
            Method::Get => "GET".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Patch => "PATCH".to_owned(),
            Method::Other(name) => name.clone(),
        };
        assert_eq!(
            refused(call(method, path, "{}")),
            format!("method {name} is not allowed on {path} (allowed: {allowed})")
        );
    }
    // Paths are matched exactly: Firecracker's "hinting" alone, other commands, extra
    // segments and trailing slashes are no routes.
    for path in [
        "/balloon/",
        "/balloon/hinting",
        "/balloon/hinting/",
        "/balloon/hinting/other",
        "/balloon/config",
        "/balloon/statistics/x",
        "/balloon/hinting/start/now",
    ] {
        for method in [Method::Get, Method::Patch] {
            let err = call(method, path, "").unwrap_err();
            assert!(
                matches!(err, ApiError::UnknownRoute { .. }),
                "{path}: {err}"
            );
        }
    }
}

#[test]
fn the_target_fits_the_guest_memory() {
    let balloon = |amount_mib| Balloon {
        amount_mib,
        ..Balloon::default()
    };
    assert_eq!(balloon(128).check_memory(128), Ok(()));
    assert_eq!(balloon(0).check_memory(1), Ok(()));
    assert_eq!(
        balloon(u32::MAX).check_memory(128).unwrap_err().to_string(),
        "amount_mib 4294967295 is larger than the guest memory (mem_size_mib 128): the \
         balloon cannot take more memory than the guest has"
    );
    assert!(balloon(129).check_memory(128).is_err());
    assert!(!balloon(1).stats_enabled());
    let stats = Balloon {
        stats_polling_interval_s: 1,
        ..Balloon::default()
    };
    assert!(stats.stats_enabled());
}

#[test]
fn get_balloon_answers_every_field_in_firecrackers_order() {
    let balloon = Balloon {
        amount_mib: 64,
        deflate_on_oom: true,
        ..Balloon::default()
    };
    assert_eq!(
        serde_json::to_string(&balloon).unwrap(),
        r#"{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false}"#
    );
    // And it reads back as a PUT body.
    let text = serde_json::to_string(&balloon).unwrap();
    assert_eq!(
        call(Method::Put, "/balloon", &text),
        Ok(ApiRequest::PutBalloon(balloon))
    );
}

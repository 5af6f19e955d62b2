//! The balloon's routes before the start: the configured balloon, every refusal, and what it
//! becomes in `GET /vm/config` and Petrel's `VmConfig`.

use petrel_api::http::{Method, Response};
use petrel_api::model::{BootSource, FullVmConfiguration};
use petrel_vmm::config::BalloonConfig;

use crate::controller::tests::{call, controller};
use crate::controller::Handled;

/// The `fault_message` of a `400`.
fn fault(r: &Response) -> String {
    assert_eq!(r.status, 400, "{r:?}");
    let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    body["fault_message"].as_str().unwrap().to_owned()
}

fn json(r: &Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
}

#[test]
fn without_a_balloon_every_route_says_there_is_none() {
    let mut c = controller();
    for (method, path, body) in [
        (Method::Get, "/balloon", ""),
        (Method::Patch, "/balloon", r#"{"amount_mib": 1}"#),
        (Method::Get, "/balloon/statistics", ""),
        (
            Method::Patch,
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 1}"#,
        ),
        (Method::Patch, "/balloon/hinting/start", ""),
        (Method::Get, "/balloon/hinting/status", ""),
        (Method::Patch, "/balloon/hinting/stop", ""),
    ] {
        let method_name = format!("{method:?}").to_uppercase();
        assert_eq!(
            fault(&call(&mut c, method, path, body)),
            format!("{method_name} {path}: no balloon device is configured (PUT /balloon first)")
        );
    }
    assert_eq!(
        json(&call(&mut c, Method::Get, "/vm/config", ""))["balloon"],
        serde_json::Value::Null
    );
}

#[test]
fn put_get_and_patch_before_the_start() {
    let mut c = controller();
    let put = r#"{"amount_mib": 64, "deflate_on_oom": true}"#;
    assert_eq!(call(&mut c, Method::Put, "/balloon", put).status, 204);
    let firecrackers = serde_json::json!({"amount_mib": 64, "deflate_on_oom": true,
        "stats_polling_interval_s": 0, "free_page_hinting": false, "free_page_reporting": false});
    assert_eq!(
        json(&call(&mut c, Method::Get, "/balloon", "")),
        firecrackers
    );
    assert_eq!(
        json(&call(&mut c, Method::Get, "/vm/config", ""))["balloon"],
        firecrackers
    );

    // PATCH changes the target, PATCH /balloon/statistics the interval; the rest is kept.
    let r = call(&mut c, Method::Patch, "/balloon", r#"{"amount_mib": 32}"#);
    assert_eq!(r.status, 204, "{r:?}");
    let r = call(
        &mut c,
        Method::Patch,
        "/balloon/statistics",
        r#"{"stats_polling_interval_s": 2}"#,
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        json(&call(&mut c, Method::Get, "/balloon", "")),
        serde_json::json!({"amount_mib": 32, "deflate_on_oom": true,
            "stats_polling_interval_s": 2, "free_page_hinting": false,
            "free_page_reporting": false})
    );
    // A second PUT replaces the balloon.
    let put = r#"{"amount_mib": 8, "deflate_on_oom": false, "free_page_reporting": true}"#;
    assert_eq!(call(&mut c, Method::Put, "/balloon", put).status, 204);
    assert_eq!(
        json(&call(&mut c, Method::Get, "/balloon", "")),
        serde_json::json!({"amount_mib": 8, "deflate_on_oom": false,
            "stats_polling_interval_s": 0, "free_page_hinting": false,
            "free_page_reporting": true})
    );

    // InstanceStart turns it into Petrel's.
    let boot = r#"{"kernel_image_path": "/k"}"#;
    assert_eq!(call(&mut c, Method::Put, "/boot-source", boot).status, 204);
    let v = c.vm_config().unwrap();
    assert_eq!(
        v.balloon,
        Some(BalloonConfig {
            amount_mib: 8,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
            free_page_hinting: false,
            free_page_reporting: true,
        })
    );
    // A balloon is configuration: a snapshot load is refused after it.
    let mut fresh = controller();
    assert_eq!(call(&mut fresh, Method::Put, "/balloon", put).status, 204);
    let load = r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#;
    assert!(
        fault(&call(&mut fresh, Method::Put, "/snapshot/load", load))
            .contains("only allowed before anything but the logger")
    );
}

#[test]
fn the_target_may_not_exceed_the_guest_memory() {
    let mut c = controller();
    // Firecracker's default machine: 128 MiB.
    let put = |amount: u32| format!(r#"{{"amount_mib": {amount}, "deflate_on_oom": false}}"#);
    assert_eq!(
        fault(&call(&mut c, Method::Put, "/balloon", &put(129))),
        "PUT /balloon: amount_mib 129 is larger than the guest memory (mem_size_mib 128): the \
         balloon cannot take more memory than the guest has"
    );
    assert_eq!(
        json(&call(&mut c, Method::Get, "/vm/config", ""))["balloon"],
        serde_json::Value::Null,
        "a refused PUT configures nothing"
    );
    assert_eq!(call(&mut c, Method::Put, "/balloon", &put(128)).status, 204);
    let text = fault(&call(
        &mut c,
        Method::Patch,
        "/balloon",
        r#"{"amount_mib": 200}"#,
    ));
    assert!(
        text.starts_with("PATCH /balloon: amount_mib 200 is larger than the guest memory"),
        "{text}"
    );
    assert_eq!(
        json(&call(&mut c, Method::Get, "/balloon", ""))["amount_mib"],
        128,
        "a refused PATCH changes nothing"
    );

    // As in Firecracker, the memory may not shrink below the balloon's target afterwards.
    let text = fault(&call(
        &mut c,
        Method::Put,
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    ));
    assert!(
        text.starts_with(
            "PUT /machine-config: amount_mib 128 is larger than the guest memory (mem_size_mib 64)"
        ),
        "{text}"
    );
    let text = fault(&call(
        &mut c,
        Method::Patch,
        "/machine-config",
        r#"{"mem_size_mib": 127}"#,
    ));
    assert!(
        text.starts_with("PATCH /machine-config: amount_mib 128"),
        "{text}"
    );
    assert_eq!(c.machine().mem_size_mib, 128);
    // Growing it is fine, and then so is a larger target.
    let r = call(
        &mut c,
        Method::Patch,
        "/machine-config",
        r#"{"mem_size_mib": 256}"#,
    );
    assert_eq!(r.status, 204, "{r:?}");
    let r = call(&mut c, Method::Patch, "/balloon", r#"{"amount_mib": 256}"#);
    assert_eq!(r.status, 204, "{r:?}");
}

#[test]
fn instance_start_checks_the_target_again() {
    // A configuration made without the API's checks (an embedder's own): the translation
    // into Petrel's refuses a target larger than the memory, naming the field.
    let mut config = FullVmConfiguration {
        boot_source: Some(BootSource {
            kernel_image_path: "/k".into(),
            boot_args: None,
            initrd_path: None,
        }),
        ..FullVmConfiguration::default()
    };
    config.balloon = Some(petrel_api::model::Balloon {
        amount_mib: 129,
        ..Default::default()
    });
    let e = crate::vm_config(&config).unwrap_err();
    assert!(
        e.starts_with("balloon: amount_mib 129 is larger than the guest memory (mem_size_mib 128)"),
        "{e}"
    );
    let mut c = controller();
    c.config = config;
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(call(&mut c, Method::Put, "/actions", start).status, 299);
    let (r, vmm) = c.complete(Handled::Start);
    assert!(vmm.is_none());
    assert!(fault(&r).starts_with("balloon: amount_mib 129"), "{r:?}");
}

#[test]
fn statistics_and_hinting_need_the_guest_and_their_feature() {
    let mut c = controller();
    let put = r#"{"amount_mib": 0, "deflate_on_oom": false}"#;
    assert_eq!(call(&mut c, Method::Put, "/balloon", put).status, 204);
    assert_eq!(
        fault(&call(&mut c, Method::Get, "/balloon/statistics", "")),
        "GET /balloon/statistics: the balloon's statistics are not enabled \
         (stats_polling_interval_s is 0)"
    );
    let hinting = [
        (Method::Patch, "/balloon/hinting/start", "PATCH"),
        (Method::Get, "/balloon/hinting/status", "GET"),
        (Method::Patch, "/balloon/hinting/stop", "PATCH"),
    ];
    for (method, path, name) in hinting.clone() {
        assert_eq!(
            fault(&call(&mut c, method, path, "")),
            format!("{name} {path}: free page hinting is not enabled (free_page_hinting is false)")
        );
    }
    // Enabled, they still need the guest's driver: refused until the start, by route.
    let put = r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1,
                  "free_page_hinting": true}"#;
    assert_eq!(call(&mut c, Method::Put, "/balloon", put).status, 204);
    assert_eq!(
        fault(&call(&mut c, Method::Get, "/balloon/statistics", "")),
        "GET /balloon/statistics is only available after the guest started: the statistics \
         come from the guest's balloon driver"
    );
    for (method, path, name) in hinting {
        let text = fault(&call(&mut c, method, path, ""));
        assert!(
            text.starts_with(&format!(
                "{name} {path} is only available after the guest started"
            )),
            "{text}"
        );
    }
    // Turning the statistics off before the start is a configuration change like any other.
    let r = call(
        &mut c,
        Method::Patch,
        "/balloon/statistics",
        r#"{"stats_polling_interval_s": 0}"#,
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!(fault(&call(&mut c, Method::Get, "/balloon/statistics", "")).contains("not enabled"));
}

#[test]
fn a_config_file_balloon_is_the_configured_balloon() {
    let mut c = controller();
    c.apply_config_file(
        r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [],
            "balloon": {"amount_mib": 10, "deflate_on_oom": true, "free_page_hinting": true}}"#,
    )
    .unwrap();
    assert_eq!(
        json(&call(&mut c, Method::Get, "/balloon", ""))["amount_mib"],
        10
    );
    assert_eq!(
        c.vm_config().unwrap().balloon.map(|b| b.amount_mib),
        Some(10)
    );
    let e = controller()
        .apply_config_file(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [],
                "balloon": {"amount_mib": 1000, "deflate_on_oom": true}}"#,
        )
        .unwrap_err();
    assert!(e.contains("amount_mib 1000 is larger"), "{e}");
}

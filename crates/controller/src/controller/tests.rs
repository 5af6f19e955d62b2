//! The controller's unit tests: requests answered before the VM starts, and the configuration
//! they build, without a socket and without KVM.

use super::*;
use petrel_api::http::Method;
use petrel_vmm::config::RateLimiterConfig;
use std::path::PathBuf;

pub(super) fn controller() -> Controller {
    Controller::new("vm1".into(), None, Timeline::new(std::time::Instant::now()))
}

pub(super) fn call(c: &mut Controller, method: Method, path: &str, body: &str) -> Response {
    let request = Request {
        method,
        path: path.into(),
        body: body.as_bytes().to_vec(),
    };
    match c.handle(&request) {
        Handled::Reply(r) => r,
        Handled::Start => Response::json(299, "start".into()),
        Handled::Load(_) => Response::json(298, "load".into()),
    }
}

#[test]
fn snapshot_load_only_on_a_fresh_instance_and_create_only_with_a_vm() {
    let load = r#"{"snapshot_path": "/tmp/s", "mem_backend":
                   {"backend_type": "File", "backend_path": "/tmp/m"}}"#;
    let mut fresh = controller();
    assert_eq!(
        call(&mut fresh, Method::Put, "/snapshot/load", load).status,
        298
    );
    let realtime = r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m",
                       "clock_realtime": true}"#;
    let text = fault_text(&call(&mut fresh, Method::Put, "/snapshot/load", realtime));
    assert!(text.contains("clock_realtime"), "{text}");

    let mut configured = controller();
    let r = call(
        &mut configured,
        Method::Put,
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    assert_eq!(r.status, 204);
    let text = fault_text(&call(&mut configured, Method::Put, "/snapshot/load", load));
    assert!(text.contains("only allowed before"), "{text}");

    let create = r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#;
    let text = fault_text(&call(&mut fresh, Method::Put, "/snapshot/create", create));
    assert!(text.contains("needs a running VM"), "{text}");
}

fn fault_text(r: &Response) -> String {
    assert_eq!(r.status, 400, "{r:?}");
    r.body.clone().unwrap_or_default()
}

#[test]
fn the_configuration_becomes_petrels() {
    let mut c = controller();
    let put = |c: &mut Controller, path: &str, body: &str| {
        let r = call(c, Method::Put, path, body);
        assert_eq!(r.status, 204, "{path}: {r:?}");
    };
    put(
        &mut c,
        "/boot-source",
        r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#,
    );
    put(
        &mut c,
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    );
    put(
        &mut c,
        "/drives/data",
        r#"{"drive_id": "data", "path_on_host": "/d", "is_root_device": false,
            "is_read_only": true,
            "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#,
    );
    put(
        &mut c,
        "/drives/rootfs_with_a_long_name",
        r#"{"drive_id": "rootfs_with_a_long_name", "path_on_host": "/r",
            "is_root_device": true}"#,
    );
    put(
        &mut c,
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:05",
            "tx_rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 5, "refill_time": 100}}}"#,
    );
    put(
        &mut c,
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#,
    );
    put(&mut c, "/entropy", r#"{}"#);
    let v = c.vm_config().unwrap();
    assert_eq!((v.vcpus, v.mem_size), (2, 256 << 20));
    let petrel_vmm::config::Payload::Linux(linux) = &v.payload else {
        panic!("a Linux payload")
    };
    assert_eq!(
        linux.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda rw")
    );
    assert_eq!(linux.initrd.as_deref(), Some(Path::new("/i")));
    // The root drive comes first (vda); ids are cut to the 20 bytes of GET_ID.
    assert_eq!(v.disks[0].path, PathBuf::from("/r"));
    assert_eq!(v.disks[0].id.as_deref(), Some("rootfs_with_a_long_n"));
    assert!(v.disks[1].read_only);
    assert_eq!(v.disks[1].rate_limit.ops.map(|b| b.size), Some(100));
    assert_eq!(v.nets[0].mac, [6, 0, 0xac, 0x10, 0, 5]);
    let tx = v.nets[0].tx_rate_limit.bandwidth.unwrap();
    assert_eq!(
        (tx.size, tx.one_time_burst, tx.refill_time_ms),
        (1000, 5, 100)
    );
    assert_eq!(v.vsock.as_ref().map(|s| s.cid), Some(3));
    // An entropy device with no limiter has no limit, as in Firecracker.
    assert_eq!(v.rng_rate_limit, Some(RateLimiterConfig::default()));
    // GET /vm/config shows what was put, in the config file's shape.
    let r = call(&mut c, Method::Get, "/vm/config", "");
    let doc: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(doc["machine-config"]["vcpu_count"], 2);
    assert_eq!(doc["drives"][0]["drive_id"], "rootfs_with_a_long_name");
    assert_eq!(doc["network-interfaces"][0]["host_dev_name"], "tap0");
}

#[test]
fn requests_that_do_not_fit_the_life_cycle_are_refused_by_name() {
    let mut c = controller();
    let r = call(&mut c, Method::Get, "/", "");
    let info: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        (info["id"].as_str(), info["state"].as_str()),
        (Some("vm1"), Some("Not started"))
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert!(fault_text(&call(&mut c, Method::Put, "/actions", start)).contains("boot source"));
    assert!(fault_text(&call(
        &mut c,
        Method::Patch,
        "/vm",
        r#"{"state": "Paused"}"#
    ))
    .contains("needs a running VM"));
    let cad = r#"{"action_type": "SendCtrlAltDel"}"#;
    assert!(fault_text(&call(&mut c, Method::Put, "/actions", cad)).contains("InstanceStart"));
    let patch = r#"{"drive_id": "a", "path_on_host": "/x"}"#;
    assert!(fault_text(&call(&mut c, Method::Patch, "/drives/a", patch)).contains("running VM"));
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    assert!(fault_text(&call(&mut c, Method::Put, "/actions", flush)).contains("metrics"));
    let template = r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#;
    assert!(
        fault_text(&call(&mut c, Method::Put, "/machine-config", template))
            .contains("cpu_template is not supported")
    );
    let vhost = r#"{"drive_id": "v", "socket": "/s", "is_root_device": false}"#;
    assert!(fault_text(&call(&mut c, Method::Put, "/drives/v", vhost)).contains("vhost-user"));
    let root = |id: &str| {
        format!(r#"{{"drive_id": "{id}", "path_on_host": "/r", "is_root_device": true}}"#)
    };
    assert_eq!(
        call(&mut c, Method::Put, "/drives/a", &root("a")).status,
        204
    );
    assert!(
        fault_text(&call(&mut c, Method::Put, "/drives/b", &root("b")))
            .contains("root device already")
    );
    // Replacing the same drive is allowed.
    assert_eq!(
        call(&mut c, Method::Put, "/drives/a", &root("a")).status,
        204
    );
    assert_eq!(c.config.drives.len(), 1);
    // The machine configuration can be patched before the start.
    let r = call(
        &mut c,
        Method::Patch,
        "/machine-config",
        r#"{"vcpu_count": 4}"#,
    );
    assert_eq!(r.status, 204);
    assert_eq!(c.machine().vcpu_count, 4);
    assert_eq!(c.machine().mem_size_mib, 128);
    let boot = r#"{"kernel_image_path": "/k"}"#;
    assert_eq!(call(&mut c, Method::Put, "/boot-source", boot).status, 204);
    assert_eq!(call(&mut c, Method::Put, "/actions", start).status, 299);
}

#[test]
fn vmm_errors_name_the_drive() {
    let mut c = controller();
    let r = call(
        &mut c,
        Method::Put,
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent/rootfs.ext4", "is_root_device": true}"#,
    );
    assert_eq!(r.status, 204);
    let e = petrel_vmm::Error::InvalidConfig {
        field: "disks[0].path".into(),
        value: "/nonexistent/rootfs.ext4".into(),
        why: "no such file".into(),
    };
    let text = c.explain(&e);
    assert!(text.starts_with("drive `rootfs`: "), "{text}");
    assert!(text.contains("no such file"), "{text}");
}

#[test]
fn mmds_config_names_existing_interfaces_and_reaches_the_vm_config() {
    let mut c = controller();
    let config = |ifaces: &str| format!(r#"{{"network_interfaces": {ifaces}}}"#);
    // Firecracker's tests/integration_tests/functional/test_api.py, test_api_mmds_config.
    let text = fault_text(&call(&mut c, Method::Put, "/mmds/config", &config("[]")));
    assert!(
        text.contains(
            "The list of network interface IDs that allow forwarding MMDS requests is empty."
        ),
        "{text}"
    );
    let unknown = "The list of network interface IDs provided contains at least one ID that does \
                   not correspond to any existing network interface.";
    let text = fault_text(&call(
        &mut c,
        Method::Put,
        "/mmds/config",
        &config(r#"["foo"]"#),
    ));
    assert!(text.contains(unknown), "{text}");
    let iface = r#"{"iface_id": "1", "host_dev_name": "tap1", "guest_mac": "06:00:00:00:00:01"}"#;
    assert_eq!(
        call(&mut c, Method::Put, "/network-interfaces/1", iface).status,
        204
    );
    let text = fault_text(&call(
        &mut c,
        Method::Put,
        "/mmds/config",
        &config(r#"["1", "foo"]"#),
    ));
    assert!(text.contains(unknown), "{text}");
    let vm_config = |c: &mut Controller| -> serde_json::Value {
        let r = call(c, Method::Get, "/vm/config", "");
        serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
    };
    assert_eq!(vm_config(&mut c)["mmds-config"], serde_json::Value::Null);
    let r = call(&mut c, Method::Put, "/mmds/config", &config(r#"["1"]"#));
    assert_eq!(r.status, 204);
    assert_eq!(
        vm_config(&mut c)["mmds-config"],
        serde_json::json!({"version": "V1", "network_interfaces": ["1"],
                           "ipv4_address": "169.254.169.254", "imds_compat": false})
    );
    let v2 = r#"{"version": "V2", "ipv4_address": "169.254.169.250", "network_interfaces": ["1"],
                 "imds_compat": true}"#;
    assert_eq!(call(&mut c, Method::Put, "/mmds/config", v2).status, 204);
    assert_eq!(vm_config(&mut c)["mmds-config"]["version"], "V2");
    let iface2 = r#"{"iface_id": "2", "host_dev_name": "tap2"}"#;
    assert_eq!(
        call(&mut c, Method::Put, "/network-interfaces/2", iface2).status,
        204
    );
    let boot = r#"{"kernel_image_path": "/k"}"#;
    assert_eq!(call(&mut c, Method::Put, "/boot-source", boot).status, 204);
    let v = c.vm_config().unwrap();
    let mmds = v.mmds.expect("the MMDS configuration");
    assert_eq!(mmds.version, petrel_vmm::config::MmdsVersion::V2);
    assert_eq!(mmds.ipv4_address.to_string(), "169.254.169.250");
    assert!(mmds.imds_compat);
    let detoured: Vec<bool> = v.nets.iter().map(|n| n.mmds).collect();
    assert_eq!(detoured, [true, false]);
}

#[test]
fn mmds_data_before_and_without_a_vm() {
    let mut c = controller();
    let get = |c: &mut Controller| call(c, Method::Get, "/mmds", "");
    let r = get(&mut c);
    assert_eq!((r.status, r.body.as_deref()), (200, Some("{}")));
    let text = fault_text(&call(&mut c, Method::Patch, "/mmds", r#"{"a": 1}"#));
    assert!(
        text.contains("The MMDS data store is not initialized."),
        "{text}"
    );
    // docs/mmds/mmds-user-guide.md
    let data = r#"{"latest": {"meta-data": {"ami-id": "ami-12345678",
                   "reservation-id": "r-fea54097"}}}"#;
    assert_eq!(call(&mut c, Method::Put, "/mmds", data).status, 204);
    let patch = r#"{"latest": {"meta-data": {"ami-id": "ami-87654321",
                    "reservation-id": null, "local-hostname": "ip-10-0-0-1"}}}"#;
    assert_eq!(call(&mut c, Method::Patch, "/mmds", patch).status, 204);
    let r = get(&mut c);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(r.body.as_deref().unwrap()).unwrap(),
        serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-87654321",
                                                    "local-hostname": "ip-10-0-0-1"}}})
    );
    // The VM's side sees the same store.
    let store = c.mmds_store();
    assert_eq!(
        petrel_util::lock_ignoring_poison(&store).get("/latest/meta-data/ami-id"),
        Some(&serde_json::json!("ami-87654321"))
    );
}

#[test]
fn mmds_size_limit_and_metadata_file() {
    let mut c = controller();
    c.set_mmds_size_limit(32);
    let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(64));
    let r = call(&mut c, Method::Put, "/mmds", &big);
    assert_eq!(r.status, 413, "{r:?}");
    let text = r.body.unwrap_or_default();
    assert!(
        text.contains("The MMDS patch request doesn't fit.") && text.contains("limit of 32 bytes"),
        "{text}"
    );
    let e = c.populate_mmds(&big).unwrap_err();
    assert!(
        e.starts_with("Populating MMDS from file failed: MMDS limit exceeded error"),
        "{e}"
    );
    assert!(c.populate_mmds("{").unwrap_err().contains("not valid JSON"));
    c.populate_mmds(r#"{"k": "v"}"#).unwrap();
    let r = call(&mut c, Method::Get, "/mmds", "");
    assert_eq!(r.body.as_deref(), Some(r#"{"k":"v"}"#));
}

#[test]
fn huge_pages_reach_the_vm_config_and_odd_sizes_are_refused() {
    use petrel_vmm::config::HugePages;
    for (name, want) in [
        ("None", HugePages::None),
        ("Transparent", HugePages::Transparent),
        ("2M", HugePages::Hugetlbfs2M),
    ] {
        let mut c = controller();
        call(
            &mut c,
            Method::Put,
            "/boot-source",
            r#"{"kernel_image_path": "/k"}"#,
        );
        let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "{name}"}}"#);
        let r = call(&mut c, Method::Put, "/machine-config", &body);
        assert_eq!(r.status, 204, "{name}: {r:?}");
        assert_eq!(c.vm_config().unwrap().huge_pages, want);
        let r = call(&mut c, Method::Get, "/machine-config", "");
        let doc: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(doc["huge_pages"], name);
        if want != HugePages::None {
            let r = call(
                &mut c,
                Method::Patch,
                "/machine-config",
                r#"{"mem_size_mib": 129}"#,
            );
            let text = fault_text(&r);
            assert!(text.contains("huge_pages is Transparent or 2M"), "{text}");
        }
    }
}

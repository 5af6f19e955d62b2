//! The controller's unit tests: requests answered before the VM starts, and the configuration
//! they build, without a socket and without KVM.

use super::*;
use petrel_api::http::Method;
use petrel_vmm::config::RateLimiterConfig;

fn controller() -> Controller {
    Controller::new("vm1".into(), None, Timeline::new(std::time::Instant::now()))
}

fn call(c: &mut Controller, method: Method, path: &str, body: &str) -> Response {
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

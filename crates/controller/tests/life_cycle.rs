//! The controller as an embedder uses it, without a socket: parsed requests in, responses and
//! the VM out. The running-VM test boots the keyboard guest (`petrel_demo_guest::keyboard`),
//! which waits for Ctrl-Alt-Del and then resets; it needs /dev/kvm (see
//! `petrel_tests::kvm_present_or_skip`).

use std::path::{Path, PathBuf};

use petrel_api::http::{Method, Request, Response};
use petrel_api::model::{ActionType, BootSource, Logger, MachineConfiguration, Metrics, VmState};
use petrel_api::routes::ApiRequest;
use petrel_controller::{Controller, Handled};
use petrel_tests::kvm_present_or_skip;
use petrel_vmm::{StopReason, Timeline, Vmm};
use serde_json::Value;

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("petrel-controller-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn controller() -> Controller {
    Controller::new("vm1".into(), None, Timeline::new(std::time::Instant::now()))
}

/// Answers `request` and makes the VM it asks for, as an embedder does.
fn answer(c: &mut Controller, request: ApiRequest) -> (Response, Option<Vmm>) {
    let handled = c.handle_request(request);
    c.complete(handled)
}

/// Answers a request that makes no VM.
fn reply(c: &mut Controller, request: ApiRequest) -> Response {
    let (response, vmm) = answer(c, request);
    assert!(vmm.is_none(), "a VM was made");
    response
}

fn fault_text(r: &Response) -> String {
    assert_eq!(r.status, 400, "{r:?}");
    r.body.clone().unwrap_or_default()
}

/// `GET /`'s state.
fn state(c: &mut Controller) -> String {
    let r = reply(c, ApiRequest::GetInstanceInfo);
    assert_eq!(r.status, 200, "{r:?}");
    let info: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    info["state"].as_str().unwrap().to_string()
}

fn put_logger(c: &mut Controller, path: &Path) -> Response {
    reply(
        c,
        ApiRequest::PutLogger(Logger {
            log_path: Some(path.to_str().unwrap().into()),
            level: None,
            show_level: Some(true),
            show_log_origin: None,
            module: None,
        }),
    )
}

fn put_metrics(c: &mut Controller, path: &Path) -> Response {
    reply(
        c,
        ApiRequest::PutMetrics(Metrics {
            metrics_path: path.to_str().unwrap().into(),
        }),
    )
}

fn metrics_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn machine(vcpus: u8, mib: usize) -> MachineConfiguration {
    serde_json::from_value(serde_json::json!({"vcpu_count": vcpus, "mem_size_mib": mib})).unwrap()
}

#[test]
fn parsed_requests_are_counted_and_logged_like_http_ones() {
    let dir = TempDir::new("counted");
    let (log, metrics) = (dir.join("log"), dir.join("metrics"));
    let mut c = controller();
    assert_eq!(put_logger(&mut c, &log).status, 204);
    assert_eq!(put_metrics(&mut c, &metrics).status, 204);
    // Each can be set once.
    assert!(fault_text(&put_metrics(&mut c, &metrics)).contains("configured already"));
    assert!(
        fault_text(&reply(&mut c, ApiRequest::PatchVm(VmState::Paused)))
            .contains("needs a running VM")
    );
    // The same request over HTTP gets the same answer, and its method and path are logged.
    let http = Request {
        method: Method::Patch,
        path: "/vm".into(),
        body: br#"{"state": "Paused"}"#.to_vec(),
    };
    let Handled::Reply(r) = c.handle(&http) else {
        panic!("PATCH /vm made a VM")
    };
    assert!(fault_text(&r).contains("needs a running VM"));
    assert_eq!(
        reply(&mut c, ApiRequest::Action(ActionType::FlushMetrics)).status,
        204
    );
    let lines = metrics_lines(&metrics);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // Six requests, FlushMetrics included; three answered with an error.
    assert_eq!(lines[0]["api_server"]["requests"], 6, "{}", lines[0]);
    assert_eq!(lines[0]["api_server"]["faults"], 3, "{}", lines[0]);
    // Before the start there are only the API's groups.
    assert!(lines[0].get("vcpu").is_none(), "{}", lines[0]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches(":ERROR] Received error: ").count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches("The API server received a Patch request on \"/vm\".")
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn a_config_file_is_the_configuration_get_vm_config_shows() {
    let mut c = controller();
    let file = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
        "drives": [
            {"drive_id": "data", "path_on_host": "/d", "is_root_device": false},
            {"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
             "is_read_only": true}
        ],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}
    }"#;
    c.apply_config_file(file).unwrap();
    let config = c.vm_config().unwrap();
    assert_eq!((config.vcpus, config.mem_size), (2, 64 << 20));
    assert_eq!(config.disks[0].path, PathBuf::from("/r"));
    assert!(config.disks[0].read_only);
    let r = reply(&mut c, ApiRequest::GetVmConfig);
    let doc: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(doc["boot-source"]["boot_args"], "console=ttyS0");
    assert_eq!(doc["drives"][0]["drive_id"], "rootfs");
    // A bad file is refused with the parser's message and changes nothing.
    let mut fresh = controller();
    let why = fresh.apply_config_file(r#"{"drives": []}"#).unwrap_err();
    assert!(why.contains("boot-source"), "{why}");
    assert!(fresh.vm_config().is_err());
}

#[test]
fn a_vm_that_cannot_be_built_is_a_fault_and_the_instance_stays_configurable() {
    let dir = TempDir::new("unbuilt");
    let mut c = controller();
    let boot = BootSource {
        kernel_image_path: dir.join("no-such-kernel").to_str().unwrap().into(),
        boot_args: None,
        initrd_path: None,
    };
    assert_eq!(reply(&mut c, ApiRequest::PutBootSource(boot)).status, 204);
    let (r, vmm) = answer(&mut c, ApiRequest::Action(ActionType::InstanceStart));
    assert!(vmm.is_none());
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(state(&mut c), "Not started");
    // Still before the start: the configuration can be changed.
    let r = reply(&mut c, ApiRequest::PutMachineConfig(machine(1, 64)));
    assert_eq!(r.status, 204, "{r:?}");
}

#[test]
fn requests_before_and_after_the_start_without_a_socket() {
    if !kvm_present_or_skip("requests_before_and_after_the_start_without_a_socket") {
        return;
    }
    let dir = TempDir::new("running");
    let kernel = dir.join("keyboard.elf");
    std::fs::write(&kernel, petrel_demo_guest::keyboard::keyboard_guest_elf()).unwrap();
    let (log, metrics) = (dir.join("log"), dir.join("metrics"));
    let mut c = controller();
    let made = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = made.clone();
    c.set_vm_setup(Box::new(move |_vmm, origin| {
        seen.lock().unwrap().push(origin)
    }));
    assert_eq!(put_logger(&mut c, &log).status, 204);
    assert_eq!(put_metrics(&mut c, &metrics).status, 204);
    let boot = BootSource {
        kernel_image_path: kernel.to_str().unwrap().into(),
        boot_args: Some("console=ttyS0".into()),
        initrd_path: None,
    };
    assert_eq!(
        reply(&mut c, ApiRequest::PutBootSource(boot.clone())).status,
        204
    );
    assert_eq!(
        reply(&mut c, ApiRequest::PutMachineConfig(machine(1, 64))).status,
        204
    );
    assert_eq!(state(&mut c), "Not started");

    let (r, vmm) = answer(&mut c, ApiRequest::Action(ActionType::InstanceStart));
    assert_eq!(r.status, 204, "{r:?}");
    let vmm = vmm.expect("InstanceStart made the VM");
    assert_eq!(*made.lock().unwrap(), [petrel_controller::Origin::Built]);
    assert_eq!(state(&mut c), "Running");
    // Pre-boot requests are refused now, by name; the running VM's are carried out.
    let text = fault_text(&reply(&mut c, ApiRequest::PutBootSource(boot)));
    assert!(
        text.contains("PUT /boot-source is only allowed before"),
        "{text}"
    );
    let (r, again) = answer(&mut c, ApiRequest::Action(ActionType::InstanceStart));
    assert!(again.is_none());
    assert!(fault_text(&r).contains("InstanceStart is only allowed before"));
    let balloon = petrel_api::model::Balloon::default();
    let text = fault_text(&reply(&mut c, ApiRequest::PutBalloon(balloon)));
    assert!(
        text.contains("PUT /balloon is only allowed before"),
        "{text}"
    );
    // The running VM has no balloon: its requests are refused, by route.
    let text = fault_text(&reply(&mut c, ApiRequest::GetBalloonStats));
    assert!(text.contains("GET /balloon/statistics"), "{text}");
    let r = reply(&mut c, ApiRequest::GetMachineConfig);
    let m: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(1), Some(64))
    );
    assert_eq!(
        reply(&mut c, ApiRequest::PatchVm(VmState::Paused)).status,
        204
    );
    assert_eq!(state(&mut c), "Paused");
    assert_eq!(
        reply(&mut c, ApiRequest::PatchVm(VmState::Resumed)).status,
        204
    );
    assert_eq!(state(&mut c), "Running");
    assert_eq!(
        reply(&mut c, ApiRequest::Action(ActionType::FlushMetrics)).status,
        204
    );
    assert_eq!(
        reply(&mut c, ApiRequest::Action(ActionType::SendCtrlAltDel)).status,
        204
    );
    // The guest resets on Ctrl-Alt-Del, which ends the run.
    let summary = vmm.run_until_stopped().unwrap();
    assert!(
        matches!(summary.stop, StopReason::Reset),
        "{:?}",
        summary.stop
    );
    c.finish(&summary);

    let lines = metrics_lines(&metrics);
    assert_eq!(lines.len(), 2, "FlushMetrics and the end: {lines:?}");
    for line in &lines {
        assert!(line["latencies_us"]["instance_start"].is_u64(), "{line}");
        assert!(line["latencies_us"]["pause_vm"].is_u64(), "{line}");
    }
    // Only the last line is sure to count exits: at FlushMetrics the guest may not have made
    // its first port access yet (its kernel code is emulated, slowly, on some hosts), but it
    // reset through the i8042 before the end.
    let last = &lines[1];
    assert!(last["vcpu"]["exits"].as_u64() > Some(0), "{last}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(":INFO] The guest started."), "{text}");
    assert!(text.contains(":INFO] The guest stopped: Reset"), "{text}");
}

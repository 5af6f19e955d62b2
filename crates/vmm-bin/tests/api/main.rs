//! Firecracker's REST API, end to end: `petrel --api-sock` driven over plain HTTP/1.1 on its
//! Unix socket, as Firecracker's clients drive it; `--config-file --no-api`; the command-line
//! mistakes; and clients that misbehave while a guest runs.
//!
//! The running-guest tests boot the keyboard guest (`petrel_demo_guest::keyboard_guest_elf`),
//! which prints a line and then waits for Ctrl-Alt-Del, so that there is time to inspect,
//! pause and resume it; `SendCtrlAltDel` makes it reset, and `petrel` exits 0.
//!
//! The tests are split by what they cover: this file has the configuration and lifecycle,
//! the faults, the command line and hostile clients; `snapshots.rs` the snapshot requests;
//! `mmds.rs` the metadata service; `harness.rs` the HTTP client and the `petrel` process
//! they share.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod mmds;
mod snapshots;

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::*;
use petrel_tests::kvm_present_or_skip;
use serde_json::Value;
use support::TempDir;

#[test]
fn configure_start_pause_resume_and_ctrl_alt_del() {
    if !kvm_present_or_skip("configure_start_pause_resume_and_ctrl_alt_del") {
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new("api-life");
    let (kernel, disk) = guest_files(&dir);
    let sock = dir.join("api.sock");
    let mut petrel = Petrel::serve(&sock, "test-vm");

    let info = call(&sock, "GET", "/", None);
    assert_eq!(info.status, 200, "{info:?}");
    assert_eq!(info.header("content-type"), Some("application/json"));
    let info = info.json();
    assert_eq!(info["id"], "test-vm", "{info}");
    assert_eq!(info["state"], "Not started", "{info}");

    configure(&sock, &kernel, &disk, 2);
    let config = call(&sock, "GET", "/vm/config", None);
    assert_eq!(config.status, 200, "{config:?}");
    let config = config.json();
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        kernel.to_str().unwrap(),
        "{config}"
    );
    assert_eq!(config["machine-config"]["vcpu_count"], 2, "{config}");
    assert_eq!(config["machine-config"]["mem_size_mib"], 128, "{config}");
    let drives = config["drives"].as_array().expect("drives");
    assert_eq!(drives.len(), 1, "{config}");
    assert_eq!(drives[0]["drive_id"], "rootfs");
    assert_eq!(drives[0]["path_on_host"], disk.to_str().unwrap());
    assert_eq!(drives[0]["is_root_device"], true);

    start_guest(&mut petrel, &sock);
    assert_eq!(state(&sock), "Running");

    // The configuration is fixed once the guest runs.
    let boot = serde_json::json!({ "kernel_image_path": kernel }).to_string();
    let fault = call(&sock, "PUT", "/boot-source", Some(&boot)).fault();
    assert!(fault.contains("before the VM starts"), "{fault}");
    let fault = call(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    )
    .fault();
    assert!(fault.contains("InstanceStart"), "{fault}");

    let reply = call(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(reply.status, 204, "pause: {reply:?}");
    assert_eq!(state(&sock), "Paused");
    let reply = call(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(reply.status, 204, "resume: {reply:?}");
    assert_eq!(state(&sock), "Running");

    ctrl_alt_del_ends_it(petrel, &sock);
    eprintln!(
        "configured, ran, paused, resumed and reset in {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_requests_get_400_with_a_fault_message_naming_the_problem() {
    // No guest starts here: this needs no KVM.
    let dir = TempDir::new("api-bad");
    let (kernel, disk) = guest_files(&dir);
    let sock = dir.join("api.sock");
    let petrel = Petrel::serve(&sock, "test-vm");

    let drive = |body_id: &str| {
        serde_json::json!({
            "drive_id": body_id,
            "path_on_host": disk,
            "is_root_device": true,
        })
        .to_string()
    };
    // (method, path, body, words the fault_message must contain)
    let cases: Vec<(&str, String, Option<String>, Vec<&str>)> = vec![
        (
            "PUT",
            "/machine-config".into(),
            Some(r#"{"vcpu_count":1,"mem_size_mib":128,"bogus":1}"#.into()),
            vec!["unknown field", "bogus"],
        ),
        (
            "PUT",
            "/drives/rootfs".into(),
            Some(drive("other")),
            vec!["rootfs", "other", "does not match"],
        ),
        (
            "PUT",
            "/drives/bad.id".into(),
            Some(drive("bad.id")),
            vec!["drive_id", "bad.id"],
        ),
        (
            "PUT",
            "/boot-source".into(),
            None,
            vec!["empty", "/boot-source"],
        ),
        ("GET", "/no-such-route".into(), None, vec!["/no-such-route"]),
        (
            "PUT",
            "/actions".into(),
            Some(r#"{"action_type":"InstanceStart"}"#.into()),
            vec!["boot source"],
        ),
        (
            "PATCH",
            "/vm".into(),
            Some(r#"{"state":"Paused"}"#.into()),
            vec!["InstanceStart"],
        ),
    ];
    let mut client = Client::connect(&sock);
    for (method, path, body, words) in &cases {
        let fault = client.send(method, path, body.as_deref()).fault();
        for word in words {
            assert!(
                fault.contains(word),
                "{method} {path}: {fault:?} does not mention {word:?}"
            );
        }
        eprintln!("{method} {path}: 400 {fault}");
    }

    // A body over the limit is refused, and that connection closed.
    let big = format!(r#"{{"kernel_image_path":"{}"}}"#, "a".repeat(MAX_PAYLOAD));
    let mut client = Client::connect(&sock);
    let fault = client.send("PUT", "/boot-source", Some(&big)).fault();
    assert!(fault.contains(&MAX_PAYLOAD.to_string()), "{fault}");
    assert!(
        client.is_closed(),
        "the connection stays open after an oversized body"
    );

    // None of that configured anything.
    let config = call(&sock, "GET", "/vm/config", None).json();
    assert_eq!(
        config["drives"].as_array().map(Vec::len),
        Some(0),
        "{config}"
    );
    // (Firecracker's boot source before any PUT: an empty kernel path.)
    assert_eq!(config["boot-source"]["kernel_image_path"], "", "{config}");
    assert_eq!(state(&sock), "Not started");
    // A good request still works.
    let boot = serde_json::json!({ "kernel_image_path": kernel }).to_string();
    assert_eq!(call(&sock, "PUT", "/boot-source", Some(&boot)).status, 204);

    // SIGTERM before the guest starts: the socket removed, then ended by the signal.
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    let rc = unsafe { libc::kill(petrel.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    let (status, _, err) = petrel.finish();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "{status}; stderr:\n{err}"
    );
    assert!(!sock.exists(), "{} is left behind", sock.display());
}

#[test]
fn config_file_without_api_boots_the_demo_guest() {
    if !kvm_present_or_skip("config_file_without_api_boots_the_demo_guest") {
        return;
    }
    let dir = TempDir::new("api-config");
    let kernel = dir.join("demo.elf");
    std::fs::write(&kernel, petrel_demo_guest::demo_kernel_elf()).unwrap();
    let config = dir.join("vm.json");
    let doc = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    std::fs::write(&config, doc.to_string()).unwrap();
    let petrel = Petrel::start(&[
        "--config-file",
        config.to_str().unwrap(),
        "--no-api",
        "--id",
        "from-file",
    ]);
    let (status, out, err) = petrel.finish();
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        petrel_demo_guest::GREETING_LINE,
        "memory: ",
        petrel_demo_guest::RESETTING_LINE,
    ] {
        assert!(out.contains(line), "{line:?} missing; stdout:\n{out}");
    }
}

#[test]
fn command_line_mistakes_exit_2_with_one_line() {
    let dir = TempDir::new("api-cli");
    let sock = dir.join("api.sock");
    let sock = sock.to_str().unwrap();
    // Under either name the message names both flags.
    let firecracker = dir.join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_petrel"), &firecracker).unwrap();
    exits_2_with_one_line_from(&firecracker, &["--no-api"], &["--no-api", "--config-file"]);
    exits_2_with_one_line(&["--no-api"], &["--no-api", "--config-file"]);
    exits_2_with_one_line(
        &["--api-sock", sock, "--id", "bad_id!"],
        &["--id", "bad_id!"],
    );
    assert!(!Path::new(sock).exists(), "a refused start left {sock}");

    // A socket someone else serves is neither taken over nor removed.
    let _other = UnixListener::bind(sock).unwrap();
    exits_2_with_one_line(&["--api-sock", sock, "--id", "second"], &[sock]);
    assert!(
        UnixStream::connect(sock).is_ok(),
        "the other server's socket was removed"
    );
}

#[test]
fn hostile_clients_leave_the_api_and_the_guest_running() {
    if !kvm_present_or_skip("hostile_clients_leave_the_api_and_the_guest_running") {
        return;
    }
    let dir = TempDir::new("api-hostile");
    let (kernel, disk) = guest_files(&dir);
    let sock = dir.join("api.sock");
    let mut petrel = Petrel::serve(&sock, "test-vm");
    configure(&sock, &kernel, &disk, 1);
    start_guest(&mut petrel, &sock);

    // 1 000 connections, opened and dropped at once.
    let started = Instant::now();
    for _ in 0..1000 {
        drop(UnixStream::connect(&sock).expect("connect"));
    }
    eprintln!(
        "1000 connections opened and dropped in {:?}",
        started.elapsed()
    );
    assert_eq!(state(&sock), "Running");

    // Garbage: not HTTP at all. Petrel answers 400 and closes the connection.
    let mut client = Client::connect(&sock);
    let mut garbage = vec![0u8, 0xff, 0x7f, b'\r', b'\n', 0x1b];
    let mut x: u32 = 0x1234_5678;
    garbage.extend((0..2048).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x.to_le_bytes()[0]
    }));
    garbage.extend_from_slice(b"\r\n\r\n");
    client.writer.write_all(&garbage).unwrap();
    let reply = client.read_reply().expect("an answer to garbage");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        client.is_closed(),
        "the connection stays open after garbage"
    );

    // Slowloris: one byte per 100 ms of a request that never ends (30 bytes, about 3 s),
    // while another client's requests, sent all along, are answered.
    const SLOW_BYTES: usize = 30;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (stop, sent, sock) = (stop.clone(), sent.clone(), sock.clone());
        thread::spawn(move || -> io::Result<()> {
            let mut stream = UnixStream::connect(&sock)?;
            let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
            let mut bytes = request.iter().copied().chain(std::iter::repeat(b'a'));
            while !stop.load(Ordering::Relaxed) {
                if sent.load(Ordering::Relaxed) < SLOW_BYTES {
                    stream.write_all(&[bytes.next().unwrap()])?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    };
    let mut client = Client::connect(&sock);
    let mut answered = 0;
    while answered < 20 || sent.load(Ordering::Relaxed) < SLOW_BYTES {
        // Half on the kept-alive connection, half on new ones.
        let reply = if answered % 2 == 0 {
            client.send("GET", "/", None)
        } else {
            call(&sock, "GET", "/", None)
        };
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["state"], "Running");
        answered += 1;
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    slow.join()
        .unwrap()
        .expect("the slow client was cut off early");
    eprintln!("{answered} requests answered while a slow client sent {SLOW_BYTES} bytes");

    // An oversized body: 400, then the connection is closed.
    let mut client = Client::connect(&sock);
    let big = "x".repeat(MAX_PAYLOAD + 1);
    let fault = client.send("PUT", "/drives/data", Some(&big)).fault();
    assert!(fault.contains(&MAX_PAYLOAD.to_string()), "{fault}");
    assert!(client.is_closed(), "the connection stays open");

    // The API answers and the guest still runs: it sees Ctrl-Alt-Del and resets.
    assert_eq!(state(&sock), "Running");
    assert!(petrel.running(), "stderr:\n{}", petrel.stderr());
    ctrl_alt_del_ends_it(petrel, &sock);
}

#[test]
fn machine_config_and_vm_config_answer_every_field_firecracker_does() {
    // Configuration only: this needs no KVM.
    let dir = TempDir::new("api-config-fields");
    let sock = dir.join("api.sock");
    let _petrel = Petrel::serve(&sock, "fields");
    let text = |path: &str| {
        let reply = call(&sock, "GET", path, None);
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        String::from_utf8(reply.body).unwrap()
    };

    // A fresh instance: Firecracker's defaults, every field written.
    assert_eq!(
        text("/machine-config"),
        r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
    );
    assert_eq!(
        text("/vm/config"),
        concat!(
            r#"{"balloon":null,"drives":[],"#,
            r#""boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"#,
            r#""cpu-config":null,"logger":null,"#,
            r#""machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"#,
            r#""track_dirty_pages":false,"huge_pages":"None"},"#,
            r#""metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"#,
            r#""entropy":null,"pmem":[],"memory-hotplug":null}"#
        )
    );

    // What was put, with the defaults of what was not; a "None" template is no template.
    let put = |path: &str, body: serde_json::Value| {
        let reply = call(&sock, "PUT", path, Some(&body.to_string()));
        assert_eq!(reply.status, 204, "PUT {path}: {reply:?}");
    };
    put(
        "/machine-config",
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "None",
                           "track_dirty_pages": true}),
    );
    let machine = r#"{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}"#;
    assert_eq!(text("/machine-config"), machine);
    let reply = call(
        &sock,
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib": 512}"#),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(
        text("/machine-config"),
        machine.replace("256", "512"),
        "PATCH keeps the other fields"
    );
    put(
        "/boot-source",
        serde_json::json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"}),
    );
    put(
        "/drives/rootfs",
        serde_json::json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}),
    );
    put(
        "/network-interfaces/eth0",
        serde_json::json!({"iface_id": "eth0", "host_dev_name": "tap0",
                           "guest_mac": "06:00:AC:10:00:02",
                           "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}),
    );
    put(
        "/vsock",
        serde_json::json!({"vsock_id": "v", "guest_cid": 3, "uds_path": "/v.sock"}),
    );
    put("/entropy", serde_json::json!({}));
    put(
        "/balloon",
        serde_json::json!({"amount_mib": 64, "deflate_on_oom": true}),
    );
    let config: Value = serde_json::from_str(&text("/vm/config")).unwrap();
    let want = serde_json::json!({
        "balloon": {"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 0,
                    "free_page_hinting": false, "free_page_reporting": false},
        "drives": [{"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                    "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/r",
                    "rate_limiter": null, "io_engine": "Sync", "socket": null}],
        "boot-source": {"kernel_image_path": "/k", "initrd_path": null,
                        "boot_args": "console=ttyS0"},
        "cpu-config": null,
        "logger": null,
        "machine-config": serde_json::from_str::<Value>(&machine.replace("256", "512")).unwrap(),
        "metrics": null,
        "mmds-config": null,
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": "06:00:ac:10:00:02", "mtu": null,
                                "rx_rate_limiter": null,
                                "tx_rate_limiter": {"bandwidth": null,
                                    "ops": {"size": 10, "one_time_burst": null,
                                            "refill_time": 1000}}}],
        "vsock": {"guest_cid": 3, "uds_path": "/v.sock"},
        "entropy": {"rate_limiter": null},
        "pmem": [],
        "memory-hotplug": null
    });
    assert_eq!(config, want);
}

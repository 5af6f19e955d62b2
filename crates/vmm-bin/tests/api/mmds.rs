//! The metadata service (MMDS) over the API socket, as Firecracker's clients drive it.

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::TempDir;

#[test]
fn mmds_over_the_socket_as_firecrackers_clients_drive_it() {
    // Configuration and data only: this needs no KVM.
    let dir = TempDir::new("api-mmds");
    let sock = dir.join("api.sock");
    let metadata = dir.join("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"latest": {"meta-data": {"ami-id": "from-file"}}}"#,
    )
    .unwrap();
    let _petrel = {
        let mut petrel = Petrel::start(&[
            "--api-sock",
            sock.to_str().unwrap(),
            "--id",
            "mmds",
            "--mmds-size-limit",
            "256",
            "--metadata",
            metadata.to_str().unwrap(),
        ]);
        let deadline = Instant::now() + DEADLINE;
        while UnixStream::connect(&sock).is_err() {
            assert!(petrel.running(), "petrel exited: {}", petrel.stderr());
            assert!(Instant::now() < deadline, "no socket after {DEADLINE:?}");
            thread::sleep(Duration::from_millis(10));
        }
        petrel
    };
    // One connection, kept alive, as the SDKs keep theirs.
    let mut client = Client::connect(&sock);
    let reply = client.send("GET", "/mmds", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"latest": {"meta-data": {"ami-id": "from-file"}}})
    );

    // firecracker-go-sdk with MMDS on: the interface, then /mmds/config, then SetMetadata,
    // UpdateMetadata and GetMetadata.
    let iface =
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}"#;
    let reply = client.send("PUT", "/network-interfaces/eth0", Some(iface));
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = client.send(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth1"]}"#),
    );
    assert!(
        reply.fault().contains(
            "The list of network interface IDs provided contains at least one ID that does not \
             correspond to any existing network interface."
        ),
        "{reply:?}"
    );
    let config = r#"{"version": "V2", "ipv4_address": "169.254.169.254",
                     "network_interfaces": ["eth0"]}"#;
    let reply = client.send("PUT", "/mmds/config", Some(config));
    assert_eq!(reply.status, 204, "{reply:?}");
    let data = r#"{"latest": {"meta-data": {"ami-id": "ami-12345678", "instance-type": "m5"}}}"#;
    let reply = client.send("PUT", "/mmds", Some(data));
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = client.send(
        "PATCH",
        "/mmds",
        Some(r#"{"latest": {"meta-data": {"instance-type": null, "hostname": "vm1"}}}"#),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = client.send("GET", "/mmds", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "hostname": "vm1"}}})
    );
    let reply = client.send("GET", "/vm/config", None);
    assert_eq!(
        reply.json()["mmds-config"],
        serde_json::json!({"version": "V2", "network_interfaces": ["eth0"],
                           "ipv4_address": "169.254.169.254", "imds_compat": false})
    );

    // --mmds-size-limit: over it, Firecracker's 413 and text; the store keeps what it had.
    let big = format!(r#"{{"latest": "{}"}}"#, "x".repeat(300));
    let reply = client.send("PUT", "/mmds", Some(&big));
    assert_eq!(reply.status, 413, "{reply:?}");
    let text = reply.json()["fault_message"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("MMDS limit exceeded error: The MMDS patch request doesn't fit."),
        "{text}"
    );
    assert_eq!(
        client.send("GET", "/mmds", None).json()["latest"]["meta-data"]["hostname"],
        "vm1"
    );
    // Refusals name the field, in Firecracker's words.
    let reply = client.send(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"], "ipv4_address": "192.168.0.1"}"#),
    );
    assert_eq!(
        reply.fault(),
        "ipv4_address `192.168.0.1`: The MMDS IPv4 address is not link local."
    );
    let reply = client.send("GET", "/mmds/config", None);
    assert_eq!(
        reply.fault(),
        "method GET is not allowed on /mmds/config (allowed: PUT)"
    );
}

#[test]
fn a_metadata_file_that_does_not_fit_is_refused_at_start() {
    let dir = TempDir::new("api-mmds-cli");
    let sock = dir.join("api.sock");
    let metadata = dir.join("metadata.json");
    std::fs::write(&metadata, r#"{"k": "a value longer than the limit"}"#).unwrap();
    let (sock, metadata) = (sock.to_str().unwrap(), metadata.to_str().unwrap());
    exits_2_with_one_line(
        &[
            "--api-sock",
            sock,
            "--mmds-size-limit",
            "8",
            "--metadata",
            metadata,
        ],
        &["--metadata", "The MMDS patch request doesn't fit."],
    );
    exits_2_with_one_line(
        &["--api-sock", sock, "--metadata", "/nonexistent/md.json"],
        &["--metadata", "/nonexistent/md.json"],
    );
}

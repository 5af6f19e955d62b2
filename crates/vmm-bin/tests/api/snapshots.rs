//! Snapshots over the API: Full and Diff snapshots loaded in fresh processes, working sets,
//! a snapshot that names the loaded memory file, and the Uffd backend.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use petrel_demo_guest::counter;
use petrel_tests::kvm_present_or_skip;

use crate::harness::*;
use crate::support::TempDir;

/// Configures the counter guest (128 MiB, dirty pages tracked) and starts it; waits for its
/// first tick.
fn start_counter_guest(petrel: &mut Petrel, sock: &Path, kernel: &Path) {
    let boot = serde_json::json!({ "kernel_image_path": kernel });
    let reply = call(sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(reply.status, 204, "PUT /boot-source: {reply:?}");
    let machine =
        serde_json::json!({ "vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true });
    let reply = call(sock, "PUT", "/machine-config", Some(&machine.to_string()));
    assert_eq!(reply.status, 204, "PUT /machine-config: {reply:?}");
    let reply = call(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(reply.status, 204, "InstanceStart: {reply:?}");
    petrel.wait_for_output(&format!("{}0\r\n", counter::TICK_PREFIX));
}

fn patch_vm(sock: &Path, state: &str) {
    let reply = call(
        sock,
        "PATCH",
        "/vm",
        Some(&format!(r#"{{"state": "{state}"}}"#)),
    );
    assert_eq!(reply.status, 204, "PATCH /vm {state}: {reply:?}");
}

fn create_snapshot(sock: &Path, kind: &str, state: &Path, mem: &Path) -> Reply {
    let body = serde_json::json!({
        "snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem,
    });
    call(sock, "PUT", "/snapshot/create", Some(&body.to_string()))
}

/// Waits until the counts in `before` followed by `petrel`'s output reach `n` more than in
/// `before`; checks they count on one by one.
fn counts_on(petrel: &mut Petrel, before: &str, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    let had = counter::ticks(before).len();
    loop {
        let all = format!("{before}{}", petrel.stdout());
        let ticks = counter::ticks(&all);
        if ticks.len() >= had + n {
            let want: Vec<u64> = (0..ticks.len() as u64).collect();
            assert_eq!(ticks, want, "every count once, in order");
            return;
        }
        assert!(
            petrel.running(),
            "petrel exited; stderr:\n{}",
            petrel.stderr()
        );
        assert!(Instant::now() < deadline, "output: {all:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn snapshots_full_and_diff_over_the_api_load_in_fresh_processes() {
    if !kvm_present_or_skip("snapshots_full_and_diff_over_the_api_load_in_fresh_processes") {
        return;
    }
    let dir = TempDir::new("api-snap");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let (state1, mem1) = (dir.join("full.state"), dir.join("full.mem"));
    let (state2, mem2) = (dir.join("diff.state"), dir.join("diff.mem"));

    let sock = dir.join("first.sock");
    let mut first = Petrel::serve(&sock, "first");
    start_counter_guest(&mut first, &sock, &kernel);
    let running = create_snapshot(&sock, "Full", &state1, &mem1).fault();
    assert!(running.contains("pause the VM first"), "{running}");
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Full", &state1, &mem1);
    assert_eq!(reply.status, 204, "Full snapshot: {reply:?}");
    let at_full = first.stdout();
    patch_vm(&sock, "Resumed");
    // Same process: its output holds the earlier counts already.
    counts_on(&mut first, "", counter::ticks(&at_full).len() + 2);
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Diff", &state2, &mem2);
    assert_eq!(reply.status, 204, "Diff snapshot: {reply:?}");
    let at_diff = first.stdout();
    drop(first);
    // The Diff holds a few pages of the 128 MiB; the rest are holes.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&mem2).unwrap();
    assert_eq!(meta.len(), 128 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

    // The Full snapshot, loaded running (with the deprecated mem_file_path).
    let sock = dir.join("full.sock");
    let mut full = Petrel::serve(&sock, "full");
    let load = serde_json::json!({
        "snapshot_path": state1, "mem_file_path": mem1, "resume_vm": true,
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load Full: {reply:?}");
    assert_eq!(state(&sock), "Running");
    counts_on(&mut full, &at_full, 2);
    drop(full);

    // The Diff applied to a copy of the Full memory file, loaded paused, then resumed.
    let merged = dir.join("merged.mem");
    std::fs::copy(&mem1, &merged).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["rebase-snap", "--base-file"])
        .arg(&merged)
        .arg("--diff-file")
        .arg(&mem2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let sock = dir.join("diff.sock");
    let mut diff = Petrel::serve(&sock, "diff");
    let load = serde_json::json!({
        "snapshot_path": state2,
        "mem_backend": { "backend_type": "File", "backend_path": merged },
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load Diff: {reply:?}");
    assert_eq!(state(&sock), "Paused");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(diff.stdout(), "", "a paused guest prints nothing");
    // A second load is refused: the VM exists.
    let again = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string())).fault();
    assert!(again.contains("only allowed before"), "{again}");
    patch_vm(&sock, "Resumed");
    counts_on(&mut diff, &at_diff, 2);
}

/// Boots the counter guest over the API in `dir`, pauses it and writes a Full snapshot to
/// `state_file` and `mem`; returns its console output up to the snapshot.
fn counter_snapshot(dir: &TempDir, state_file: &Path, mem: &Path) -> String {
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let sock = dir.join("first.sock");
    let mut first = Petrel::serve(&sock, "first");
    start_counter_guest(&mut first, &sock, &kernel);
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Full", state_file, mem);
    assert_eq!(reply.status, 204, "Full snapshot: {reply:?}");
    first.stdout()
}

#[test]
fn a_working_set_is_saved_on_request_and_prefetched_by_the_next_load() {
    if !kvm_present_or_skip("a_working_set_is_saved_on_request_and_prefetched_by_the_next_load") {
        return;
    }
    let dir = TempDir::new("api-working-set");
    let (state_file, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let at_snapshot = counter_snapshot(&dir, &state_file, &mem);
    let load = serde_json::json!({
        "snapshot_path": state_file,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
    })
    .to_string();
    let set = dir.join("vm.state.working-set");

    // A VM not restored to record has no working set to save.
    let sock = dir.join("plain.sock");
    let plain = Petrel::serve(&sock, "plain");
    assert_eq!(
        call(&sock, "PUT", "/snapshot/load", Some(&load)).status,
        204
    );
    let refused = call(&sock, "PUT", "/snapshot/working-set", None).fault();
    assert!(refused.contains("--working-set record"), "{refused}");
    drop(plain);

    // Recording: saved on request, with the seccomp filters on, while the guest runs on.
    let sock = dir.join("record.sock");
    let mut record = Petrel::serve_with(&sock, "record", &["--working-set", "record"]);
    assert_eq!(
        call(&sock, "PUT", "/snapshot/load", Some(&load)).status,
        204
    );
    counts_on(&mut record, &at_snapshot, 1);
    let reply = call(&sock, "PUT", "/snapshot/working-set", Some("{}"));
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(set.is_file());
    counts_on(&mut record, &at_snapshot, 2);
    assert_eq!(state(&sock), "Running");
    drop(record);

    // The next load prefetches it, and the guest counts on.
    let sock = dir.join("prefetch.sock");
    let mut prefetch = Petrel::serve(&sock, "prefetch");
    assert_eq!(
        call(&sock, "PUT", "/snapshot/load", Some(&load)).status,
        204
    );
    counts_on(&mut prefetch, &at_snapshot, 2);
    let stderr = prefetch.stderr();
    assert!(stderr.contains("prefetched the working set"), "{stderr}");
}

#[test]
fn a_snapshot_naming_the_loaded_memory_file_leaves_guest_and_file_whole() {
    if !kvm_present_or_skip("a_snapshot_naming_the_loaded_memory_file_leaves_guest_and_file_whole")
    {
        return;
    }
    let dir = TempDir::new("api-snap-mapped");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let (state1, mem1) = (dir.join("first.state"), dir.join("first.mem"));

    let sock = dir.join("first.sock");
    let mut first = Petrel::serve(&sock, "first");
    start_counter_guest(&mut first, &sock, &kernel);
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Full", &state1, &mem1);
    assert_eq!(reply.status, 204, "Full snapshot: {reply:?}");
    let at_first = first.stdout();
    drop(first);
    let mem1_bytes = std::fs::read(&mem1).unwrap();

    // Loaded (mapped privately) from first.mem, dirty pages tracked.
    let sock = dir.join("second.sock");
    let mut second = Petrel::serve(&sock, "second");
    let load = serde_json::json!({
        "snapshot_path": state1,
        "mem_backend": { "backend_type": "File", "backend_path": mem1 },
        "track_dirty_pages": true, "resume_vm": true,
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load: {reply:?}");
    counts_on(&mut second, &at_first, 2);
    patch_vm(&sock, "Paused");

    // A Diff over the memory file it applies to is refused, by whatever name the file is
    // reached: the file and the guest stay as they were.
    let link = dir.join("link.mem");
    std::fs::hard_link(&mem1, &link).unwrap();
    let dotted = dir.join(".").join("first.mem");
    let state2 = dir.join("second.state");
    for name in [&mem1, &dotted, &link] {
        let fault = create_snapshot(&sock, "Diff", &state2, name).fault();
        assert!(
            fault.contains(&name.display().to_string())
                && fault.contains("the memory file this VM was restored from"),
            "{fault}"
        );
    }
    assert!(!state2.exists(), "a refused snapshot writes nothing");
    assert_eq!(state(&sock), "Paused");
    assert!(
        std::fs::read(&mem1).unwrap() == mem1_bytes,
        "first.mem unchanged"
    );

    // A Full snapshot over it replaces the name with a new file; the guest keeps the memory
    // it maps (the old file, which stays as it was under its other name).
    let reply = create_snapshot(&sock, "Full", &state2, &dotted);
    assert_eq!(
        reply.status, 204,
        "Full snapshot over the mapped file: {reply:?}"
    );
    let at_second = format!("{at_first}{}", second.stdout());
    patch_vm(&sock, "Resumed");
    let printed = counter::ticks(&second.stdout()).len();
    counts_on(&mut second, &at_first, printed + 2);
    drop(second);
    assert!(
        std::fs::read(&link).unwrap() == mem1_bytes,
        "the old file unchanged"
    );
    let new_mem = std::fs::read(&mem1).unwrap();
    assert_eq!(new_mem.len(), mem1_bytes.len());
    // The counter guest's memory is a dozen non-zero pages; a few ticks change one or two.
    let non_zero = |m: &[u8]| m.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
    let differing = new_mem
        .chunks(4096)
        .zip(mem1_bytes.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        non_zero(&mem1_bytes) > 8
            && differing <= 4
            && non_zero(&new_mem) + 4 >= non_zero(&mem1_bytes),
        "{differing} pages differ, {} of {} non-zero: the untouched pages are not all there",
        non_zero(&new_mem),
        non_zero(&mem1_bytes)
    );

    // The new snapshot loads and counts on from where it was taken.
    let sock = dir.join("third.sock");
    let mut third = Petrel::serve(&sock, "third");
    let load = serde_json::json!({
        "snapshot_path": state2,
        "mem_backend": { "backend_type": "File", "backend_path": mem1 },
        "resume_vm": true,
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load the second snapshot: {reply:?}");
    counts_on(&mut third, &at_second, 2);
}

#[test]
fn a_uffd_load_is_served_by_the_handler_and_a_bad_socket_is_a_400() {
    if !kvm_present_or_skip("a_uffd_load_is_served_by_the_handler_and_a_bad_socket_is_a_400") {
        return;
    }
    let dir = TempDir::new("api-uffd");
    let (state_file, mem) = (dir.join("full.state"), dir.join("full.mem"));
    let at_full = counter_snapshot(&dir, &state_file, &mem);

    // Nobody listening: 400 at load time, naming the field; the process can load again.
    let sock = dir.join("uffd.sock");
    let mut restored = Petrel::serve(&sock, "uffd");
    let load = |backend: &Path| {
        serde_json::json!({
            "snapshot_path": state_file, "resume_vm": true,
            "mem_backend": { "backend_type": "Uffd", "backend_path": backend },
        })
        .to_string()
    };
    let nobody = call(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(&load(&dir.join("nobody"))),
    );
    let fault = nobody.fault();
    assert!(
        fault.contains("mem_backend.backend_path") && fault.contains("cannot connect"),
        "{fault}"
    );
    // Petrel's handler, on a thread of this test; it ends when Petrel closes the connection.
    let handler_sock = dir.join("handler.sock");
    let listener = std::os::unix::net::UnixListener::bind(&handler_sock).unwrap();
    let file = std::fs::File::open(&mem).unwrap();
    let handler = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        petrel_vmm::uffd::serve_pages(stream, &file).unwrap()
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load(&handler_sock)));
    assert_eq!(reply.status, 204, "load Uffd: {reply:?}");
    assert_eq!(state(&sock), "Running");
    counts_on(&mut restored, &at_full, 2);
    drop(restored);
    let served = handler.join().unwrap();
    assert!(served > 0, "the handler served no page");
}

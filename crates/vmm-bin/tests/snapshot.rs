//! Snapshots end to end, from the command line: `--snapshot-on-signal DIR` and SIGUSR1 in one
//! `petrel` process, `petrel restore DIR` in others.
//!
//! The guest is the counter guest (`petrel_demo_guest::counter`): it prints `tick N` once a
//! second from a count kept in guest memory, so the output of the first process followed by
//! the output of a restored one must count 0, 1, 2, ... with nothing missing and nothing twice.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_demo_guest::counter;
use petrel_tests::kvm_present_or_skip;
use support::{wait_until, TempDir};

/// Generous: the guest's kernel code runs emulated on the development host, and a tick is a
/// second.
const DEADLINE: Duration = Duration::from_secs(60);

fn petrel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
}

fn counter_guest(dir: &TempDir) -> PathBuf {
    let path = dir.join("counter.elf");
    std::fs::write(&path, counter::counter_guest_elf()).unwrap();
    path
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until the console output in `path` holds at least `n` ticks; returns them.
fn wait_for_ticks(child: &mut Child, path: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ticks = counter::ticks(&read(path));
        if ticks.len() >= n {
            return ticks;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "petrel exited ({status}) after {} ticks; its output:\n{}\nits stderr:\n{}",
                ticks.len(),
                read(path),
                stderr_of(child)
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {n} ticks within {DEADLINE:?}: {:?}",
            read(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) with the pid of a child we have not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// Sends SIGUSR1 and waits for the snapshot's files and petrel's exit (status 0).
fn snapshot_and_stop(child: &mut Child, dir: &Path) -> String {
    signal(child, libc::SIGUSR1);
    let status = wait_until(child, Instant::now() + DEADLINE).expect("petrel stops");
    let stderr = stderr_of(child);
    assert!(status.success(), "petrel: {status}\n{stderr}");
    assert!(stderr.contains("snapshot written"), "{stderr}");
    assert!(dir.join("state").is_file() && dir.join("mem").is_file());
    stderr
}

/// Consecutive from 0.
fn assert_counts_on(ticks: &[u64]) {
    let want: Vec<u64> = (0..ticks.len() as u64).collect();
    assert_eq!(ticks, want, "every count once, in order");
}

fn start_counter(kernel: &Path, out: &Path, snap: &Path, vcpus: &str) -> Child {
    petrel()
        .arg("--kernel")
        .arg(kernel)
        .args(["--mem", "64M", "--vcpus", vcpus])
        .arg("--serial")
        .arg(format!("file:{}", out.display()))
        .arg("--snapshot-on-signal")
        .arg(snap)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start petrel")
}

fn restore(snap: &Path, out: &Path, extra: &[&str]) -> Child {
    petrel()
        .arg("restore")
        .arg(snap)
        .arg("--serial")
        .arg(format!("file:{}", out.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start petrel restore")
}

fn stop(mut child: Child) {
    signal(&child, libc::SIGTERM);
    let status = wait_until(&mut child, Instant::now() + DEADLINE).expect("petrel stops");
    // Petrel stops the guest, cleans up, and dies by the signal.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "petrel on SIGTERM: {status}"
    );
}

#[test]
fn counter_guest_goes_on_in_another_process_exactly_once() {
    if !kvm_present_or_skip("counter_guest_goes_on_in_another_process_exactly_once") {
        return;
    }
    let dir = TempDir::new("snap-counter");
    let kernel = counter_guest(&dir);
    let (out1, out2, snap) = (dir.join("out1"), dir.join("out2"), dir.join("snap"));
    let mut first = start_counter(&kernel, &out1, &snap, "1");
    wait_for_ticks(&mut first, &out1, 2);
    snapshot_and_stop(&mut first, &snap);

    let mut second = restore(&snap, &out2, &[]);
    let before = read(&out1);
    let counted = counter::ticks(&before).len();
    // The restored guest prints at least two more lines.
    let mut all = String::new();
    let deadline = Instant::now() + DEADLINE;
    while counter::ticks(&all).len() < counted + 2 {
        assert!(
            Instant::now() < deadline,
            "restored output: {:?}",
            read(&out2)
        );
        assert!(
            second.try_wait().unwrap().is_none(),
            "restore exited: {}",
            stderr_of(&mut second)
        );
        std::thread::sleep(Duration::from_millis(50));
        all = before.clone() + &read(&out2);
    }
    stop(second);
    assert_counts_on(&counter::ticks(&(before + &read(&out2))));
}

#[test]
fn two_vcpus_and_three_guests_from_one_memory_file() {
    if !kvm_present_or_skip("two_vcpus_and_three_guests_from_one_memory_file") {
        return;
    }
    let dir = TempDir::new("snap-three");
    let kernel = counter_guest(&dir);
    let (out, snap) = (dir.join("out"), dir.join("snap"));
    let mut first = start_counter(&kernel, &out, &snap, "2");
    wait_for_ticks(&mut first, &out, 1);
    snapshot_and_stop(&mut first, &snap);
    let mem_before = std::fs::read(snap.join("mem")).unwrap();

    let before = read(&out);
    let outs: Vec<PathBuf> = (0..3).map(|i| dir.join(&format!("restored{i}"))).collect();
    let mut guests: Vec<Child> = outs.iter().map(|o| restore(&snap, o, &[])).collect();
    for (g, o) in guests.iter_mut().zip(&outs) {
        // Each goes on from the same count, on its own.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let all = before.clone() + &read(o);
            if counter::ticks(&all).len() >= counter::ticks(&before).len() + 2 {
                assert_counts_on(&counter::ticks(&all));
                break;
            }
            assert!(Instant::now() < deadline, "restored output: {:?}", read(o));
            assert!(g.try_wait().unwrap().is_none(), "{}", stderr_of(g));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for g in guests {
        stop(g);
    }
    assert!(
        std::fs::read(snap.join("mem")).unwrap() == mem_before,
        "restores never write the memory file"
    );
}

/// Runs `petrel restore` on `snap` and expects exit code 2 with a message containing `words`.
fn refused(args: &[&str], words: &[&str]) {
    let out = petrel()
        .arg("restore")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run petrel");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    for w in words {
        assert!(
            stderr.contains(w),
            "{args:?}: {w:?} missing from {stderr:?}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn damaged_or_mismatched_snapshots_are_refused_with_exit_2() {
    if !kvm_present_or_skip("damaged_or_mismatched_snapshots_are_refused_with_exit_2") {
        return;
    }
    let dir = TempDir::new("snap-bad");
    let kernel = counter_guest(&dir);
    let (out, snap) = (dir.join("out"), dir.join("snap"));
    let mut first = start_counter(&kernel, &out, &snap, "1");
    wait_for_ticks(&mut first, &out, 1);
    snapshot_and_stop(&mut first, &snap);
    let state = std::fs::read(snap.join("state")).unwrap();
    let mem = snap.join("mem");
    let bad = |name: &str, bytes: &[u8]| -> String {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let mem_s = mem.display().to_string();

    let truncated = bad("truncated", &state[..state.len() / 2]);
    refused(
        &["--state-file", &truncated, "--mem-file", &mem_s],
        &["truncated", "truncated"],
    );
    let mut flipped = state.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let corrupted = bad("corrupted", &flipped);
    refused(
        &["--state-file", &corrupted, "--mem-file", &mem_s],
        &["corrupted", "checksum"],
    );
    let elf = bad("not-a-snapshot", &counter::counter_guest_elf());
    refused(
        &["--state-file", &elf, "--mem-file", &mem_s],
        &["not-a-snapshot", "not a Petrel state file"],
    );
    let mut newer = state.clone();
    newer[8..12].copy_from_slice(&99u32.to_le_bytes());
    let newer = bad("newer", &newer);
    refused(
        &["--state-file", &newer, "--mem-file", &mem_s],
        &["newer", "version 99"],
    );
    // A memory file of another size (another guest's).
    let small = dir.join("small-mem");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let state_s = snap.join("state").display().to_string();
    refused(
        &[
            "--state-file",
            &state_s,
            "--mem-file",
            &small.display().to_string(),
        ],
        &["small-mem", "33554432", "67108864"],
    );
    // A state edited to claim another vCPU count.
    let body: serde_json::Value = serde_json::from_slice(&state[32..]).unwrap();
    let mut edited = body.clone();
    edited["machine"]["vcpus"] = serde_json::json!(2);
    let reframed = petrel_snapshot::encode(&edited).unwrap();
    let two = bad("two-vcpus", &reframed);
    refused(
        &["--state-file", &two, "--mem-file", &mem_s],
        &["two-vcpus", "2 vCPUs", "1"],
    );
    refused(
        &["--state-file", &state_s, "--mem-file", "/nonexistent/mem"],
        &["/nonexistent/mem"],
    );
}

/// The inode number of `path` (a snapshot's files are replaced by a rename when written).
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

/// How many 4 KiB pages hold something other than zeros.
fn non_zero_pages(mem: &[u8]) -> usize {
    mem.chunks(4096)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count()
}

/// How many 4 KiB pages differ between two memory files of the same size.
fn differing_pages(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len(), "memory files of one guest");
    a.chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count()
}

#[test]
fn a_snapshot_over_the_memory_file_it_was_restored_from_keeps_guest_and_file() {
    if !kvm_present_or_skip(
        "a_snapshot_over_the_memory_file_it_was_restored_from_keeps_guest_and_file",
    ) {
        return;
    }
    let dir = TempDir::new("snap-over-mapped");
    let kernel = counter_guest(&dir);
    let (out1, out2, out3) = (dir.join("out1"), dir.join("out2"), dir.join("out3"));
    let snap = dir.join("snap");
    let mut first = start_counter(&kernel, &out1, &snap, "1");
    wait_for_ticks(&mut first, &out1, 2);
    snapshot_and_stop(&mut first, &snap);
    let mem_before = std::fs::read(snap.join("mem")).unwrap();
    assert!(
        non_zero_pages(&mem_before) > 8,
        "{}",
        non_zero_pages(&mem_before)
    );

    // Restored from snap/mem, and told to write its snapshots into the same directory: the
    // memory file it maps is the one the snapshot replaces.
    let snap_s = snap.to_str().unwrap();
    let mut second = restore(
        &snap,
        &out2,
        &["--snapshot-on-signal", snap_s, "--snapshot-keep-running"],
    );
    let before = read(&out1);
    let had = counter::ticks(&before).len();
    let deadline = Instant::now() + DEADLINE;
    while counter::ticks(&(before.clone() + &read(&out2))).len() < had + 1 {
        assert!(Instant::now() < deadline, "restored: {:?}", read(&out2));
        assert!(
            second.try_wait().unwrap().is_none(),
            "{}",
            stderr_of(&mut second)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let at_signal = *counter::ticks(&(before.clone() + &read(&out2)))
        .last()
        .unwrap();
    let old_state = inode(&snap.join("state"));
    signal(&second, libc::SIGUSR1);
    let deadline = Instant::now() + DEADLINE;
    while inode(&snap.join("state")) == old_state {
        assert!(Instant::now() < deadline, "no new snapshot state file");
        assert!(
            second.try_wait().unwrap().is_none(),
            "{}",
            stderr_of(&mut second)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The guest keeps its memory: it counts on, every number once.
    let had = counter::ticks(&(before.clone() + &read(&out2))).len();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let all = before.clone() + &read(&out2);
        if counter::ticks(&all).len() >= had + 2 {
            assert_counts_on(&counter::ticks(&all));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the snapshot: {:?}",
            read(&out2)
        );
        assert!(
            second.try_wait().unwrap().is_none(),
            "the guest died after the snapshot: {}",
            stderr_of(&mut second)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&second, libc::SIGTERM);
    let status = wait_until(&mut second, Instant::now() + DEADLINE).expect("petrel stops");
    let stderr = stderr_of(&mut second);
    // Petrel stops the guest, cleans up, and dies by the signal.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "petrel on SIGTERM: {status}\n{stderr}"
    );
    assert!(stderr.contains("snapshot written"), "{stderr}");
    let last_printed = *counter::ticks(&read(&out2)).last().unwrap();

    // The new memory file holds the whole memory: the pages the guest never touched (read
    // from the old file through the mapping) as well as the counter's own.
    // (The counter guest's memory is a dozen non-zero pages; a tick changes one or two.)
    let mem_after = std::fs::read(snap.join("mem")).unwrap();
    assert!(
        differing_pages(&mem_before, &mem_after) <= 4,
        "{} of {} non-zero pages differ",
        differing_pages(&mem_before, &mem_after),
        non_zero_pages(&mem_before)
    );
    assert!(non_zero_pages(&mem_after) + 4 >= non_zero_pages(&mem_before));
    assert!(!snap.join("mem.tmp").exists() && !snap.join("state.tmp").exists());

    // And a restore of it goes on from the count of the second snapshot.
    let mut third = restore(&snap, &out3, &[]);
    let ticks = wait_for_ticks(&mut third, &out3, 2);
    stop(third);
    let want: Vec<u64> = (ticks[0]..ticks[0] + ticks.len() as u64).collect();
    assert_eq!(ticks, want, "every count once, in order");
    assert!(
        ticks[0] > at_signal && ticks[0] <= last_printed + 1,
        "restored at {} (signal after {at_signal}, last printed {last_printed})",
        ticks[0]
    );
}

/// The VM generation ID a state file holds, its GSI, and the 16 bytes at its address in the
/// memory file beside it (guest RAM starts at 0, so a guest-physical address below the MMIO
/// gap is the file offset).
fn generation_of(snap: &Path) -> (String, u64, Vec<u8>) {
    let state: serde_json::Value = petrel_snapshot::read_file(&snap.join("state")).unwrap();
    let g = &state["devices"]["vmgenid"];
    assert!(
        g.is_object(),
        "a Linux guest's snapshot holds its VMGenID: {g}"
    );
    let id = g["state"].to_string();
    let address = g["state"]["address"].as_u64().expect("address");
    let mem = std::fs::read(snap.join("mem")).unwrap();
    let at = usize::try_from(address).unwrap();
    let gsi = g["gsi"].as_u64().expect("gsi");
    (id, gsi, mem[at..at + 16].to_vec())
}

#[test]
fn every_restore_is_a_new_generation() {
    if !kvm_present_or_skip("every_restore_is_a_new_generation") {
        return;
    }
    let dir = TempDir::new("snap-genid");
    let kernel = counter_guest(&dir);
    let (out, snap) = (dir.join("out"), dir.join("snap"));
    let mut first = start_counter(&kernel, &out, &snap, "1");
    wait_for_ticks(&mut first, &out, 1);
    snapshot_and_stop(&mut first, &snap);
    let (saved_id, gsi, saved_bytes) = generation_of(&snap);
    assert_ne!(
        saved_bytes, [0u8; 16],
        "the first generation ID is in guest memory"
    );

    // Two clones of the one snapshot, each snapshotted again: each got a generation of its own,
    // written where the guest reads it, on the interrupt line the guest's DSDT names.
    let mut seen = vec![saved_bytes];
    for i in 0..2 {
        let (out, again) = (dir.join(&format!("out{i}")), dir.join(&format!("again{i}")));
        let again_arg = again.display().to_string();
        let mut clone = restore(&snap, &out, &["--snapshot-on-signal", &again_arg]);
        wait_for_ticks(&mut clone, &out, 1);
        snapshot_and_stop(&mut clone, &again);
        let (id, clone_gsi, bytes) = generation_of(&again);
        assert_ne!(id, saved_id, "clone {i} kept the saved generation");
        assert_eq!(clone_gsi, gsi, "clone {i}'s VMGenID moved to another GSI");
        assert!(
            !seen.contains(&bytes),
            "clone {i} repeats a generation: {bytes:02x?}"
        );
        seen.push(bytes);
    }
}

/// Restores `snap` with `extra` arguments, waits for `more` ticks after the `counted` ones,
/// stops it with SIGTERM and returns its console output and stderr.
fn restore_for_ticks(snap: &Path, out: &Path, extra: &[&str], counted: usize) -> (String, String) {
    let mut child = restore(snap, out, extra);
    wait_for_ticks(&mut child, out, 2);
    signal(&child, libc::SIGTERM);
    wait_until(&mut child, Instant::now() + DEADLINE).expect("petrel stops");
    let ticks = counter::ticks(&read(out));
    assert_eq!(
        ticks.first(),
        Some(&(counted as u64)),
        "the restored guest goes on from the snapshot's count"
    );
    (read(out), stderr_of(&mut child))
}

#[test]
fn a_recorded_working_set_is_prefetched_and_a_bad_one_ignored() {
    if !kvm_present_or_skip("a_recorded_working_set_is_prefetched_and_a_bad_one_ignored") {
        return;
    }
    let dir = TempDir::new("snap-working-set");
    let kernel = counter_guest(&dir);
    let (out, snap) = (dir.join("out"), dir.join("snap"));
    let mut first = start_counter(&kernel, &out, &snap, "1");
    wait_for_ticks(&mut first, &out, 2);
    snapshot_and_stop(&mut first, &snap);
    let before = read(&out);
    let counted = counter::ticks(&before).len();
    let set = snap.join("state.working-set");

    // Recorded when the VM ends: the pages this guest touched, far fewer than its 64 MiB.
    let (_, stderr) = restore_for_ticks(
        &snap,
        &dir.join("out-record"),
        &["--working-set", "record"],
        counted,
    );
    assert!(
        stderr.contains("working set of ") && stderr.contains("saved to"),
        "{stderr}"
    );
    assert!(set.is_file(), "{stderr}");
    let pages: u64 = stderr
        .split("working set of ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a page count");
    assert!(pages > 0 && pages < (64 << 20) / 4096 / 4, "{pages} pages");

    // Prefetched by default, with the filters on; the guest counts on exactly as without.
    let (counts, stderr) = restore_for_ticks(&snap, &dir.join("out-prefetch"), &[], counted);
    assert!(stderr.contains("prefetched the working set"), "{stderr}");
    assert_counts_on(&counter::ticks(&(before.clone() + &counts)));

    // Off: the file is left alone.
    let (_, stderr) = restore_for_ticks(
        &snap,
        &dir.join("out-off"),
        &["--working-set", "off"],
        counted,
    );
    assert!(!stderr.contains("working set"), "{stderr}");

    // A damaged file costs the prefetch, never the guest.
    let mut bytes = std::fs::read(&set).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&set, &bytes).unwrap();
    let (counts, stderr) = restore_for_ticks(&snap, &dir.join("out-damaged"), &[], counted);
    assert!(
        stderr.contains("ignored the working-set file") && stderr.contains("checksum"),
        "{stderr}"
    );
    assert_counts_on(&counter::ticks(&(before.clone() + &counts)));

    // So does a file recorded for another snapshot of the same guest.
    let other = dir.join("other");
    let mut again = restore(
        &snap,
        &dir.join("out-again"),
        &["--snapshot-on-signal", other.to_str().unwrap()],
    );
    wait_for_ticks(&mut again, &dir.join("out-again"), 1);
    snapshot_and_stop(&mut again, &other);
    std::fs::write(&set, std::fs::read(snap.join("state.working-set")).unwrap()).unwrap();
    let (_, stderr) = restore_for_ticks(
        &snap,
        &dir.join("out-record-2"),
        &["--working-set", "record"],
        counted,
    );
    assert!(stderr.contains("saved to"), "{stderr}");
    std::fs::copy(&set, other.join("state.working-set")).unwrap();
    let counted_other = counted + counter::ticks(&read(&dir.join("out-again"))).len();
    let (_, stderr) = restore_for_ticks(&other, &dir.join("out-other"), &[], counted_other);
    assert!(
        stderr.contains("ignored the working-set file") && stderr.contains("another snapshot"),
        "{stderr}"
    );

    // A mode that is none of the three is refused, naming the flag.
    let status = petrel()
        .args(["restore"])
        .arg(&snap)
        .args(["--working-set", "sometimes"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--working-set") && text.contains("sometimes"),
        "{text}"
    );
}

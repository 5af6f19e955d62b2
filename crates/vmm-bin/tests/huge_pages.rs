//! `huge_pages` from the command line: the demo guest booted from a config file (Firecracker's
//! mode, no API, the default seccomp filters on) with `Transparent` and with `2M` (a pool of
//! 2 MiB pages set up by the test and put back after), and a pool too small refused at start
//! by name.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use petrel_guest_mem::HugePagePool;
use petrel_tests::kvm_present_or_skip;
use support::{wait_until, TempDir};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
/// The guest's memory: 32 pages of 2 MiB.
const MEM_MIB: u64 = 64;

/// Boots the demo guest with `huge_pages` from a config file.
fn boot(dir: &TempDir, huge_pages: &str) -> Output {
    let kernel = dir.join("demo.elf");
    std::fs::write(&kernel, petrel_demo_guest::demo_kernel_elf()).unwrap();
    let config = dir.join(&format!("vm-{huge_pages}.json"));
    let doc = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEM_MIB, "huge_pages": huge_pages },
    });
    std::fs::write(&config, doc.to_string()).unwrap();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["--no-api", "--config-file", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let Some(status) = wait_until(&mut child, deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("huge_pages {huge_pages}: petrel still runs after 60 s");
    };
    Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    }
}

fn booted(o: &Output) {
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        petrel_demo_guest::GREETING_LINE,
        "memory: ",
        petrel_demo_guest::RESETTING_LINE,
    ] {
        assert!(out.contains(line), "{line:?} missing; stdout:\n{out}");
    }
}

/// Skips `test` (or fails it under `VMM_REQUIRE_KVM=1`) for `why`.
fn skip(test: &str, why: &str) {
    if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{test}: {why} (VMM_REQUIRE_KVM=1)");
    }
    eprintln!("SKIPPED {test}: {why} (set VMM_REQUIRE_KVM=1 to fail)");
}

/// The pool grown by some pages for as long as it lives, then set back.
struct PoolGuard(String);

impl PoolGuard {
    fn grow_by(pages: u64, test: &str) -> Option<PoolGuard> {
        let Ok(was) = std::fs::read_to_string(NR_HUGEPAGES) else {
            skip(test, &format!("cannot read {NR_HUGEPAGES}"));
            return None;
        };
        let Some(pool) = HugePagePool::read() else {
            skip(test, "the host has no pool of 2 MiB pages");
            return None;
        };
        if let Err(e) = std::fs::write(NR_HUGEPAGES, (pool.total + pages).to_string()) {
            skip(
                test,
                &format!("cannot set {NR_HUGEPAGES} (needs root): {e}"),
            );
            return None;
        }
        let guard = PoolGuard(was.trim().to_string());
        let now = HugePagePool::read().unwrap();
        if now.available() < pages {
            skip(
                test,
                &format!("the host gave {} of {pages} pages", now.available()),
            );
            return None;
        }
        Some(guard)
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR_HUGEPAGES, &self.0) {
            eprintln!("could not restore {NR_HUGEPAGES} to {}: {e}", self.0);
        }
    }
}

#[test]
fn the_demo_guest_boots_on_transparent_huge_pages() {
    if !kvm_present_or_skip("the_demo_guest_boots_on_transparent_huge_pages") {
        return;
    }
    let dir = TempDir::new("thp");
    booted(&boot(&dir, "Transparent"));
}

// One test for both: the pool is the host's, and tests of one binary run in parallel.
#[test]
fn the_demo_guest_boots_on_2m_pages_and_a_short_pool_is_refused_at_start() {
    let test = "the_demo_guest_boots_on_2m_pages_and_a_short_pool_is_refused_at_start";
    if !kvm_present_or_skip(test) {
        return;
    }
    let dir = TempDir::new("hugetlbfs");
    let needed = MEM_MIB / 2;
    match HugePagePool::read() {
        Some(pool) if pool.available() < needed => {
            let o = boot(&dir, "2M");
            let err = String::from_utf8_lossy(&o.stderr);
            assert_ne!(o.status.code(), Some(0), "stderr:\n{err}");
            for word in [
                "huge_pages is 2M",
                &format!("needs {needed} 2 MiB pages"),
                NR_HUGEPAGES,
            ] {
                assert!(err.contains(word), "{word:?} missing; stderr:\n{err}");
            }
        }
        _ => skip(
            test,
            "the short pool: the host's pool already has room for the guest",
        ),
    }
    let Some(_pool) = PoolGuard::grow_by(needed, test) else {
        return;
    };
    booted(&boot(&dir, "2M"));
}

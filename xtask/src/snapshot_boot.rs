//! The boot-test scenario `snapshot-linux-blk` (in the default set): the boot-test kernel with
//! its root on a fresh read-write virtio-blk disk, snapshotted well before `Run /init` and
//! restored in another petrel process, where it must reach `Run /init` and mount the disk.
//!
//! 1. `petrel --kernel ... --disk IMG --snapshot-on-signal DIR` boots until the serial log
//!    shows [`SNAPSHOT_AT`] (virtio-blk found the disk, about 11 s of guest time before
//!    `Run /init` here); xtask then sends SIGUSR1, and petrel must write `DIR/state` and
//!    `DIR/mem`, say `snapshot written` and exit 0, with no `Run /init` in its log yet and
//!    the disk still never mounted (ext4 mount count 0).
//! 2. `petrel restore DIR --serial file:LOG2 --metrics M` must then pass as a normal boot
//!    does ([`evaluate`]: `Run /init` and the guest's reset) with the root mounted
//!    read-write, and afterwards the disk's superblock must show that mount (count >= 1, a
//!    last mount time), written through the restored virtio-blk device (its `writes`
//!    counter in the restored process's metrics). The guest's clock must go on: the restored
//!    log's first kernel timestamp is not older than the last one before the snapshot.
//!
//! The scenario reports the time from the restore's start to the restored guest's first
//! serial output and to its `Run /init` (and petrel's own time to its first `KVM_RUN`, from
//! the restored process's metrics timeline), beside the first process's boot time to the
//! snapshot.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::api_boot::DISK_SEEN;
use crate::boottest::{
    evaluate, kill_vmm, print_tail, run_init_text, Exit, KernelFormat, LogWatch, Outcome, Scenario,
    Verdict, Vmm, RUN_INIT_LINE,
};
use crate::error::{IoContext, Result};
use crate::host;
use crate::virtio_boot::{device_counter, read_metrics, read_superblock, root_cmdline};

/// The snapshot scenario's name.
pub const SNAPSHOT_SCENARIO: &str = "snapshot-linux-blk";

/// The snapshot scenarios in the default set.
pub const SCENARIOS: &[&str] = &[SNAPSHOT_SCENARIO];

/// The serial line after which the snapshot is taken: virtio-blk found the disk. Logs of
/// `virtio-blk-root` here show it about 11 s of guest time before `Run /init`, and before
/// the root is mounted, so the mount (a write) is the restored guest's.
pub const SNAPSHOT_AT: &str = DISK_SEEN;

/// What petrel prints on stderr once the snapshot's files are written.
const SNAPSHOT_WRITTEN: &str = "snapshot written";

/// How long the first petrel may take from SIGUSR1 to its exit.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(60);

/// How often the running VMM and its serial log are looked at.
const POLL: Duration = Duration::from_millis(20);

/// Lines of a log to print when the scenario fails.
const TAIL: usize = 20;

/// What a snapshot scenario needs beyond its [`Scenario`]: where the snapshot, the disk and
/// the restored process's metrics go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBoot {
    /// `--snapshot-on-signal DIR`, then `petrel restore DIR`.
    pub dir: PathBuf,
    /// The root disk image (read-write).
    pub image: PathBuf,
    /// The restored process's `--metrics` file.
    pub metrics: PathBuf,
}

impl SnapshotBoot {
    /// The command that restores the snapshot with the serial port going to `serial_log`.
    pub fn restore_command(&self, petrel: &Path, serial_log: &Path) -> Command {
        let mut cmd = Command::new(petrel);
        cmd.arg("restore")
            .arg(&self.dir)
            .arg("--serial")
            .arg(format!("file:{}", serial_log.display()))
            .arg("--metrics")
            .arg(&self.metrics);
        cmd
    }
}

/// The snapshot scenarios named in `names`, booting `vmlinux` from a fresh root disk in
/// `dir` (no initramfs).
pub fn scenarios(names: &[&str], vmlinux: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    if !names.contains(&SNAPSHOT_SCENARIO) {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let snap = SnapshotBoot {
        dir: dir.join(format!("{SNAPSHOT_SCENARIO}.snap")),
        image: dir.join(format!("{SNAPSHOT_SCENARIO}.ext4")),
        metrics: dir.join(format!("{SNAPSHOT_SCENARIO}.metrics.json")),
    };
    crate::virtio_boot::build_rootfs(&snap.image)?;
    let mut s = Scenario::new(
        SNAPSHOT_SCENARIO,
        vmlinux,
        KernelFormat::Elf,
        Path::new(""),
        1,
    );
    s.initrd = None;
    s.cmdline = Some(root_cmdline("rw"));
    s.extra_args = vec![
        "--disk".into(),
        snap.image.display().to_string(),
        "--snapshot-on-signal".into(),
        snap.dir.display().to_string(),
    ];
    s.expect = vec![crate::virtio_boot::MOUNTED_RW];
    s.snapshot = Some(snap);
    Ok(vec![s])
}

/// How one petrel process of the scenario went.
#[derive(Debug)]
struct Run {
    exit: Exit,
    /// When the watched line appeared, from the process's start.
    seen: Option<Duration>,
    /// When the serial log first had something in it, from the process's start.
    first_output: Option<Duration>,
    /// How long the process ran.
    wall: Duration,
}

/// Starts `cmd` in its own process group with stdout and stderr to `vmm_log`.
fn spawn(cmd: &mut Command, vmm_log: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = fs::File::create(vmm_log).ctx(|| format!("creating {}", vmm_log.display()))?;
    let err = out.try_clone().ctx(|| "duplicating a file".into())?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(cmd)))
}

/// Follows `child` and its serial log until it exits, or until `timeout`, or (with
/// `on_seen`) until `needle` shows up, when `on_seen` is called once and the wait goes on
/// for at most [`SNAPSHOT_LIMIT`].
fn follow(
    child: &mut Child,
    start: Instant,
    serial_log: &Path,
    needle: &'static str,
    timeout: Duration,
    interrupts: &host::InterruptGuard,
    mut on_seen: Option<&mut dyn FnMut(&Child)>,
) -> Result<Run> {
    let mut watch = LogWatch::new(serial_log, needle);
    let mut first_output = None;
    let mut deadline = timeout;
    let exit = loop {
        let status = child.try_wait();
        let now = start.elapsed();
        watch.poll(now);
        if first_output.is_none() && fs::metadata(serial_log).is_ok_and(|m| m.len() > 0) {
            first_output = Some(now);
        }
        match status {
            Ok(Some(status)) => break Exit::from_status(status),
            Ok(None) => {}
            Err(e) => {
                kill_vmm(child);
                return Err(e).ctx(|| "waiting for the VMM".into());
            }
        }
        if let (Some(seen), Some(f)) = (watch.seen_at(), on_seen.as_mut()) {
            f(child);
            on_seen = None;
            deadline = seen + SNAPSHOT_LIMIT;
        }
        if let Some(sig) = interrupts.caught() {
            kill_vmm(child);
            println!(
                "{SNAPSHOT_SCENARIO}: interrupted by signal {sig}; killed the VMM's process \
                 group; serial log {}",
                serial_log.display()
            );
            std::process::exit(128 + sig);
        }
        if now >= deadline {
            kill_vmm(child);
            break Exit::TimedOut(deadline);
        }
        thread::sleep(POLL);
    };
    let wall = start.elapsed();
    watch.poll(wall);
    Ok(Run {
        exit,
        seen: watch.seen_at(),
        first_output,
        wall,
    })
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Sends SIGUSR1 to `child`.
fn send_sigusr1(child: &Child) {
    match i32::try_from(child.id()) {
        // SAFETY: kill(2) takes two integers and touches no memory of ours; the pid is our
        // child's, which is not reaped yet (so not reused).
        Ok(pid) if pid > 1 => unsafe {
            libc::kill(pid, libc::SIGUSR1);
        },
        _ => {}
    }
}

/// Judges the snapshotting process: it saw [`SNAPSHOT_AT`], had not reached `Run /init`,
/// exited 0 saying the snapshot was written, left both files, and the disk was not mounted.
pub fn judge_snapshot(
    serial: &str,
    vmm_output: &str,
    exit: &Exit,
    dir: &Path,
    seen: Option<Duration>,
) -> Verdict {
    let mut v = Verdict::default();
    if seen.is_none() {
        v.failures.push(format!(
            "the first boot never printed `{SNAPSHOT_AT}`, so no snapshot was asked for"
        ));
        return v;
    }
    if serial.contains(RUN_INIT_LINE) {
        v.failures.push(format!(
            "the snapshot came too late: the first boot already printed `{RUN_INIT_LINE}`"
        ));
    }
    if *exit != Exit::Code(0) {
        v.failures.push(format!(
            "the snapshotting petrel ended with {exit:?}, not exit code 0"
        ));
    }
    if !vmm_output.contains(SNAPSHOT_WRITTEN) {
        v.failures.push(format!(
            "the snapshotting petrel did not say `{SNAPSHOT_WRITTEN}`"
        ));
    }
    for f in ["state", "mem"] {
        if !dir.join(f).is_file() {
            v.failures
                .push(format!("no snapshot file {}", dir.join(f).display()));
        }
    }
    v
}

/// `1.234 s`, or `never`.
fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.3} s", d.as_secs_f64()))
}

/// Runs the snapshot scenario `s` with `petrel`: boot, snapshot, restore, checks.
pub fn run(
    petrel: &Path,
    s: &Scenario,
    snap: &SnapshotBoot,
    log_dir: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    fs::create_dir_all(log_dir).ctx(|| format!("creating {}", log_dir.display()))?;
    let serial1 = log_dir.join(format!("{}.log", s.name));
    let vmm1 = log_dir.join(format!("{}.vmm-output.log", s.name));
    let serial2 = log_dir.join(format!("{}.restored.log", s.name));
    let vmm2 = log_dir.join(format!("{}.restored.vmm-output.log", s.name));
    for f in [&serial1, &serial2, &snap.metrics] {
        let _ = fs::remove_file(f);
    }
    let _ = fs::remove_dir_all(&snap.dir);
    let interrupts = host::InterruptGuard::install();
    let total = Instant::now();

    // 1. Boot and snapshot at SNAPSHOT_AT.
    let mut cmd = Vmm::Petrel(petrel.to_owned()).command(s, &serial1);
    println!("==> {}: {}", s.name, host::describe(&cmd));
    let start1 = Instant::now();
    let mut child = spawn(&mut cmd, &vmm1)?;
    let mut signalled = None;
    let mut on_seen = |c: &Child| {
        send_sigusr1(c);
        signalled = Some(start1.elapsed());
    };
    let first = follow(
        &mut child,
        start1,
        &serial1,
        SNAPSHOT_AT,
        timeout,
        &interrupts,
        Some(&mut on_seen),
    )?;
    let text1 = read_lossy(&serial1);
    let out1 = read_lossy(&vmm1);
    let mut verdict = judge_snapshot(&text1, &out1, &first.exit, &snap.dir, first.seen);
    println!(
        "{}: first boot: `{SNAPSHOT_AT}` at {}, SIGUSR1 sent at {}, petrel ended after {:.1} s \
         ({:?})",
        s.name,
        secs(first.seen),
        secs(signalled),
        first.wall.as_secs_f64(),
        first.exit
    );
    if let Some(line) = out1.lines().find(|l| l.contains(SNAPSHOT_WRITTEN)) {
        verdict.notes.push(line.trim().to_owned());
    }
    match read_superblock(&snap.image) {
        Ok(sb) if sb.mount_count == 0 => {}
        Ok(sb) => verdict.failures.push(format!(
            "the disk was mounted before the snapshot (mount count {})",
            sb.mount_count
        )),
        Err(e) => verdict.failures.push(e),
    }

    // 2. Restore in a new process; it must boot on as a normal boot does.
    let mut second = None;
    if verdict.passed() {
        let mut cmd = snap.restore_command(petrel, &serial2);
        println!("==> {}: {}", s.name, host::describe(&cmd));
        let start2 = Instant::now();
        let mut child = spawn(&mut cmd, &vmm2)?;
        let run = follow(
            &mut child,
            start2,
            &serial2,
            RUN_INIT_LINE,
            timeout,
            &interrupts,
            None,
        )?;
        let text2 = read_lossy(&serial2);
        let v = evaluate(&text2, &run.exit);
        verdict.failures.extend(v.failures);
        verdict.notes.extend(v.notes);
        for line in &s.expect {
            if !text2.contains(line) {
                verdict
                    .failures
                    .push(format!("the restored serial log lacks `{line}`"));
            }
        }
        after_check(snap, &mut verdict);
        check_guest_clock(&text1, &text2, &mut verdict);
        let first_run = read_metrics(&snap.metrics)
            .ok()
            .and_then(|m| timeline_at(&m, "first KVM_RUN"));
        verdict.notes.push(format!(
            "restore to first serial output {}, restore to `Run /init` {} (petrel's timeline: \
             first KVM_RUN {} after its start); the first boot took {} to the snapshot line, \
             so {} from boot to `Run /init` across the two processes",
            secs(run.first_output),
            secs(run.seen),
            secs(first_run),
            secs(first.seen),
            secs(first.seen.zip(run.seen).map(|(a, b)| a + b)),
        ));
        second = Some(run);
    }
    drop(interrupts);

    let wall = total.elapsed();
    let result = if verdict.passed() { "PASS" } else { "FAIL" };
    let run_init = second.as_ref().and_then(|r| r.seen);
    println!(
        "{}: {result} in {:.1} s (restored: {:?}); restored {}",
        s.name,
        wall.as_secs_f64(),
        second.as_ref().map(|r| &r.exit),
        run_init_text(run_init)
    );
    for f in &verdict.failures {
        println!("    failed: {f}");
    }
    for n in &verdict.notes {
        println!("    note: {n}");
    }
    if !verdict.passed() {
        for (what, path) in [
            ("serial log", &serial1),
            ("VMM output", &vmm1),
            ("restored serial log", &serial2),
            ("restored VMM output", &vmm2),
        ] {
            println!("    last {TAIL} lines of the {what} {}:", path.display());
            print_tail(&read_lossy(path), TAIL);
        }
    }
    Ok(Outcome {
        verdict,
        wall,
        run_init,
        marker: None,
    })
}

/// The times of the kernel's log lines (`[   12.345678] ...`), in order, in seconds.
pub fn printk_times(serial: &str) -> Vec<f64> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start_matches('\r').strip_prefix('[')?;
            rest.split_once(']')?.0.trim().parse().ok()
        })
        .collect()
}

/// When the event `what` of petrel's `--metrics` timeline happened, from the process's start.
pub fn timeline_at(metrics: &serde_json::Value, what: &str) -> Option<Duration> {
    metrics["timeline"]
        .as_array()?
        .iter()
        .find(|e| e["what"] == what)?["at_us"]
        .as_u64()
        .map(Duration::from_micros)
}

/// The guest's clock goes on from where it was: the restored guest's first log line is not
/// older than the last one before the snapshot.
fn check_guest_clock(before: &str, after: &str, v: &mut Verdict) {
    let (last, first) = (
        printk_times(before).last().copied(),
        printk_times(after).first().copied(),
    );
    match (last, first) {
        (Some(last), Some(first)) if first >= last => v.notes.push(format!(
            "guest clock: last line before the snapshot at [{last:.6}], first after the \
             restore at [{first:.6}]"
        )),
        (Some(last), Some(first)) => v.failures.push(format!(
            "the guest's clock went back across the restore: [{last:.6}] before, [{first:.6}] \
             after"
        )),
        _ => {}
    }
}

/// After the restored VM ended: its mount reached the disk, through the restored device.
fn after_check(snap: &SnapshotBoot, v: &mut Verdict) {
    match read_superblock(&snap.image) {
        Ok(sb) if sb.mount_count >= 1 && sb.last_mount_time != "n/a" => v.notes.push(format!(
            "the restored guest's mount reached the disk: mount count 0 -> {}, last mounted {}",
            sb.mount_count, sb.last_mount_time
        )),
        Ok(sb) => v.failures.push(format!(
            "the restored guest's mount left no trace on the disk: mount count {}, last mount \
             time {}",
            sb.mount_count, sb.last_mount_time
        )),
        Err(e) => v.failures.push(e),
    }
    match read_metrics(&snap.metrics) {
        Ok(m) => match device_counter(&m, "virtio-blk", "writes") {
            Some(w) if w > 0 => v
                .notes
                .push(format!("the restored virtio-blk served {w} writes")),
            _ => v
                .failures
                .push("the restored virtio-blk served no write".into()),
        },
        Err(e) => v.failures.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_command_line() {
        let snap = SnapshotBoot {
            dir: "/t/s.snap".into(),
            image: "/t/s.ext4".into(),
            metrics: "/t/m.json".into(),
        };
        assert_eq!(
            host::describe(&snap.restore_command(Path::new("/p/petrel"), Path::new("/l/r.log"))),
            "/p/petrel restore /t/s.snap --serial file:/l/r.log --metrics /t/m.json"
        );
    }

    #[test]
    fn log_times_and_timeline() {
        let log = "[    0.000000] Linux\r\n[   93.027904] virtio_blk virtio0: [vda]\r\nno time\r\n";
        assert_eq!(printk_times(log), [0.0, 93.027904]);
        let mut v = Verdict::default();
        check_guest_clock(log, "[   97.649068] serio: i8042\r\n", &mut v);
        assert!(v.passed() && v.notes[0].contains("[97.649068]"), "{v:?}");
        check_guest_clock(log, "[    1.0] early\r\n", &mut v);
        assert!(v.failures[0].contains("went back"), "{v:?}");
        let m: serde_json::Value = serde_json::from_str(
            r#"{"timeline":[{"at_us":0,"what":"process start"},
                {"at_us":15529,"what":"first KVM_RUN"}]}"#,
        )
        .unwrap();
        assert_eq!(
            timeline_at(&m, "first KVM_RUN"),
            Some(Duration::from_micros(15529))
        );
        assert_eq!(timeline_at(&m, "guest stopped"), None);
    }

    #[test]
    fn snapshot_judgement() {
        let dir = std::env::temp_dir().join(format!("xtask-snap-judge-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let seen = Some(Duration::from_secs(20));
        let early = "[ 19.3] virtio_blk virtio0: [vda] 65536 512-byte logical blocks\r\n";
        let said = "petrel: snapshot written to /x (3 MiB)\n";

        let v = judge_snapshot(early, said, &Exit::Code(0), &dir, seen);
        assert_eq!(v.failures.len(), 2, "both files missing: {v:?}");
        fs::write(dir.join("state"), b"s").unwrap();
        fs::write(dir.join("mem"), b"m").unwrap();
        assert!(judge_snapshot(early, said, &Exit::Code(0), &dir, seen).passed());

        let late = format!("{early}[ 30.7] Run /init as init process\r\n");
        let v = judge_snapshot(&late, said, &Exit::Code(0), &dir, seen);
        assert!(v.failures[0].contains("too late"), "{v:?}");
        let v = judge_snapshot(early, "", &Exit::Code(1), &dir, seen);
        assert_eq!(v.failures.len(), 2, "{v:?}");
        let v = judge_snapshot("", "", &Exit::Code(0), &dir, None);
        assert!(v.failures[0].contains("never printed"), "{v:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! `petrel-jailer` on the real host: Petrel (built statically) booted in a jail as an
//! unprivileged uid, what `/proc` shows of the jailed VMM, and bad input.
//!
//! The jail tests need root and /dev/kvm: without them they print `SKIPPED` and pass, and
//! with `VMM_REQUIRE_KVM=1` they fail. The bad-input tests run anywhere.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use petrel_tests::kvm_present_or_skip;

const JAILER: &str = env!("CARGO_BIN_EXE_petrel-jailer");
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Whether test `name` can run here: root and /dev/kvm (see `kvm_present_or_skip`).
fn root_and_kvm_or_skip(name: &str) -> bool {
    if !kvm_present_or_skip(name) {
        return false;
    }
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{name}: the jailer needs root and VMM_REQUIRE_KVM=1");
        }
        eprintln!("SKIPPED {name}: the jailer needs root (set VMM_REQUIRE_KVM=1 to fail)");
        return false;
    }
    true
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

/// Petrel linked statically, built once per test run (cargo rebuilds it only when stale).
fn static_petrel() -> &'static Path {
    static PETREL: OnceLock<PathBuf> = OnceLock::new();
    PETREL.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let start = Instant::now();
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "petrel", "--target", TARGET])
            .arg("--target-dir")
            .arg(target_dir())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "the static petrel build failed");
        eprintln!(
            "static petrel: built or found fresh in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        target_dir().join(TARGET).join("release/petrel")
    })
}

/// A uid (and gid of the same number) that no account and no group has, from 123456 up.
fn free_uid() -> u32 {
    let ids = |file: &str| -> Vec<u32> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let (users, groups) = (ids("/etc/passwd"), ids("/etc/group"));
    (123_456..)
        .find(|id| !users.contains(id) && !groups.contains(id))
        .expect("a free uid")
}

/// A jail base directory of its own for one test, removed when dropped.
struct Jail {
    base: PathBuf,
    id: String,
}

impl Jail {
    fn new(test: &str) -> Jail {
        let id = format!("{test}-{}", std::process::id());
        let base = std::env::temp_dir().join(format!("petrel-jailer-{id}"));
        let _ = std::fs::remove_dir_all(&base);
        let jail = Jail { base, id };
        std::fs::create_dir_all(jail.root()).unwrap();
        jail
    }

    /// The chroot: `<base>/petrel/<id>/root`.
    fn root(&self) -> PathBuf {
        self.base.join("petrel").join(&self.id).join("root")
    }

    /// Puts a kernel and a Firecracker config file booting it in the jail, as tools do.
    fn provision(&self, kernel: &[u8]) {
        std::fs::write(self.root().join("kernel.elf"), kernel).unwrap();
        let config = r#"{"boot-source": {"kernel_image_path": "/kernel.elf"},
                         "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
                         "drives": []}"#;
        std::fs::write(self.root().join("vm.json"), config).unwrap();
    }

    /// The jailer's command line for this jail, then `extra` jailer flags, then the VMM's
    /// arguments to boot what [`Jail::provision`] put there.
    fn command(&self, uid: u32, extra: &[&str]) -> Command {
        let mut cmd = Command::new(JAILER);
        cmd.args(["--id", &self.id, "--exec-file"])
            .arg(static_petrel())
            .args(["--uid", &uid.to_string(), "--gid", &uid.to_string()])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args(extra)
            .args(["--", "--config-file", "/vm.json", "--no-api"]);
        cmd
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A 64-bit ELF kernel whose only instruction is `jmp $`, loaded at 2 MiB: a VM that runs
/// until it is killed. Written by the demo guests' ELF writer.
fn spin_kernel() -> Vec<u8> {
    use petrel_demo_guest::elf::{exec_elf, ExecLayout};
    let layout = ExecLayout {
        load_addr: 0x20_0000,
        code_offset: 64 + 56, // right after the ELF header and the one program header
        writable: false,
        mem_size: None,
        pvh_entry: None,
    };
    exec_elf(&layout, &[0xeb, 0xfe]) // jmp $
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `/proc/<pid>/status` field, whitespace-normalised.
fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Whether `pid` has `/dev/kvm` open: the VMM is up in its jail.
fn has_kvm_open(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| target == Path::new("/dev/kvm"))
}

/// Waits until the jailed VMM `pid` has KVM open; `child` is watched for an early exit.
fn wait_for_vm(pid: u32, mut child: Option<&mut Child>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_kvm_open(pid) {
        if let Some(c) = child.as_deref_mut() {
            if let Some(status) = c.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("the jailed VMM ended ({status}) before opening /dev/kvm: {err}");
            }
        }
        assert!(Instant::now() < deadline, "pid {pid} never opened /dev/kvm");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mount point of the cgroup hierarchy a `/proc/<pid>/cgroup` line belongs to.
fn cgroup_line_mount(line: &str) -> Option<PathBuf> {
    let controllers = line.split(':').nth(1)?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        let matches = if controllers.is_empty() {
            f[2] == "cgroup2"
        } else {
            f[2] == "cgroup" && f[3].split(',').any(|o| o == controllers)
        };
        matches.then(|| PathBuf::from(f[1]))
    })
}

#[test]
fn demo_guest_boots_in_the_jail_as_an_unprivileged_uid() {
    let name = "demo_guest_boots_in_the_jail_as_an_unprivileged_uid";
    if !root_and_kvm_or_skip(name) {
        return;
    }
    let jail = Jail::new("demo");
    jail.provision(&petrel_demo_guest::demo_kernel_elf());
    let uid = free_uid();
    let start = Instant::now();
    let out = jail.command(uid, &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}{stdout}",
        out.status,
        stderr_line(&out)
    );
    assert!(
        stdout.contains(petrel_demo_guest::GREETING_LINE),
        "{stdout}"
    );
    assert!(
        stdout.contains(petrel_demo_guest::RESETTING_LINE),
        "{stdout}"
    );
    eprintln!("jailed demo: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    // The jail holds the copy, the nodes and what we put there; the old root is gone.
    let mut entries: Vec<String> = std::fs::read_dir(jail.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["dev", "kernel.elf", "petrel", "vm.json"]);
    let kvm = std::fs::metadata(jail.root().join("dev/kvm")).unwrap();
    assert!(kvm.file_type().is_char_device());
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.mode() & 0o777),
        (uid, uid, 0o600)
    );
    assert_eq!(kvm.rdev(), std::fs::metadata("/dev/kvm").unwrap().rdev());
    assert_eq!(std::fs::metadata(jail.root()).unwrap().uid(), uid);
}

#[test]
fn jailed_vmm_shows_its_uid_chroot_cgroup_and_limits() {
    let name = "jailed_vmm_shows_its_uid_chroot_cgroup_and_limits";
    if !root_and_kvm_or_skip(name) {
        return;
    }
    let jail = Jail::new("spin");
    jail.provision(&spin_kernel());
    let uid = free_uid();
    let parent = format!("petrel-jailer-test-{}", std::process::id());
    let flags = [
        "--cgroup",
        "pids.max=77",
        "--parent-cgroup",
        &parent,
        "--resource-limit",
        "no-file=512",
        "--resource-limit",
        "fsize=1048576",
    ];
    let mut child = jail
        .command(uid, &flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_vm(pid, Some(&mut child));

    let ids = format!("{uid} {uid} {uid} {uid}");
    assert_eq!(status_field(pid, "Uid").as_deref(), Some(ids.as_str()));
    assert_eq!(status_field(pid, "Gid").as_deref(), Some(ids.as_str()));
    assert_eq!(status_field(pid, "Groups").as_deref(), Some(""));
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    // Petrel's main thread confines itself with its seccomp filter (mode 2) once the vCPUs
    // run, a moment after the VM starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status_field(pid, "Seccomp").as_deref() != Some("2") {
        assert!(
            std::time::Instant::now() < deadline,
            "the jailed VMM has no seccomp filter: Seccomp {:?}",
            status_field(pid, "Seccomp")
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // Its root is the chroot (a bind mount of it: same device and inode).
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let chroot = std::fs::metadata(jail.root()).unwrap();
    assert_eq!((root.dev(), root.ino()), (chroot.dev(), chroot.ino()));
    assert!(std::fs::metadata(format!("/proc/{pid}/root/old_root")).is_err());
    // The environment was cleared.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| -> Vec<String> {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(String::from)
            .collect()
    };
    assert_eq!(limit("Max open files"), ["512", "512"]);
    assert_eq!(limit("Max file size"), ["1048576", "1048576"]);

    // Its cgroup is <parent>/<id>, with the setting written (v1 or v2, whichever holds pids).
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/{parent}/{}", jail.id);
    let line = cgroups
        .lines()
        .find(|l| {
            l.ends_with(&want) && {
                let c = l.split(':').nth(1).unwrap_or("");
                c == "pids" || c.is_empty()
            }
        })
        .unwrap_or_else(|| panic!("no pids cgroup {want} in {cgroups}"));
    let mount = cgroup_line_mount(line).expect("the hierarchy's mount");
    let dir = mount.join(&want[1..]);
    let pids_max = std::fs::read_to_string(dir.join("pids.max")).unwrap();
    assert_eq!(pids_max.trim(), "77");

    // A second jailer with the same id finds the jail in use.
    let again = jail.command(uid, &flags).output().unwrap();
    let err = stderr_line(&again);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("invalid --id `{}`: the jail is in use", jail.id)),
        "{err}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    // The emptied cgroup and its parent go (rmdir is how cgroups are removed).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(&dir).is_err() {
        assert!(Instant::now() < deadline, "cannot remove {}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir(mount.join(&parent)).unwrap();
}

#[test]
fn new_pid_ns_daemonize_and_netns_leave_a_pid_file_and_a_detached_vmm() {
    let name = "new_pid_ns_daemonize_and_netns_leave_a_pid_file_and_a_detached_vmm";
    if !root_and_kvm_or_skip(name) {
        return;
    }
    let jail = Jail::new("pidns");
    jail.provision(&spin_kernel());
    let uid = free_uid();
    // A network namespace of its own, held by a bind mount on a file (util-linux's unshare).
    let netns = jail.base.join("netns");
    std::fs::write(&netns, "").unwrap();
    let made = Command::new("unshare")
        .arg(format!("--net={}", netns.display()))
        .arg("true")
        .status()
        .expect("run unshare (util-linux)");
    assert!(made.success(), "unshare --net={} failed", netns.display());
    let netns_arg = netns.display().to_string();
    let out = jail
        .command(uid, &["--new-pid-ns", "--daemonize", "--netns", &netns_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let pid_text = std::fs::read_to_string(jail.root().join("petrel.pid")).unwrap();
    let pid: u32 = pid_text.trim().parse().unwrap();
    wait_for_vm(pid, None);

    // Pid 1 in its own namespace, in a session of its own, stdio on /dev/null.
    assert_eq!(status_field(pid, "NSpid"), Some(format!("{pid} 1")));
    assert_eq!(
        status_field(pid, "Uid"),
        Some(format!("{uid} {uid} {uid} {uid}"))
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let sid: i32 = after_name.split(' ').nth(3).unwrap().parse().unwrap();
    // SAFETY: getsid(0) only reads this process's session id.
    assert_ne!(sid, unsafe { libc::getsid(0) });
    // In the network namespace given.
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(ns.ino(), std::fs::metadata(&netns).unwrap().ino());
    let null = std::fs::metadata("/dev/null").unwrap().rdev();
    for fd in 0..=2 {
        let m = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(m.rdev(), null, "fd {fd}");
    }

    // SAFETY: kill sends a signal to the pid the jailer reported; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_field(pid, "State").is_some_and(|s| !s.starts_with('Z')) {
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let unmounted = Command::new("umount").arg(&netns).status().unwrap();
    assert!(unmounted.success());
}

#[test]
fn uid_0_is_taken_with_a_warning_as_firecracker_does() {
    let name = "uid_0_is_taken_with_a_warning_as_firecracker_does";
    if !root_and_kvm_or_skip(name) {
        return;
    }
    let jail = Jail::new("root");
    jail.provision(&petrel_demo_guest::demo_kernel_elf());
    let out = jail.command(0, &[]).output().unwrap();
    let err = stderr_line(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: --uid 0 --gid 0: the VMM will run as root"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(petrel_demo_guest::RESETTING_LINE),
        "{stdout}"
    );
}

/// Runs the jailer with `args` and checks: exit 2, one line on stderr containing `want`.
fn assert_bad_input(args: &[String], want: &str) {
    let out = Command::new(JAILER).args(args).output().unwrap();
    let err = stderr_line(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("petrel-jailer: "), "{err}");
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("petrel-jailer-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A static ELF is all the checks before the jail look at.
    let fake = dir.join("vmm");
    std::fs::write(&fake, spin_kernel()).unwrap();
    let fake = fake.display().to_string();
    let missing = dir.join("missing").display().to_string();
    // This test binary is linked dynamically, as cargo builds it.
    let dynamic = std::env::current_exe().unwrap().display().to_string();
    // Good values for the required flags, except those `extra` gives itself.
    let with = |exec: &str, extra: &[&str]| -> Vec<String> {
        let required = [("--id", "vm1"), ("--uid", "123456"), ("--gid", "123456")];
        let mut args: Vec<String> = vec!["--exec-file".into(), exec.into()];
        for (flag, value) in required {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            with(&missing, &[]),
            format!("invalid --exec-file `{missing}`: no such file"),
        ),
        (
            with(&dynamic, &[]),
            format!("invalid --exec-file `{dynamic}`: dynamically linked"),
        ),
        (
            with(&fake, &["--id", "../etc"]),
            "invalid --id `../etc`".into(),
        ),
        (
            with(&fake, &["--uid", "root"]),
            "invalid --uid `root`".into(),
        ),
        (
            with(&fake, &["--cgroup", "pids.max"]),
            "invalid --cgroup `pids.max`".into(),
        ),
        (
            with(&fake, &["--resource-limit", "nproc=1"]),
            "invalid --resource-limit `nproc=1`".into(),
        ),
        (
            with(&fake, &["--netns", "/nonexistent/netns"]),
            "invalid --netns `/nonexistent/netns`: no such file".into(),
        ),
        (
            with(&fake, &["--bogus"]),
            "unexpected argument '--bogus'".into(),
        ),
        (vec!["--id".into(), "vm1".into()], "--exec-file".into()),
    ];
    for (args, want) in &cases {
        assert_bad_input(args, want);
    }
    // The dynamic-binary message says how to build Petrel so that the jail can run it.
    let out = Command::new(JAILER)
        .args(with(&dynamic, &[]))
        .output()
        .unwrap();
    assert!(stderr_line(&out).contains("target-feature=+crt-static"));
    std::fs::remove_dir_all(&dir).unwrap();
}

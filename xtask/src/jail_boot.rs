//! The boot-test scenario `jailer-vmlinux-blk` (in the default set): the boot-test kernel,
//! its initramfs and a read-only ext4 disk booted by a statically linked petrel that
//! `petrel-jailer` starts in a jail as an unprivileged uid, as Firecracker's jailer starts
//! Firecracker.
//!
//! Before the run the jail's root, `<target dir>/boot-test/jail/petrel/bt-<pid>/root`, is made
//! and given the kernel, the initramfs (hard links, or copies owned by the uid where the
//! uid could not read the originals) and a fresh disk image owned by the uid. Petrel writes
//! the guest's serial port to its stdout, which the boot test keeps as the serial log, and
//! its `--metrics` into the jail. The run passes as the others do, with the disk seen by
//! the guest (`virtio_blk virtio0: [vda]`) and, on the host afterwards, untouched, and with
//! the metrics file owned by the uid (the VMM made it: it ran as the uid). Then the
//! instance's directory is removed (the jailer makes no cgroup: no `--cgroup` flag is given).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api_boot::DISK_SEEN;
use crate::error::{IoContext, Result};
use crate::host;
use crate::scenario::AfterCheck;
use crate::scenario::{JailBoot, KernelFormat, Scenario, GUEST_CMDLINE};

/// The jailed scenario's name.
pub const JAILER_SCENARIO: &str = "jailer-vmlinux-blk";

/// The jailed scenarios in the default set.
pub const SCENARIOS: &[&str] = &[JAILER_SCENARIO];

/// The first uid (and gid) tried for the VMM; the first one that no account and no group
/// has is taken.
const FIRST_UID: u32 = 123_457;

/// The prefix of the jail ids the boot test uses; the rest is xtask's pid.
const ID_PREFIX: &str = "bt-";

// Where things are inside the jail (relative to its root).
const KERNEL_IN_JAIL: &str = "vmlinux";
const INITRD_IN_JAIL: &str = "initramfs.cpio";
const DISK_IN_JAIL: &str = "disk.ext4";
const METRICS_IN_JAIL: &str = "metrics.json";

impl JailBoot {
    /// The exec file's name, which the jailer uses as a directory name and as the VMM's
    /// path inside the jail.
    fn exec_name(&self) -> String {
        self.petrel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "petrel".into())
    }

    /// The instance's directory, `<base>/<exec name>/<id>`: removed after the run.
    pub fn instance_dir(&self) -> PathBuf {
        self.base.join(self.exec_name()).join(&self.id)
    }

    /// The jail's root, `<instance dir>/root`, where the VMM's files are put beforehand.
    pub fn root(&self) -> PathBuf {
        self.instance_dir().join("root")
    }

    /// The jailer's command line booting `s` (its vCPUs, command line and extra petrel
    /// arguments, which name paths inside the jail) from the files in the jail, with the
    /// serial port on petrel's stdout.
    pub fn command(&self, s: &Scenario) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.args(["--id", &self.id, "--exec-file"])
            .arg(&self.petrel)
            .args([
                "--uid",
                &self.uid.to_string(),
                "--gid",
                &self.uid.to_string(),
            ])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .arg("--")
            .args(["--kernel", &format!("/{KERNEL_IN_JAIL}")]);
        if s.initrd.is_some() {
            cmd.args(["--initrd", &format!("/{INITRD_IN_JAIL}")]);
        }
        cmd.arg("--cmdline")
            .arg(s.cmdline.as_deref().unwrap_or(GUEST_CMDLINE))
            .args([
                "--mem",
                &crate::scenario::guest_mem_arg(),
                "--vcpus",
                &s.vcpus.to_string(),
            ])
            .args(["--serial", "stdio"])
            .args(&s.extra_args);
        cmd
    }

    /// After the run: checks that the VMM ran as the uid (the metrics file it made in the
    /// jail is owned by the uid), then removes the jail. Notes on success, failures
    /// otherwise.
    pub fn finish(&self) -> std::result::Result<Vec<String>, Vec<String>> {
        let metrics = self.root().join(METRICS_IN_JAIL);
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        match fs::metadata(&metrics) {
            Ok(m) if m.uid() == self.uid && m.gid() == self.uid => notes.push(format!(
                "the jailed VMM ran as uid {0} gid {0}: it made /{METRICS_IN_JAIL} as them",
                self.uid
            )),
            Ok(m) => failures.push(format!(
                "the jailed VMM made /{METRICS_IN_JAIL} as uid {} gid {}, not {}",
                m.uid(),
                m.gid(),
                self.uid
            )),
            Err(e) => failures.push(format!("no {}: {e}", metrics.display())),
        }
        match self.remove() {
            Ok(()) => notes.push(format!(
                "removed the jail {}",
                self.instance_dir().display()
            )),
            Err(e) => failures.push(e.to_string()),
        }
        if failures.is_empty() {
            Ok(notes)
        } else {
            Err(failures)
        }
    }

    /// Removes the instance's directory (the jail and what the run left in it).
    fn remove(&self) -> Result<()> {
        let dir = self.instance_dir();
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("removing the jail {}", dir.display()))
            }
            _ => Ok(()),
        }
    }
}

/// The first id from [`FIRST_UID`] up that is neither a uid in `passwd` nor a gid in
/// `group` (the contents of `/etc/passwd` and `/etc/group`).
pub fn free_uid(passwd: &str, group: &str) -> u32 {
    let ids = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let (users, groups) = (ids(passwd), ids(group));
    (FIRST_UID..=u32::MAX)
        .find(|id| !users.contains(id) && !groups.contains(id))
        .unwrap_or(FIRST_UID)
}

/// The pid in a boot-test jail id (`bt-<pid>`), if `id` is one.
fn id_pid(id: &str) -> Option<u32> {
    id.strip_prefix(ID_PREFIX)?.parse().ok()
}

/// Removes the boot-test jails under `exec_dir` (`<base>/<exec name>`) left by xtask runs
/// that no longer run (interrupted, or whose setup failed after making the jail).
fn remove_stale_jails(exec_dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(exec_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = id_pid(&name.to_string_lossy()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let dir = entry.path();
            fs::remove_dir_all(&dir).ctx(|| format!("removing a stale jail {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Puts `source` in the jail as `target`: a hard link when others may read it (the uid
/// then can), else (or where linking fails) a copy owned by `uid`.
pub fn place(source: &Path, target: &Path, uid: u32) -> Result<()> {
    let meta = fs::metadata(source).ctx(|| format!("reading {}", source.display()))?;
    if meta.mode() & 0o004 != 0 && fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    fs::copy(source, target)
        .ctx(|| format!("copying {} to {}", source.display(), target.display()))?;
    std::os::unix::fs::chown(target, Some(uid), Some(uid))
        .ctx(|| format!("giving {} to uid {uid}", target.display()))
}

/// The jailed scenarios named in `names`, booting `vmlinux` with `initrd`: builds (or finds
/// fresh) the static petrel and `petrel-jailer`, and prepares the jail under `<dir>/jail`.
pub fn scenarios(
    names: &[&str],
    vmlinux: &Path,
    initrd: &Path,
    dir: &Path,
) -> Result<Vec<Scenario>> {
    if !names.contains(&JAILER_SCENARIO) {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    let (root, target) = (
        crate::build::workspace_root(),
        crate::build::target_dir(&crate::build::workspace_root()),
    );
    let petrel = crate::build::build_release(&root, &target, "petrel", "petrel", true)?;
    let jailer =
        crate::build::build_release(&root, &target, "petrel-jailer", "petrel-jailer", false)?;
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let jail = JailBoot {
        jailer,
        petrel,
        base: dir.join("jail"),
        id: format!("{ID_PREFIX}{}", std::process::id()),
        uid: free_uid(&read("/etc/passwd"), &read("/etc/group")),
    };
    remove_stale_jails(&jail.base.join(jail.exec_name()))?;
    jail.remove()?;
    let jail_root = jail.root();
    fs::create_dir_all(&jail_root).ctx(|| format!("creating {}", jail_root.display()))?;
    place(vmlinux, &jail_root.join(KERNEL_IN_JAIL), jail.uid)?;
    place(initrd, &jail_root.join(INITRD_IN_JAIL), jail.uid)?;
    let image = jail_root.join(DISK_IN_JAIL);
    crate::virtio_boot::build_rootfs(&image)?;
    std::os::unix::fs::chown(&image, Some(jail.uid), Some(jail.uid))
        .ctx(|| format!("giving {} to uid {}", image.display(), jail.uid))?;
    fs::set_permissions(&image, fs::Permissions::from_mode(0o444))
        .ctx(|| format!("making {} read-only", image.display()))?;

    let mut s = Scenario::new(JAILER_SCENARIO, vmlinux, KernelFormat::Elf, initrd, 1);
    s.extra_args = vec![
        "--disk".into(),
        format!("/{DISK_IN_JAIL},ro"),
        "--metrics".into(),
        format!("/{METRICS_IN_JAIL}"),
    ];
    s.expect = vec![DISK_SEEN];
    s.after = vec![AfterCheck::RootReadOnly {
        image,
        metrics: jail_root.join(METRICS_IN_JAIL),
    }];
    s.jail = Some(jail);
    Ok(vec![s])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> JailBoot {
        JailBoot {
            jailer: "/t/release/petrel-jailer".into(),
            petrel: "/t/x86_64-unknown-linux-gnu/release/petrel".into(),
            base: "/t/boot-test/jail".into(),
            id: "bt-42".into(),
            uid: 123_457,
        }
    }

    #[test]
    fn jailer_command_line() {
        let jail = example();
        let mut s = Scenario::new(
            JAILER_SCENARIO,
            Path::new("/c/vmlinux"),
            KernelFormat::Elf,
            Path::new("/c/i.cpio"),
            1,
        );
        s.extra_args = vec!["--disk".into(), "/disk.ext4,ro".into()];
        assert_eq!(
            host::describe(&jail.command(&s)),
            "/t/release/petrel-jailer --id bt-42 --exec-file \
             /t/x86_64-unknown-linux-gnu/release/petrel --uid 123457 --gid 123457 \
             --chroot-base-dir /t/boot-test/jail -- --kernel /vmlinux --initrd \
             /initramfs.cpio --cmdline 'console=ttyS0 reboot=k panic=1 pci=off' --mem 128M --vcpus 1 \
             --serial stdio --disk /disk.ext4,ro"
        );
        assert_eq!(
            jail.root(),
            Path::new("/t/boot-test/jail/petrel/bt-42/root")
        );
    }

    #[test]
    fn finish_checks_the_owner_and_removes_the_jail() {
        // SAFETY: geteuid and getegid only read this process's credentials.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut jail = example();
        jail.base = std::env::temp_dir().join(format!("xtask-jail-finish-{}", std::process::id()));
        jail.uid = uid;
        fs::create_dir_all(jail.root()).unwrap();
        let failures = jail.finish().unwrap_err();
        assert!(failures[0].contains("metrics.json"), "{failures:?}");
        assert!(!jail.instance_dir().exists(), "removed even so");

        fs::create_dir_all(jail.root()).unwrap();
        fs::write(jail.root().join(METRICS_IN_JAIL), "{}").unwrap();
        let result = jail.finish();
        if gid == uid {
            let notes = result.unwrap();
            assert!(
                notes[0].contains(&format!("uid {uid} gid {uid}")),
                "{notes:?}"
            );
        } else {
            assert!(result.unwrap_err()[0].contains("not"));
        }
        assert!(!jail.instance_dir().exists());
        fs::remove_dir_all(&jail.base).unwrap();
    }

    #[test]
    fn uid_is_one_nobody_has() {
        assert_eq!(free_uid("", ""), FIRST_UID);
        let passwd = "root:x:0:0::/root:/bin/sh\na:x:123457:100::/:/bin/sh\n";
        let group = "b:x:123458:\nbroken line\n";
        assert_eq!(free_uid(passwd, group), 123_459);
    }

    #[test]
    fn only_boot_test_ids_name_a_pid() {
        assert_eq!(id_pid("bt-1234"), Some(1234));
        assert_eq!(id_pid("vm1"), None);
        assert_eq!(id_pid("bt-x"), None);
    }

    #[test]
    fn readable_files_are_linked_others_copied() {
        let dir = std::env::temp_dir().join(format!("xtask-jail-place-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // SAFETY: geteuid only reads this process's credentials.
        let me = unsafe { libc::geteuid() };
        let open = dir.join("open");
        fs::write(&open, b"kernel").unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        place(&open, &dir.join("open-in-jail"), me).unwrap();
        let (a, b) = (
            fs::metadata(&open).unwrap(),
            fs::metadata(dir.join("open-in-jail")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "a hard link");

        let private = dir.join("private");
        fs::write(&private, b"initrd").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        let copy = dir.join("private-in-jail");
        place(&private, &copy, me).unwrap();
        let c = fs::metadata(&copy).unwrap();
        assert_ne!(c.ino(), fs::metadata(&private).unwrap().ino(), "a copy");
        assert_eq!(c.uid(), me);
        assert_eq!(fs::read(&copy).unwrap(), b"initrd");
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Building the jail and starting the VMM in it, step by step, in this order:
//!
//! 1. open what is needed from the host's view: the netns handle, `/dev/null`, the device
//!    numbers of `/dev/kvm` and `/dev/net/tun`;
//! 2. the chroot directory `<base>/<exec name>/<id>/root`, with the exec file copied in (a
//!    copy that is still being executed means the id is in use);
//! 3. the cgroup (see [`crate::cgroup`]) and the resource limits;
//! 4. a new mount namespace, `/` made private recursively, the chroot bind-mounted onto
//!    itself, `pivot_root` into it, the old root unmounted and removed;
//! 5. the device nodes, owned by the VMM's uid/gid, and the jail's `/` given to them (the VMM
//!    creates its API socket there);
//! 6. the network namespace, the new session (`--daemonize`), the new PID namespace
//!    (`--new-pid-ns`: the parent writes the pid file and exits);
//! 7. no supplementary groups, the gid, the uid, `PR_SET_NO_NEW_PRIVS`, and exec of
//!    `/<exec name> --id <id> <VMM args>` with an empty environment.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{chown, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cgroup;
use crate::cli::{JailConfig, Resource};
use crate::error::{JailerError, Result};
use crate::sys;

/// A device node to recreate in the jail: its path (the same inside and outside) and
/// whether the jail is useless without it.
const DEVICES: &[(&str, bool)] = &[("/dev/kvm", true), ("/dev/net/tun", false)];

/// The name of the old root's mount point inside the new root, during `pivot_root`.
const OLD_ROOT: &str = "old_root";

/// Maps an I/O error to a [`JailerError::Step`] described by `what` (built only on failure).
fn step(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> JailerError {
    move |e| JailerError::step(what(), e)
}

/// Builds the jail for `config` and execs the VMM in it. Returns only on failure (or, with
/// `--new-pid-ns`, in the parent once the pid file is written: `Ok(())`).
pub fn run(config: &JailConfig) -> Result<()> {
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailerError::step(
            "petrel-jailer must run as root (it mounts, makes device nodes and changes uid)",
            io::Error::from_raw_os_error(libc::EPERM),
        ));
    }
    if config.uid == 0 || config.gid == 0 {
        // Firecracker's jailer takes uid 0 and Kata Containers passes `--uid 0 --gid 0`, so
        // it is allowed; the jail still applies, but the VMM keeps root's powers over files.
        eprintln!(
            "petrel-jailer: warning: --uid {} --gid {}: the VMM will run as root (group); \
             give an unprivileged uid and gid to drop privileges",
            config.uid, config.gid
        );
    }

    // 1. What must be opened or read from the host's view.
    let netns = config
        .netns
        .as_ref()
        .map(|p| {
            File::open(p).map_err(|e| {
                JailerError::invalid(
                    "--netns",
                    p.display().to_string(),
                    crate::cli::describe_io(&e),
                )
            })
        })
        .transpose()?;
    let dev_null = if config.daemonize {
        Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(step(|| "cannot open /dev/null".into()))?,
        )
    } else {
        None
    };
    let mut devices = Vec::new();
    for &(path, required) in DEVICES {
        match fs::metadata(path) {
            Ok(m) => devices.push((path, m.rdev())),
            Err(e) if required => {
                return Err(JailerError::step(
                    format!("the host's {path} is needed for the jail"),
                    e,
                ))
            }
            Err(_) => {}
        }
    }

    // 2. The chroot directory and the exec file in it.
    let chroot = prepare_chroot(config)?;

    // 3. The cgroup and the resource limits (inherited across exec).
    if config.wants_cgroup() {
        cgroup::setup(config)?;
    }
    for &(resource, value) in &config.rlimits {
        let (name, which) = match resource {
            Resource::FileSize => ("fsize", libc::RLIMIT_FSIZE),
            Resource::NoFile => ("no-file", libc::RLIMIT_NOFILE),
        };
        sys::setrlimit(which, value).map_err(step(|| {
            format!("cannot set --resource-limit {name}={value}")
        }))?;
    }

    // 4. Into the chroot, for good.
    enter_chroot(&chroot)?;

    // 5. Device nodes and ownership, inside the jail.
    for (path, rdev) in devices {
        make_device(Path::new(path), rdev, config.uid, config.gid)?;
    }
    chown("/", Some(config.uid), Some(config.gid))
        .map_err(step(|| "cannot give the jail's / to the uid".into()))?;

    // 6. Network namespace, session, PID namespace.
    if let (Some(fd), Some(path)) = (&netns, &config.netns) {
        sys::setns(fd.as_fd(), libc::CLONE_NEWNET).map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::EINVAL) {
                "not a network namespace".to_string()
            } else {
                format!("cannot join it: {e}")
            };
            JailerError::invalid("--netns", path.display().to_string(), why)
        })?;
    }
    drop(netns);
    if let Some(null) = dev_null {
        sys::setsid().map_err(step(|| {
            "--daemonize: cannot start a new session (is the jailer a process-group leader? \
             start it through setsid or from a program)"
                .into()
        }))?;
        for target in 0..=2 {
            sys::dup2(null.as_fd(), target)
                .map_err(step(|| "--daemonize: cannot redirect stdio".into()))?;
        }
    }
    if config.new_pid_ns {
        sys::unshare(libc::CLONE_NEWPID)
            .map_err(step(|| "cannot make a new PID namespace".into()))?;
        match sys::fork().map_err(step(|| "cannot fork into the new PID namespace".into()))? {
            sys::Forked::Parent(pid) => {
                let pid_file = format!("/{}.pid", config.exec_name);
                fs::write(&pid_file, format!("{pid}\n"))
                    .map_err(step(|| format!("cannot write {pid_file} in the jail")))?;
                return Ok(());
            }
            sys::Forked::Child => {}
        }
    }

    // 7. Credentials and exec.
    sys::drop_privileges(config.uid, config.gid).map_err(step(|| {
        format!("cannot switch to uid {} gid {}", config.uid, config.gid)
    }))?;
    let program = PathBuf::from("/").join(&config.exec_name);
    let mut args: Vec<&OsStr> = vec![
        OsStr::new(&config.exec_name),
        OsStr::new("--id"),
        OsStr::new(&config.id),
    ];
    args.extend(config.vmm_args.iter().map(|a| a.as_os_str()));
    let e = sys::exec_with_empty_env(&program, &args);
    Err(JailerError::step(
        format!("cannot exec {} in the jail", program.display()),
        e,
    ))
}

/// Makes `<base>/<exec name>/<id>/root` (existing directories are reused: tools put the
/// kernel and disks there first) and copies the exec file in as `<exec name>`, mode 0555.
///
/// A copy left by an earlier run is replaced, unless it is being executed (`ETXTBSY` when
/// opened for writing): then a VMM of this id is still running.
fn prepare_chroot(config: &JailConfig) -> Result<PathBuf> {
    let chroot = config.chroot_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&chroot)
        .map_err(step(|| format!("cannot create {}", chroot.display())))?;
    let chroot = chroot
        .canonicalize()
        .map_err(step(|| format!("cannot resolve {}", chroot.display())))?;
    let target = chroot.join(&config.exec_name);
    if fs::symlink_metadata(&target).is_ok() {
        // O_NOFOLLOW: a link planted by an earlier VMM must not send this open elsewhere.
        let busy = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ETXTBSY);
        if busy {
            return Err(JailerError::InUse {
                id: config.id.clone(),
                why: format!("{} is being executed", target.display()),
            });
        }
        fs::remove_file(&target)
            .map_err(step(|| format!("cannot replace {}", target.display())))?;
    }
    let mut source = File::open(&config.exec_file).map_err(step(|| {
        format!("cannot read {}", config.exec_file.display())
    }))?;
    let mut copy = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o555)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .map_err(step(|| format!("cannot create {}", target.display())))?;
    io::copy(&mut source, &mut copy).map_err(step(|| {
        format!(
            "cannot copy {} to {}",
            config.exec_file.display(),
            target.display()
        )
    }))?;
    // The umask may have cut the mode given at creation.
    copy.set_permissions(fs::Permissions::from_mode(0o555))
        .map_err(step(|| format!("cannot chmod {}", target.display())))?;
    Ok(chroot)
}

/// Enters a new mount namespace and makes `chroot` its root with `pivot_root`; the host's
/// file systems are unmounted from it.
fn enter_chroot(chroot: &Path) -> Result<()> {
    sys::unshare(libc::CLONE_NEWNS).map_err(step(|| "cannot make a new mount namespace".into()))?;
    // Nothing done in this namespace may propagate back to the host's.
    sys::mount(None, Path::new("/"), libc::MS_PRIVATE | libc::MS_REC)
        .map_err(step(|| "cannot make / private in the new namespace".into()))?;
    // pivot_root needs the new root to be a mount point.
    sys::mount(Some(chroot), chroot, libc::MS_BIND)
        .map_err(step(|| format!("cannot bind-mount {}", chroot.display())))?;
    std::env::set_current_dir(chroot)
        .map_err(step(|| format!("cannot enter {}", chroot.display())))?;
    let old_root = Path::new(OLD_ROOT);
    if fs::symlink_metadata(old_root).is_ok() {
        // Left by a jailer that died here; an empty directory is all it can be.
        fs::remove_dir(old_root).map_err(step(|| format!("cannot remove a stale {OLD_ROOT}")))?;
    }
    fs::create_dir(old_root).map_err(step(|| format!("cannot create {OLD_ROOT} in the jail")))?;
    sys::pivot_root(Path::new("."), old_root).map_err(step(|| {
        format!("cannot pivot_root into {}", chroot.display())
    }))?;
    let old_root = Path::new("/").join(OLD_ROOT);
    sys::umount_detach(&old_root).map_err(step(|| "cannot unmount the old root".into()))?;
    fs::remove_dir(&old_root).map_err(step(|| "cannot remove the old root".into()))?;
    std::os::unix::fs::chroot(".").map_err(step(|| "cannot chroot into the jail".into()))?;
    std::env::set_current_dir("/").map_err(step(|| "cannot enter the jail's /".into()))?;
    Ok(())
}

/// Makes the character device `path` (inside the jail) with the host's device number
/// `rdev`, mode 0600, owned by `uid`:`gid`. Whatever an earlier run left there is replaced.
fn make_device(path: &Path, rdev: u64, uid: u32, gid: u32) -> Result<()> {
    let shown = || path.display().to_string();
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(step(|| {
                format!("cannot create {} in the jail", dir.display())
            }))?;
    }
    if let Ok(m) = fs::symlink_metadata(path) {
        let removed = if m.is_dir() {
            fs::remove_dir(path)
        } else {
            fs::remove_file(path)
        };
        removed.map_err(step(|| format!("cannot replace {} in the jail", shown())))?;
    }
    sys::mknod_char(path, 0o600, rdev)
        .map_err(step(|| format!("cannot make {} in the jail", shown())))?;
    chown(path, Some(uid), Some(gid))
        .map_err(step(|| format!("cannot give {} to the uid", shown())))?;
    Ok(())
}

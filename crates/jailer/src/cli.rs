//! The command line (Firecracker's jailer flags), checked into a [`JailConfig`].
//!
//! Everything that can be judged without privileges is judged here, before the jailer
//! touches the host, so that bad input is one line and exit 2 wherever it is run.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

use crate::elf::check_static;
use crate::error::{JailerError, Result};

/// The longest instance id (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;
/// `no-file` when no `--resource-limit no-file=N` is given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// petrel-jailer: starts a VMM in a jail (chroot with pivot_root, its own mount namespace,
/// a cgroup, resource limits, an unprivileged uid/gid), as Firecracker's jailer does.
///
/// petrel-jailer --id ID --exec-file PATH --uid UID --gid GID [options] [-- VMM ARGS...]
///
/// The VMM runs as `/<exec-file name> --id ID VMM ARGS...` inside
/// <chroot-base-dir>/<exec-file name>/<id>/root, which must hold whatever else it needs.
#[derive(Debug, Parser)]
#[command(name = "petrel-jailer", version, verbatim_doc_comment)]
pub struct Cli {
    /// The instance id: letters, digits and `-`, at most 64.
    #[arg(long, value_name = "ID")]
    id: String,
    /// The VMM binary (statically linked); it is copied into the jail.
    #[arg(long, value_name = "PATH")]
    exec_file: PathBuf,
    /// The uid the VMM runs as.
    #[arg(long, value_name = "UID")]
    uid: String,
    /// The gid the VMM runs as.
    #[arg(long, value_name = "GID")]
    gid: String,
    /// Where jails are built.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    chroot_base_dir: PathBuf,
    /// A network namespace to join (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Start a new session and send stdin, stdout and stderr to /dev/null.
    #[arg(long)]
    daemonize: bool,
    /// Run the VMM as pid 1 of a new PID namespace; its pid (as the host sees it) goes to
    /// <exec-file name>.pid in the jail.
    #[arg(long)]
    new_pid_ns: bool,
    /// The cgroup hierarchy: 1 or 2 (default: 2 where it offers the controllers asked for,
    /// else 1).
    #[arg(long, value_name = "1|2")]
    cgroup_version: Option<String>,
    /// A cgroup setting, FILE=VALUE (e.g. pids.max=64); repeatable.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    cgroups: Vec<String>,
    /// The cgroup under which the instance's cgroup <id> is made (default: the exec-file name).
    #[arg(long, value_name = "PATH")]
    parent_cgroup: Option<String>,
    /// A resource limit, RESOURCE=VALUE with RESOURCE fsize or no-file; repeatable.
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE")]
    resource_limits: Vec<String>,
    /// The VMM's own arguments, after `--`.
    #[arg(last = true, value_name = "VMM ARGS")]
    vmm_args: Vec<OsString>,
}

/// Which cgroup hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The controller, the part of the file name before the first `.` (`pids`).
    pub controller: String,
    /// The file (`pids.max`).
    pub file: String,
    /// What is written to it.
    pub value: String,
}

/// The resources `--resource-limit` can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `fsize`: RLIMIT_FSIZE, the largest file the process may write, in bytes.
    FileSize,
    /// `no-file`: RLIMIT_NOFILE, one more than the highest descriptor number it may open.
    NoFile,
}

/// Everything the jailer was asked to do, checked.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The instance id.
    pub id: String,
    /// The exec file, as given.
    pub exec_file: PathBuf,
    /// Its file name: the jail's directory and the binary's name inside it.
    pub exec_name: String,
    /// The VMM's uid.
    pub uid: u32,
    /// The VMM's gid.
    pub gid: u32,
    /// The base directory of all jails (absolute).
    pub chroot_base: PathBuf,
    /// The network namespace to join.
    pub netns: Option<PathBuf>,
    /// `--daemonize`.
    pub daemonize: bool,
    /// `--new-pid-ns`.
    pub new_pid_ns: bool,
    /// `--cgroup-version`, when given.
    pub cgroup_version: Option<CgroupVersion>,
    /// `--cgroup` settings, in order.
    pub cgroups: Vec<CgroupSetting>,
    /// The parent cgroup, relative to a hierarchy's root.
    pub parent_cgroup: PathBuf,
    /// Whether `--parent-cgroup` was given (a cgroup is made even without settings).
    pub parent_cgroup_given: bool,
    /// Resource limits (soft and hard), `no-file` always included.
    pub rlimits: Vec<(Resource, u64)>,
    /// The VMM's arguments after `--id ID`.
    pub vmm_args: Vec<OsString>,
}

impl JailConfig {
    /// `<base>/<exec name>/<id>/root`.
    pub fn chroot_dir(&self) -> PathBuf {
        self.chroot_base
            .join(&self.exec_name)
            .join(&self.id)
            .join("root")
    }

    /// Whether a cgroup is to be made for the instance.
    pub fn wants_cgroup(&self) -> bool {
        !self.cgroups.is_empty() || self.parent_cgroup_given
    }
}

/// Parses `args` (with the program name first). Help and version requests come back as
/// `Err(Ok(text))`, everything else wrong as `Err(Err(error))` with one line.
pub fn parse<I, T>(args: I) -> std::result::Result<Cli, std::result::Result<String, JailerError>>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
            Ok(e.to_string())
        }
        _ => Err(JailerError::Usage(one_line(&e.to_string()))),
    })
}

/// clap's message without its usage block, on one line.
fn one_line(message: &str) -> String {
    let body = message.split("\n\nUsage:").next().unwrap_or(message);
    let body = body.strip_prefix("error: ").unwrap_or(body);
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_id(id: &str) -> Result<String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(id.to_string())
    } else {
        Err(JailerError::invalid(
            "--id",
            id,
            format!("expected 1 to {MAX_ID_LEN} letters, digits or `-`"),
        ))
    }
}

fn parse_u32(flag: &'static str, value: &str) -> Result<u32> {
    value
        .parse::<u32>()
        .map_err(|_| JailerError::invalid(flag, value, "expected a number from 0 to 4294967295"))
}

/// Checks the exec file: a regular file, a 64-bit ELF executable without a program
/// interpreter. Returns its file name.
fn check_exec_file(path: &Path) -> Result<String> {
    let shown = path.display().to_string();
    let bad = |why: String| JailerError::invalid("--exec-file", shown.clone(), why);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .ok_or_else(|| bad("expected a path ending in a file name (UTF-8)".into()))?
        .to_string();
    let meta = std::fs::metadata(path).map_err(|e| bad(describe_io(&e)))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut file = File::open(path).map_err(|e| bad(describe_io(&e)))?;
    check_static(&mut file).map_err(|why| bad(why.to_string()))?;
    Ok(name)
}

/// An I/O error in lower case, without the `(os error N)` suffix, for `why`.
pub fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn parse_cgroup(setting: &str) -> Result<CgroupSetting> {
    let bad = |why: &str| JailerError::invalid("--cgroup", setting, why);
    let (file, value) = setting
        .split_once('=')
        .ok_or_else(|| bad("expected FILE=VALUE, e.g. pids.max=64"))?;
    let (controller, rest) = file
        .split_once('.')
        .ok_or_else(|| bad("expected a file named CONTROLLER.NAME, e.g. pids.max"))?;
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    if !name_ok(controller) || controller.contains('.') || !name_ok(rest) {
        return Err(bad(
            "the file must be CONTROLLER.NAME of letters, digits, `_` and `.`",
        ));
    }
    if value.is_empty() || value.contains('\n') {
        return Err(bad("the value must be one non-empty line"));
    }
    Ok(CgroupSetting {
        controller: controller.to_string(),
        file: file.to_string(),
        value: value.to_string(),
    })
}

fn parse_parent_cgroup(parent: &str) -> Result<PathBuf> {
    let path = Path::new(parent);
    let ok = !parent.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(JailerError::invalid(
            "--parent-cgroup",
            parent,
            "expected a relative path without `..`",
        ))
    }
}

fn parse_resource_limit(limit: &str) -> Result<(Resource, u64)> {
    let bad = |why: &str| JailerError::invalid("--resource-limit", limit, why);
    let (name, value) = limit
        .split_once('=')
        .ok_or_else(|| bad("expected RESOURCE=VALUE, e.g. no-file=1024"))?;
    let resource = match name {
        "fsize" => Resource::FileSize,
        "no-file" => Resource::NoFile,
        _ => return Err(bad("the resource must be fsize or no-file")),
    };
    let value = value
        .parse::<u64>()
        .map_err(|_| bad("the value must be a number"))?;
    Ok((resource, value))
}

impl Cli {
    /// Checks every flag and the exec file. Nothing on the host is changed.
    pub fn into_config(self) -> Result<JailConfig> {
        let id = parse_id(&self.id)?;
        let uid = parse_u32("--uid", &self.uid)?;
        let gid = parse_u32("--gid", &self.gid)?;
        let exec_name = check_exec_file(&self.exec_file)?;
        let base_shown = self.chroot_base_dir.display().to_string();
        if !self.chroot_base_dir.is_absolute() {
            return Err(JailerError::invalid(
                "--chroot-base-dir",
                base_shown,
                "expected an absolute path",
            ));
        }
        if let Some(netns) = &self.netns {
            std::fs::metadata(netns).map_err(|e| {
                JailerError::invalid("--netns", netns.display().to_string(), describe_io(&e))
            })?;
        }
        let cgroup_version = match self.cgroup_version.as_deref() {
            None => None,
            Some("1") => Some(CgroupVersion::V1),
            Some("2") => Some(CgroupVersion::V2),
            Some(other) => {
                return Err(JailerError::invalid(
                    "--cgroup-version",
                    other,
                    "expected 1 or 2",
                ))
            }
        };
        let cgroups = self
            .cgroups
            .iter()
            .map(|c| parse_cgroup(c))
            .collect::<Result<Vec<_>>>()?;
        let parent_cgroup_given = self.parent_cgroup.is_some();
        let parent_cgroup = match &self.parent_cgroup {
            Some(p) => parse_parent_cgroup(p)?,
            None => PathBuf::from(&exec_name),
        };
        let mut rlimits = Vec::new();
        for limit in &self.resource_limits {
            let (resource, value) = parse_resource_limit(limit)?;
            rlimits.retain(|(r, _)| *r != resource);
            rlimits.push((resource, value));
        }
        if !rlimits.iter().any(|(r, _)| *r == Resource::NoFile) {
            rlimits.push((Resource::NoFile, DEFAULT_NO_FILE));
        }
        Ok(JailConfig {
            id,
            exec_file: self.exec_file,
            exec_name,
            uid,
            gid,
            chroot_base: self.chroot_base_dir,
            netns: self.netns,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroup_version,
            cgroups,
            parent_cgroup,
            parent_cgroup_given,
            rlimits,
            vmm_args: self.vmm_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A static "executable": an ELF header with one PT_LOAD and no PT_INTERP.
    fn static_exec(dir: &Path) -> PathBuf {
        use petrel_demo_guest::elf::{exec_elf, ExecLayout};
        let layout = ExecLayout {
            load_addr: 0x40_0000,
            code_offset: 64 + 56,
            writable: false,
            mem_size: None,
            pvh_entry: None,
        };
        let b = exec_elf(&layout, &[0xeb, 0xfe]);
        let path = dir.join("vmm");
        std::fs::write(&path, b).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("petrel-jailer-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(extra: &[&str]) -> Result<JailConfig> {
        // One directory per call: tests run in parallel.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = temp_dir(&format!("cfg{n}"));
        let exec = static_exec(&dir);
        let mut args = vec![
            "petrel-jailer".to_string(),
            "--id".into(),
            "vm-1".into(),
            "--exec-file".into(),
            exec.display().to_string(),
            "--uid".into(),
            "123".into(),
            "--gid".into(),
            "100".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let result = match parse(args) {
            Ok(cli) => cli.into_config(),
            Err(Err(e)) => Err(e),
            Err(Ok(text)) => panic!("help: {text}"),
        };
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn firecracker_flags_are_taken() {
        let c = config(&[
            "--chroot-base-dir",
            "/tmp/jails",
            "--daemonize",
            "--new-pid-ns",
            "--cgroup-version",
            "2",
            "--cgroup",
            "pids.max=64",
            "--cgroup",
            "cpuset.cpus=0-1",
            "--parent-cgroup",
            "vms/petrel",
            "--resource-limit",
            "fsize=1000",
            "--",
            "--config-file",
            "/vm.json",
        ])
        .unwrap();
        assert_eq!((c.uid, c.gid, c.id.as_str()), (123, 100, "vm-1"));
        assert_eq!(c.exec_name, "vmm");
        assert_eq!(c.chroot_dir(), Path::new("/tmp/jails/vmm/vm-1/root"));
        assert!(c.daemonize && c.new_pid_ns);
        assert_eq!(c.cgroup_version, Some(CgroupVersion::V2));
        assert_eq!(c.cgroups[1].controller, "cpuset");
        assert_eq!(c.cgroups[1].value, "0-1");
        assert_eq!(c.parent_cgroup, Path::new("vms/petrel"));
        assert_eq!(
            c.rlimits,
            vec![
                (Resource::FileSize, 1000),
                (Resource::NoFile, DEFAULT_NO_FILE)
            ]
        );
        assert_eq!(
            c.vmm_args,
            vec![OsString::from("--config-file"), "/vm.json".into()]
        );
    }

    #[test]
    fn defaults_follow_firecracker() {
        let c = config(&[]).unwrap();
        assert_eq!(c.chroot_base, Path::new("/srv/jailer"));
        assert_eq!(c.parent_cgroup, Path::new("vmm"));
        assert!(!c.wants_cgroup());
        assert_eq!(c.rlimits, vec![(Resource::NoFile, DEFAULT_NO_FILE)]);
        assert!(c.vmm_args.is_empty());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--cgroup", "pids.max"], "invalid --cgroup `pids.max`"),
            (&["--cgroup", "../x=1"], "invalid --cgroup `../x=1`"),
            (&["--cgroup", "pids.max=a\nb"], "invalid --cgroup"),
            (&["--cgroup-version", "3"], "invalid --cgroup-version `3`"),
            (
                &["--parent-cgroup", "../up"],
                "invalid --parent-cgroup `../up`",
            ),
            (
                &["--parent-cgroup", "/abs"],
                "invalid --parent-cgroup `/abs`",
            ),
            (
                &["--resource-limit", "nproc=1"],
                "invalid --resource-limit `nproc=1`",
            ),
            (
                &["--resource-limit", "fsize=x"],
                "invalid --resource-limit `fsize=x`",
            ),
            (
                &["--chroot-base-dir", "jails"],
                "invalid --chroot-base-dir `jails`",
            ),
            (
                &["--netns", "/nonexistent/ns"],
                "invalid --netns `/nonexistent/ns`: no such file",
            ),
        ];
        for (args, want) in cases {
            let e = config(args).unwrap_err();
            assert!(e.to_string().starts_with(want), "{args:?}: {e}");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn ids_and_ids_numbers_are_checked() {
        assert!(parse_id("551e7604-e35c-42b3-b825-416853441234").is_ok());
        for bad in ["", "a/b", "a b", "..", &"x".repeat(65)] {
            let e = parse_id(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid --id"), "{e}");
        }
        assert_eq!(parse_u32("--uid", "0").unwrap(), 0);
        assert!(parse_u32("--uid", "-1").is_err());
        assert!(parse_u32("--gid", "4294967296").is_err());
    }

    #[test]
    fn exec_file_must_be_a_static_elf() {
        let dir = temp_dir("exec");
        let e = check_exec_file(&dir.join("missing")).unwrap_err();
        assert!(e.to_string().ends_with("`: no such file"), "{e}");
        let e = check_exec_file(&dir).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let e = check_exec_file(&script).unwrap_err();
        assert!(e.to_string().contains("not a 64-bit ELF"), "{e}");
        assert_eq!(check_exec_file(&static_exec(&dir)).unwrap(), "vmm");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn usage_errors_are_one_line() {
        let Err(Err(e)) = parse(["petrel-jailer", "--id", "x"]) else {
            panic!("parsed")
        };
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("--exec-file"), "{text}");
        assert_eq!(e.exit_code(), 2);
        assert!(matches!(parse(["petrel-jailer", "--help"]), Err(Ok(_))));
    }
}

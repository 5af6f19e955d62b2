//! The instance's cgroup: made under `<hierarchy root>/<parent>/<id>`, its settings written,
//! the jailer moved in (the VMM inherits it across exec).
//!
//! Hierarchies are found in `/proc/self/mounts`: the `cgroup2` mount (at `/sys/fs/cgroup` on
//! unified hosts, `/sys/fs/cgroup/unified` on hybrid ones) and the v1 mounts, one or more
//! controllers each. Without `--cgroup-version`, v2 is used when its root offers every
//! controller asked for, else v1.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cli::{CgroupSetting, CgroupVersion, JailConfig};
use crate::error::{JailerError, Result};

/// The cgroup mounts of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The `cgroup2` mount point, if any.
    pub v2: Option<PathBuf>,
    /// v1 mount points, each with its mount options (controller names among them).
    pub v1: Vec<(PathBuf, Vec<String>)>,
}

impl Mounts {
    /// Parses the text of `/proc/self/mounts`.
    pub fn parse(mounts: &str) -> Mounts {
        let mut found = Mounts::default();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, point, fstype, options, ..] = fields[..] else {
                continue;
            };
            // Mount points with spaces are written as \040; cgroup mounts have none.
            let point = PathBuf::from(point);
            match fstype {
                "cgroup2" if found.v2.is_none() => found.v2 = Some(point),
                "cgroup" => {
                    let opts = options.split(',').map(str::to_string).collect();
                    found.v1.push((point, opts));
                }
                _ => {}
            }
        }
        found
    }

    /// The v1 mount point of `controller`.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, opts)| opts.iter().any(|o| o == controller))
            .map(|(p, _)| p.as_path())
    }
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_string())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value)
        .map_err(|e| JailerError::step(format!("cannot write `{value}` to {}", path.display()), e))
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path)
        .map_err(|e| JailerError::step(format!("cannot create cgroup {}", path.display()), e))
}

/// The controllers the v2 root at `root` offers.
fn v2_controllers(root: &Path) -> Vec<String> {
    read_trimmed(&root.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Which hierarchy to use for `settings`; a hierarchy that cannot hold them is bad input,
/// named by the flag that asked for it.
pub fn choose_version(
    mounts: &Mounts,
    asked: Option<CgroupVersion>,
    settings: &[CgroupSetting],
) -> Result<CgroupVersion> {
    let v2_lacks = |root: &Path| {
        let offered = v2_controllers(root);
        settings.iter().find(|s| !offered.contains(&s.controller))
    };
    let v1_lacks = || {
        settings
            .iter()
            .find(|s| mounts.v1_mount(&s.controller).is_none())
    };
    let version_error = |v: &str, why: String| JailerError::invalid("--cgroup-version", v, why);
    match asked {
        Some(CgroupVersion::V2) => match &mounts.v2 {
            None => Err(version_error(
                "2",
                "no cgroup2 file system is mounted".into(),
            )),
            Some(root) => match v2_lacks(root) {
                Some(s) => Err(version_error(
                    "2",
                    format!(
                        "the hierarchy at {} does not offer the {} controller (try \
                         --cgroup-version 1)",
                        root.display(),
                        s.controller
                    ),
                )),
                None => Ok(CgroupVersion::V2),
            },
        },
        Some(CgroupVersion::V1) => match v1_lacks() {
            Some(s) => Err(version_error(
                "1",
                format!(
                    "no cgroup v1 hierarchy mounts the {} controller (try --cgroup-version 2)",
                    s.controller
                ),
            )),
            None => Ok(CgroupVersion::V1),
        },
        None => {
            if let Some(root) = &mounts.v2 {
                if v2_lacks(root).is_none() && (!settings.is_empty() || mounts.v1.is_empty()) {
                    return Ok(CgroupVersion::V2);
                }
            }
            match v1_lacks() {
                None if !mounts.v1.is_empty() => Ok(CgroupVersion::V1),
                Some(s) => Err(JailerError::invalid(
                    "--cgroup",
                    format!("{}={}", s.file, s.value),
                    format!(
                        "no mounted cgroup hierarchy offers the {} controller",
                        s.controller
                    ),
                )),
                None => Err(JailerError::invalid(
                    "--parent-cgroup",
                    "",
                    "no cgroup hierarchy is mounted",
                )),
            }
        }
    }
}

/// Whether the cgroup at `dir` has processes in it.
fn populated(dir: &Path) -> bool {
    read_trimmed(&dir.join("cgroup.procs")).is_ok_and(|s| !s.is_empty())
}

/// Makes the instance's cgroup(s), writes the settings and moves this process in. Returns
/// the directories made, for messages and tests.
pub fn setup(config: &JailConfig) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| JailerError::step("cannot read /proc/self/mounts", e))?;
    let mounts = Mounts::parse(&text);
    let version = choose_version(&mounts, config.cgroup_version, &config.cgroups)?;
    let relative = config.parent_cgroup.join(&config.id);
    let pid = std::process::id().to_string();
    let mut dirs = Vec::new();
    match version {
        CgroupVersion::V2 => {
            let root = mounts.v2.clone().expect("chosen only when mounted");
            let dir = root.join(&relative);
            check_free(config, &dir)?;
            // Each controller must be enabled in the subtree_control of every ancestor.
            let mut controllers: Vec<&str> = config
                .cgroups
                .iter()
                .map(|s| s.controller.as_str())
                .collect();
            controllers.sort_unstable();
            controllers.dedup();
            let mut level = root.clone();
            for part in config.parent_cgroup.components() {
                enable(&level, &controllers)?;
                level.push(part);
                make_dir(&level)?;
            }
            enable(&level, &controllers)?;
            make_dir(&dir)?;
            for s in &config.cgroups {
                write_file(&dir.join(&s.file), &s.value)?;
            }
            write_file(&dir.join("cgroup.procs"), &pid)?;
            dirs.push(dir);
        }
        CgroupVersion::V1 => {
            for s in &config.cgroups {
                let mount = mounts
                    .v1_mount(&s.controller)
                    .expect("checked by choose_version");
                let dir = mount.join(&relative);
                if !dirs.contains(&dir) {
                    check_free(config, &dir)?;
                    make_v1_dir(mount, &relative, s.controller == "cpuset")?;
                    dirs.push(dir.clone());
                }
                write_file(&dir.join(&s.file), &s.value)?;
            }
            for dir in &dirs {
                write_file(&dir.join("cgroup.procs"), &pid)?;
            }
        }
    }
    Ok(dirs)
}

/// An instance cgroup that still holds processes means the id is in use.
fn check_free(config: &JailConfig, dir: &Path) -> Result<()> {
    if populated(dir) {
        return Err(JailerError::InUse {
            id: config.id.clone(),
            why: format!("its cgroup {} still has processes", dir.display()),
        });
    }
    Ok(())
}

/// Writes `+controller` for each controller into `<dir>/cgroup.subtree_control`, skipping
/// those already enabled.
fn enable(dir: &Path, controllers: &[&str]) -> Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = read_trimmed(&path).unwrap_or_default();
    for c in controllers {
        if !enabled.split_whitespace().any(|e| e == *c) {
            write_file(&path, &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Makes `<mount>/<relative>` level by level. With `cpuset`, each new level gets its
/// parent's `cpuset.cpus` and `cpuset.mems` (v1 leaves them empty, and a cpuset with no CPUs
/// or memory nodes takes no tasks).
fn make_v1_dir(mount: &Path, relative: &Path, cpuset: bool) -> Result<()> {
    let mut level = mount.to_path_buf();
    for part in relative.components() {
        let parent = level.clone();
        level.push(part);
        make_dir(&level)?;
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let mine = read_trimmed(&level.join(file)).unwrap_or_default();
                if mine.is_empty() {
                    let theirs = read_trimmed(&parent.join(file)).map_err(|e| {
                        JailerError::step(format!("cannot read {}", parent.join(file).display()), e)
                    })?;
                    write_file(&level.join(file), &theirs)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    fn setting(file: &str) -> CgroupSetting {
        CgroupSetting {
            controller: file.split('.').next().unwrap().into(),
            file: file.into(),
            value: "1".into(),
        }
    }

    #[test]
    fn hybrid_mounts_are_found() {
        let m = Mounts::parse(HYBRID);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1.len(), 4);
        assert_eq!(m.v1_mount("pids"), Some(Path::new("/sys/fs/cgroup/pids")));
        assert_eq!(m.v1_mount("memory"), None);
        // `name=systemd` is not a controller called `systemd`.
        assert_eq!(m.v1_mount("systemd"), None);
    }

    #[test]
    fn unified_mount_is_found() {
        let m = Mounts::parse("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n");
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(m.v1.is_empty());
    }

    #[test]
    fn version_follows_where_the_controllers_are() {
        // The v2 root here is a path with no cgroup.controllers: it offers nothing.
        let m = Mounts::parse(
            HYBRID
                .replace("/sys/fs/cgroup/unified", "/nonexistent")
                .as_str(),
        );
        let pids = [setting("pids.max")];
        assert_eq!(choose_version(&m, None, &pids).unwrap(), CgroupVersion::V1);
        assert_eq!(
            choose_version(&m, Some(CgroupVersion::V1), &pids).unwrap(),
            CgroupVersion::V1
        );
        let e = choose_version(&m, Some(CgroupVersion::V2), &pids).unwrap_err();
        assert!(
            e.to_string().contains("does not offer the pids controller"),
            "{e}"
        );
        let e = choose_version(&m, None, &[setting("memory.max")]).unwrap_err();
        assert!(e.to_string().contains("memory controller"), "{e}");
        let none = Mounts::default();
        let e = choose_version(&none, Some(CgroupVersion::V2), &pids).unwrap_err();
        assert!(e.to_string().contains("no cgroup2"), "{e}");
        assert_eq!(e.exit_code(), crate::error::EXIT_BAD_INPUT);
    }
}

//! Boot-test scenarios configured the way Firecracker is: the boot-test kernel, its
//! initramfs and a virtio-blk drive given to `petrel --api-sock` with plain HTTP requests
//! over its Unix socket (`api-vmlinux-blk`, in the default set), or in a Firecracker config
//! file to `petrel --config-file FILE --no-api` (`config-file-vmlinux-blk`, run only when
//! named). Petrel then writes the guest's serial port to its stdout, which the boot test
//! keeps as the serial log.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, IoContext, Result};
use crate::fcapi::ApiClient;
use crate::host;
use crate::scenario::{FcBoot, KernelFormat, Scenario, Via, GUEST_CMDLINE};

/// The scenario configured over the API socket (in the default set).
pub const API_SCENARIO: &str = "api-vmlinux-blk";

/// The scenario configured by a config file (run only when named with `--only`).
pub const CONFIG_FILE_SCENARIO: &str = "config-file-vmlinux-blk";

/// The Firecracker-style scenarios in the default set.
pub const SCENARIOS: &[&str] = &[API_SCENARIO];

/// The Firecracker-style scenarios that run only when named.
pub const OPT_IN_SCENARIOS: &[&str] = &[CONFIG_FILE_SCENARIO];

/// What the kernel prints when virtio-blk found the first disk (followed by its size).
pub const DISK_SEEN: &str = "virtio_blk virtio0: [vda]";

/// How long petrel may take to accept on its API socket.
const SOCKET_LIMIT: Duration = Duration::from_secs(10);

impl FcBoot {
    /// The configuration as a Firecracker config file.
    pub fn config_file(&self) -> Value {
        json!({
            "boot-source": self.boot_source,
            "machine-config": self.machine_config,
            "drives": self.drives,
        })
    }

    /// The API requests that configure and start the VM, in order: (path, JSON body), all
    /// `PUT`s answered 204.
    pub fn requests(&self) -> Vec<(String, String)> {
        let mut r = vec![
            ("/boot-source".to_owned(), self.boot_source.to_string()),
            (
                "/machine-config".to_owned(),
                self.machine_config.to_string(),
            ),
        ];
        for d in &self.drives {
            let id = d["drive_id"].as_str().unwrap_or_default();
            r.push((format!("/drives/{id}"), d.to_string()));
        }
        r.push((
            "/actions".to_owned(),
            json!({ "action_type": "InstanceStart" }).to_string(),
        ));
        r
    }

    /// petrel's arguments for this configuration.
    pub fn args(&self) -> Vec<String> {
        match &self.via {
            Via::Api { socket } => vec!["--api-sock".into(), socket.display().to_string()],
            Via::ConfigFile { path } => vec![
                "--config-file".into(),
                path.display().to_string(),
                "--no-api".into(),
            ],
        }
    }

    /// Before the VMM starts: removes a socket left from an earlier run.
    pub fn prepare(&self) {
        if let Via::Api { socket } = &self.via {
            let _ = fs::remove_file(socket);
        }
    }

    /// After the VMM started (at `start`): sends the requests over the API socket, each of
    /// which must be answered 204; `alive` says whether the VMM still runs. Returns what was
    /// done, for the scenario's notes. Nothing to do with a config file.
    pub fn configure(&self, start: Instant, alive: impl FnMut() -> bool) -> Result<Vec<String>> {
        let Via::Api { socket } = &self.via else {
            return Ok(vec!["configured by the config file".into()]);
        };
        let (mut client, accepted) =
            ApiClient::connect_when_ready(socket, start, SOCKET_LIMIT, alive)?;
        client.set_timeout(Some(SOCKET_LIMIT))?;
        let mut done = Vec::new();
        for (path, body) in self.requests() {
            client.expect("PUT", &path, Some(&body), 204)?;
            done.push(format!("PUT {path}"));
        }
        let _ = fs::remove_file(socket);
        Ok(vec![format!(
            "configured over the API socket (accepting {:.1} ms after the spawn): {}, each \
             answered 204",
            accepted.as_secs_f64() * 1e3,
            done.join(", ")
        )])
    }
}

/// The Firecracker-style scenarios named in `names`: `vmlinux` with `initrd` and, as a
/// second (not root) drive read-only, a fresh ext4 image in `dir`.
pub fn scenarios(
    names: &[&str],
    vmlinux: &Path,
    initrd: &Path,
    dir: &Path,
) -> Result<Vec<Scenario>> {
    let wanted: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| SCENARIOS.contains(n) || OPT_IN_SCENARIOS.contains(n))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for name in wanted {
        let image = dir.join(format!("{name}.ext4"));
        crate::virtio_boot::build_rootfs(&image)?;
        let via = if name == API_SCENARIO {
            Via::Api {
                socket: std::env::temp_dir()
                    .join(format!("petrel-boot-test-{}.sock", std::process::id())),
            }
        } else {
            Via::ConfigFile {
                path: dir.join(format!("{name}.json")),
            }
        };
        let fc = fc_boot(via, vmlinux, initrd, &image);
        if let Via::ConfigFile { path } = &fc.via {
            let text = serde_json::to_string_pretty(&fc.config_file())
                .map_err(|e| Error::Other(format!("encoding {}: {e}", path.display())))?;
            fs::write(path, text + "\n").ctx(|| format!("writing {}", path.display()))?;
        }
        let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, initrd, 1);
        s.expect = vec![DISK_SEEN];
        s.fc = Some(fc);
        out.push(s);
    }
    Ok(out)
}

/// The configuration: the boot-test kernel and initramfs with the boot test's command line,
/// 1 vCPU and [`GUEST_MEM_MIB`](crate::scenario::GUEST_MEM_MIB), and `image` as drive `data`, read-only and not the root device.
fn fc_boot(via: Via, vmlinux: &Path, initrd: &Path, image: &Path) -> FcBoot {
    FcBoot {
        via,
        boot_source: json!({
            "kernel_image_path": vmlinux.display().to_string(),
            "initrd_path": initrd.display().to_string(),
            "boot_args": GUEST_CMDLINE,
        }),
        machine_config: json!({
            "vcpu_count": 1,
            "mem_size_mib": crate::scenario::GUEST_MEM_MIB,
        }),
        drives: vec![json!({
            "drive_id": "data",
            "path_on_host": image.display().to_string(),
            "is_root_device": false,
            "is_read_only": true,
        })],
    }
}

/// `petrel` with the scenario's Firecracker flags.
pub fn command(petrel: &Path, fc: &FcBoot) -> Command {
    let mut cmd = Command::new(petrel);
    cmd.args(fc.args());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(via: Via) -> FcBoot {
        fc_boot(
            via,
            Path::new("/k/vmlinux"),
            Path::new("/i.cpio"),
            Path::new("/d/x.ext4"),
        )
    }

    #[test]
    fn requests_configure_then_start() {
        let fc = example(Via::Api {
            socket: "/tmp/a.sock".into(),
        });
        let r = fc.requests();
        let paths: Vec<&str> = r.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/boot-source",
                "/machine-config",
                "/drives/data",
                "/actions"
            ]
        );
        let boot: Value = serde_json::from_str(&r[0].1).unwrap();
        assert_eq!(boot["kernel_image_path"], "/k/vmlinux");
        assert_eq!(boot["initrd_path"], "/i.cpio");
        assert_eq!(boot["boot_args"], GUEST_CMDLINE);
        let drive: Value = serde_json::from_str(&r[2].1).unwrap();
        assert_eq!(drive["path_on_host"], "/d/x.ext4");
        assert_eq!(drive["is_root_device"], false);
        assert_eq!(r[3].1, r#"{"action_type":"InstanceStart"}"#);
        assert_eq!(
            host::describe(&command(Path::new("/t/petrel"), &fc)),
            "/t/petrel --api-sock /tmp/a.sock"
        );
    }

    #[test]
    fn config_file_has_the_same_sections() {
        let fc = example(Via::ConfigFile {
            path: "/d/c.json".into(),
        });
        let file = fc.config_file();
        assert_eq!(file["boot-source"], fc.boot_source);
        assert_eq!(file["machine-config"]["mem_size_mib"], 128);
        assert_eq!(file["drives"][0]["drive_id"], "data");
        assert_eq!(file.as_object().unwrap().len(), 3);
        assert_eq!(
            host::describe(&command(Path::new("/t/petrel"), &fc)),
            "/t/petrel --config-file /d/c.json --no-api"
        );
        let notes = fc
            .configure(Instant::now(), || panic!("no socket to wait for"))
            .unwrap();
        assert_eq!(notes, ["configured by the config file"]);
    }
}

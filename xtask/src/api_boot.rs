//! Boot-test scenarios configured the way Firecracker is: the boot-test kernel and a
//! virtio-blk drive given to `petrel --api-sock` with plain HTTP requests over its Unix socket
//! (`api-vmlinux-blk`, in the default set), or in a Firecracker config file to
//! `petrel --config-file FILE --no-api` (`config-file-vmlinux-blk`, run only when named).
//! Petrel then writes the guest's serial port to its stdout, which the boot test keeps as the
//! serial log.
//!
//! `api-vmlinux-blk` boots from its drive as Firecracker's root device (read-only: the API
//! adds `root=/dev/vda ro`), whose busybox `/init` ([`CAD_SCRIPT`]) makes Ctrl-Alt-Del soft,
//! waits until atkbd has registered the keyboard behind the i8042 (found through ACPI's
//! PNP0303 device), and then waits for SIGINT with a `trap`. Once it says so, the host sends
//! `PUT /actions {"action_type": "SendCtrlAltDel"}` over the API socket ([`CtrlAltDel`]); the
//! keys reach the kernel's VT keyboard handler, whose `ctrl_alt_del()` sends SIGINT to init,
//! and the guest reports it and reboots. `config-file-vmlinux-blk` boots the boot test's
//! initramfs with the drive as a read-only data disk.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, IoContext, Result};
use crate::fcapi::ApiClient;
use crate::guest_script;
use crate::host;
use crate::live::{LiveCheck, LiveContext, LiveResult};
use crate::scenario::{FcBoot, KernelFormat, Scenario, Via, GUEST_CMDLINE};
use crate::virtio_boot::MOUNTED_RO;

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

/// The boot arguments of the guest that boots from its root drive: [`GUEST_CMDLINE`] and
/// more (the API adds `root=/dev/vda ro`). `init=/init` makes the kernel print the same
/// `Run /init as init process` line as with an initramfs.
const ROOT_DRIVE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off rootwait init=/init";

/// What Linux's i8042 driver prints when it found the controller as an ACPI PNP device
/// (`PNP0303`, in Petrel's DSDT), and then its keyboard port. The Linux IRQ number that
/// follows is not GSI 1's number: with hardware-reduced ACPI there is no legacy PIC, so Linux
/// does not keep IRQs 0-15 for the ISA interrupts and numbers GSI 1 as it comes (`irq 28`).
pub const I8042_LINES: &[&str] = &[
    "i8042: PNP: PS/2 Controller [PNP0303",
    "serio: i8042 KBD port at 0x60,0x64 irq ",
];

/// What the API scenario's guest prints once its `trap` waits for SIGINT: the host's cue.
pub const CAD_READY: &str = "PETREL-CAD-READY";

/// The guest's line once its init got SIGINT from Ctrl-Alt-Del.
const CAD_GOT: &str = "PETREL-CHECK ctrl-alt-del ok";

/// `api-vmlinux-blk`'s `/init` body. The kernel's Ctrl-Alt-Del is hard (an immediate reboot)
/// until an init makes it soft, as busybox's and systemd's do (`reboot(RB_DISABLE_CAD)`):
/// then `ctrl_alt_del()` sends SIGINT to init. atkbd probes the keyboard in the background, so
/// the script waits (at most 60 s, `read -t` on the idle console as pacing, no program
/// started) until sysfs lists it as an input device, then traps SIGINT, says [`CAD_READY`]
/// and waits on a background `sleep` (whose end, after 120 s, would be a failure). Not
/// `/proc/bus/input/devices`: its `poll` says readable only once the device list changed, and
/// busybox's `read` polls before it reads, so it waits there for ever.
const CAD_SCRIPT: &str = r#"mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 0 > /proc/sys/kernel/ctrl-alt-del
read cad < /proc/sys/kernel/ctrl-alt-del
if [ "$cad" = 0 ]; then
    ok cad-soft "/proc/sys/kernel/ctrl-alt-del is 0: Ctrl-Alt-Del sends SIGINT to init"
else
    fail cad-soft "/proc/sys/kernel/ctrl-alt-del is '$cad'"
fi
kbd=
i=0
while [ -z "$kbd" ] && [ $i -lt 600 ]; do
    for f in /sys/class/input/input*/name; do
        [ -e "$f" ] || continue
        read -r name < "$f"
        case "$name" in *keyboard*) kbd="$name (${f%/name})" ;; esac
    done
    [ -n "$kbd" ] || read -t 0.1 x
    i=$((i+1))
done
if [ -n "$kbd" ]; then
    ok keyboard "$kbd, look $i"
else
    fail keyboard "no keyboard in /sys/class/input after 60 s"
fi
got=
trap 'got=1' INT
sleep 120 &
echo PETREL-CAD-READY
[ -n "$got" ] || wait $!
kill $! 2>/dev/null
if [ -n "$got" ]; then
    ok ctrl-alt-del "init got SIGINT from the kernel's Ctrl-Alt-Del"
else
    fail ctrl-alt-del "no SIGINT within 120 s"
fi"#;

/// The host's side of `api-vmlinux-blk`'s Ctrl-Alt-Del: once the guest says [`CAD_READY`],
/// `PUT /actions {"action_type": "SendCtrlAltDel"}` on the API socket must be answered 204,
/// and the guest must then report that its init got SIGINT.
#[derive(Debug)]
pub struct CtrlAltDel {
    /// petrel's API socket.
    pub socket: PathBuf,
}

impl CtrlAltDel {
    /// Sends `SendCtrlAltDel` on a new connection to the API socket.
    fn send(&self) -> Result<()> {
        let stream = UnixStream::connect(&self.socket)
            .ctx(|| format!("connecting to the API socket {}", self.socket.display()))?;
        let mut client = ApiClient::from_stream(stream);
        client.set_timeout(Some(SOCKET_LIMIT))?;
        let body = json!({ "action_type": "SendCtrlAltDel" }).to_string();
        client.expect("PUT", "/actions", Some(&body), 204)?;
        Ok(())
    }
}

impl LiveCheck for CtrlAltDel {
    fn run(&self, cx: &LiveContext<'_>) -> LiveResult {
        // Nothing to bind: the VMM's API socket is the way in.
        let _ = cx.ready.send(());
        if !cx.wait_for(CAD_READY) {
            return Err(vec![format!(
                "the guest never said `{CAD_READY}`, so no Ctrl-Alt-Del was sent"
            )]);
        }
        let cue = Instant::now();
        self.send().map_err(|e| {
            vec![format!(
                "PUT /actions SendCtrlAltDel after the guest's cue failed: {e}"
            )]
        })?;
        let answered = cue.elapsed();
        if cx.wait_for(CAD_GOT) {
            Ok(vec![format!(
                "PUT /actions {{\"action_type\": \"SendCtrlAltDel\"}} answered 204 {:.0} ms \
                 after the guest's cue; the guest's init reported SIGINT {:.1} s after the cue",
                answered.as_secs_f64() * 1e3,
                cue.elapsed().as_secs_f64()
            )])
        } else {
            Err(vec![format!(
                "SendCtrlAltDel was answered 204, but the guest never printed `{CAD_GOT}`"
            )])
        }
    }
}

impl FcBoot {
    /// The configuration as a Firecracker config file (the optional sections only when set).
    pub fn config_file(&self) -> Value {
        let mut file = json!({
            "boot-source": self.boot_source,
            "machine-config": self.machine_config,
            "drives": self.drives,
        });
        if !self.network_interfaces.is_empty() {
            file["network-interfaces"] = json!(self.network_interfaces);
        }
        if let Some(mmds) = &self.mmds_config {
            file["mmds-config"] = mmds.clone();
        }
        if let Some(metrics) = &self.metrics {
            file["metrics"] = metrics.clone();
        }
        if let Some(balloon) = &self.balloon {
            file["balloon"] = balloon.clone();
        }
        file
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
        for n in &self.network_interfaces {
            let id = n["iface_id"].as_str().unwrap_or_default();
            r.push((format!("/network-interfaces/{id}"), n.to_string()));
        }
        // After the interfaces it names.
        if let Some(mmds) = &self.mmds_config {
            r.push(("/mmds/config".to_owned(), mmds.to_string()));
        }
        if let Some(metrics) = &self.metrics {
            r.push(("/metrics".to_owned(), metrics.to_string()));
        }
        if let Some(balloon) = &self.balloon {
            r.push(("/balloon".to_owned(), balloon.to_string()));
        }
        r.push((
            "/actions".to_owned(),
            json!({ "action_type": "InstanceStart" }).to_string(),
        ));
        r
    }

    /// petrel's arguments for this configuration.
    pub fn args(&self) -> Vec<String> {
        let mut args = match &self.via {
            Via::Api { socket } => vec!["--api-sock".into(), socket.display().to_string()],
            Via::ConfigFile { path } => vec![
                "--config-file".into(),
                path.display().to_string(),
                "--no-api".into(),
            ],
        };
        if let Some(metadata) = &self.metadata {
            args.extend(["--metadata".into(), metadata.display().to_string()]);
        }
        args
    }

    /// Before the VMM starts: removes a socket left from an earlier run.
    pub fn prepare(&self) {
        self.remove_socket();
    }

    /// Once the VMM and the scenario's live check have ended: removes the API socket (kept
    /// while the VM runs, for the live check's requests).
    pub fn remove_socket(&self) {
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
        Ok(vec![format!(
            "configured over the API socket (accepting {:.1} ms after the spawn): {}, each \
             answered 204",
            accepted.as_secs_f64() * 1e3,
            done.join(", ")
        )])
    }
}

/// The Firecracker-style scenarios named in `names`: `vmlinux` with a fresh ext4 image in
/// `dir` as its drive: the root device with [`CAD_SCRIPT`] for [`API_SCENARIO`], a read-only
/// data disk beside `initrd` for [`CONFIG_FILE_SCENARIO`].
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
        let s = if name == API_SCENARIO {
            let script = guest_script::init_script(CAD_SCRIPT);
            guest_script::build_rootfs(&image, &script, &[], 16)?;
            let socket =
                std::env::temp_dir().join(format!("petrel-boot-test-{}.sock", std::process::id()));
            let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, Path::new(""), 1);
            s.initrd = None;
            s.fc = Some(fc_boot(
                Via::Api {
                    socket: socket.clone(),
                },
                vmlinux,
                None,
                &image,
            ));
            s.expect = [DISK_SEEN, MOUNTED_RO]
                .iter()
                .chain(I8042_LINES)
                .copied()
                .collect();
            s.checks = vec!["cad-soft", "keyboard", "ctrl-alt-del"];
            s.live = Some(Arc::new(CtrlAltDel { socket }));
            s
        } else {
            crate::virtio_boot::build_rootfs(&image)?;
            let path = dir.join(format!("{name}.json"));
            let fc = fc_boot(
                Via::ConfigFile { path: path.clone() },
                vmlinux,
                Some(initrd),
                &image,
            );
            let text = serde_json::to_string_pretty(&fc.config_file())
                .map_err(|e| Error::Other(format!("encoding {}: {e}", path.display())))?;
            fs::write(&path, text + "\n").ctx(|| format!("writing {}", path.display()))?;
            let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, initrd, 1);
            s.expect = vec![DISK_SEEN];
            s.fc = Some(fc);
            s
        };
        out.push(s);
    }
    Ok(out)
}

/// The configuration: the boot-test kernel, 1 vCPU and
/// [`GUEST_MEM_MIB`](crate::scenario::GUEST_MEM_MIB), and `image` read-only: with an
/// `initrd`, as drive `data` (not the root device) beside it, with the boot test's command
/// line; without, as drive `rootfs`, the root device, with [`ROOT_DRIVE_ARGS`].
pub fn fc_boot(via: Via, vmlinux: &Path, initrd: Option<&Path>, image: &Path) -> FcBoot {
    let (boot_source, drive_id, is_root) = match initrd {
        Some(initrd) => (
            json!({
                "kernel_image_path": vmlinux.display().to_string(),
                "initrd_path": initrd.display().to_string(),
                "boot_args": GUEST_CMDLINE,
            }),
            "data",
            false,
        ),
        None => (
            json!({
                "kernel_image_path": vmlinux.display().to_string(),
                "boot_args": ROOT_DRIVE_ARGS,
            }),
            "rootfs",
            true,
        ),
    };
    FcBoot {
        via,
        boot_source,
        machine_config: json!({
            "vcpu_count": 1,
            "mem_size_mib": crate::scenario::GUEST_MEM_MIB,
        }),
        drives: vec![json!({
            "drive_id": drive_id,
            "path_on_host": image.display().to_string(),
            "is_root_device": is_root,
            "is_read_only": true,
        })],
        network_interfaces: Vec::new(),
        mmds_config: None,
        metrics: None,
        metadata: None,
        balloon: None,
    }
}

/// `petrel` with the scenario's Firecracker flags, inside network namespace `netns` (where
/// the scenario's tap is) when there is one.
pub fn command(petrel: &Path, fc: &FcBoot, netns: Option<&str>) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(petrel);
            c
        }
        None => Command::new(petrel),
    };
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
            Some(Path::new("/i.cpio")),
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
            host::describe(&command(Path::new("/t/petrel"), &fc, None)),
            "/t/petrel --api-sock /tmp/a.sock"
        );
    }

    #[test]
    fn the_api_guest_boots_from_its_root_drive() {
        let fc = fc_boot(
            Via::Api {
                socket: "/tmp/a.sock".into(),
            },
            Path::new("/k/vmlinux"),
            None,
            Path::new("/d/r.ext4"),
        );
        let r = fc.requests();
        let boot: Value = serde_json::from_str(&r[0].1).unwrap();
        assert!(boot.get("initrd_path").is_none(), "{boot}");
        assert_eq!(boot["boot_args"], ROOT_DRIVE_ARGS);
        assert!(ROOT_DRIVE_ARGS.starts_with(&format!("{GUEST_CMDLINE} ")));
        assert_eq!(r[2].0, "/drives/rootfs");
        let drive: Value = serde_json::from_str(&r[2].1).unwrap();
        assert_eq!(drive["is_root_device"], true);
        assert_eq!(drive["is_read_only"], true);
    }

    #[test]
    fn the_script_and_the_host_agree() {
        assert!(CAD_SCRIPT.contains(&format!("echo {CAD_READY}\n")));
        assert_eq!(
            CAD_GOT,
            format!("{} ctrl-alt-del ok", guest_script::CHECK_PREFIX)
        );
        for check in ["cad-soft", "keyboard", "ctrl-alt-del"] {
            assert!(CAD_SCRIPT.contains(&format!("ok {check} ")), "{check}");
        }
        // The trap is set before the cue, and the wait comes after it.
        let trap = CAD_SCRIPT.find("trap 'got=1' INT").unwrap();
        let cue = CAD_SCRIPT.find(CAD_READY).unwrap();
        assert!(trap < cue && cue < CAD_SCRIPT.find("wait $!").unwrap());
    }

    /// A stand-in for petrel's API socket: answers one request 204, then (as the guest
    /// would) appends `then` to the serial log. Returns the request it got.
    fn fake_api(
        socket: &Path,
        serial: &Path,
        then: &'static str,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        use std::io::{Read, Write};
        let _ = fs::remove_file(socket);
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        let serial = serial.to_owned();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !got.ends_with(b"}") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the client hung up");
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 204 \r\n\r\n").unwrap();
            let mut log = fs::OpenOptions::new().append(true).open(&serial).unwrap();
            log.write_all(then.as_bytes()).unwrap();
            got
        })
    }

    #[test]
    fn ctrl_alt_del_is_sent_on_the_guests_cue() {
        let dir = std::env::temp_dir().join(format!("xtask-cad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (socket, serial) = (dir.join("api.sock"), dir.join("serial.log"));
        fs::write(&serial, "boot\r\n").unwrap();
        let server = fake_api(
            &socket,
            &serial,
            "PETREL-CHECK ctrl-alt-del ok init got it\r\n",
        );
        let check = Arc::new(CtrlAltDel {
            socket: socket.clone(),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let run = crate::live::LiveRun::start(check, &serial, deadline);
        let mut log = fs::OpenOptions::new().append(true).open(&serial).unwrap();
        std::io::Write::write_all(&mut log, format!("{CAD_READY}\r\n").as_bytes()).unwrap();
        let request = server.join().unwrap();
        assert_eq!(
            request,
            crate::fcapi::request_bytes(
                "PUT",
                "/actions",
                Some(r#"{"action_type":"SendCtrlAltDel"}"#)
            )
        );
        // Until the check has seen the guest's answer (the VMM would still be running).
        std::thread::sleep(Duration::from_millis(300));
        let notes = run.finish().unwrap();
        assert!(notes[0].contains("answered 204"), "{notes:?}");

        // No cue, no keys: the check fails once the VMM is gone.
        fs::write(&serial, "boot\r\n").unwrap();
        let check = Arc::new(CtrlAltDel { socket });
        let run = crate::live::LiveRun::start(check, &serial, Instant::now());
        let failures = run.finish().unwrap_err();
        assert!(failures[0].contains("never said"), "{failures:?}");
        fs::remove_dir_all(&dir).unwrap();
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
            host::describe(&command(Path::new("/t/petrel"), &fc, None)),
            "/t/petrel --config-file /d/c.json --no-api"
        );
        let notes = fc
            .configure(Instant::now(), || panic!("no socket to wait for"))
            .unwrap();
        assert_eq!(notes, ["configured by the config file"]);
    }
}

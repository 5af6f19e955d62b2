//! The balloon boot-test scenarios: a guest with a virtio-balloon device, driven over
//! Firecracker's API while the host watches the VMM's resident guest memory (the `Rss` of the
//! guest RAM mapping in `/proc/PID/smaps`; the PID is the API socket's peer).
//!
//! Both guests boot from a read-only root drive with busybox, over the API socket, with
//! [`MEM_MIB`] of RAM, and fill memory with one `dd` whose buffer is that big (zeroed by the
//! guest kernel, freed when `dd` exits). On an emulating host that costs about a second per
//! MiB (every page is zeroed by emulated kernel code; huge pages did not change that, nor
//! did reading a disk into the page cache), so the fills are as small as the checks allow.
//! Waits in the guest are `read -t` on the idle console: no program started.
//!
//! - `balloon-inflate` (`stats_polling_interval_s` 1): the guest fills and frees
//!   [`FILL_MIB`], then says [`FREED`] with its `MemTotal` and `MemFree`.
//!   The host reads the resident guest memory, `PATCH /balloon` to [`INFLATE_MIB`], times the
//!   inflate until `GET /balloon/statistics` reports it all, and waits for the guest to see
//!   its `MemTotal` drop by that much ([`INFLATED`]). Resident memory must have dropped by
//!   nearly as much; the statistics must match the guest's `/proc/meminfo`; a target larger
//!   than guest RAM is refused with a 400 naming `amount_mib`; a Full snapshot of the
//!   ballooned VM, restored (paused) in a second petrel under the `Uffd` memory backend
//!   (Petrel's `uffd_handler` serving the memory file), has a balloon that targets and holds
//!   the same; resumed there and inflated by [`UFFD_INFLATE_MIB`] more, the handler must have
//!   read `UFFD_EVENT_REMOVE`s covering at least that much (its closing line says so) and
//!   exit 0 when that petrel ends; then, in the first VM, `PATCH /balloon` to 0
//!   deflates, the guest sees its `MemTotal` back ([`DEFLATED`]) and ends the run.
//! - `balloon-reporting` (`free_page_reporting`): the host watches the resident guest memory
//!   from the start while the guest fills and frees [`REPORT_FILL_MIB`] and says
//!   [`RELEASED`]. With no inflate, the resident memory must then fall well below the peak it
//!   reached during the fill as the guest reports the pages it freed. Then the host inflates
//!   by [`DOORBELL_MIB`], which the guest sees in its `MemTotal` as the sign to end the run.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api_boot::{fc_boot, DISK_SEEN};
use crate::error::{Error, IoContext, Result};
use crate::fcapi::ApiClient;
use crate::guest_script;
use crate::host;
use crate::live::{LiveCheck, LiveContext, LiveResult};
use crate::scenario::{KernelFormat, Scenario, Via};
use crate::uffd_handler::{Closing, Handler, CLOSING};
use crate::virtio_boot::MOUNTED_RO;

/// The scenario that inflates and deflates the balloon.
pub const INFLATE_NAME: &str = "balloon-inflate";
/// The scenario whose guest reports the pages it frees.
pub const REPORTING_NAME: &str = "balloon-reporting";
/// Both, in the default set.
pub const SCENARIOS: &[&str] = &[INFLATE_NAME, REPORTING_NAME];

/// Guest RAM of both scenarios, in MiB.
pub const MEM_MIB: u64 = 256;
/// What `balloon-inflate`'s guest fills and frees, in MiB: the inflate, and some room.
pub const FILL_MIB: u64 = 72;
/// What `balloon-reporting`'s guest fills and frees, in MiB.
pub const REPORT_FILL_MIB: u64 = 48;
/// The inflate of `balloon-inflate`, in MiB.
pub const INFLATE_MIB: u64 = 64;
/// The further inflate of `balloon-inflate`'s Uffd-restored copy, in MiB: small, since the
/// guest's driver takes a few ms per page on an emulating host.
pub const UFFD_INFLATE_MIB: u64 = 4;
/// The inflate that tells `balloon-reporting`'s guest to end, in MiB.
pub const DOORBELL_MIB: u64 = 4;
/// How much of an inflate must leave the VMM's resident memory (the rest may never have
/// been touched by the guest), in MiB.
const INFLATE_RSS_MIN_MIB: u64 = INFLATE_MIB * 7 / 8;
/// How much of what the guest freed free page reporting must give back, in MiB.
const REPORTED_RSS_MIN_MIB: u64 = REPORT_FILL_MIB * 3 / 4;

/// `balloon-inflate`'s guest: the filled memory is free again.
pub const FREED: &str = "PETREL-BALLOON-FREED";
/// `balloon-inflate`'s guest: `MemTotal` dropped by [`INFLATE_MIB`].
pub const INFLATED: &str = "PETREL-BALLOON-INFLATED";
/// `balloon-inflate`'s guest: `MemTotal` is back.
pub const DEFLATED: &str = "PETREL-BALLOON-DEFLATED";
/// `balloon-reporting`'s guest: the filled memory is free again.
pub const RELEASED: &str = "PETREL-BALLOON-RELEASED";

/// How long one API request may take.
const SOCKET_LIMIT: Duration = Duration::from_secs(10);
/// How long the host waits for something the device or the guest does on its own (an
/// inflate to complete, statistics to refresh, reported pages to leave), each.
const DEVICE_LIMIT: Duration = Duration::from_secs(180);

/// How long a connection to the API may sit idle before the next request takes a new one:
/// half the minute after which the API closes it (`api::server::IDLE_TIMEOUT`), leaving room
/// for a request of up to [`SOCKET_LIMIT`].
const RECONNECT_IDLE: Duration = Duration::from_secs(30);

/// What both scripts start with: `/proc`, `/sys`, and `mem`, which reads
/// `MemTotal` and `MemFree` (kB) into `T` and `F` with shell builtins only; `wait_total
/// TEST` re-reads them once a second (`read -t` on the idle console) until `TEST` holds, at
/// most 10 minutes.
const PRELUDE: &str = r#"mount -t proc proc /proc
mount -t sysfs sysfs /sys
mem() {
    while read -r k v u; do
        case $k in MemTotal:) T=$v ;; MemFree:) F=$v ;; esac
    done < /proc/meminfo
}
wait_total() {
    i=0
    while mem; ! eval "$1" && [ $i -lt 600 ]; do read -t 1 x; i=$((i+1)); done
}
b=
for d in /sys/bus/virtio/drivers/virtio_balloon/virtio*; do [ -e "$d" ] && b=${d##*/}; done
if [ -n "$b" ]; then
    ok balloon-driver "virtio_balloon drives $b"
else
    fail balloon-driver "no device in /sys/bus/virtio/drivers/virtio_balloon"
fi
"#;

/// `balloon-inflate`'s body: fill and free with one `dd` (its 72 MiB buffer, zeroed by the
/// kernel, freed at its exit), then follow the host's inflate and deflate in `MemTotal`.
const INFLATE_BODY: &str = r#"dd if=/dev/zero of=/dev/null bs=72M count=1 2> /dev/null
mem; t0=$T
echo "PETREL-BALLOON-FREED total=$T free=$F"
wait_total '[ $((t0 - T)) -ge 65536 ]'
if [ $((t0 - T)) -ge 65536 ]; then
    ok balloon-inflate "MemTotal went from $t0 kB to $T kB"
else
    fail balloon-inflate "MemTotal is $T kB, not 64 MiB below $t0 kB, after 600 s"
fi
echo "PETREL-BALLOON-INFLATED total=$T free=$F"
wait_total '[ $T -ge $t0 ]'
if [ $T -ge $t0 ]; then
    ok balloon-deflate "MemTotal is back at $T kB"
else
    fail balloon-deflate "MemTotal is $T kB, not back at $t0 kB, after 600 s"
fi
echo "PETREL-BALLOON-DEFLATED total=$T free=$F""#;

/// `balloon-reporting`'s body: fill and free 48 MiB with one `dd`, then wait for the host's
/// doorbell inflate.
const REPORTING_BODY: &str = r#"dd if=/dev/zero of=/dev/null bs=48M count=1 2> /dev/null
mem; t0=$T
echo "PETREL-BALLOON-RELEASED total=$T free=$F"
wait_total '[ $T -lt $t0 ]'
if [ $T -lt $t0 ]; then
    ok balloon-doorbell "MemTotal went from $t0 kB to $T kB: the host saw the pages come back"
else
    fail balloon-doorbell "MemTotal still $T kB after 600 s"
fi"#;

/// The guest script's body for scenario `name`.
fn guest_body(name: &str) -> String {
    let body = if name == INFLATE_NAME {
        INFLATE_BODY
    } else {
        REPORTING_BODY
    };
    format!("{PRELUDE}{body}")
}

/// The checks the guest of scenario `name` reports.
fn guest_checks(name: &str) -> Vec<&'static str> {
    if name == INFLATE_NAME {
        vec!["balloon-driver", "balloon-inflate", "balloon-deflate"]
    } else {
        vec!["balloon-driver", "balloon-doorbell"]
    }
}

/// The `PUT /balloon` body of scenario `name`.
fn balloon_body(name: &str) -> Value {
    if name == INFLATE_NAME {
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1})
    } else {
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": true})
    }
}

/// The balloon scenarios named in `names`, each with a fresh root image in `dir`.
pub fn scenarios(names: &[&str], vmlinux: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    let wanted = crate::scenario::asked_for(SCENARIOS, names);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let uffd_handler = if wanted.contains(&INFLATE_NAME) {
        Some(crate::build::build_uffd_handler(
            &crate::build::workspace_root(),
        )?)
    } else {
        None
    };
    let mut out = Vec::new();
    for name in wanted {
        let image = dir.join(format!("{name}.ext4"));
        let script = guest_script::init_script(&guest_body(name));
        guest_script::build_rootfs(&image, &script, &[], 16)?;
        let socket = std::env::temp_dir().join(format!(
            "petrel-boot-test-{name}-{}.sock",
            std::process::id()
        ));
        let mut fc = fc_boot(
            Via::Api {
                socket: socket.clone(),
            },
            vmlinux,
            None,
            &image,
        );
        fc.machine_config["mem_size_mib"] = json!(MEM_MIB);
        fc.balloon = Some(balloon_body(name));
        let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, Path::new(""), 1);
        s.initrd = None;
        s.fc = Some(fc);
        s.expect = vec![DISK_SEEN, MOUNTED_RO];
        s.checks = guest_checks(name);
        s.live = Some(Arc::new(BalloonCheck {
            socket,
            reporting: name == REPORTING_NAME,
            uffd_handler: uffd_handler.clone().filter(|_| name == INFLATE_NAME),
        }));
        out.push(s);
    }
    Ok(out)
}

/// The host's side of a balloon scenario (see the module's docs).
#[derive(Debug)]
pub struct BalloonCheck {
    /// petrel's API socket.
    pub socket: PathBuf,
    /// `balloon-reporting` rather than `balloon-inflate`.
    pub reporting: bool,
    /// Petrel's page-fault handler (the `uffd_handler` example), for `balloon-inflate`'s
    /// restore under the `Uffd` backend.
    pub uffd_handler: Option<PathBuf>,
}

/// A connection to petrel's API, and petrel's PID (the socket's peer).
struct Vmm {
    client: ApiClient,
    pid: i32,
    socket: PathBuf,
    /// When the connection was last handed out for a request.
    used: Instant,
}

impl Vmm {
    fn connect(socket: &Path) -> Result<Vmm> {
        let stream = UnixStream::connect(socket)
            .ctx(|| format!("connecting to the API socket {}", socket.display()))?;
        let pid = peer_pid(&stream).ctx(|| "reading the API socket's peer".into())?;
        let client = ApiClient::from_stream(stream);
        client.set_timeout(Some(SOCKET_LIMIT))?;
        Ok(Vmm {
            client,
            pid,
            socket: socket.to_owned(),
            used: Instant::now(),
        })
    }

    /// The connection for the next request: a new one if this one sat idle for
    /// [`RECONNECT_IDLE`], since the API closes a connection idle for a minute
    /// (`api::server::IDLE_TIMEOUT`) and the guest may keep the host waiting longer.
    fn client(&mut self) -> Result<&mut ApiClient> {
        if self.used.elapsed() >= RECONNECT_IDLE {
            *self = Vmm::connect(&self.socket)?;
        }
        self.used = Instant::now();
        Ok(&mut self.client)
    }

    /// The resident bytes of the guest RAM mapping.
    fn guest_rss(&self) -> Result<u64> {
        let path = format!("/proc/{}/smaps", self.pid);
        let text = fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
        guest_rss_in(&text, MEM_MIB << 20)
            .ok_or_else(|| Error::Other(format!("{path} has no mapping of {MEM_MIB} MiB")))
    }

    /// `GET /balloon/statistics`.
    fn stats(&mut self) -> Result<Value> {
        let r = self
            .client()?
            .expect("GET", "/balloon/statistics", None, 200)?;
        serde_json::from_str(&r.body)
            .map_err(|e| Error::Other(format!("GET /balloon/statistics: {e}: {}", r.body)))
    }

    /// `PATCH /balloon` to `mib`, then waits until the statistics report the guest holds that
    /// much; returns how long that took.
    fn resize(&mut self, mib: u64, cx: &LiveContext<'_>) -> Result<Duration> {
        let start = Instant::now();
        let body = json!({ "amount_mib": mib }).to_string();
        self.client()?
            .expect("PATCH", "/balloon", Some(&body), 204)?;
        self.wait_stats(cx, |s| s["actual_mib"] == json!(mib))
            .map(|_| start.elapsed())
            .ok_or_else(|| {
                Error::Other(format!(
                    "the balloon did not reach {mib} MiB within {} s",
                    DEVICE_LIMIT.as_secs()
                ))
            })
    }

    /// Polls the statistics (every 100 ms) until `done` holds; `None` after [`DEVICE_LIMIT`].
    fn wait_stats(&mut self, cx: &LiveContext<'_>, done: impl Fn(&Value) -> bool) -> Option<Value> {
        let start = Instant::now();
        while start.elapsed() < DEVICE_LIMIT && !cx.should_stop() {
            if let Ok(s) = self.stats() {
                if done(&s) {
                    return Some(s);
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// The PID of the process at the other end of a Unix socket (`SO_PEERCRED`).
fn peer_pid(stream: &UnixStream) -> std::io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a `ucred` of `len` bytes; both point at our locals.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.pid)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The `Rss` of guest RAM in a `/proc/PID/smaps` text, in bytes: that of the largest mapping
/// of at least `size` bytes (the kernel may have merged guest RAM with a small anonymous
/// mapping beside it, which then counts too).
fn guest_rss_in(smaps: &str, size: u64) -> Option<u64> {
    let kb = |v: &str| v.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok();
    let mut best: Option<(u64, u64)> = None;
    let mut current: Option<u64> = None;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            current = kb(v).filter(|&k| k << 10 >= size);
        } else if let (Some(mapping), Some(v)) = (current, line.strip_prefix("Rss:")) {
            let rss = kb(v)? << 10;
            if best.is_none_or(|(largest, _)| mapping > largest) {
                best = Some((mapping, rss));
            }
            current = None;
        }
    }
    best.map(|(_, rss)| rss)
}

/// The `total=` and `free=` values (kB) of one of the guest's memory lines.
fn guest_meminfo(line: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("total=")?, field("free=")?))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl BalloonCheck {
    /// Waits for the guest's `cue` and connects to the API.
    fn at_cue(&self, cx: &LiveContext<'_>, cue: &'static str) -> std::result::Result<Vmm, String> {
        if !cx.wait_for(cue) {
            return Err(format!("the guest never said `{cue}`"));
        }
        Vmm::connect(&self.socket).map_err(|e| e.to_string())
    }

    fn inflate(&self, cx: &LiveContext<'_>) -> std::result::Result<Vec<String>, String> {
        let mut vmm = self.at_cue(cx, FREED)?;
        let e = |e: Error| e.to_string();
        let before = vmm.guest_rss().map_err(e)?;
        let took = vmm.resize(INFLATE_MIB, cx).map_err(e)?;
        let inflated = cx
            .wait_for_line(INFLATED)
            .ok_or_else(|| format!("the guest never said `{INFLATED}`"))?;
        let after = vmm.guest_rss().map_err(e)?;
        let dropped = before.saturating_sub(after);
        let mut notes = vec![format!(
            "resident guest memory {} after the guest freed {FILL_MIB} MiB; PATCH /balloon \
             {INFLATE_MIB} MiB, all inflated in {:.0} ms; resident {} after (-{})",
            mib(before),
            took.as_secs_f64() * 1e3,
            mib(after),
            mib(dropped)
        )];
        if dropped < INFLATE_RSS_MIN_MIB << 20 {
            return Err(format!(
                "{}: less than {INFLATE_RSS_MIN_MIB} MiB left the host",
                notes[0]
            ));
        }
        let (total_kb, free_kb) = guest_meminfo(&inflated).ok_or_else(|| {
            format!("no MemTotal/MemFree on the guest's `{INFLATED}` line: {inflated}")
        })?;
        let stats = vmm
            .wait_stats(cx, |s| s["total_memory"] == json!(total_kb << 10))
            .ok_or_else(|| {
                format!("the statistics never reported the guest's MemTotal {total_kb} kB")
            })?;
        let free = stats["free_memory"].as_u64().unwrap_or(0);
        let off = free.abs_diff(free_kb << 10);
        let named = [
            "swap_in",
            "swap_out",
            "major_faults",
            "minor_faults",
            "available_memory",
            "disk_caches",
        ];
        let missing: Vec<&str> = named
            .iter()
            .copied()
            .filter(|n| stats[n].is_null())
            .collect();
        if off > 16 << 20 || !missing.is_empty() || stats["target_mib"] != json!(INFLATE_MIB) {
            return Err(format!(
                "statistics {stats} against the guest's MemTotal {total_kb} kB, MemFree \
                 {free_kb} kB: free_memory off by {}, missing {missing:?}",
                mib(off)
            ));
        }
        notes.push(format!(
            "GET /balloon/statistics: total_memory = the guest's MemTotal ({total_kb} kB), \
             free_memory {} against MemFree {} (off by {}), target_mib {INFLATE_MIB}, \
             actual_mib {}, and {} more named statistics",
            mib(free),
            mib(free_kb << 10),
            mib(off),
            stats["actual_mib"],
            named.len()
        ));
        let huge = json!({ "amount_mib": MEM_MIB * 4 }).to_string();
        let r = vmm
            .client()
            .and_then(|c| c.call("PATCH", "/balloon", Some(&huge)))
            .map_err(e)?;
        if r.status != 400 || !r.body.contains("amount_mib") {
            return Err(format!(
                "PATCH /balloon to {} MiB was answered {}: {}",
                MEM_MIB * 4,
                r.status,
                r.body
            ));
        }
        notes.push(format!(
            "PATCH /balloon to {} MiB refused: {}",
            MEM_MIB * 4,
            r.body.trim()
        ));
        notes.extend(self.snapshot_and_restore(&mut vmm, cx).map_err(e)?);
        let body = json!({ "stats_polling_interval_s": 2 }).to_string();
        vmm.client()
            .and_then(|c| c.expect("PATCH", "/balloon/statistics", Some(&body), 204))
            .map_err(e)?;
        let took = vmm.resize(0, cx).map_err(e)?;
        if !cx.wait_for(DEFLATED) {
            return Err(format!("the guest never said `{DEFLATED}`"));
        }
        let config = vmm
            .client()
            .and_then(|c| c.expect("GET", "/balloon", None, 200))
            .map_err(e)?;
        let config: Value = serde_json::from_str(&config.body).map_err(|e| e.to_string())?;
        let want = json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 2});
        if ["amount_mib", "deflate_on_oom", "stats_polling_interval_s"]
            .iter()
            .any(|k| config[k] != want[k])
        {
            return Err(format!("GET /balloon after the deflate: {config}"));
        }
        // Deflated pages come back to the host only as the guest touches them again.
        let deflated = vmm.guest_rss().map_err(e)?;
        notes.push(format!(
            "PATCH /balloon/statistics 2 s, then PATCH /balloon 0: deflated in {:.0} ms and the \
             guest saw its MemTotal back (resident {} until it touches the pages again); GET \
             /balloon {config}",
            took.as_secs_f64() * 1e3,
            mib(deflated)
        ));
        Ok(notes)
    }

    /// With the balloon inflated: pauses the VM, writes a Full snapshot beside the API socket,
    /// resumes it, and restores the snapshot (paused) in a second petrel under the `Uffd`
    /// backend, served by Petrel's page-fault handler. That petrel's balloon must hold what
    /// the first one held; resumed and inflated by [`UFFD_INFLATE_MIB`] more, the handler must
    /// have seen removals covering at least that much. Returns the notes.
    fn snapshot_and_restore(&self, vmm: &mut Vmm, cx: &LiveContext<'_>) -> Result<Vec<String>> {
        let handler = self
            .uffd_handler
            .as_deref()
            .ok_or_else(|| Error::Other("no page-fault handler was built".into()))?;
        let dir = self.socket.with_extension("snapshot");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let (state, mem) = (dir.join("state"), dir.join("mem"));
        let paused = json!({ "state": "Paused" }).to_string();
        let resumed = json!({ "state": "Resumed" }).to_string();
        let create = json!({
            "snapshot_type": "Full",
            "snapshot_path": state.display().to_string(),
            "mem_file_path": mem.display().to_string(),
        })
        .to_string();
        vmm.client()?.expect("PATCH", "/vm", Some(&paused), 204)?;
        let written = vmm
            .client()?
            .expect("PUT", "/snapshot/create", Some(&create), 204);
        vmm.client()?.expect("PATCH", "/vm", Some(&resumed), 204)?;
        written?;
        let mem_bytes = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&mem)
                .ctx(|| format!("reading {}", mem.display()))?
                .blocks()
                * 512
        };
        let handler_log = cx
            .serial
            .with_file_name(format!("{INFLATE_NAME}.uffd-handler.log"));
        let handler_socket = dir.join("uffd.sock");
        let began = Instant::now();
        let handler = Handler::start(handler, handler_socket.clone(), &mem, None, handler_log)?;
        // The same binary as the VM's own, restoring in a process of its own.
        let petrel = fs::read_link(format!("/proc/{}/exe", vmm.pid))
            .ctx(|| format!("reading /proc/{}/exe", vmm.pid))?;
        let socket = dir.join("api.sock");
        let output = cx
            .serial
            .with_file_name(format!("{INFLATE_NAME}.uffd-restored.vmm-output.log"));
        let out = fs::File::create(&output).ctx(|| format!("creating {}", output.display()))?;
        let err = out.try_clone().ctx(|| "duplicating a file".into())?;
        let mut child = std::process::Command::new(&petrel)
            .arg("--api-sock")
            .arg(&socket)
            .stdout(out)
            .stderr(err)
            .spawn()
            .ctx(|| format!("starting {}", petrel.display()))?;
        let restored = (|| -> Result<(Value, Duration)> {
            let (mut client, _) =
                ApiClient::connect_when_ready(&socket, Instant::now(), SOCKET_LIMIT, || true)?;
            client.set_timeout(Some(SOCKET_LIMIT))?;
            let load = json!({
                "snapshot_path": state.display().to_string(),
                "mem_backend": {
                    "backend_type": "Uffd",
                    "backend_path": handler_socket.display().to_string(),
                },
                "resume_vm": false,
            })
            .to_string();
            client.expect("PUT", "/snapshot/load", Some(&load), 204)?;
            let r = client.expect("GET", "/balloon/statistics", None, 200)?;
            let stats: Value = serde_json::from_str(&r.body)
                .map_err(|e| Error::Other(format!("{e}: {}", r.body)))?;
            if stats["target_mib"] != json!(INFLATE_MIB)
                || stats["actual_mib"] != json!(INFLATE_MIB)
            {
                return Err(Error::Other(format!(
                    "the restored VM's balloon statistics are {stats}, not {INFLATE_MIB} MiB \
                     targeted and held"
                )));
            }
            client.expect("PATCH", "/vm", Some(&resumed), 204)?;
            let mut copy = Vmm {
                client,
                pid: child.id() as i32,
                socket: socket.clone(),
                used: Instant::now(),
            };
            let took = copy.resize(INFLATE_MIB + UFFD_INFLATE_MIB, cx)?;
            Ok((stats, took))
        })();
        let _ = child.kill();
        let _ = child.wait();
        let handler_said = handler.finish();
        let spent = began.elapsed();
        let _ = fs::remove_dir_all(&dir);
        let (_, took) = restored?;
        let said = handler_said?;
        let closing = Closing::parse(&said).ok_or_else(|| {
            Error::Other(format!(
                "the page-fault handler's closing line is not `...{CLOSING}N pages; M removals \
                 of B bytes`: {said}"
            ))
        })?;
        if closing.pages == 0 || closing.removed_bytes < UFFD_INFLATE_MIB << 20 {
            return Err(Error::Other(format!(
                "after the Uffd-restored VM inflated {UFFD_INFLATE_MIB} MiB more, the \
                 page-fault handler said `{said}`: it should have served pages and read \
                 removals covering at least {UFFD_INFLATE_MIB} MiB"
            )));
        }
        Ok(vec![
            format!(
                "paused, Full snapshot ({} of data in the {MEM_MIB} MiB memory file), \
                 resumed; restored (paused) in a second petrel under the Uffd backend, served \
                 by uffd_handler: its balloon targets and holds {INFLATE_MIB} MiB (GET \
                 /balloon/statistics)",
                mib(mem_bytes)
            ),
            format!(
                "the Uffd-restored VM resumed, PATCH /balloon {} MiB: inflated in {:.0} ms; \
                 the handler exited 0 after its petrel ended, saying `{said}` ({} removed, at \
                 least the {UFFD_INFLATE_MIB} MiB inflate); {:.1} s from the handler's \
                 start to its end",
                INFLATE_MIB + UFFD_INFLATE_MIB,
                took.as_secs_f64() * 1e3,
                mib(closing.removed_bytes),
                spent.as_secs_f64()
            ),
        ])
    }

    fn reporting(&self, cx: &LiveContext<'_>) -> std::result::Result<Vec<String>, String> {
        let e = |e: Error| e.to_string();
        // The API socket appears once petrel runs; the resident memory is watched from then.
        let mut vmm = loop {
            match Vmm::connect(&self.socket) {
                Ok(vmm) => break vmm,
                Err(_) if !cx.should_stop() => thread::sleep(Duration::from_millis(100)),
                Err(err) => return Err(err.to_string()),
            }
        };
        let mut peak = 0;
        let mut watch = crate::log_watch::LogWatch::new(cx.serial, RELEASED);
        let start = Instant::now();
        while watch.seen_at().is_none() {
            if cx.should_stop() {
                return Err(format!("the guest never said `{RELEASED}`"));
            }
            // No guest RAM mapping until InstanceStart: nothing to read yet.
            if let Ok(rss) = vmm.guest_rss() {
                peak = peak.max(rss);
            }
            watch.poll(start.elapsed());
            thread::sleep(Duration::from_millis(200));
        }
        let released = Instant::now();
        let mut now = peak;
        while released.elapsed() < DEVICE_LIMIT && !cx.should_stop() {
            now = vmm.guest_rss().map_err(e)?;
            if peak.saturating_sub(now) >= REPORTED_RSS_MIN_MIB << 20 {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let note = format!(
            "resident guest memory peaked at {} while the guest filled {REPORT_FILL_MIB} MiB; \
             {} {:.1} s after the guest freed it (-{}), with no inflate",
            mib(peak),
            mib(now),
            released.elapsed().as_secs_f64(),
            mib(peak.saturating_sub(now))
        );
        if peak.saturating_sub(now) < REPORTED_RSS_MIN_MIB << 20 {
            return Err(format!(
                "{note}: less than {REPORTED_RSS_MIN_MIB} MiB came back"
            ));
        }
        // No statistics here to follow the inflate by: the guest's `MemTotal` says it.
        let body = json!({ "amount_mib": DOORBELL_MIB }).to_string();
        vmm.client()
            .and_then(|c| c.expect("PATCH", "/balloon", Some(&body), 204))
            .map_err(e)?;
        Ok(vec![note])
    }
}

impl LiveCheck for BalloonCheck {
    fn run(&self, cx: &LiveContext<'_>) -> LiveResult {
        // Nothing to bind: the VMM's API socket is the way in.
        let _ = cx.ready.send(());
        let result = if self.reporting {
            self.reporting(cx)
        } else {
            self.inflate(cx)
        };
        result.map_err(|e| vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_mapping_is_the_largest_at_least_its_size() {
        let smaps = "\
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7f1000000000-7f1010021000 rw-p 00000000 00:00 0
Size:             262276 kB
KernelPageSize:        4 kB
Rss:              102400 kB
7f1010021000-7f1014000000 ---p 00000000 00:00 0
Size:              65404 kB
Rss:                   0 kB
";
        assert_eq!(guest_rss_in(smaps, 256 << 20), Some(100 << 20));
        assert_eq!(guest_rss_in(smaps, 512 << 20), None);
    }

    #[test]
    fn the_guest_lines_carry_total_and_free() {
        assert_eq!(
            guest_meminfo("PETREL-BALLOON-INFLATED total=182740 free=150000"),
            Some((182740, 150000))
        );
        // Partly written: the live check waits for the whole line instead.
        assert_eq!(
            guest_meminfo("PETREL-BALLOON-INFLATED total=182740 fr"),
            None
        );
    }

    #[test]
    fn the_scripts_and_the_host_agree() {
        let inflate = guest_body(INFLATE_NAME);
        for cue in [FREED, INFLATED, DEFLATED] {
            assert!(inflate.contains(&format!("echo \"{cue} ")), "{cue}");
        }
        assert!(inflate.contains(&format!("bs={FILL_MIB}M count=1")));
        assert!(inflate.contains(&format!("-ge {}", INFLATE_MIB << 10)));
        let reporting = guest_body(REPORTING_NAME);
        assert!(reporting.contains(&format!("echo \"{RELEASED} ")));
        assert!(reporting.contains(&format!("bs={REPORT_FILL_MIB}M count=1")));
        for name in SCENARIOS {
            let body = guest_body(name);
            for check in guest_checks(name) {
                assert!(body.contains(&format!("ok {check} ")), "{name}: {check}");
            }
        }
        assert_eq!(balloon_body(REPORTING_NAME)["free_page_reporting"], true);
        assert_eq!(balloon_body(INFLATE_NAME)["stats_polling_interval_s"], 1);
    }
}

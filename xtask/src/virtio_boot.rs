//! Boot-test scenarios with virtio devices, each proven from inside the guest by its init
//! script (see [`crate::guest_script`]) and checked on the host after the VM ended:
//!
//! - `virtio-blk-root`: root on a read-write disk; the guest writes a known pattern of
//!   several MiB to a second disk with `dd`, drops its caches, reads it back and prints its
//!   checksum, and the host finds the same bytes in the image; the guest reads
//!   `/dev/hwrng` (virtio-rng); the ext4 superblock shows the guest's mount (`dumpe2fs`)
//!   and Petrel's `--metrics` the devices' work.
//! - `virtio-blk-ro`: root on a read-only disk; the guest's writes fail (EROFS from the
//!   filesystem, EPERM from the block device itself), and the image is byte for byte
//!   unchanged; a 32-bit program (`guest/compat32.s`) makes system calls with `int $0x80`
//!   and through the vDSO. It ends with `poweroff -f`: the kernel powers off through ACPI
//!   (`reboot: Power down`) and Petrel must exit 0 with the stop reason `PowerOff`.
//! - `vmlinux-2vcpu`: both vCPUs online, and a busy loop pinned to each with `taskset` makes
//!   progress on both. The kernel (built without MP table support) must have found both CPUs
//!   through ACPI's MADT, and found the ACPI tables, and must not print the MP table's lines.
//! - `virtio-net-dhcp`: DHCP, an HTTP fetch and a listener in the guest; see
//!   [`crate::net_boot`].
//! - `vsock-echo`: a guest program talks to the host over vsock both ways; see
//!   [`crate::vsock_boot`].

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::cache::sha256_hex;
use crate::error::{Error, IoContext, Result};
use crate::guest_script::{self, Ending, ExtraFile, POWER_DOWN_LINE};
use crate::host;
use crate::initramfs::init_script;
use crate::scenario::{AfterCheck, KernelFormat, Scenario, GUEST_CMDLINE};

/// The virtio-blk scenarios (and the 2-vCPU one, which needs busybox from a disk), by name.
/// The virtio-net and vsock scenarios, which build on these pieces, are in their own modules.
pub const SCENARIOS: &[&str] = &["vmlinux-2vcpu", "virtio-blk-root", "virtio-blk-ro"];

/// The size of the pattern the `virtio-blk-root` guest writes to its second disk.
const PATTERN_LEN: usize = 4 << 20;

/// The seed of that pattern.
const PATTERN_SEED: u64 = 0x5045_5452_454c;

/// The size of that second disk, in MiB: larger than the pattern, so the host also sees
/// that nothing was written past it.
const DATA_DISK_MIB: u64 = 8;

/// `virtio-blk-root`'s script: the pattern onto /dev/vdb past the page cache, read back and
/// hashed; 32 bytes from /dev/hwrng, which must be virtio-rng.
const BLK_RW_SCRIPT: &str = r#"mount -t proc proc /proc
mount -t sysfs sysfs /sys
if dd if=/pattern of=/dev/vdb bs=1M conv=fsync 2>/tmp/dd.err; then
    echo 3 > /proc/sys/vm/drop_caches
    set -- $(dd if=/dev/vdb bs=1M count=4 2>/dev/null | sha256sum)
    ok blk-pattern "sha256=$1"
else
    fail blk-pattern "dd to /dev/vdb: $(cat /tmp/dd.err)"
fi
read rng < /sys/class/misc/hw_random/rng_current
n=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c)
if [ "$rng" = virtio_rng.0 ] && [ "$n" = 32 ]; then
    ok rng "read $n bytes from /dev/hwrng ($rng)"
else
    fail rng "read $n bytes from /dev/hwrng, source '$rng'"
fi"#;

/// `virtio-blk-ro`'s script: the kernel and the filesystem must both refuse writes.
const BLK_RO_SCRIPT: &str = r#"mount -t sysfs sysfs /sys
read ro < /sys/block/vda/ro
if [ "$ro" = 1 ]; then ok ro-flag "/sys/block/vda/ro is 1"; else fail ro-flag "/sys/block/vda/ro is '$ro'"; fi
err=$( { echo x > /probe; } 2>&1 )
case "$err" in
    *"Read-only file system"*) ok ro-file "writing /probe: $err" ;;
    *) fail ro-file "writing /probe gave '$err'" ;;
esac
err=$(dd if=/dev/zero of=/dev/vda bs=4096 count=1 2>&1)
case "$err" in
    *"Read-only file system"*|*"Operation not permitted"*|*"Permission denied"*) ok ro-device "dd to /dev/vda: $err" ;;
    *) fail ro-device "dd to /dev/vda gave '$err'" ;;
esac
out=$(/bin/compat32)
rc=$?
if [ "$rc" = 0 ] && [ "$out" = "int80 vdso" ]; then
    ok compat32 "a 32-bit program's system calls: '$out'"
else
    fail compat32 "a 32-bit program printed '$out' and exited $rc"
fi"#;

/// The 32-bit program the `virtio-blk-ro` guest runs, relative to xtask's directory.
const COMPAT32_SOURCE: &str = "guest/compat32.s";

/// Assembles and links [`COMPAT32_SOURCE`] with the host's binutils (`as --32`, `ld -m
/// elf_i386`; no 32-bit C library needed) in `dir`; returns the executable.
fn build_compat32(dir: &Path) -> Result<Vec<u8>> {
    host::ensure_packages(&["binutils"])?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMPAT32_SOURCE);
    let object = dir.join("compat32.o");
    let program = dir.join("compat32");
    host::run(
        Command::new("as")
            .args(["--32", "-o"])
            .arg(&object)
            .arg(&source),
    )?;
    host::run(
        Command::new("ld")
            .args(["-m", "elf_i386", "-static", "-o"])
            .arg(&program)
            .arg(&object),
    )?;
    fs::read(&program).ctx(|| format!("reading {}", program.display()))
}

/// `vmlinux-2vcpu`'s script: two busy loops, one pinned to each vCPU, must both count on.
const SMP_SCRIPT: &str = r#"mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
read online < /sys/devices/system/cpu/online
if [ "$online" = 0-1 ]; then ok cpus-online "$online"; else fail cpus-online "'$online'"; fi
# Each loop appends a byte every 16384 rounds: a file's size only grows, where a number
# rewritten in place can be read half-written from the other vCPU.
: > /tmp/spin0
: > /tmp/spin1
spin='i=0; while :; do i=$((i+1)); [ $((i & 16383)) = 0 ] && echo -n . >> /tmp/spin$0; done'
taskset -c 0 sh -c "$spin" 0 &
p0=$!
taskset -c 1 sh -c "$spin" 1 &
p1=$!
sleep 2
a0=$(wc -c < /tmp/spin0); a1=$(wc -c < /tmp/spin1)
sleep 2
b0=$(wc -c < /tmp/spin0); b1=$(wc -c < /tmp/spin1)
set -- $(taskset -p $p0); m0=$6
set -- $(taskset -p $p1); m1=$6
kill $p0 $p1
if [ "$m0" = 1 ] && [ "$m1" = 2 ] && [ "${b0:-0}" -gt "${a0:-0}" ] && [ "${b1:-0}" -gt "${a1:-0}" ]; then
    ok smp-progress "cpu0 ${a0}->${b0}, cpu1 ${a1}->${b1} steps of 16384 rounds (masks $m0 $m1)"
else
    fail smp-progress "cpu0 '${a0}'->'${b0}' mask '$m0', cpu1 '${a1}'->'${b1}' mask '$m1'"
fi"#;

/// The kernel's lines for the ACPI tables Petrel writes (ACPICA prints each table's header as
/// `ACPI: SIG 0xADDRESS LENGTH (vREV OEMID ...)`): the RSDP, the XSDT, the FADT (`FACP`),
/// the MADT (`APIC`) and the DSDT.
pub const ACPI_TABLE_LINES: &[&str] = &[
    "ACPI: RSDP 0x",
    "ACPI: XSDT 0x",
    "ACPI: FACP 0x",
    "ACPI: APIC 0x",
    "ACPI: DSDT 0x",
];

/// What a kernel that found two CPUs through the MADT prints: ACPI is its source of the SMP
/// configuration, both CPUs are present (none left for hotplug), and both came up.
pub const ACPI_SMP_LINES: &[&str] = &[
    "ACPI: Using ACPI (MADT) for SMP configuration information",
    "CPU topo: Allowing 2 present CPUs plus 0 hotplug CPUs",
    "smp: Brought up 1 node, 2 CPUs",
];

/// What a kernel built with MP table support (`CONFIG_X86_MPPARSE`) prints when it finds
/// and uses Petrel's MP table: a kernel that must find its CPUs through ACPI must not.
pub const MP_TABLE_LINES: &[&str] = &["found SMP MP-table", "Intel MultiProcessor Specification"];

/// What the kernel prints when it mounted the root filesystem read-write.
pub const MOUNTED_RW: &str = "VFS: Mounted root (ext4 filesystem) on device";
/// What it prints when it mounted it read-only.
pub const MOUNTED_RO: &str = "VFS: Mounted root (ext4 filesystem) readonly on device";

/// The command line of a guest whose root is the first virtio disk. `init=/init` makes the
/// kernel print the same `Run /init as init process` line as with the initramfs.
pub fn root_cmdline(mode: &str) -> String {
    format!("{GUEST_CMDLINE} root=/dev/vda {mode} rootwait init=/init")
}

/// A scenario that boots `vmlinux` with 1 vCPU from `image` as its read-only root disk, no
/// initramfs: add the devices to its `extra_args`.
pub fn read_only_root_scenario(name: &str, vmlinux: &Path, image: &Path) -> Scenario {
    let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, Path::new(""), 1);
    s.initrd = None;
    s.cmdline = Some(root_cmdline("ro"));
    s.extra_args = vec!["--disk".into(), format!("{},ro", image.display())];
    s
}

/// The fields of `dumpe2fs -h` the checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// "Mount count".
    pub mount_count: u64,
    /// "Last mount time" ("n/a" when never mounted).
    pub last_mount_time: String,
}

/// Parses `dumpe2fs -h` output.
pub fn parse_dumpe2fs(text: &str) -> Option<Superblock> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim().to_owned())
        })
    };
    Some(Superblock {
        mount_count: field("Mount count")?.parse().ok()?,
        last_mount_time: field("Last mount time")?,
    })
}

/// The superblock of the ext4 image at `image`, read with `dumpe2fs -h`.
pub fn read_superblock(image: &Path) -> std::result::Result<Superblock, String> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run dumpe2fs: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_dumpe2fs(&text)
        .ok_or_else(|| format!("dumpe2fs -h {} gave no superblock", image.display()))
}

/// A device's counter from Petrel's `--metrics` JSON, by device name and counter name.
pub fn device_counter(metrics: &serde_json::Value, device: &str, counter: &str) -> Option<u64> {
    metrics["exit_stats"]["virtio"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == device)?["counters"][counter]
        .as_u64()
}

/// Whether Petrel's `--metrics` JSON says the VM stopped for `reason` (its `stop`, petrel's
/// `StopReason` by name: `Reset`, `PowerOff`) with exit code 0.
pub fn check_stop(
    metrics: &serde_json::Value,
    reason: &str,
) -> std::result::Result<String, String> {
    let stop = metrics["stop"].as_str();
    let code = metrics["exit_code"].as_i64();
    if stop == Some(reason) && code == Some(0) {
        Ok(format!(
            "petrel's --metrics: stop reason {reason}, exit code 0"
        ))
    } else {
        Err(format!(
            "petrel's --metrics says stop {stop:?} with exit code {code:?}, not {reason} with 0"
        ))
    }
}

/// Petrel's `--metrics` JSON at `path`.
pub fn read_metrics(path: &Path) -> std::result::Result<serde_json::Value, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("no metrics at {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("metrics at {} are not JSON: {e}", path.display()))
}

/// The last line of a Firecracker-style metrics file (one JSON object per line), parsed.
pub fn last_metrics_line(path: &Path) -> std::result::Result<serde_json::Value, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("no metrics at {}: {e}", path.display()))?;
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| format!("the metrics file {} is empty", path.display()))?;
    serde_json::from_str(last)
        .map_err(|e| format!("the last line of {} is not JSON: {e}", path.display()))
}

/// The SHA-256 of the file at `path`, in hex.
pub fn file_sha256(path: &Path) -> std::result::Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// Whether `disk` starts with the scenario's pattern, whose SHA-256 must be the
/// `guest_sum` the guest printed, and holds only zeros after it.
fn check_pattern(disk: &Path, guest_sum: Option<&str>) -> std::result::Result<String, String> {
    let bytes = fs::read(disk).map_err(|e| format!("reading {}: {e}", disk.display()))?;
    let want = guest_script::pattern(PATTERN_LEN, PATTERN_SEED);
    let sum = sha256_hex(&want);
    if bytes.len() < PATTERN_LEN || bytes[..PATTERN_LEN] != want[..] {
        let first_bad = bytes.iter().zip(&want).position(|(a, b)| a != b);
        return Err(format!(
            "{} does not hold the guest's pattern (first difference at byte {first_bad:?})",
            disk.display()
        ));
    }
    if bytes[PATTERN_LEN..].iter().any(|&b| b != 0) {
        return Err(format!("{} has data after the pattern", disk.display()));
    }
    match guest_sum {
        Some(g) if g == format!("sha256={sum}") => Ok(format!(
            "the host found the guest's {} MiB pattern on {} with the same {g}",
            PATTERN_LEN >> 20,
            disk.display()
        )),
        other => Err(format!(
            "the guest read back {other:?}, but the pattern's sha256 is {sum}"
        )),
    }
}

impl AfterCheck {
    /// Runs the checks, with the guest's serial log at hand: notes on success, failures
    /// otherwise.
    pub fn check(&self, serial: &str) -> std::result::Result<Vec<String>, Vec<String>> {
        let mut notes = Vec::new();
        let mut failures = Vec::new();
        match self {
            AfterCheck::RootAndPattern {
                image,
                metrics,
                data,
            } => {
                let root = AfterCheck::RootReadWrite {
                    image: image.clone(),
                    metrics: metrics.clone(),
                };
                match root.check(serial) {
                    Ok(n) => notes.extend(n),
                    Err(f) => failures.extend(f),
                }
                let guest_sum = guest_script::detail_of(serial, "blk-pattern");
                match check_pattern(data, guest_sum.as_deref()) {
                    Ok(n) => notes.push(n),
                    Err(f) => failures.push(f),
                }
            }
            AfterCheck::Stopped { metrics, reason } => {
                match read_metrics(metrics).and_then(|m| check_stop(&m, reason)) {
                    Ok(n) => notes.push(n),
                    Err(f) => failures.push(f),
                }
            }
            AfterCheck::Metrics { metrics, judge } => {
                match read_metrics(metrics).and_then(|m| judge(&m)) {
                    Ok(n) => notes.push(n),
                    Err(f) => failures.push(f),
                }
            }
            AfterCheck::MetricsLine { metrics, judge } => {
                match last_metrics_line(metrics).map(|m| judge(serial, &m)) {
                    Ok(Ok(n)) => notes.extend(n),
                    Ok(Err(f)) => failures.extend(f),
                    Err(f) => failures.push(f),
                }
            }
            AfterCheck::Unchanged { image, sha256 } => match file_sha256(image) {
                Ok(now) if now == *sha256 => {
                    notes.push(format!("{} is unchanged (sha256 {now})", image.display()))
                }
                Ok(now) => failures.push(format!(
                    "{} changed: sha256 {sha256} before, {now} after",
                    image.display()
                )),
                Err(e) => failures.push(e),
            },
            AfterCheck::RootReadWrite { image, metrics } => {
                match read_superblock(image) {
                    Ok(sb) if sb.mount_count >= 1 && sb.last_mount_time != "n/a" => {
                        notes.push(format!(
                            "the guest's write reached the disk: mount count {}, last mounted {}",
                            sb.mount_count, sb.last_mount_time
                        ))
                    }
                    Ok(sb) => failures.push(format!(
                        "the guest's mount left no trace on the disk: mount count {}, last mount \
                         time {}",
                        sb.mount_count, sb.last_mount_time
                    )),
                    Err(e) => failures.push(e),
                }
                match read_metrics(metrics) {
                    Ok(m) => {
                        let writes = device_counter(&m, "virtio-blk", "writes").unwrap_or(0);
                        let rng = device_counter(&m, "virtio-rng", "bytes").unwrap_or(0);
                        // Counters, not `driver_ready`: a guest that shuts down cleanly
                        // (`reboot -f`) resets its devices before the VMM writes its last
                        // metrics.
                        if writes == 0 {
                            failures.push("virtio-blk served no write".into());
                        }
                        if rng == 0 {
                            failures.push(
                                "virtio-rng served no bytes: the kernel did not use virtio_rng \
                                 as its hw_random source"
                                    .into(),
                            );
                        } else {
                            notes.push(format!(
                                "virtio-blk: {writes} writes; virtio-rng: {rng} bytes to the \
                                 kernel's hw_random core"
                            ));
                        }
                    }
                    Err(e) => failures.push(e),
                }
            }
            AfterCheck::RootReadOnly { image, metrics } => {
                match read_superblock(image) {
                    Ok(sb) if sb.mount_count == 0 => {
                        notes.push("the read-only disk is untouched (mount count 0)".into())
                    }
                    Ok(sb) => failures.push(format!(
                        "a read-only disk was written: mount count {}",
                        sb.mount_count
                    )),
                    Err(e) => failures.push(e),
                }
                match read_metrics(metrics) {
                    Ok(m) => {
                        let writes = device_counter(&m, "virtio-blk", "writes").unwrap_or(0);
                        let refused = device_counter(&m, "virtio-blk", "read_only_writes");
                        if writes > 0 {
                            failures.push(format!("{writes} writes reached a read-only disk"));
                        }
                        if let Some(r) = refused.filter(|r| *r > 0) {
                            notes.push(format!("{r} writes refused with IOERR"));
                        }
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        if failures.is_empty() {
            Ok(notes)
        } else {
            Err(failures)
        }
    }
}

/// Makes a fresh ext4 image at `image` holding busybox and the boot test's `/init`, which
/// prints the marker and reboots ([`init_script`]).
pub fn build_rootfs(image: &Path) -> Result<()> {
    guest_script::build_rootfs(image, &init_script(), &[], 32)
}

/// Installs what building a root filesystem image needs and makes `dir`, where the images go.
pub fn prepare_disks(dir: &Path) -> Result<()> {
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))
}

/// The virtio scenarios named in `names`, booting `vmlinux`; their disk images and metrics go
/// to `dir`.
pub fn scenarios(names: &[&str], vmlinux: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    if !names.iter().any(|n| SCENARIOS.contains(n)) {
        return Ok(Vec::new());
    }
    prepare_disks(dir)?;
    let mut out = Vec::new();
    for &name in names.iter().filter(|n| SCENARIOS.contains(n)) {
        let image = dir.join(format!("{name}.ext4"));
        let metrics = dir.join(format!("{name}.metrics.json"));
        let _ = fs::remove_file(&metrics);
        let vcpus = if name == "vmlinux-2vcpu" { 2 } else { 1 };
        let mut s = Scenario::new(name, vmlinux, KernelFormat::Elf, Path::new(""), vcpus);
        s.initrd = None;
        let disk = image.display().to_string();
        let metrics_arg = metrics.display().to_string();
        match name {
            "virtio-blk-root" => {
                let pattern = ExtraFile {
                    path: "pattern".into(),
                    data: guest_script::pattern(PATTERN_LEN, PATTERN_SEED),
                    mode: 0o644,
                };
                let script = guest_script::init_script(BLK_RW_SCRIPT);
                guest_script::build_rootfs(&image, &script, &[pattern], 32)?;
                let data = dir.join(format!("{name}.data.img"));
                let f = fs::File::create(&data).ctx(|| format!("creating {}", data.display()))?;
                f.set_len(DATA_DISK_MIB << 20)
                    .ctx(|| format!("sizing {}", data.display()))?;
                s.cmdline = Some(root_cmdline("rw"));
                s.extra_args = vec![
                    "--disk".into(),
                    disk,
                    "--disk".into(),
                    data.display().to_string(),
                    "--rng".into(),
                ];
                s.expect = vec![MOUNTED_RW];
                s.checks = vec!["blk-pattern", "rng"];
                s.after = vec![
                    AfterCheck::RootAndPattern {
                        image,
                        metrics: metrics.clone(),
                        data,
                    },
                    AfterCheck::Stopped {
                        metrics: metrics.clone(),
                        reason: "Reset",
                    },
                ];
            }
            "virtio-blk-ro" => {
                let compat32 = ExtraFile {
                    path: "bin/compat32".into(),
                    data: build_compat32(dir)?,
                    mode: 0o755,
                };
                // Ends with `poweroff -f`: the kernel powers off through ACPI's S5 and
                // Petrel must end with exit 0 and say it was a power-off.
                let script = guest_script::init_script_ending(BLK_RO_SCRIPT, Ending::PowerOff);
                guest_script::build_rootfs(&image, &script, &[compat32], 16)?;
                let sha256 = file_sha256(&image).map_err(Error::Other)?;
                s.cmdline = Some(root_cmdline("ro"));
                s.extra_args = vec!["--disk".into(), format!("{disk},ro")];
                s.expect = vec![MOUNTED_RO, POWER_DOWN_LINE];
                s.checks = vec!["ro-flag", "ro-file", "ro-device", "compat32"];
                s.after = vec![
                    AfterCheck::Unchanged { image, sha256 },
                    AfterCheck::Stopped {
                        metrics: metrics.clone(),
                        reason: "PowerOff",
                    },
                ];
            }
            "vmlinux-2vcpu" => {
                let script = guest_script::init_script(SMP_SCRIPT);
                guest_script::build_rootfs(&image, &script, &[], 16)?;
                s.cmdline = Some(root_cmdline("ro"));
                s.extra_args = vec!["--disk".into(), format!("{disk},ro")];
                s.checks = vec!["cpus-online", "smp-progress"];
                // Both CPUs through ACPI's MADT, and no MP table (the suite's kernel is built
                // without MP table support; Petrel still writes one).
                s.expect = ACPI_TABLE_LINES
                    .iter()
                    .chain(ACPI_SMP_LINES)
                    .copied()
                    .collect();
                s.forbid = MP_TABLE_LINES.to_vec();
            }
            other => {
                return Err(Error::Command {
                    command: format!("boot-test scenario {other}"),
                    detail: "unknown virtio scenario".into(),
                })
            }
        }
        s.extra_args.extend(["--metrics".into(), metrics_arg]);
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_metrics_line_is_read() {
        let path = std::env::temp_dir().join(format!("xtask-ml-{}.json", std::process::id()));
        fs::write(&path, "{\"n\": 1}\n{\"n\": 2}\n\n").unwrap();
        assert_eq!(last_metrics_line(&path).unwrap()["n"], 2);
        fs::write(&path, "").unwrap();
        assert!(last_metrics_line(&path).unwrap_err().contains("empty"));
        fs::write(&path, "{\"n\": 1}\n{\"n\"").unwrap();
        assert!(last_metrics_line(&path).unwrap_err().contains("not JSON"));
        fs::remove_file(&path).unwrap();
        assert!(last_metrics_line(&path).unwrap_err().contains("no metrics"));
    }

    #[test]
    fn dumpe2fs_fields() {
        let text = "Filesystem volume name:   petrel-root\nMount count:              1\n\
                    Last mount time:          Sat Nov 21 12:16:09 2026\n";
        let sb = parse_dumpe2fs(text).unwrap();
        assert_eq!(sb.mount_count, 1);
        assert_eq!(sb.last_mount_time, "Sat Nov 21 12:16:09 2026");
        let never = "Mount count:              0\nLast mount time:          n/a\n";
        assert_eq!(parse_dumpe2fs(never).unwrap().last_mount_time, "n/a");
        assert!(parse_dumpe2fs("nothing").is_none());
    }

    #[test]
    fn counters_from_metrics() {
        let m: serde_json::Value = serde_json::from_str(
            r#"{"exit_stats":{"virtio":[{"name":"virtio-blk","driver_ready":true,
                "counters":{"writes":2}},{"name":"virtio-rng","driver_ready":true,
                "counters":{"bytes":128}}]}}"#,
        )
        .unwrap();
        assert_eq!(device_counter(&m, "virtio-blk", "writes"), Some(2));
        assert_eq!(device_counter(&m, "virtio-rng", "bytes"), Some(128));
        assert_eq!(device_counter(&m, "virtio-net", "rx_frames"), None);
    }

    #[test]
    fn stop_reason_from_metrics() {
        let m: serde_json::Value =
            serde_json::from_str(r#"{"running":false,"stop":"PowerOff","exit_code":0}"#).unwrap();
        assert_eq!(
            check_stop(&m, "PowerOff").unwrap(),
            "petrel's --metrics: stop reason PowerOff, exit code 0"
        );
        let e = check_stop(&m, "Reset").unwrap_err();
        assert!(
            e.contains(r#"Some("PowerOff")"#) && e.contains("not Reset"),
            "{e}"
        );
        let fault: serde_json::Value =
            serde_json::from_str(r#"{"stop":"PowerOff","exit_code":1}"#).unwrap();
        assert!(check_stop(&fault, "PowerOff").is_err());
        assert!(check_stop(&serde_json::json!({}), "PowerOff").is_err());
    }

    #[test]
    fn root_cmdline_boots_init_from_the_disk() {
        let c = root_cmdline("ro");
        assert!(
            c.contains("root=/dev/vda ro") && c.contains("init=/init"),
            "{c}"
        );
    }
}

//! Seed inputs for every target, made from the recorded traffic of a Linux boot where there is
//! some (register accesses of the virtio and legacy devices, the exits they came from, the
//! kernel's command line) and built by hand where the boot has none to record (buffers in the
//! rings, a frame on the tap, API requests, statistics files).
//!
//! A recording is what `petrel` built with the `record-io` feature writes to
//! `PETREL_RECORD_IO`: one access per line, `pio|mmio r|w ADDR HEX`. The `fuzz-seeds` binary
//! turns one into `fuzz/corpus/<target>/<name>` files (see docs/fuzzing.md).

use std::collections::BTreeMap;

use crate::acpi;
use crate::legacy::{self, device_ports};
use crate::virtio::Op;
use crate::{api, loader, Encode};

/// One access of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Port I/O (else MMIO).
    pub pio: bool,
    /// A write (else a read).
    pub write: bool,
    /// Port or guest-physical address.
    pub addr: u64,
    /// The bytes written, or the bytes the device answered.
    pub data: Vec<u8>,
}

/// Parses a recording; lines that are not accesses are skipped.
pub fn parse_recording(text: &str) -> Vec<Access> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let pio = match f.next()? {
                "pio" => true,
                "mmio" => false,
                _ => return None,
            };
            let write = match f.next()? {
                "w" => true,
                "r" => false,
                _ => return None,
            };
            let addr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            let hex = f.next().unwrap_or("");
            let data = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()?;
            Some(Access {
                pio,
                write,
                addr,
                data,
            })
        })
        .collect()
}

/// A seed: target, file name, contents.
pub type Seed = (&'static str, String, Vec<u8>);

/// The size selector of a virtio `Op::Read`/`Op::Write` for a `len`-byte access.
fn virtio_size(len: usize) -> u8 {
    match len {
        1 => 1,
        2 => 2,
        8 => 3,
        _ => 0,
    }
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// The virtio target a DeviceID register value belongs to.
fn virtio_target(device_id: u32) -> Option<&'static str> {
    match device_id {
        1 => Some("virtio_net"),
        2 => Some("virtio_blk"),
        4 => Some("virtio_rng"),
        19 => Some("virtio_vsock"),
        _ => None,
    }
}

/// The most steps a seed made from a recording keeps (a few KiB).
const MAX_SEED_OPS: usize = 400;

/// Each virtio window's register accesses, as one `Op` sequence per device type.
fn virtio_windows(accesses: &[Access]) -> BTreeMap<&'static str, Vec<u8>> {
    let mut windows: BTreeMap<u64, Vec<&Access>> = BTreeMap::new();
    for a in accesses.iter().filter(|a| !a.pio) {
        windows.entry(a.addr & !0xfff).or_default().push(a);
    }
    let mut seeds = BTreeMap::new();
    for (base, list) in windows {
        // The device ID the guest read tells which device the window holds.
        let Some(id) = list
            .iter()
            .find(|a| !a.write && a.addr == base + 8 && a.data.len() == 4)
            .map(|a| le_value(&a.data) as u32)
        else {
            continue;
        };
        let Some(target) = virtio_target(id) else {
            continue;
        };
        let mut out = Vec::new();
        let mut queue_sel = 0u64;
        for a in list.iter().take(MAX_SEED_OPS) {
            let offset = (a.addr - base) as u16;
            let size = virtio_size(a.data.len());
            let mut value = le_value(&a.data);
            if a.write {
                match u64::from(offset) {
                    0x30 => queue_sel = value,
                    // Linux put its rings where our small RAM has nothing: move each queue's
                    // into a 16 KiB slot of the first region (descriptors, then the available
                    // ring 4 KiB on, the used ring 8 KiB on), so the device can serve them.
                    o @ (0x80 | 0x90 | 0xa0) => {
                        value = 0x4000 * (queue_sel % 4) + 0x1000 * ((o - 0x80) / 0x10)
                    }
                    0x84 | 0x94 | 0xa4 => value = 0,
                    _ => {}
                }
            }
            let op = if a.write {
                Op::Write {
                    offset,
                    size,
                    value,
                }
            } else {
                Op::Read { offset, size }
            };
            op.encode(&mut out);
        }
        seeds.entry(target).or_insert(out);
    }
    seeds
}

/// Descriptor flags (virtio v1.2, 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Steps that make one chain of `bufs` (address, length, device-writable) available on
/// `queue`, starting at descriptor `first`, and notify.
fn chain(queue: u8, first: u16, bufs: &[(u32, u32, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
        let index = first + i as u16;
        let mut flags = if writable { F_WRITE } else { 0 };
        if i + 1 < bufs.len() {
            flags |= F_NEXT;
        }
        Op::Desc {
            queue,
            index,
            addr,
            len,
            flags,
            next: index + 1,
        }
        .encode(&mut out);
    }
    Op::Publish { queue, head: first }.encode(&mut out);
    Op::Notify { queue }.encode(&mut out);
    out
}

fn bring_up() -> Vec<u8> {
    let mut out = Vec::new();
    Op::BringUp { features: u64::MAX }.encode(&mut out);
    out
}

/// Virtio seeds: the driver's initialization (`prefix` of the target), then the requests of a
/// booted guest (the rings' contents, which a register recording cannot show), hand-made.
fn virtio_requests(prefix: &dyn Fn(&str) -> Vec<u8>) -> Vec<Seed> {
    let mut seeds = Vec::new();
    // Buffers live in the second region.
    let (a, b, c) = (0x2_0000u32, 0x2_1000u32, 0x2_2000u32);

    // blk: a read of sector 0, a write of sector 1, a flush, a GET_ID.
    let mut blk = vec![0u8]; // read-write
    blk.extend(prefix("virtio_blk"));
    for (i, (ty, sector, len)) in [(0u32, 0u64, 512u32), (1, 1, 512), (4, 0, 0), (8, 0, 20)]
        .into_iter()
        .enumerate()
    {
        let mut hdr = ty.to_le_bytes().to_vec();
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&sector.to_le_bytes());
        Op::Poke {
            addr: a,
            bytes: &hdr,
        }
        .encode(&mut blk);
        let mut bufs = vec![(a, 16, false)];
        if len > 0 {
            bufs.push((b, len, ty != 1));
        }
        bufs.push((c, 1, true));
        blk.extend(chain(0, 4 * i as u16, &bufs));
    }
    seeds.push(("virtio_blk", "requests".into(), blk));

    // rng: two reads of entropy.
    let mut rng = prefix("virtio_rng");
    rng.extend(chain(0, 0, &[(a, 64, true)]));
    rng.extend(chain(0, 1, &[(b, 4096, true)]));
    seeds.push(("virtio_rng", "requests".into(), rng));

    // net: receive buffers posted, a frame from the network, a frame to it.
    let mut net = prefix("virtio_net");
    net.extend(chain(0, 0, &[(a, 1526, true)]));
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    frame.extend_from_slice(&[0u8; 28]);
    Op::Host {
        kind: 0,
        arg: 0,
        bytes: &frame,
    }
    .encode(&mut net);
    Op::DeviceEvent { source: 0 }.encode(&mut net);
    Op::Poke {
        addr: b,
        bytes: &frame,
    }
    .encode(&mut net);
    net.extend(chain(1, 0, &[(b, frame.len() as u32, false)]));
    Op::Host {
        kind: 1,
        arg: 0,
        bytes: &[],
    }
    .encode(&mut net);
    seeds.push(("virtio_net", "frames".into(), net));

    // vsock: receive buffers, a host connection, the guest's reply, data both ways.
    let mut vsock = prefix("virtio_vsock");
    for i in 0..4u16 {
        vsock.extend(chain(0, i, &[(a + u32::from(i) * 0x400, 0x400, true)]));
    }
    Op::Host {
        kind: 0,
        arg: 1234,
        bytes: b"hello",
    }
    .encode(&mut vsock);
    Op::DeviceEvent { source: 0 }.encode(&mut vsock);
    // OP_RESPONSE from guest port 1234 to the host's port (its number is the device's).
    let mut hdr = Vec::new();
    3u64.put(&mut hdr); // src_cid
    2u64.put(&mut hdr); // dst_cid
    1234u32.put(&mut hdr); // src_port
    1_073_741_824u32.put(&mut hdr); // dst_port (the first ephemeral port)
    0u32.put(&mut hdr); // len
    1u16.put(&mut hdr); // type: stream
    2u16.put(&mut hdr); // op: response
    0u32.put(&mut hdr); // flags
    0x1_0000u32.put(&mut hdr); // buf_alloc
    0u32.put(&mut hdr); // fwd_cnt
    Op::Poke {
        addr: c,
        bytes: &hdr,
    }
    .encode(&mut vsock);
    vsock.extend(chain(1, 0, &[(c, 44, false)]));
    Op::Host {
        kind: 2,
        arg: 0,
        bytes: &[],
    }
    .encode(&mut vsock);
    seeds.push(("virtio_vsock", "connection".into(), vsock));
    seeds.push((
        "balloon",
        "every-queue".into(),
        balloon_seed(prefix("balloon")),
    ));
    seeds
}

/// The balloon with every feature (queues: inflate, deflate, statistics, hinting, reporting)
/// doing what Linux's driver does: inflate four pages (one past RAM), deflate them, send its
/// statistics, answer a hinting run the host starts with its id, a free range and STOP,
/// report a free range; then the statistics timer fires and the host changes the target and
/// interval and reads the statistics.
fn balloon_seed(prefix: Vec<u8>) -> Vec<u8> {
    let (pfns, stats, cmd) = (0x2_0000u32, 0x2_1000u32, 0x2_2000u32);
    let mut out = vec![0b1_1111]; // deflate on OOM, interval 3 s, hinting, reporting
    out.extend(prefix);
    let pfn_bytes: Vec<u8> = [0x24u32, 0x25, 0x26, 0x100]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let poke = |out: &mut Vec<u8>, addr: u32, bytes: &[u8]| Op::Poke { addr, bytes }.encode(out);
    poke(&mut out, pfns, &pfn_bytes);
    out.extend(chain(0, 0, &[(pfns, 16, false)]));
    out.extend(chain(1, 0, &[(pfns, 16, false)]));
    let entries: Vec<u8> = [(4u16, 1u64 << 20), (5, 2 << 20), (99, 1)]
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    poke(&mut out, stats, &entries);
    out.extend(chain(2, 0, &[(stats, entries.len() as u32, false)]));
    let host = |out: &mut Vec<u8>, kind: u8, arg: u32| {
        Op::Host {
            kind,
            arg,
            bytes: &[],
        }
        .encode(out)
    };
    host(&mut out, 2, 1); // start hinting (id 2), acknowledging STOP
    poke(&mut out, cmd, &2u32.to_le_bytes());
    out.extend(chain(3, 0, &[(cmd, 4, false)]));
    out.extend(chain(3, 1, &[(0x2_8000, 0x2000, true)]));
    poke(&mut out, cmd + 4, &0u32.to_le_bytes());
    out.extend(chain(3, 2, &[(cmd + 4, 4, false)]));
    out.extend(chain(
        4,
        0,
        &[(0x2_c000, 0x1000, true), (0x2_e000, 0x2000, true)],
    ));
    Op::DeviceEvent { source: 0 }.encode(&mut out);
    host(&mut out, 0, 0);
    host(&mut out, 1, 5);
    host(&mut out, 4, 0);
    out
}

/// The legacy devices' accesses of a recording, as legacy-bus steps.
fn legacy_steps<'a>(accesses: impl Iterator<Item = &'a Access>) -> Vec<u8> {
    let mut out = Vec::new();
    for a in accesses.take(MAX_SEED_OPS) {
        let port = legacy::port_field(a.addr as u16);
        let size = match a.data.len() {
            2 => 1,
            4 => 2,
            _ => 0,
        };
        let op = if a.write {
            legacy::Op::Write {
                port,
                size,
                value: le_value(&a.data) as u32,
            }
        } else {
            legacy::Op::Read { port, size }
        };
        op.encode(&mut out);
    }
    out
}

const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_MMIO: u32 = 6;
/// Where `exit_reason` and the exit union sit in `struct kvm_run` (x86_64 ABI).
const RUN_EXIT_REASON: usize = 8;
const RUN_UNION: usize = 32;
/// Where KVM puts port-I/O data: the second page of the mapping.
const RUN_IO_DATA: usize = 4096;

/// A `kvm_exit` input: the region that `access` would have left after `KVM_RUN`.
fn kvm_exit_seed(access: &Access) -> Vec<u8> {
    let min = std::mem::size_of::<petrel_hv_sys::kvm_bindings::kvm_run>();
    let mut run = vec![0u8; RUN_IO_DATA + access.data.len()];
    if access.pio {
        run[RUN_EXIT_REASON..RUN_EXIT_REASON + 4].copy_from_slice(&KVM_EXIT_IO.to_le_bytes());
        run[RUN_UNION] = u8::from(access.write); // direction: 1 out
        run[RUN_UNION + 1] = access.data.len() as u8; // size
        run[RUN_UNION + 2..RUN_UNION + 4].copy_from_slice(&(access.addr as u16).to_le_bytes());
        run[RUN_UNION + 4..RUN_UNION + 8].copy_from_slice(&1u32.to_le_bytes()); // count
        run[RUN_UNION + 8..RUN_UNION + 16].copy_from_slice(&(RUN_IO_DATA as u64).to_le_bytes());
        run[RUN_IO_DATA..].copy_from_slice(&access.data);
    } else {
        run.truncate(min);
        run[RUN_EXIT_REASON..RUN_EXIT_REASON + 4].copy_from_slice(&KVM_EXIT_MMIO.to_le_bytes());
        run[RUN_UNION..RUN_UNION + 8].copy_from_slice(&access.addr.to_le_bytes());
        let n = access.data.len().min(8);
        run[RUN_UNION + 8..RUN_UNION + 8 + n].copy_from_slice(&access.data[..n]);
        run[RUN_UNION + 16..RUN_UNION + 20].copy_from_slice(&(n as u32).to_le_bytes());
        run[RUN_UNION + 20] = u8::from(access.write);
    }
    // The length selector that gives a region as long as KVM's.
    let sel = (crate::kvm::RUN_REGION_SIZE - min) as u16;
    let mut out = sel.to_le_bytes().to_vec();
    out.extend(run);
    out
}

/// Seeds from a recording of a Linux boot (empty if `recording` has no accesses).
pub fn from_recording(recording: &str) -> Vec<Seed> {
    let accesses = parse_recording(recording);
    let windows = virtio_windows(&accesses);
    let recorded: Vec<Seed> =
        virtio_requests(&|target| windows.get(target).cloned().unwrap_or_default());
    // Only devices the boot had: the others' seeds would start without an initialization.
    let mut seeds: Vec<Seed> = recorded
        .into_iter()
        .filter(|(target, _, _)| windows.contains_key(target))
        .map(|(target, _, bytes)| (target, "linux-boot-init-then-requests".to_string(), bytes))
        .collect();
    let ports = device_ports();
    let legacy: Vec<&Access> = accesses
        .iter()
        .filter(|a| a.pio && ports.contains(&(a.addr as u16)))
        .collect();
    seeds.push((
        "legacy_bus",
        "linux-boot-first-accesses".into(),
        legacy_steps(legacy.iter().copied()),
    ));
    // Past the console's chatter: the keyboard controller, the clock, POST codes.
    let quiet: Vec<&Access> = legacy
        .iter()
        .copied()
        .filter(|a| !(0x3f8..0x400).contains(&a.addr))
        .collect();
    seeds.push((
        "legacy_bus",
        "linux-boot-i8042-rtc-port80".into(),
        legacy_steps(quiet.into_iter()),
    ));
    // One exit of each shape the boot made: port in and out, MMIO read and write.
    let mut shapes = BTreeMap::new();
    for a in &accesses {
        shapes
            .entry((a.pio, a.write, a.data.len()))
            .or_insert_with(|| kvm_exit_seed(a));
    }
    for ((pio, write, len), bytes) in shapes {
        let name = format!(
            "linux-boot-{}-{}{len}",
            if pio { "pio" } else { "mmio" },
            if write { "write" } else { "read" }
        );
        seeds.push(("kvm_exit", name, bytes));
    }
    seeds
}

/// The command line `cargo xtask boot-test` boots Linux with, and the virtio devices' part.
pub const BOOT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off \
     virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6";

/// The requests `cargo xtask boot-test`'s API scenario sends, in order: (method, path, body).
pub const API_REQUESTS: &[(&str, &str, &str)] = &[
    ("GET", "/", ""),
    (
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path":"/k/vmlinux","initrd_path":"/k/initramfs.cpio","boot_args":"console=ttyS0 reboot=k panic=1"}"#,
    ),
    (
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":256,"smt":false}"#,
    ),
    (
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"/d/rootfs.ext4","is_root_device":true,"is_read_only":false,"rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}"#,
    ),
    (
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#,
    ),
    (
        "PUT",
        "/vsock",
        r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#,
    ),
    ("PUT", "/entropy", r#"{}"#),
    ("PATCH", "/machine-config", r#"{"mem_size_mib":512}"#),
    ("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#),
    ("PATCH", "/vm", r#"{"state":"Paused"}"#),
    ("GET", "/vm/config", ""),
];

/// A config file for the same machine.
pub const CONFIG_FILE: &str = r#"{
  "boot-source": {"kernel_image_path": "/k/vmlinux", "initrd_path": "/k/initramfs.cpio",
                  "boot_args": "console=ttyS0 reboot=k panic=1"},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
  "drives": [{"drive_id": "rootfs", "path_on_host": "/d/rootfs.ext4", "is_root_device": true,
              "is_read_only": true}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
  "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
  "entropy": {},
  "logger": {"log_path": "/tmp/log", "level": "Info"}
}"#;

fn http_bytes(method: &str, path: &str, body: &str) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    if !body.is_empty() {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// A 64-bit x86 ELF kernel: one PT_LOAD segment at 2 MiB and a PT_NOTE with the PVH entry.
pub fn elf_kernel() -> Vec<u8> {
    const PADDR: u64 = 0x20_0000;
    let mut image = vec![0u8; 0x300];
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // 64-bit
    image[5] = 1; // little-endian
    image[6] = 1; // version
    let put = |image: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        image[at..at + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut image, 0x10, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut image, 0x12, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut image, 0x14, &1u32.to_le_bytes());
    put(&mut image, 0x18, &(PADDR + 0x10).to_le_bytes()); // e_entry
    put(&mut image, 0x20, &64u64.to_le_bytes()); // e_phoff
    put(&mut image, 0x34, &64u16.to_le_bytes()); // e_ehsize
    put(&mut image, 0x36, &56u16.to_le_bytes()); // e_phentsize
    put(&mut image, 0x38, &2u16.to_le_bytes()); // e_phnum
                                                // PT_LOAD: offset 0x200, 0x100 bytes in the file, 0x3000 in memory.
    let load = 64;
    put(&mut image, load, &1u32.to_le_bytes());
    put(&mut image, load + 4, &7u32.to_le_bytes());
    put(&mut image, load + 8, &0x200u64.to_le_bytes());
    put(
        &mut image,
        load + 16,
        &(0xffff_ffff_8000_0000 | PADDR).to_le_bytes(),
    );
    put(&mut image, load + 24, &PADDR.to_le_bytes());
    put(&mut image, load + 32, &0x100u64.to_le_bytes());
    put(&mut image, load + 40, &0x3000u64.to_le_bytes());
    put(&mut image, load + 48, &0x1000u64.to_le_bytes());
    // PT_NOTE: the Xen PHYS32_ENTRY note at 0x180.
    let note = 64 + 56;
    put(&mut image, note, &4u32.to_le_bytes());
    put(&mut image, note + 8, &0x180u64.to_le_bytes());
    put(&mut image, note + 32, &20u64.to_le_bytes());
    put(&mut image, 0x180, &4u32.to_le_bytes()); // namesz
    put(&mut image, 0x184, &4u32.to_le_bytes()); // descsz
    put(&mut image, 0x188, &18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    put(&mut image, 0x18c, b"Xen\0");
    put(&mut image, 0x190, &((PADDR + 0x20) as u32).to_le_bytes());
    for b in &mut image[0x200..0x300] {
        *b = 0x90;
    }
    image[0x2ff] = 0xf4;
    image
}

/// A bzImage with the setup header of `real` (the boot's bzImage, when given) or a minimal
/// protocol 2.15 one, and a small protected-mode part.
pub fn bzimage(real: Option<&[u8]>) -> Vec<u8> {
    let mut image = vec![0u8; 2 * 512 + 0x1000];
    match real {
        Some(real) if real.len() >= 0x400 => image[..0x400].copy_from_slice(&real[..0x400]),
        _ => {
            image[0x202..0x206].copy_from_slice(b"HdrS");
            image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
            image[0x211] = 1; // LOADED_HIGH
            image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
            image[0x234] = 1; // relocatable
            image[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // KERNEL_64, ABOVE_4G
            image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
            image[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
            image[0x260..0x264].copy_from_slice(&0x20_0000u32.to_le_bytes());
        }
    }
    image[0x1f1] = 1; // setup_sects: one sector after the boot sector
    image[0x1f4..0x1f8].copy_from_slice(&(0x1000u32 / 16).to_le_bytes()); // syssize
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image
}

/// A small KVM statistics file laid out as KVM lays one out: header, id, descriptors, data.
pub fn stats_image() -> Vec<u8> {
    const NAME: usize = 48;
    let descs: [(&str, u32, u16, u32); 3] = [
        ("exits", 0, 1, 0),                  // cumulative
        ("halt_poll_success_hist", 4, 4, 8), // log histogram
        ("pages_4k", 1, 1, 40),              // instant
    ];
    let (id_offset, desc_offset) = (24u32, 24 + NAME as u32);
    let data_offset = desc_offset + (descs.len() * (16 + NAME)) as u32;
    let mut out = Vec::new();
    for v in [
        0,
        NAME as u32,
        descs.len() as u32,
        id_offset,
        desc_offset,
        data_offset,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    let mut id = b"kvm-1234/vcpu-0".to_vec();
    id.resize(NAME, 0);
    out.extend(id);
    for (name, flags, size, offset) in descs {
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&0i16.to_ne_bytes());
        out.extend_from_slice(&size.to_ne_bytes());
        out.extend_from_slice(&offset.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(NAME, 0);
        out.extend(n);
    }
    for v in [1234u64, 1, 2, 3, 4, 512] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out
}

/// The ACPI register block's seeds: what Linux writes to power off (ACPICA's
/// `acpi_hw_extended_sleep`: clear WAK_STS, then SLP_TYP and SLP_EN) and to reboot through the
/// FADT's reset register, and every read and write width at every port around the block.
fn acpi_pm_seeds() -> Vec<Seed> {
    use petrel_devices::acpi::{
        RESET_PORT, RESET_VALUE, S5_SLP_TYP, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_EN,
    };
    let steps = |ops: &[acpi::Op]| {
        let mut out = Vec::new();
        for op in ops {
            op.encode(&mut out);
        }
        out
    };
    let write = |port: u16, value: u8| acpi::Op::Write {
        port: acpi::port_field(port),
        size: 0,
        value: u32::from(value),
    };
    let poweroff = [
        write(SLEEP_STATUS_PORT, 0x80),
        write(SLEEP_CONTROL_PORT, (S5_SLP_TYP << 2) | SLP_EN),
    ];
    let mut scan = Vec::new();
    for port in 0x5fc..0x606 {
        for size in 0..3 {
            scan.push(acpi::Op::Read {
                port: acpi::port_field(port),
                size,
            });
            scan.push(acpi::Op::Write {
                port: acpi::port_field(port),
                size,
                value: 0x3434_3434,
            });
        }
    }
    vec![
        ("acpi_pm", "linux-poweroff".into(), steps(&poweroff)),
        (
            "acpi_pm",
            "linux-reset".into(),
            steps(&[write(RESET_PORT, RESET_VALUE)]),
        ),
        ("acpi_pm", "every-port-and-width".into(), steps(&scan)),
    ]
}

/// Seeds that need no recording: the virtio requests, the ACPI registers' writes, the
/// loader's kernels, the API's requests and config file, a statistics file. `bzimage` is the boot's bzImage, if at hand
/// (only its setup header is used).
pub fn built(bzimage_file: Option<&[u8]>) -> Vec<Seed> {
    let mut seeds = virtio_requests(&|_| bring_up());
    let mut cmdline = 2048u16.to_le_bytes().to_vec();
    cmdline.extend_from_slice(BOOT_CMDLINE.as_bytes());
    seeds.push(("loader_cmdline", "linux-boot".into(), cmdline));
    seeds.push((
        "loader_kernel",
        "elf-pvh".into(),
        loader::encode_kernel(1, 752, BOOT_CMDLINE, &elf_kernel()),
    ));
    seeds.push((
        "loader_kernel",
        "bzimage".into(),
        loader::encode_kernel(1, 752, BOOT_CMDLINE, &bzimage(bzimage_file)),
    ));
    seeds.push(("kvm_stats", "vcpu".into(), stats_image()));
    seeds.push((
        "mmds_net",
        "get-session".into(),
        crate::mmds::seed_session(),
    ));
    seeds.extend(acpi_pm_seeds());
    let mut pipelined = Vec::new();
    for (i, &(method, path, body)) in API_REQUESTS.iter().enumerate() {
        seeds.push((
            "api_request",
            format!("{i:02}-{}", method.to_lowercase()),
            api::encode_request(method, path, body.as_bytes()),
        ));
        pipelined.extend(http_bytes(method, path, body));
    }
    for (i, &(method, path, body)) in API_REQUESTS.iter().enumerate().take(4) {
        seeds.push((
            "api_http",
            format!("{i:02}-{}", method.to_lowercase()),
            http_bytes(method, path, body),
        ));
    }
    seeds.push(("api_http", "pipelined".into(), pipelined));
    seeds.push((
        "api_config_file",
        "machine".into(),
        CONFIG_FILE.as_bytes().to_vec(),
    ));
    seeds
}

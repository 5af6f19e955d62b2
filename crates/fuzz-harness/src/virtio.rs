//! The virtio-mmio transport with each device behind it, driven as a hostile guest would.
//!
//! The input is a sequence of [`Op`]s: register reads and writes through the MMIO [`Bus`] (so
//! an access outside the 4 KiB window or straddling it is routed the way the VMM routes it),
//! queue notifications and device events handled the way the event loop handles them,
//! descriptors and available-ring entries written into the rings the driver configured, raw
//! pokes of guest memory, a whole driver bring-up in one step, and host-side events of the
//! device (a frame from the tap stand-in, a host process connecting to the vsock socket).
//!
//! Guest memory is [`crate::mem::guarded_memory`]: two regions, a hole, guard pages. After
//! every step the harness checks:
//!
//! - the device did not panic (the transport catches device panics and sets
//!   DEVICE_NEEDS_RESET; in a fuzz build the panic hook aborts first, on stable the counter
//!   tells);
//! - a device in DEVICE_NEEDS_RESET or FAILED stays quiet: no write to guest memory, no
//!   interrupt, until the driver resets it;
//! - a used ring's index only moves forward, by at most the number of buffers the driver made
//!   available (counted from the index the device last wrote).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arbitrary::Unstructured;
use petrel_devices::virtio::balloon::BalloonConfig;
use petrel_devices::virtio::{
    Balloon, GuestMemoryMmap, PageDiscarder, VirtioDevice, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use petrel_devices::MMIO_WINDOW_SIZE;
use petrel_devices::{Block, Bus, BusBuilder, BusRange, Net, Rng, VirtioMmio, Vsock};
use vm_memory::{Bytes, GuestAddress};

use crate::mem::{guarded_memory, REGIONS};

mod op;
use op::access_size;
pub use op::Op;

/// Where the transport's window sits on the MMIO bus (the VMM's first virtio slot).
pub const MMIO_BASE: u64 = 0xd000_0000;

/// The most steps one input runs, so that each run stays short.
const MAX_OPS: usize = 512;
/// The most wake-ups one notification step gives the device (the event loop would give more,
/// later; the budget logic is exercised either way).
const MAX_WAKEUPS: usize = 8;

// Register offsets of virtio v1.2, 4.2.2, that the mirror follows: the transport's own.
use petrel_devices::virtio::mmio::regs::{
    REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_DESC_HIGH, REG_QUEUE_DESC_LOW, REG_QUEUE_DEVICE_HIGH, REG_QUEUE_DEVICE_LOW,
    REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DRIVER_LOW, REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY,
    REG_QUEUE_SEL, REG_STATUS,
};

/// The guest address an `addr` field stands for: mostly inside (or just around) the RAM of
/// [`crate::mem`], sometimes far above it.
fn guest_addr(addr: u32) -> u64 {
    if addr & 0x8000_0000 != 0 {
        u64::from(addr) << 4
    } else {
        u64::from(addr) % 0x4_0000
    }
}

/// One queue's rings, as the driver configured them.
#[derive(Debug, Clone, Copy, Default)]
struct Rings {
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

fn set_low(v: u64, low: u64) -> u64 {
    (v & !0xffff_ffff) | (low & 0xffff_ffff)
}

fn set_high(v: u64, high: u64) -> u64 {
    (v & 0xffff_ffff) | ((high & 0xffff_ffff) << 32)
}

/// A queue the device is serving, as the harness tracks it.
#[derive(Debug, Clone, Copy)]
struct Active {
    rings: Rings,
    /// The used index the device last wrote (0 at activation).
    used: u16,
    /// False once something other than the device may have written the used index during a
    /// device step (a ring overlapping another), so the check would be guessing.
    tracked: bool,
}

/// The device's host side, simulated with real descriptors.
trait HostSide {
    /// Handles `Op::Host`.
    fn host(&mut self, kind: u8, arg: u32, bytes: &[u8]);
}

/// No host side to speak of (rng), or none worth driving (blk: its file is read and written
/// by the device itself).
struct NoHost;

impl HostSide for NoHost {
    fn host(&mut self, _kind: u8, _arg: u32, _bytes: &[u8]) {}
}

/// The guest driver and the checks: the transport on a bus, the memory, what the driver
/// configured.
struct Rig<D: VirtioDevice + 'static> {
    mmio: Arc<Mutex<VirtioMmio<D>>>,
    bus: Bus,
    mem: GuestMemoryMmap,
    queue_sel: u64,
    staged: Vec<Rings>,
    active: Vec<Active>,
    max_sizes: Vec<u16>,
}

impl<D: VirtioDevice + 'static> Rig<D> {
    fn new(device: D) -> Self {
        let mem = guarded_memory();
        let max_sizes = device.queue_max_sizes().to_vec();
        let mmio = Arc::new(Mutex::new(
            VirtioMmio::new(device, mem.clone()).expect("transport"),
        ));
        let mut bus = BusBuilder::new("mmio");
        bus.insert(BusRange::new(MMIO_BASE, MMIO_WINDOW_SIZE), mmio.clone())
            .expect("window");
        Rig {
            mmio,
            bus: bus.build(),
            mem,
            queue_sel: 0,
            staged: vec![Rings::default(); max_sizes.len()],
            active: Vec::new(),
            max_sizes,
        }
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, VirtioMmio<D>> {
        self.mmio.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> u32 {
        self.dev().status()
    }

    fn read_u16(&self, addr: u64) -> Option<u16> {
        self.mem.read_obj(GuestAddress(addr)).ok()
    }

    /// Every byte of guest RAM, to compare across a step.
    fn ram(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for &(gpa, size) in &REGIONS {
            let start = all.len();
            all.resize(start + size, 0);
            self.mem
                .read_slice(&mut all[start..], GuestAddress(gpa))
                .expect("RAM region");
        }
        all
    }

    /// A register write through the bus, mirrored the way the transport takes it.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Ok(word) = <[u8; 4]>::try_from(data) {
            let value = u64::from(u32::from_le_bytes(word));
            let status = self.status();
            let settable = status & STATUS_FEATURES_OK != 0
                && status & (STATUS_DRIVER_OK | STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0;
            let sel = usize::try_from(self.queue_sel).ok();
            let queue = sel
                .and_then(|s| self.staged.get_mut(s))
                .filter(|_| settable);
            match (offset, queue) {
                (REG_QUEUE_SEL, _) => self.queue_sel = value,
                (REG_QUEUE_NUM, Some(q)) => q.size = value as u32,
                (REG_QUEUE_READY, Some(q)) => q.ready = value == 1,
                (REG_QUEUE_DESC_LOW, Some(q)) => q.desc = set_low(q.desc, value),
                (REG_QUEUE_DESC_HIGH, Some(q)) => q.desc = set_high(q.desc, value),
                (REG_QUEUE_DRIVER_LOW, Some(q)) => q.avail = set_low(q.avail, value),
                (REG_QUEUE_DRIVER_HIGH, Some(q)) => q.avail = set_high(q.avail, value),
                (REG_QUEUE_DEVICE_LOW, Some(q)) => q.used = set_low(q.used, value),
                (REG_QUEUE_DEVICE_HIGH, Some(q)) => q.used = set_high(q.used, value),
                _ => {}
            }
        }
        let was_running = self.dev().is_running();
        self.bus.write(MMIO_BASE + offset, data);
        let (running, status) = {
            let dev = self.dev();
            (dev.is_running(), dev.status())
        };
        if status == 0 {
            // Reset: the driver starts over.
            self.staged = vec![Rings::default(); self.max_sizes.len()];
            self.active.clear();
        }
        if running && !was_running {
            self.active = self
                .staged
                .iter()
                .map(|&rings| Active {
                    rings,
                    used: 0,
                    tracked: rings.ready,
                })
                .collect();
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }

    fn read_u32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.read(MMIO_BASE + offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The rings of `queue` as the driver sees them now: the active ones, else those staged.
    fn rings(&self, queue: u8) -> Option<Rings> {
        let q = usize::from(queue);
        let rings = match self.active.get(q) {
            Some(a) => a.rings,
            None => *self.staged.get(q % self.staged.len().max(1))?,
        };
        (rings.size != 0 && rings.size <= 0x8000).then_some(rings)
    }

    fn bring_up(&mut self, mask: u64) {
        self.write_u32(REG_STATUS, 0);
        self.write_u32(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write_u32(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.write_u32(REG_DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(self.read_u32(REG_DEVICE_FEATURES)) << (32 * sel);
        }
        let wanted = offered & mask | 1 << VIRTIO_F_VERSION_1;
        for sel in 0..2u32 {
            self.write_u32(REG_DRIVER_FEATURES_SEL, sel);
            self.write_u32(REG_DRIVER_FEATURES, (wanted >> (32 * sel)) as u32);
        }
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write_u32(REG_STATUS, s);
        for q in 0..self.max_sizes.len() as u32 {
            self.write_u32(REG_QUEUE_SEL, q);
            let size = self.read_u32(REG_QUEUE_NUM_MAX).min(16);
            // Each queue's rings in a page of its own at the start of the first region.
            let desc = 0x1000 * u64::from(q + 1);
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            self.write_u32(REG_QUEUE_NUM, size);
            for (reg, addr) in [
                (REG_QUEUE_DESC_LOW, desc),
                (REG_QUEUE_DRIVER_LOW, avail),
                (REG_QUEUE_DEVICE_LOW, used),
            ] {
                self.write_u32(reg, addr as u32);
                self.write_u32(reg + 4, (addr >> 32) as u32);
            }
            self.write_u32(REG_QUEUE_READY, 1);
        }
        self.write_u32(REG_STATUS, s | STATUS_DRIVER_OK);
    }

    /// Serves the queues whose notification fired, the way the event loop does, a few rounds.
    fn serve_queues(&mut self) {
        for _ in 0..MAX_WAKEUPS {
            let mut dev = self.dev();
            let ready: Vec<usize> = (0..dev.queue_events().len())
                .filter(|&i| dev.queue_events()[i].read().is_ok())
                .collect();
            if ready.is_empty() {
                return;
            }
            for i in ready {
                dev.process_queue_event(i);
            }
        }
    }

    /// Reads (and so clears) the transport's interrupt EventFd: whether an interrupt was
    /// raised since the last read. The harness builds its transports with one.
    fn take_interrupt(&self) -> bool {
        self.dev()
            .interrupt_evt()
            .expect("the harness's transports raise interrupts through an EventFd")
            .read()
            .is_ok()
    }

    /// Runs one step that reaches the device, with the checks around it.
    fn device_step(&mut self, step: impl FnOnce(&mut Self)) {
        let status = self.status();
        let stopped = status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0;
        let ram_before = stopped.then(|| self.ram());
        let _ = self.take_interrupt();
        let before: Vec<(Option<u16>, Option<u16>)> = self
            .active
            .iter()
            .map(|a| {
                (
                    self.read_u16(a.rings.used + 2),
                    self.read_u16(a.rings.avail + 2),
                )
            })
            .collect();

        step(self);

        let (status_after, stats, fault) = {
            let dev = self.dev();
            (
                dev.status(),
                dev.stats(),
                dev.last_fault().map(|e| e.to_string()),
            )
        };
        assert_eq!(
            stats.device_panics, 0,
            "the device panicked (caught by the transport): {fault:?}"
        );
        if let Some(ram_before) = ram_before {
            if status_after & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0 {
                assert!(
                    ram_before == self.ram(),
                    "a device in status {status:#x} wrote guest memory"
                );
                assert!(
                    !self.take_interrupt(),
                    "a device in status {status:#x} raised an interrupt"
                );
            }
        }
        let newly_broken = status & STATUS_DEVICE_NEEDS_RESET == 0
            && status_after & STATUS_DEVICE_NEEDS_RESET != 0;
        for (i, (u0, a0)) in before.into_iter().enumerate() {
            let Some(active) = self.active.get(i).copied() else {
                break;
            };
            let (u1, a1) = (
                self.read_u16(active.rings.used + 2),
                self.read_u16(active.rings.avail + 2),
            );
            let (Some(u0), Some(a0), Some(u1), Some(a1)) = (u0, a0, u1, a1) else {
                continue;
            };
            if !active.tracked || u1 == u0 {
                continue;
            }
            if newly_broken || a1 != a0 {
                // A step that ended in a fault, or that changed the available index: buffers
                // overlapping the rings; the index in memory may not be the device's.
                self.active[i].tracked = false;
                continue;
            }
            let moved = u1.wrapping_sub(active.used);
            let available = a1.wrapping_sub(active.used);
            assert!(
                moved <= available,
                "queue {i}: the used index went from {} to {u1}, {moved} entries, but the \
                 available index is {a1}: only {available} buffers were available",
                active.used
            );
            self.active[i].used = u1;
        }
    }

    fn op(&mut self, op: Op<'_>, host: &mut dyn HostSide) {
        match op {
            Op::Read { offset, size } => self.device_step(|r| {
                let mut buf = [0u8; 8];
                r.bus
                    .read(MMIO_BASE + u64::from(offset), &mut buf[..access_size(size)]);
            }),
            Op::Write {
                offset,
                size,
                value,
            } => self.device_step(|r| {
                let bytes = value.to_le_bytes();
                r.write(u64::from(offset), &bytes[..access_size(size)]);
            }),
            Op::Notify { queue } => self.device_step(|r| {
                r.write(
                    petrel_devices::virtio::QUEUE_NOTIFY_OFFSET,
                    &u32::from(queue).to_le_bytes(),
                );
                r.serve_queues();
            }),
            Op::DeviceEvent { source } => self.device_step(|r| {
                let mut dev = r.dev();
                let sources = dev.device().event_sources();
                if let Some(s) = sources.get(usize::from(source) % sources.len().max(1)) {
                    dev.process_device_event(s.token);
                }
                drop(dev);
                // Work the event left over comes back through the queues' notifications.
                r.serve_queues();
            }),
            Op::Poke { addr, bytes } => {
                let _ = self.mem.write_slice(bytes, GuestAddress(guest_addr(addr)));
            }
            Op::Desc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                if let Some(rings) = self.rings(queue) {
                    let at = rings.desc + 16 * (u64::from(index) % u64::from(rings.size));
                    let mut d = [0u8; 16];
                    d[..8].copy_from_slice(&guest_addr(addr).to_le_bytes());
                    d[8..12].copy_from_slice(&len.to_le_bytes());
                    d[12..14].copy_from_slice(&flags.to_le_bytes());
                    d[14..].copy_from_slice(&next.to_le_bytes());
                    let _ = self.mem.write_slice(&d, GuestAddress(at));
                }
            }
            Op::Publish { queue, head } => {
                if let Some(rings) = self.rings(queue) {
                    let idx = self.read_u16(rings.avail + 2).unwrap_or(0);
                    let slot = rings.avail + 4 + 2 * (u64::from(idx) % u64::from(rings.size));
                    let _ = self.mem.write_obj(head, GuestAddress(slot));
                    let _ = self
                        .mem
                        .write_obj(idx.wrapping_add(1), GuestAddress(rings.avail + 2));
                }
            }
            Op::BringUp { features } => self.device_step(|r| r.bring_up(features)),
            Op::Host { kind, arg, bytes } => host.host(kind, arg, bytes),
        }
    }
}

/// Runs the steps of `data` on `device`, with `host` as its host side; returns the rig for
/// tests to look at.
fn drive<D: VirtioDevice + 'static>(device: D, host: &mut dyn HostSide, data: &[u8]) -> Rig<D> {
    let mut rig = Rig::new(device);
    run_ops(&mut rig, host, data);
    rig
}

/// Runs the steps of `data` on `rig`, with `host` as the device's host side.
fn run_ops<D: VirtioDevice + 'static>(rig: &mut Rig<D>, host: &mut dyn HostSide, data: &[u8]) {
    let mut u = Unstructured::new(data);
    for _ in 0..MAX_OPS {
        let Ok(op) = Op::take(&mut u) else { break };
        rig.op(op, host);
    }
}

/// A name no other run of any process uses, under the temporary directory.
fn scratch_path(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "petrel-fuzz-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// virtio-blk over a real 64 KiB file (read-only when the first byte is odd): a memfd, so
/// that each run gets a fresh one without touching the disk.
pub fn blk(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // SAFETY: the name is a NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"petrel-fuzz-blk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(0x1_0000).expect("disk size");
    let device = Block::new(file, mode & 1 == 1, "fuzz".into()).expect("block device");
    drive(device, &mut NoHost, rest);
}

/// [`blk`] for tests: the rig after the run.
#[cfg(test)]
fn blk_rig(data: &[u8]) -> Rig<Block> {
    // SAFETY: the name is a NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"petrel-fuzz-blk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(0x1_0000).unwrap();
    let device = Block::new(file, data[0] & 1 == 1, "fuzz".into()).unwrap();
    drive(device, &mut NoHost, &data[1..])
}

/// virtio-rng.
pub fn rng(data: &[u8]) {
    drive(Rng::new().expect("rng device"), &mut NoHost, data);
}

/// The balloon's page discarder in the harness: frees nothing, and finds a bug in any range
/// that is empty, not page-aligned, or not inside one region of guest RAM.
#[derive(Debug)]
struct CheckedDiscarder;

impl PageDiscarder for CheckedDiscarder {
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        assert!(
            len > 0 && gpa % 4096 == 0 && len % 4096 == 0,
            "balloon discard of [{gpa:#x}, +{len:#x}) is empty or not page-aligned"
        );
        assert!(
            REGIONS
                .iter()
                .any(|&(start, size)| gpa >= start && gpa + len <= start + size as u64),
            "balloon discard of [{gpa:#x}, +{len:#x}) is not inside guest RAM"
        );
        Ok(())
    }
}

/// The host's calls on the balloon (what the API makes after boot), by `kind` modulo 5:
/// a new target of `arg` MiB and its configuration change, a new statistics interval, start
/// hinting (acknowledging STOP when `arg` is odd), stop hinting, and the reads.
struct BalloonHost(Arc<Mutex<VirtioMmio<Balloon>>>);

impl HostSide for BalloonHost {
    fn host(&mut self, kind: u8, arg: u32, _bytes: &[u8]) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match kind % 5 {
            0 => {
                if m.device_mut().set_target_mib(arg % 4).is_ok() {
                    m.notify_config_change();
                }
            }
            1 => {
                let _ = m.device_mut().set_stats_interval(arg as u16);
            }
            2 => {
                let _ = m.device_mut().start_hinting(arg & 1 == 1);
            }
            3 => {
                let _ = m.device_mut().stop_hinting();
            }
            _ => {
                let d = m.device();
                if let Ok(stats) = d.stats() {
                    assert!(stats.target_mib <= 3 && stats.target_pages == stats.target_mib * 256);
                }
                let _ = d.hinting_status();
                let _ = d.metrics();
                let _ = d.config();
            }
        }
    }
}

/// virtio-balloon with the features of the first byte (bit 0 deflate on OOM, bits 1-2 the
/// statistics interval, bit 3 free page hinting, bit 4 free page reporting), on 4 MiB of
/// "guest memory" as far as targets go (the device checks ranges against the real regions),
/// with the host's calls as host steps.
pub fn balloon(data: &[u8]) {
    balloon_rig(data);
}

/// [`balloon`], returning the rig after the run (none for an empty input).
fn balloon_rig(data: &[u8]) -> Option<Rig<Balloon>> {
    let (&mode, rest) = data.split_first()?;
    let config = BalloonConfig {
        amount_mib: u32::from(mode >> 5) % 4,
        deflate_on_oom: mode & 1 == 1,
        stats_polling_interval_s: u16::from(mode >> 1 & 3),
        free_page_hinting: mode & 8 != 0,
        free_page_reporting: mode & 16 != 0,
    };
    let device = Balloon::new(config, 4 << 20, Arc::new(CheckedDiscarder)).expect("balloon");
    let mut rig = Rig::new(device);
    let mut host = BalloonHost(rig.mmio.clone());
    run_ops(&mut rig, &mut host, rest);
    Some(rig)
}

/// The tap stand-in's other end: a `SOCK_SEQPACKET` peer, one frame per message like a tap.
struct TapPeer(File);

impl HostSide for TapPeer {
    /// Even `kind`: the network sends `bytes` (virtio-net header included) to the guest; odd:
    /// the network reads what the guest sent.
    fn host(&mut self, kind: u8, _arg: u32, bytes: &[u8]) {
        if kind % 2 == 0 {
            let _ = self.0.write(bytes);
        } else {
            let mut buf = [0u8; 2048];
            while matches!(self.0.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}

/// virtio-net over a socket pair standing in for the tap.
pub fn net(data: &[u8]) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which has room for them; the
    // result is checked.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (ours, peer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let device =
        Net::from_tap_file(ours, "fuzz0".into(), [0x06, 0, 0, 0, 0, 1]).expect("net device");
    drive(device, &mut TapPeer(peer), data);
}

/// The guest port a host listener serves for guest-initiated vsock connections.
pub const VSOCK_LISTEN_PORT: u32 = 52;
/// The most host connections one vsock input opens.
const MAX_HOST_CONNECTIONS: usize = 8;

/// Host processes around a vsock device: clients of its socket, and a listener for one port.
struct VsockHost {
    uds: PathBuf,
    listener: UnixListener,
    streams: Vec<UnixStream>,
}

impl HostSide for VsockHost {
    /// `kind` modulo 5: 0 connect and send `CONNECT <arg>\n` then `bytes`; 1 write `bytes` on
    /// connection `arg`; 2 read what connection `arg` has; 3 close connection `arg`; 4 accept a
    /// guest-initiated connection on [`VSOCK_LISTEN_PORT`].
    fn host(&mut self, kind: u8, arg: u32, bytes: &[u8]) {
        let pick = |n: usize| (arg as usize) % n.max(1);
        match kind % 5 {
            0 if self.streams.len() < MAX_HOST_CONNECTIONS => {
                if let Ok(mut s) = UnixStream::connect(&self.uds) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(format!("CONNECT {}\n", arg % 1024).as_bytes());
                    let _ = s.write(bytes);
                    self.streams.push(s);
                }
            }
            1 => {
                let i = pick(self.streams.len());
                if let Some(s) = self.streams.get_mut(i) {
                    let _ = s.write(bytes);
                }
            }
            2 => {
                let i = pick(self.streams.len());
                if let Some(s) = self.streams.get_mut(i) {
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            3 => {
                let i = pick(self.streams.len());
                if i < self.streams.len() {
                    self.streams.swap_remove(i);
                }
            }
            _ if self.streams.len() < MAX_HOST_CONNECTIONS => {
                if let Ok((s, _)) = self.listener.accept() {
                    let _ = s.set_nonblocking(true);
                    self.streams.push(s);
                }
            }
            _ => {}
        }
    }
}

/// virtio-vsock with its Unix socket in a fresh directory, guest CID 3.
pub fn vsock(data: &[u8]) {
    let dir = scratch_path("vsock");
    std::fs::create_dir(&dir).expect("vsock directory");
    let uds = dir.join("v.sock");
    let device = Vsock::new(3, uds.clone()).expect("vsock device");
    let mut port = uds.clone().into_os_string();
    port.push(format!("_{VSOCK_LISTEN_PORT}"));
    let listener = UnixListener::bind(&port).expect("vsock port listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut host = VsockHost {
        uds,
        listener,
        streams: Vec::new(),
    };
    drive(device, &mut host, data);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_back_as_encoded() {
        let ops = [
            Op::Read {
                offset: 0x70,
                size: 0,
            },
            Op::Write {
                offset: 0x70,
                size: 0,
                value: 0xf,
            },
            Op::Notify { queue: 1 },
            Op::DeviceEvent { source: 2 },
            Op::Poke {
                addr: 0x2_0000,
                bytes: b"abc",
            },
            Op::Desc {
                queue: 0,
                index: 3,
                addr: 0x2_1000,
                len: 512,
                flags: 3,
                next: 4,
            },
            Op::Publish { queue: 0, head: 3 },
            Op::BringUp { features: u64::MAX },
            Op::Host {
                kind: 0,
                arg: 1234,
                bytes: b"CONNECT",
            },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            op.encode(&mut bytes);
        }
        let mut u = Unstructured::new(&bytes);
        let back: Vec<Op> = std::iter::from_fn(|| Op::take(&mut u).ok()).collect();
        assert_eq!(back, ops);
    }

    /// The seeds reach the device's request handling: the recorded Linux initialization (rings
    /// moved into the fuzz RAM) and the one-step bring-up both leave it running, and the four
    /// requests that follow are all answered.
    #[test]
    fn blk_seeds_bring_the_device_up_and_get_answers() {
        let mut seeds = crate::seeds::built(None);
        seeds.extend(crate::seeds::from_recording(include_str!(
            "../tests/data/linux-boot-virtio.txt"
        )));
        let blk: Vec<_> = seeds
            .into_iter()
            .filter(|(target, _, _)| *target == "virtio_blk")
            .collect();
        assert_eq!(blk.len(), 2);
        for (_, name, data) in blk {
            let rig = blk_rig(&data);
            assert!(rig.dev().is_running(), "{name}: status {:#x}", rig.status());
            assert_eq!(rig.active[0].used, 4, "{name}");
        }
    }

    /// The balloon's seed reaches every queue: pages freed (one refused), statistics read,
    /// a hinting run answered and acknowledged, ranges reported, the held statistics buffer
    /// given back on the timer.
    #[test]
    fn the_balloon_seed_reaches_every_queue() {
        let seeds = crate::seeds::built(None);
        let (_, _, data) = seeds
            .iter()
            .find(|(target, _, _)| *target == "balloon")
            .expect("a balloon seed");
        let rig = balloon_rig(data).unwrap();
        let dev = rig.dev();
        assert!(dev.is_running(), "status {:#x}", dev.status());
        let b = dev.device();
        let m = b.metrics();
        assert_eq!((m.inflated_pages, m.inflate_refused_pages), (3, 1));
        assert_eq!(m.deflate_count, 1);
        assert_eq!(
            (m.free_page_hint_count, m.free_page_hint_freed),
            (1, 0x2000)
        );
        assert_eq!(
            (m.free_page_report_count, m.free_page_report_freed),
            (2, 0x3000)
        );
        assert_eq!(b.stats().unwrap().free_memory, Some(1 << 20));
        assert_eq!(b.hinting_status().unwrap().host_cmd, 1);
        assert_eq!(b.config().stats_polling_interval_s, 5);
        assert_eq!(rig.active[2].used, 1);
    }
}

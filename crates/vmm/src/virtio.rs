//! Putting virtio-mmio devices in a VM: opening what the user named (disk images, a tap),
//! placing each device in its own 4 KiB window of the MMIO gap with its own interrupt line,
//! announcing it on the kernel command line, and wiring its queues (ioeventfd) and interrupt
//! (irqfd) so that neither a notify nor an interrupt needs a trip through Petrel's vCPU loop.

use petrel_util::lock_ignoring_poison;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use petrel_devices::virtio::balloon::{Balloon, PageDiscarder};
use petrel_devices::virtio::mmio::{cmdline_device, QUEUE_NOTIFY_OFFSET};
use petrel_devices::MMIO_WINDOW_SIZE;
use petrel_devices::{Block, BusBuilder, BusRange, Net, Rng, VirtioDevice, VirtioMmio, Vsock};
use petrel_guest_mem::alloc::{IrqAllocator, MmioAllocator};
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::kvm_ioctls::IoEventAddress;
use petrel_hv_sys::Vm;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{DiskConfig, VmConfig};
use crate::error_chain;
use crate::snapshot::SavedVirtio;
use crate::{Error, Result};
use petrel_devices::virtio::VirtioMmioState;

/// A device opened, of its own type (so that the VMM can reach it later: a new backing file
/// for a disk, new rate limits).
#[derive(Debug)]
enum Opened {
    Block(Block),
    Net(Net),
    Rng(Rng),
    Vsock(Vsock),
    Balloon(Balloon),
}

impl Opened {
    fn name(&self) -> &'static str {
        match self {
            Opened::Block(d) => d.name(),
            Opened::Net(d) => d.name(),
            Opened::Rng(d) => d.name(),
            Opened::Vsock(d) => d.name(),
            Opened::Balloon(d) => d.name(),
        }
    }
}

/// A device opened and placed, not yet attached to a VM.
#[derive(Debug)]
struct Planned {
    device: Opened,
    base: u64,
    gsi: u32,
}

/// The virtio devices of a VM, opened and placed.
#[derive(Debug, Default)]
pub struct VirtioPlan {
    devices: Vec<Planned>,
    /// `virtio_mmio.device=4K@0xBASE:GSI` for each device, space-separated.
    pub cmdline: String,
    /// The interrupt line of the VM generation ID device (the first after the virtio
    /// devices'), announced in the DSDT and raised through the ACPI Generic Event Device.
    pub vmgenid_gsi: u32,
}

impl VirtioPlan {
    /// Each device's window base and interrupt line, in order.
    pub fn windows(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.devices.iter().map(|d| (d.base, d.gsi))
    }
}

fn bad(field: String, value: &str, why: String) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        why,
    }
}

fn open_disk(disk: &DiskConfig, index: usize, id: String) -> Result<Block> {
    let shown = disk.path.display().to_string();
    let field = || format!("disks[{index}].path");
    let file = OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path)
        .map_err(|e| {
            let why = match e.kind() {
                ErrorKind::NotFound => "no such file".to_string(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem if !disk.read_only => {
                    format!("cannot be opened for writing ({e}); add `,ro` for a read-only disk")
                }
                _ => e.to_string(),
            };
            bad(field(), &shown, why)
        })?;
    if file.metadata().map(|m| !m.is_file()).unwrap_or(true) {
        return Err(bad(
            field(),
            &shown,
            "not a regular file (a raw disk image)".into(),
        ));
    }
    let mut block =
        Block::new(file, disk.read_only, id).map_err(|e| bad(field(), &shown, e.to_string()))?;
    block.set_rate_limiter(&disk.rate_limit);
    // Saved in snapshots, and named when a restored disk does not match.
    block.set_path(&disk.path);
    Ok(block)
}

/// Gives the host memory behind the pages a balloon frees back to the host, through guest
/// RAM's own mapping ([`GuestRam::discard`]).
#[derive(Debug)]
struct RamDiscarder(GuestRam);

impl PageDiscarder for RamDiscarder {
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        self.0.discard(gpa, len).map_err(std::io::Error::other)
    }
}

/// Opens every virtio device `config` names and gives each a window and an interrupt line.
/// Everything here is user input: errors are [`Error::InvalidConfig`] (exit code 2), naming
/// the config field. `ram` is the guest's RAM, which a balloon frees pages of.
pub fn plan(config: &VmConfig, ram: &GuestRam) -> Result<VirtioPlan> {
    let mut devices: Vec<Opened> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        // vda, vdb, ... as Linux names them when no id is given.
        let id = disk
            .id
            .clone()
            .unwrap_or_else(|| format!("vd{}", (b'a' + (i % 26) as u8) as char));
        if ids.contains(&id) {
            return Err(bad(
                format!("disks[{i}].id"),
                &id,
                format!("duplicate disk id `{id}`"),
            ));
        }
        ids.push(id.clone());
        devices.push(Opened::Block(open_disk(disk, i, id)?));
    }
    let mmds = match &config.mmds {
        Some(m) if config.nets.iter().any(|n| n.mmds) => {
            Some(crate::mmds::service(m, config.mmds_service.as_ref())?)
        }
        _ => None,
    };
    for (i, net) in config.nets.iter().enumerate() {
        if net.mac[0] & 1 != 0 {
            let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
            return Err(bad(
                format!("nets[{i}].mac"),
                &mac,
                "a multicast address; a NIC needs a unicast one".into(),
            ));
        }
        if config.nets[..i].iter().any(|n| n.tap == net.tap) {
            return Err(bad(
                format!("nets[{i}].tap"),
                &net.tap,
                "the tap is used by another interface already".into(),
            ));
        }
        let mut dev = Net::open_tap(&net.tap, net.mac)
            .map_err(|e| bad(format!("nets[{i}].tap"), &net.tap, error_chain(&e)))?;
        dev.set_rate_limiters(&net.rx_rate_limit, &net.tx_rate_limit);
        if let (true, Some(service)) = (net.mmds, &mmds) {
            if let Some(detour) = crate::mmds::detour(config, service) {
                dev.set_detour(detour);
            }
        }
        devices.push(Opened::Net(dev));
    }
    if let Some(v) = &config.vsock {
        // 0-2 are reserved (hypervisor, local, host): virtio v1.2, 5.10.4.
        if v.cid < 3 || v.cid >= u64::from(u32::MAX) {
            return Err(bad(
                "vsock.cid".into(),
                &v.cid.to_string(),
                format!("reserved; use 3 to {}", u32::MAX - 1),
            ));
        }
        let shown = v.uds.display().to_string();
        let dev = Vsock::new(v.cid, v.uds.clone())
            .map_err(|e| bad("vsock.uds".into(), &shown, error_chain(&e)))?;
        devices.push(Opened::Vsock(dev));
    }
    if config.rng {
        let rng = match &config.rng_rate_limit {
            Some(limit) => Rng::with_rate_limiter(limit),
            None => Rng::new(),
        };
        devices.push(Opened::Rng(rng.map_err(Error::devices)?));
    }
    if let Some(b) = &config.balloon {
        let discarder = std::sync::Arc::new(RamDiscarder(ram.clone()));
        let balloon = Balloon::new(*b, config.mem_size, discarder).map_err(|e| {
            bad(
                "balloon.amount_mib".into(),
                &b.amount_mib.to_string(),
                e.to_string(),
            )
        })?;
        devices.push(Opened::Balloon(balloon));
    }
    let mut windows = MmioAllocator::default();
    let mut irqs = IrqAllocator::default();
    let mut plan = VirtioPlan::default();
    for device in devices {
        let too_many = |e: petrel_guest_mem::alloc::AllocError| {
            bad("virtio devices".into(), device.name(), e.to_string())
        };
        let base = windows
            .allocate(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE)
            .map_err(too_many)?;
        let gsi = irqs.allocate().map_err(too_many)?;
        if !plan.cmdline.is_empty() {
            plan.cmdline.push(' ');
        }
        plan.cmdline.push_str(&cmdline_device(base, gsi));
        plan.devices.push(Planned { device, base, gsi });
    }
    plan.vmgenid_gsi = irqs.allocate().map_err(|e| {
        bad(
            "virtio devices".into(),
            "the VM generation ID",
            format!("no interrupt line left for it after the virtio devices: {e}"),
        )
    })?;
    Ok(plan)
}

/// A transport and its device, by the device's type.
#[derive(Debug, Clone)]
pub enum DeviceHandle {
    /// A virtio-blk disk.
    Block(Arc<Mutex<VirtioMmio<Block>>>),
    /// A virtio-net interface.
    Net(Arc<Mutex<VirtioMmio<Net>>>),
    /// A virtio-rng device.
    Rng(Arc<Mutex<VirtioMmio<Rng>>>),
    /// A virtio-vsock device.
    Vsock(Arc<Mutex<VirtioMmio<Vsock>>>),
    /// A virtio-balloon device.
    Balloon(Arc<Mutex<VirtioMmio<Balloon>>>),
}

/// A device attached to a VM, kept for reporting and for changes while the VM runs.
#[derive(Debug, Clone)]
pub struct AttachedDevice {
    /// Window base.
    pub base: u64,
    /// Interrupt line.
    pub gsi: u32,
    /// The transport and its device.
    pub handle: DeviceHandle,
}

/// A virtio device locked for a snapshot: no queue work runs on it until this is dropped.
pub struct HeldDevice<'a> {
    base: u64,
    gsi: u32,
    state: VirtioMmioState,
    _guard: Box<dyn Held + 'a>,
}

/// Anything kept only to be dropped later (a lock guard).
trait Held {}
impl<T> Held for T {}

impl std::fmt::Debug for HeldDevice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldDevice")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HeldDevice<'_> {
    /// The device's window, line and state, as the state file keeps them.
    pub fn save_state(&self) -> SavedVirtio {
        SavedVirtio {
            base: self.base,
            gsi: self.gsi,
            state: self.state.clone(),
        }
    }
}

/// What one virtio device did, for `--exit-stats` and `--metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The device's name (virtio-blk, virtio-net, virtio-rng).
    pub name: String,
    /// Its MMIO window.
    pub base: String,
    /// Its interrupt line.
    pub gsi: u32,
    /// Whether the guest's driver set DRIVER_OK and the device is running.
    pub driver_ready: bool,
    /// The features the driver accepted.
    pub driver_features: String,
    /// The device's counters.
    pub counters: BTreeMap<String, u64>,
}

impl AttachedDevice {
    /// Locks the device and reads its state; it stays locked (no queue work, no guest memory
    /// written by it) until the returned value is dropped.
    pub fn hold(&self) -> HeldDevice<'_> {
        fn held<'a, D: VirtioDevice + 'static>(
            d: &'a AttachedDevice,
            t: &'a Mutex<VirtioMmio<D>>,
        ) -> HeldDevice<'a> {
            let guard = lock_ignoring_poison(t);
            HeldDevice {
                base: d.base,
                gsi: d.gsi,
                state: guard.save_state(),
                _guard: Box::new(guard),
            }
        }
        match &self.handle {
            DeviceHandle::Block(t) => held(self, t),
            DeviceHandle::Net(t) => held(self, t),
            DeviceHandle::Rng(t) => held(self, t),
            DeviceHandle::Vsock(t) => held(self, t),
            DeviceHandle::Balloon(t) => held(self, t),
        }
    }

    /// Puts a saved state into this (freshly attached) device.
    pub fn restore_state(
        &self,
        state: &VirtioMmioState,
    ) -> std::result::Result<(), petrel_devices::VirtioError> {
        fn restore<D: VirtioDevice>(
            t: &Mutex<VirtioMmio<D>>,
            state: &VirtioMmioState,
        ) -> std::result::Result<(), petrel_devices::VirtioError> {
            lock_ignoring_poison(t).restore_state(state)
        }
        match &self.handle {
            DeviceHandle::Block(t) => restore(t, state),
            DeviceHandle::Net(t) => restore(t, state),
            DeviceHandle::Rng(t) => restore(t, state),
            DeviceHandle::Vsock(t) => restore(t, state),
            DeviceHandle::Balloon(t) => restore(t, state),
        }
    }

    /// The device's report now.
    pub fn report(&self) -> DeviceReport {
        match &self.handle {
            DeviceHandle::Block(t) => self.report_of(t),
            DeviceHandle::Net(t) => self.report_of(t),
            DeviceHandle::Rng(t) => self.report_of(t),
            DeviceHandle::Vsock(t) => self.report_of(t),
            DeviceHandle::Balloon(t) => self.report_of(t),
        }
    }

    fn report_of<D: VirtioDevice>(&self, transport: &Mutex<VirtioMmio<D>>) -> DeviceReport {
        let t = lock_ignoring_poison(transport);
        DeviceReport {
            name: t.device().name().to_string(),
            base: format!("{:#x}", self.base),
            gsi: self.gsi,
            driver_ready: t.is_running(),
            driver_features: format!("{:#x}", t.driver_features()),
            counters: t
                .device()
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

/// The event-loop subscribers that run the devices' work.
pub type Subscribers = Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Where one device goes.
struct Wiring<'a> {
    vm: &'a Vm,
    ram: &'a GuestRam,
    base: u64,
    gsi: u32,
}

impl Wiring<'_> {
    /// Puts `device` behind a transport: its window on the bus, its irqfd, one ioeventfd per
    /// queue, and the transport on the event loop.
    fn attach<D: VirtioDevice + 'static>(
        &self,
        device: D,
        mmio: &mut BusBuilder,
        subscribers: &mut Subscribers,
    ) -> Result<Arc<Mutex<VirtioMmio<D>>>> {
        // The transport raises its interrupt through this irqfd: KVM injects `gsi` on each write.
        let irqfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?;
        self.vm.register_irqfd(&irqfd, self.gsi)?;
        let transport =
            VirtioMmio::with_interrupt(device, self.ram.memory().clone(), Box::new(irqfd))
                .map_err(Error::devices)?;
        for (index, evt) in transport.queue_events().iter().enumerate() {
            let addr = IoEventAddress::Mmio(self.base + QUEUE_NOTIFY_OFFSET);
            self.vm.register_ioeventfd(evt, addr, Some(index as u32))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(
            BusRange::new(self.base, MMIO_WINDOW_SIZE),
            transport.clone(),
        )
        .map_err(Error::devices)?;
        subscribers.push(transport.clone());
        Ok(transport)
    }
}

/// Attaches the planned devices: MMIO window on the bus, irqfd for the interrupt, one
/// ioeventfd per queue (datamatch = queue index).
pub fn attach(
    plan: VirtioPlan,
    vm: &Vm,
    ram: &GuestRam,
    mmio: &mut BusBuilder,
) -> Result<(Subscribers, Vec<AttachedDevice>)> {
    let mut subscribers: Subscribers = Vec::new();
    let mut attached = Vec::new();
    for Planned { device, base, gsi } in plan.devices {
        let wire = Wiring { vm, ram, base, gsi };
        let handle = match device {
            Opened::Block(d) => DeviceHandle::Block(wire.attach(d, mmio, &mut subscribers)?),
            Opened::Net(d) => DeviceHandle::Net(wire.attach(d, mmio, &mut subscribers)?),
            Opened::Rng(d) => DeviceHandle::Rng(wire.attach(d, mmio, &mut subscribers)?),
            Opened::Vsock(d) => DeviceHandle::Vsock(wire.attach(d, mmio, &mut subscribers)?),
            Opened::Balloon(d) => DeviceHandle::Balloon(wire.attach(d, mmio, &mut subscribers)?),
        };
        attached.push(AttachedDevice { base, gsi, handle });
    }
    Ok((subscribers, attached))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BalloonConfig;

    #[test]
    fn a_balloon_comes_after_the_other_devices_and_must_fit_in_guest_ram() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let mut config = VmConfig::builtin_kernel("test kernel", Vec::new());
        config.mem_size = 64 << 20;
        config.rng = true;
        config.balloon = Some(BalloonConfig {
            amount_mib: 64,
            stats_polling_interval_s: 1,
            ..BalloonConfig::default()
        });
        let plan = plan(&config, &ram).unwrap();
        let names: Vec<&str> = plan.devices.iter().map(|d| d.device.name()).collect();
        assert_eq!(names, ["virtio-rng", "virtio-balloon"]);
        let windows: Vec<(u64, u32)> = plan.windows().collect();
        assert_eq!(windows[1].0, windows[0].0 + MMIO_WINDOW_SIZE);
        assert_eq!(windows[1].1, windows[0].1 + 1);

        config.balloon = Some(BalloonConfig {
            amount_mib: 65,
            ..BalloonConfig::default()
        });
        let e = super::plan(&config, &ram).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid balloon.amount_mib `65`: "),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn freed_pages_of_a_balloon_leave_guest_ram() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x10_0000, &[0xaa; 0x2000]).unwrap();
        let discarder = RamDiscarder(ram.clone());
        discarder.discard(0x10_0000, 0x1000).unwrap();
        let mut page = [0u8; 0x2000];
        ram.read(0x10_0000, &mut page).unwrap();
        assert!(page[..0x1000].iter().all(|&b| b == 0));
        assert!(page[0x1000..].iter().all(|&b| b == 0xaa));
        let e = discarder.discard(8 << 20, 0x1000).unwrap_err();
        assert!(e.to_string().contains("0x800000"), "{e}");
    }
}

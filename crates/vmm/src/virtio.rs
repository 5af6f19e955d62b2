//! Putting virtio-mmio devices in a VM: opening what the user named (disk images, a tap),
//! placing each device in its own 4 KiB window of the MMIO gap with its own interrupt line,
//! announcing it on the kernel command line, and wiring its queues (ioeventfd) and interrupt
//! (irqfd) so that neither a notify nor an interrupt needs a trip through Petrel's vCPU loop.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use petrel_devices::virtio::mmio::{cmdline_device, QUEUE_NOTIFY_OFFSET};
use petrel_devices::MMIO_WINDOW_SIZE;
use petrel_devices::{Block, BusBuilder, BusRange, Net, Rng, VirtioDevice, VirtioMmio, Vsock};
use petrel_guest_mem::alloc::{IrqAllocator, MmioAllocator};
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::kvm_ioctls::IoEventAddress;
use petrel_hv_sys::Vm;

use serde::Serialize;

use crate::config::{DiskConfig, VmConfig};
use crate::error_chain;
use crate::{Error, Result};

/// A device opened and placed, not yet attached to a VM.
#[derive(Debug)]
struct Planned {
    device: Box<dyn VirtioDevice>,
    base: u64,
    gsi: u32,
}

/// The virtio devices of a VM, opened and placed.
#[derive(Debug, Default)]
pub struct VirtioPlan {
    devices: Vec<Planned>,
    /// `virtio_mmio.device=4K@0xBASE:GSI` for each device, space-separated.
    pub cmdline: String,
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
    Block::new(file, disk.read_only, id).map_err(|e| bad(field(), &shown, e.to_string()))
}

/// Opens every virtio device `config` names and gives each a window and an interrupt line.
/// Everything here is user input: errors are [`Error::InvalidConfig`] (exit code 2), naming
/// the config field.
pub fn plan(config: &VmConfig) -> Result<VirtioPlan> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
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
        devices.push(Box::new(open_disk(disk, i, id)?));
    }
    if let Some(net) = &config.net {
        if net.mac[0] & 1 != 0 {
            let mac = net.mac.map(|b| format!("{b:02x}")).join(":");
            return Err(bad(
                "net.mac".into(),
                &mac,
                "a multicast address; a NIC needs a unicast one".into(),
            ));
        }
        let dev = Net::open_tap(&net.tap, net.mac)
            .map_err(|e| bad("net.tap".into(), &net.tap, error_chain(&e)))?;
        devices.push(Box::new(dev));
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
        devices.push(Box::new(dev));
    }
    if config.rng {
        devices.push(Box::new(Rng::new().map_err(Error::Devices)?));
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
    Ok(plan)
}

/// A device attached to a VM, kept for reporting.
#[derive(Debug, Clone)]
pub struct AttachedDevice {
    /// Window base.
    pub base: u64,
    /// Interrupt line.
    pub gsi: u32,
    /// The transport and its device.
    pub transport: Arc<Mutex<VirtioMmio<Box<dyn VirtioDevice>>>>,
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
    /// The device's report now.
    pub fn report(&self) -> DeviceReport {
        let t = self.transport.lock().unwrap_or_else(|p| p.into_inner());
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
        let transport = VirtioMmio::new(device, ram.memory().clone()).map_err(Error::Devices)?;
        vm.register_irqfd(transport.interrupt_evt(), gsi)?;
        for (index, evt) in transport.queue_events().iter().enumerate() {
            let addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            vm.register_ioeventfd(evt, addr, Some(index as u32))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(BusRange::new(base, MMIO_WINDOW_SIZE), transport.clone())
            .map_err(Error::Devices)?;
        subscribers.push(transport.clone());
        attached.push(AttachedDevice {
            base,
            gsi,
            transport,
        });
    }
    Ok((subscribers, attached))
}

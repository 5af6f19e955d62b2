//! Constructing a VM's devices: the console output thread and its destination, the port-I/O
//! bus (COM1; for Linux guests the i8042, the CMOS RTC and the POST code port; for raw payloads
//! the debug port), the MMIO bus (the boot timer and the virtio devices), and their interrupts
//! (irqfds where the VM has an in-kernel irqchip).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};

use petrel_devices::acpi::{AcpiPm, VmGenId, ACPI_PM_BASE, ACPI_PM_PORT_LEN};
use petrel_devices::port80::{PostCodeSink, POST_CODE_PORT, POST_CODE_PORT_LEN};
use petrel_devices::rtc::{CmosRtc, SystemClock, RTC_BASE, RTC_PORT_LEN};
use petrel_devices::SERIAL_PORT_LEN;
use petrel_devices::{BusBuilder, BusDevice, BusRange, NonBlockingWriter, OutputThread, Serial};
use petrel_devices::{COM1_BASE, COM1_IRQ, I8042, I8042_BASE, I8042_KBD_IRQ, I8042_PORT_LEN};
use petrel_guest_mem::layout::VMGENID_START;
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::Vm;
use vmm_sys_util::eventfd::EventFd;

use super::{Subscriber, SERIAL_OUTPUT_BUFFER};
use crate::boot_timer::{BootTimer, BOOT_TIMER_ADDR, BOOT_TIMER_LEN};
use crate::config::SerialConfig;
use crate::debug_port::{DebugPort, DEBUG_PORT, DEBUG_PORT_LEN};
use crate::io::PlatformIo;
use crate::snapshot::SavedVmGenId;
use crate::timeline::Timeline;
use crate::virtio::{self, VirtioPlan};
use crate::{Error, Result};

/// Where serial output goes, and the thread draining it.
#[derive(Debug)]
pub(super) struct ConsoleOutput {
    writer: NonBlockingWriter,
    pub(super) thread: OutputThread,
}

/// The destination of console output, opened (so a bad path is reported) before anything runs.
pub(super) fn open_console_destination(
    serial: &SerialConfig,
) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match serial {
        SerialConfig::None => None,
        SerialConfig::Stdio => Some(Box::new(std::io::stdout())),
        SerialConfig::File(path) => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::OpenSerialFile {
                    path: path.clone(),
                    source,
                })?,
        )),
    })
}

impl ConsoleOutput {
    pub(super) fn start(dest: Option<Box<dyn Write + Send>>) -> Result<Option<Self>> {
        let Some(dest) = dest else { return Ok(None) };
        let (writer, thread) =
            NonBlockingWriter::spawn("petrel-console", dest, SERIAL_OUTPUT_BUFFER)
                .map_err(Error::devices)?;
        Ok(Some(ConsoleOutput { writer, thread }))
    }

    fn sink(this: &Option<Self>) -> Box<dyn Write + Send> {
        match this {
            Some(c) => Box::new(c.writer.clone()),
            None => Box::new(std::io::sink()),
        }
    }
}

fn device<D: BusDevice + 'static>(d: D) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(d))
}

/// An EventFd registered as the irqfd of `gsi` when the VM has an irqchip.
fn interrupt(vm: &Vm, gsi: u32, irqchip: bool) -> Result<EventFd> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    if irqchip {
        vm.register_irqfd(&evt, gsi)?;
    }
    Ok(evt)
}

/// Where a Linux guest's VM generation ID comes from.
#[derive(Debug, Clone, Copy)]
pub(super) enum GenerationId<'a> {
    /// A new VM: a fresh random ID at the layout's address, on the plan's GSI.
    New,
    /// A restored VM: the saved address, ID and GSI (the caller regenerates it once the VM's
    /// interrupt state is restored).
    Saved(&'a SavedVmGenId),
    /// None (raw payloads, and snapshots taken before Petrel had one).
    Absent,
}

/// The VM generation ID device and the GSI its irqfd raises.
#[derive(Debug)]
pub(super) struct GenerationIdDevice {
    pub(super) gsi: u32,
    pub(super) device: Arc<Mutex<VmGenId>>,
}

impl GenerationIdDevice {
    /// Its state, for a snapshot.
    pub(super) fn save(&self) -> SavedVmGenId {
        SavedVmGenId {
            gsi: self.gsi,
            state: petrel_util::lock_ignoring_poison(&self.device).state(),
        }
    }
}

/// The buses and the devices the VMM itself keeps talking to.
pub(super) struct Devices {
    pub(super) io: Arc<PlatformIo>,
    pub(super) serial: Arc<Mutex<Serial>>,
    pub(super) i8042: Option<Arc<Mutex<I8042>>>,
    pub(super) rtc: Option<Arc<Mutex<CmosRtc>>>,
    pub(super) input_ready: EventFd,
    /// Devices whose work runs on the event loop (virtio).
    pub(super) subscribers: Vec<Subscriber>,
    /// The virtio devices, for reports.
    pub(super) virtio_devices: Vec<virtio::AttachedDevice>,
    /// The VM generation ID (Linux guests).
    pub(super) vmgenid: Option<GenerationIdDevice>,
}

pub(super) fn build_devices(
    vm: &Vm,
    ram: &GuestRam,
    linux: bool,
    console: &Option<ConsoleOutput>,
    timeline: &Timeline,
    virtio_plan: VirtioPlan,
    generation_id: GenerationId<'_>,
) -> Result<Devices> {
    let irqchip = linux;
    let mut i8042 = None;
    let mut rtc_handle = None;
    let mut pio = BusBuilder::new("port I/O");
    let serial_irq = interrupt(vm, COM1_IRQ, irqchip)?;
    let input_ready = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let serial = Serial::with_input_ready(
        serial_irq,
        ConsoleOutput::sink(console),
        input_ready.try_clone().map_err(Error::EventFd)?,
    );
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(BusRange::new(COM1_BASE, SERIAL_PORT_LEN), serial.clone())
        .map_err(Error::devices)?;
    if linux {
        let kbd_irq = interrupt(vm, I8042_KBD_IRQ, irqchip)?;
        let kbd = Arc::new(Mutex::new(I8042::new(kbd_irq)));
        pio.insert(BusRange::new(I8042_BASE, I8042_PORT_LEN), kbd.clone())
            .map_err(Error::devices)?;
        i8042 = Some(kbd);
        let rtc = Arc::new(Mutex::new(CmosRtc::new(Box::new(SystemClock), ram.size())));
        pio.insert(BusRange::new(RTC_BASE, RTC_PORT_LEN), rtc.clone())
            .map_err(Error::devices)?;
        rtc_handle = Some(rtc);
        let post_timeline = timeline.clone();
        let post = PostCodeSink::with_hook(move |c| {
            post_timeline.mark_guest(format!("POST code {:#04x} (port 0x80)", c.code), c.at)
        });
        pio.insert(
            BusRange::new(POST_CODE_PORT, POST_CODE_PORT_LEN),
            device(post),
        )
        .map_err(Error::devices)?;
        // The FADT's sleep and reset registers: S5 powers the VM off, the reset value resets it.
        pio.insert(
            BusRange::new(ACPI_PM_BASE, ACPI_PM_PORT_LEN),
            device(AcpiPm::new()),
        )
        .map_err(Error::devices)?;
    } else {
        let debug = DebugPort::new(ConsoleOutput::sink(console));
        pio.insert(BusRange::new(DEBUG_PORT, DEBUG_PORT_LEN), device(debug))
            .map_err(Error::devices)?;
    }
    let mut mmio = BusBuilder::new("MMIO");
    mmio.insert(
        BusRange::new(BOOT_TIMER_ADDR, BOOT_TIMER_LEN),
        device(BootTimer::new(timeline.clone())),
    )
    .map_err(Error::devices)?;
    let vmgenid = match generation_id {
        GenerationId::Absent => None,
        GenerationId::New => {
            let gsi = virtio_plan.vmgenid_gsi;
            let evt = interrupt(vm, gsi, irqchip)?;
            let address = petrel_guest_mem::vm_memory::GuestAddress(VMGENID_START);
            let id = VmGenId::new(ram.memory(), address, evt).map_err(Error::devices)?;
            Some(GenerationIdDevice {
                gsi,
                device: Arc::new(Mutex::new(id)),
            })
        }
        GenerationId::Saved(saved) => {
            let evt = interrupt(vm, saved.gsi, irqchip)?;
            let id = VmGenId::from_state(&saved.state, evt).map_err(Error::devices)?;
            Some(GenerationIdDevice {
                gsi: saved.gsi,
                device: Arc::new(Mutex::new(id)),
            })
        }
    };
    let (subscribers, virtio_devices) = virtio::attach(virtio_plan, vm, ram, &mut mmio)?;
    let io = Arc::new(PlatformIo {
        pio: pio.build(),
        mmio: mmio.build(),
    });
    Ok(Devices {
        io,
        serial,
        i8042,
        rtc: rtc_handle,
        input_ready,
        subscribers,
        virtio_devices,
        vmgenid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_destinations_open_before_anything_runs() {
        assert!(open_console_destination(&SerialConfig::None)
            .unwrap()
            .is_none());
        let missing = std::path::PathBuf::from("/nonexistent-dir/console.log");
        let Err(e) = open_console_destination(&SerialConfig::File(missing.clone())) else {
            panic!("a console file in a missing directory was opened");
        };
        assert!(
            matches!(&e, Error::OpenSerialFile { path, .. } if *path == missing),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::EXIT_BAD_INPUT);
    }

    #[test]
    fn console_output_appends_to_its_file_and_flushes_at_the_end() {
        let path = std::env::temp_dir().join(format!("petrel-vmm-console-{}", std::process::id()));
        std::fs::write(&path, b"earlier run\n").unwrap();
        let dest = open_console_destination(&SerialConfig::File(path.clone())).unwrap();
        let console = ConsoleOutput::start(dest).unwrap();
        ConsoleOutput::sink(&console)
            .write_all(b"guest says hi\n")
            .unwrap();
        console
            .unwrap()
            .thread
            .flush_and_join_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text, "earlier run\nguest says hi\n");
        // Without a destination, output goes nowhere and no thread starts.
        assert!(ConsoleOutput::start(None).unwrap().is_none());
        ConsoleOutput::sink(&None).write_all(b"dropped").unwrap();
    }
}

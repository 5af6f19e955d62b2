//! The AML of the DSDT's body: the objects that tell an ACPI guest which devices it has, where
//! they decode and which interrupts they raise (ACPI 6.5, 5.2.11.1 and chapter 6), built with
//! rust-vmm's `acpi_tables::aml`.
//!
//! [`DsdtDevices::dsdt_body`] returns the whole body for a VM; the loader wraps it in the
//! DSDT's header. Each function below returns one device's part, a `Device` with an absolute
//! path under `\_SB_` (or the root's `\_S5_`), so the parts can be concatenated in any order:
//!
//! | function | object | IDs | resources |
//! |---|---|---|---|
//! | [`s5_aml`] | `\_S5_` | - | `Package { 5, 5, 0, 0 }`: SLP_TYP of S5 |
//! | [`com1_aml`] | `\_SB_.COM1` | `PNP0501` (16550A) | I/O 0x3f8/8, IRQ 4 |
//! | [`i8042_aml`] | `\_SB_.PS2K` | `PNP0303` (PS/2 keyboard controller) | I/O 0x60/1 and 0x64/1, IRQ 1 |
//! | [`cmos_rtc_aml`] | `\_SB_.RTC_` | `PNP0B00` (AT RTC) | I/O 0x70/2, IRQ 8 |
//! | [`virtio_mmio_aml`] | `\_SB_.Vnnn` | `LNRO0005` (Linux's virtio-mmio) | Memory32Fixed window, its GSI |
//! | [`vmgenid_aml`] | `\_SB_.VGEN` | `VMGENCTR`, `VM_Gen_Counter` | `ADDR`: the ID's address |
//! | [`ged_aml`] | `\_SB_.GED_` | `ACPI0013` (Generic Event Device) | the VMGenID GSI; `_EVT` notifies `VGEN` |
//!
//! Interrupts are Extended Interrupt descriptors (6.4.3.6): consumer, edge-triggered, active
//! high, exclusive, as Petrel raises them through KVM irqfds (a pulse on an I/O APIC pin). The
//! i8042 entry lets Linux's i8042 driver find the controller on an ACPI guest (it looks for
//! `PNP0303` there), so the host's Ctrl-Alt-Del still reaches the guest.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate, IO, ZERO,
};
use acpi_tables::Aml;

use super::pm::S5_SLP_TYP;
use super::{Error, Result};
use crate::{COM1_BASE, COM1_IRQ, I8042_BASE, I8042_KBD_IRQ, RTC_BASE};

/// The IRQ the CMOS RTC is wired to on a PC (IBM PC/AT Technical Reference).
const RTC_IRQ: u32 = 8;
/// Offset of the i8042's command/status port from its data port.
const I8042_COMMAND_PORT_OFFSET: u64 = 4;
/// The most virtio-mmio windows the DSDT names (`V000` to `VFFF`).
pub const MAX_MMIO_WINDOWS: usize = 0x1000;
/// The notification value the VMGenID device gets when the ID changed: 0x80, the first
/// device-specific value (ACPI 6.5, 5.6.6), which Linux's vmgenid driver listens to.
const VMGENID_NOTIFY: u8 = 0x80;
/// Where the VMGenID device lives in the namespace (the GED's `_EVT` notifies it).
const VMGENID_PATH: &str = "\\_SB_.VGEN";

/// A virtio-mmio transport's window and interrupt, as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioWindow {
    /// Guest-physical base of the window (below 4 GiB).
    pub base: u64,
    /// Size of the window (`MMIO_WINDOW_SIZE` for Petrel's transports).
    pub size: u64,
    /// The GSI its irqfd raises.
    pub gsi: u32,
}

/// Where the VMGenID lives and which GSI its notification comes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmGenIdWiring {
    /// Guest-physical address of the 16-byte ID ([`VmGenId::address`](super::VmGenId::address)).
    pub address: u64,
    /// The GSI of the VMGenID's irqfd; the Generic Event Device listens on it.
    pub gsi: u32,
}

/// The devices a VM's DSDT describes. `\_S5_` is always there (the [`AcpiPm`](super::AcpiPm)
/// register block is what powers the VM off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsdtDevices {
    /// COM1, the 16550A at 0x3f8.
    pub com1: bool,
    /// The i8042 PS/2 controller at 0x60/0x64.
    pub i8042: bool,
    /// The CMOS RTC at 0x70.
    pub cmos_rtc: bool,
    /// The virtio-mmio windows, named `V000`, `V001`, ... in this order.
    pub virtio_mmio: Vec<VirtioMmioWindow>,
    /// The VMGenID device and the Generic Event Device that notifies it, if the VM has one.
    pub vmgenid: Option<VmGenIdWiring>,
}

impl DsdtDevices {
    /// The legacy devices every Petrel VM has (COM1, the i8042, the CMOS RTC), no virtio
    /// windows, no VMGenID.
    pub fn pc() -> Self {
        DsdtDevices {
            com1: true,
            i8042: true,
            cmos_rtc: true,
            ..Self::default()
        }
    }

    /// The DSDT's body: the AML of every device here, after `\_S5_`.
    ///
    /// # Errors
    ///
    /// [`Error::TooManyMmioWindows`] past [`MAX_MMIO_WINDOWS`], [`Error::MmioWindowAbove4G`]
    /// for a window that does not end at or below 4 GiB.
    pub fn dsdt_body(&self) -> Result<Vec<u8>> {
        if self.virtio_mmio.len() > MAX_MMIO_WINDOWS {
            return Err(Error::TooManyMmioWindows {
                count: self.virtio_mmio.len(),
                max: MAX_MMIO_WINDOWS,
            });
        }
        let mut body = s5_aml();
        if self.com1 {
            body.extend(com1_aml());
        }
        if self.i8042 {
            body.extend(i8042_aml());
        }
        if self.cmos_rtc {
            body.extend(cmos_rtc_aml());
        }
        for (index, window) in self.virtio_mmio.iter().enumerate() {
            body.extend(virtio_mmio_aml(index, window)?);
        }
        if let Some(vmgenid) = self.vmgenid {
            body.extend(vmgenid_aml(vmgenid.address));
            body.extend(ged_aml(vmgenid.gsi));
        }
        Ok(body)
    }
}

fn aml_bytes(object: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.to_aml_bytes(&mut bytes);
    bytes
}

/// `Name (_CRS, ResourceTemplate () { resources })`.
fn crs(resources: Vec<&dyn Aml>) -> Name {
    Name::new(Path::new("_CRS"), &ResourceTemplate::new(resources))
}

/// An Extended Interrupt descriptor: consumer, edge-triggered, active high, exclusive.
fn edge_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// An I/O descriptor for `len` ports at the fixed address `base` (16-bit decode).
fn fixed_io(base: u64, len: u8) -> IO {
    // Every legacy port here is below 0x400.
    let base = base as u16;
    IO::new(base, base, 1, len)
}

/// `Name (\_S5_, Package { 5, 5, 0, 0 })`: the SLP_TYP values of S5 for PM1a and PM1b (ACPI
/// 6.5, 7.4.2; a hardware-reduced platform uses the first for its sleep control register), then
/// two reserved zeros.
pub fn s5_aml() -> Vec<u8> {
    let slp_typ = S5_SLP_TYP;
    aml_bytes(&Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&slp_typ, &slp_typ, &ZERO, &ZERO]),
    ))
}

/// COM1: `PNP0501` (16550A-compatible), ports 0x3f8-0x3ff, IRQ 4.
pub fn com1_aml() -> Vec<u8> {
    let crs = crs(vec![
        &fixed_io(COM1_BASE, crate::SERIAL_PORT_LEN as u8),
        &edge_interrupt(COM1_IRQ),
    ]);
    aml_bytes(&Device::new(
        Path::new("\\_SB_.COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &ZERO),
            &crs,
        ],
    ))
}

/// The i8042: `PNP0303` (IBM enhanced keyboard controller), data port 0x60, command/status port
/// 0x64, IRQ 1. The resource order is the one Linux's i8042 PNP probe reads: data, then
/// command.
pub fn i8042_aml() -> Vec<u8> {
    let crs = crs(vec![
        &fixed_io(I8042_BASE, 1),
        &fixed_io(I8042_BASE + I8042_COMMAND_PORT_OFFSET, 1),
        &edge_interrupt(I8042_KBD_IRQ),
    ]);
    aml_bytes(&Device::new(
        Path::new("\\_SB_.PS2K"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0303")),
            &crs,
        ],
    ))
}

/// The CMOS RTC: `PNP0B00` (AT real-time clock), ports 0x70-0x71, IRQ 8.
pub fn cmos_rtc_aml() -> Vec<u8> {
    let crs = crs(vec![
        &fixed_io(RTC_BASE, crate::RTC_PORT_LEN as u8),
        &edge_interrupt(RTC_IRQ),
    ]);
    aml_bytes(&Device::new(
        Path::new("\\_SB_.RTC_"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0B00")),
            &crs,
        ],
    ))
}

/// The virtio-mmio window `index` (named `\_SB_.Vnnn`, `nnn` its index in hex, `_UID` the
/// index): `_HID "LNRO0005"`, which Linux's virtio_mmio driver matches, and its window and
/// interrupt.
///
/// # Errors
///
/// [`Error::TooManyMmioWindows`] for an index past [`MAX_MMIO_WINDOWS`],
/// [`Error::MmioWindowAbove4G`] for a window that does not end at or below 4 GiB.
pub fn virtio_mmio_aml(index: usize, window: &VirtioMmioWindow) -> Result<Vec<u8>> {
    if index >= MAX_MMIO_WINDOWS {
        return Err(Error::TooManyMmioWindows {
            count: index + 1,
            max: MAX_MMIO_WINDOWS,
        });
    }
    let above = || Error::MmioWindowAbove4G {
        base: window.base,
        size: window.size,
    };
    let end = window.base.checked_add(window.size).ok_or_else(above)?;
    if end > 1 << 32 {
        return Err(above());
    }
    // Both fit: the window ends at or below 4 GiB.
    let (base, size) = (window.base as u32, window.size as u32);
    let uid = index as u32;
    let crs = crs(vec![
        &Memory32Fixed::new(true, base, size),
        &edge_interrupt(window.gsi),
    ]);
    Ok(aml_bytes(&Device::new(
        Path::new(&format!("\\_SB_.V{index:03X}")),
        vec![
            &Name::new(Path::new("_HID"), &"LNRO0005"),
            &Name::new(Path::new("_UID"), &uid),
            &crs,
        ],
    )))
}

/// The VMGenID device, `\_SB_.VGEN`: `_HID "VMGENCTR"` and `_CID "VM_Gen_Counter"` (Linux's
/// vmgenid driver matches either; ACPICA upper-cases the `_CID` to its `VM_GEN_COUNTER`, and
/// `VM_Gen_Counter` is what Microsoft's specification names), and `ADDR`, a package of the
/// ID's guest address, low 32 bits then high 32 bits.
pub fn vmgenid_aml(address: u64) -> Vec<u8> {
    let (low, high) = (address as u32, (address >> 32) as u32);
    aml_bytes(&Device::new(
        Path::new(VMGENID_PATH),
        vec![
            &Name::new(Path::new("_HID"), &"VMGENCTR"),
            &Name::new(Path::new("_CID"), &"VM_Gen_Counter"),
            &Name::new(Path::new("_DDN"), &"VM_Gen_Counter"),
            &Name::new(Path::new("ADDR"), &Package::new(vec![&low, &high])),
        ],
    ))
}

/// The Generic Event Device (ACPI 6.5, 5.6.9), `\_SB_.GED_`, `_HID "ACPI0013"`: its `_CRS`
/// holds the VMGenID interrupt, and its `_EVT` method, which Linux's evged driver calls with
/// the GSI that fired, does `Notify (\_SB_.VGEN, 0x80)`.
///
/// `_EVT` is as short as AML allows, because the guest interprets it on every snapshot load,
/// where a sandbox waits for its first answer. `_CRS` holds this one interrupt, so the GSI
/// `_EVT` is called with (`Arg0`) needs no test; and the method creates no object, so it need
/// not be `Serialized` (ACPI 6.5, 19.6, "Method"), which would make ACPICA create and take a
/// mutex. Loading a Linux guest's snapshot on a host that emulates guest kernel code (PVM),
/// this made its first answer come 6.9 ms sooner: 57.6 against 64.5 ms (medians of 40 loads)
/// with the earlier `If (Arg0 == GSI)` in a `Serialized` method. A GED given more interrupts
/// must test `Arg0` again.
pub fn ged_aml(vmgenid_gsi: u32) -> Vec<u8> {
    let crs = crs(vec![&edge_interrupt(vmgenid_gsi)]);
    let vgen = Path::new(VMGENID_PATH);
    let notify = Notify::new(&vgen, &VMGENID_NOTIFY);
    aml_bytes(&Device::new(
        Path::new("\\_SB_.GED_"),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0013"),
            &Name::new(Path::new("_UID"), &ZERO),
            &crs,
            &Method::new(Path::new("_EVT"), 1, false, vec![&notify]),
        ],
    ))
}

#[cfg(test)]
mod tests;

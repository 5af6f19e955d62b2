//! Building a VM from a [`VmConfig`] ([`Vmm::build`]): check the user's input, load the payload
//! (a raw binary, or a Linux kernel with its initrd and command line and boot protocol), open
//! KVM and create the VM, then its devices (`devices.rs`) and vCPUs (`vcpus.rs`), in an order
//! that leaves nothing behind when an input is bad. Also [`guest_cmdline`], the command line a
//! Linux guest gets.

use std::time::Instant;

use petrel_devices::acpi::{
    DsdtDevices, VirtioMmioWindow, VmGenIdWiring, RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT,
    SLEEP_STATUS_PORT,
};
use petrel_devices::MMIO_WINDOW_SIZE;
use petrel_guest_mem::layout::VMGENID_START;
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{host_emulates_guest_kernel, Hypervisor, Vm};
use petrel_loader::{AcpiConfig, AcpiPlacement, BootCpuState};

use super::devices::{build_devices, open_console_destination, ConsoleOutput, GenerationId};
use super::vcpus::create_vcpus;
use super::{Assembly, Notice, Vmm};
use crate::config::{
    BootProtocol, KernelImage, LinuxPayload, Payload, RawPayload, VmConfig, DEFAULT_CMDLINE,
    EMULATED_HOST_CMDLINE,
};
use crate::kvm_view::KvmStatsReaders;
use crate::snapshot::SavedMachine;
use crate::timeline::Timeline;
use crate::virtio::{self, VirtioPlan};
use crate::{Error, Result};

/// What loading the payload produced.
pub(super) struct Loaded {
    /// The boot vCPU's state.
    pub(super) boot: BootCpuState,
    /// Linux guests get the in-kernel irqchip and the PC devices; raw payloads do not.
    pub(super) linux: bool,
    /// How a Linux kernel is started: `Pvh` or `Linux64`, never `Auto`; `None` for raw payloads.
    pub(super) protocol: Option<BootProtocol>,
}

// hv-sys places KVM's identity-map page and TSS at fixed addresses: they must fall in the MMIO
// gap of Petrel's layout, where no RAM is, and clear of the IOAPIC and local APIC windows.
const _: () = {
    use petrel_guest_mem::layout::{APIC_START, FIRST_ADDR_PAST_32BITS, MMIO32_START};
    assert!(petrel_hv_sys::KVM_IDENTITY_MAP_START >= MMIO32_START);
    assert!(petrel_hv_sys::KVM_IDENTITY_MAP_START > APIC_START + 0x1000);
    assert!(petrel_hv_sys::KVM_TSS_START + 3 * 0x1000 <= FIRST_ADDR_PAST_32BITS);
};

/// A VM with its RAM registered (dirty-logged when asked), the TSS and identity map placed, and
/// for Linux guests the in-kernel irqchip and PIT.
pub(super) fn new_vm(hv: &Hypervisor, ram: &GuestRam, linux: bool, dirty: bool) -> Result<Vm> {
    let mut vm = Vm::new(hv)?;
    vm.register_memory(ram.memory())?;
    if dirty {
        vm.set_dirty_logging(true)?;
    }
    vm.setup_tss_and_identity_map()?;
    if linux {
        vm.setup_irqchip_and_pit()?;
    }
    Ok(vm)
}

impl Vmm {
    /// Builds the VM `config` describes, recording on a timeline that starts now.
    pub fn build(config: &VmConfig) -> Result<Vmm> {
        Self::build_with_timeline(config, Timeline::new(Instant::now()))
    }

    /// Builds the VM `config` describes: checks every input, loads the payload, creates the VM,
    /// its devices and its vCPUs. No vCPU runs until [`start`](Self::start); the only thread
    /// started is the console writer (for [`SerialConfig::Stdio`](crate::config::SerialConfig::Stdio) or a file). `timeline`'s zero
    /// is the caller's (the process start, for the binary).
    pub fn build_with_timeline(config: &VmConfig, timeline: Timeline) -> Result<Vmm> {
        // 1. The user's input, checked before anything is started.
        let ram =
            GuestRam::with_huge_pages(config.mem_size, config.huge_pages).map_err(Error::Memory)?;
        timeline.mark("guest memory mapped");
        check_vcpu_count(&config.payload, config.vcpus)?;
        let emulated = host_emulates_guest_kernel();
        let (loaded, virtio_plan) = match &config.payload {
            Payload::Raw(raw) => (load_raw(&ram, raw, config.vcpus)?, VirtioPlan::default()),
            Payload::Linux(linux) => {
                let plan = virtio::plan(config, &ram)?;
                (
                    load_linux(&ram, linux, config, emulated, &plan, &timeline)?,
                    plan,
                )
            }
        };
        let console_dest = open_console_destination(&config.serial)?;
        timeline.mark(&match loaded.protocol {
            Some(p) => format!("kernel loaded ({})", p.describe()),
            None => "payload loaded".to_string(),
        });

        // 2. KVM.
        let hv = Hypervisor::open()?;
        let max = hv.max_vcpus();
        if usize::from(config.vcpus) > max {
            return Err(bad_vcpus(
                config.vcpus,
                &format!("this host's KVM allows at most {max}"),
            ));
        }
        let mut notices = Vec::new();
        if loaded.linux && emulated && config.host_compat {
            notices.push(Notice::EmulatedHostWorkarounds);
        }
        let vm = new_vm(&hv, &ram, loaded.linux, config.track_dirty_pages)?;
        let mut kvm_stats = KvmStatsReaders::open_vm(&vm);
        timeline.mark("VM ready (memory slots, irqchip)");

        // 3. Devices, then the vCPUs, created and configured but not started.
        let console = ConsoleOutput::start(console_dest)?;
        let generation_id = if loaded.linux {
            GenerationId::New
        } else {
            GenerationId::Absent
        };
        let devices = build_devices(
            &vm,
            &ram,
            loaded.linux,
            &console,
            &timeline,
            virtio_plan,
            generation_id,
        )?;
        let runners = create_vcpus(&hv, &vm, &ram, &devices.io, &loaded, config, &mut kvm_stats)?;
        let machine = SavedMachine::of(config, loaded.linux);
        let parts = Assembly {
            hv,
            vm,
            ram,
            machine,
            dirty_tracking: config.track_dirty_pages,
            devices,
            runners,
            kvm_stats,
            console,
            notices,
            metrics: config.metrics.clone(),
            page_faults: None,
            working_set: None,
        };
        Self::assemble(parts, timeline)
    }
}

/// The vCPU counts no host can run: none, and for Linux guests more than the MP table holds.
/// (The host's own limit is checked once KVM is open.)
fn check_vcpu_count(payload: &Payload, vcpus: u8) -> Result<()> {
    if vcpus == 0 {
        return Err(bad_vcpus(vcpus, "at least 1 is needed"));
    }
    if matches!(payload, Payload::Linux(_)) && vcpus > petrel_loader::mptable::MAX_CPUS {
        let why = format!(
            "at most {} (the vCPUs the MP table describes must fit in the EBDA)",
            petrel_loader::mptable::MAX_CPUS
        );
        return Err(bad_vcpus(vcpus, &why));
    }
    Ok(())
}

/// The protocol a Linux kernel boots with: the one asked for, or for `Auto`, PVH when the kernel
/// has the entry note (as Firecracker does), except where the host emulates guest kernel code
/// and its workarounds are on (`emulated_with_workarounds`): there the 64-bit protocol's page
/// tables, built by Petrel, save the guest from building its own in the emulator.
fn boot_protocol(
    asked: BootProtocol,
    emulated_with_workarounds: bool,
    has_pvh: bool,
) -> BootProtocol {
    match asked {
        BootProtocol::Auto if emulated_with_workarounds => BootProtocol::Linux64,
        BootProtocol::Auto if has_pvh => BootProtocol::Pvh,
        BootProtocol::Auto => BootProtocol::Linux64,
        p => p,
    }
}

fn bad_vcpus(n: u8, why: &str) -> Error {
    Error::InvalidConfig {
        field: "vcpus".into(),
        value: n.to_string(),
        why: why.to_string(),
    }
}

fn load_raw(ram: &GuestRam, raw: &RawPayload, vcpus: u8) -> Result<Loaded> {
    if vcpus != 1 {
        return Err(bad_vcpus(vcpus, "raw payloads run on exactly 1 vCPU"));
    }
    let boot = petrel_loader::load_raw_file(ram, &raw.path, raw.load_addr, raw.entry)
        .map_err(Error::Load)?;
    Ok(Loaded {
        boot,
        linux: false,
        protocol: None,
    })
}

/// The command line the guest gets: the user's (or Petrel's default), what the devices need
/// (`virtio_mmio.device=...`), then the host's workarounds where the host needs them.
pub fn guest_cmdline(
    user: Option<&str>,
    devices: &str,
    emulated_host: bool,
    host_compat: bool,
) -> String {
    let mut cmdline = user.unwrap_or(DEFAULT_CMDLINE).trim().to_string();
    if !devices.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(devices);
    }
    if emulated_host && host_compat {
        cmdline.push(' ');
        cmdline.push_str(EMULATED_HOST_CMDLINE);
    }
    cmdline
}

fn load_linux(
    ram: &GuestRam,
    linux: &LinuxPayload,
    config: &VmConfig,
    emulated: bool,
    plan: &VirtioPlan,
    timeline: &Timeline,
) -> Result<Loaded> {
    let kernel = match &linux.kernel {
        KernelImage::File(path) => petrel_loader::load_kernel(ram, path),
        KernelImage::Builtin { name, bytes } => {
            petrel_loader::linux::load_kernel_image(ram, bytes, std::path::Path::new(name))
        }
    }
    .map_err(Error::Load)?;
    let initrd = linux
        .initrd
        .as_deref()
        .map(|p| petrel_loader::load_initrd(ram, p, &kernel))
        .transpose()
        .map_err(Error::Load)?;
    let cmdline = guest_cmdline(
        linux.cmdline.as_deref(),
        &plan.cmdline,
        emulated,
        config.host_compat,
    );
    // Asking for PVH when the kernel has no note is refused by the loader, naming the kernel.
    let protocol = boot_protocol(
        config.boot_protocol,
        emulated && config.host_compat,
        kernel.pvh_entry.is_some(),
    );
    let configure = match protocol {
        BootProtocol::Pvh => petrel_loader::configure_pvh_boot,
        _ => petrel_loader::configure_linux_boot,
    };
    timeline.mark(TABLES_START);
    let acpi = write_acpi_tables(ram, config.vcpus, plan)?;
    timeline.mark(TABLES_WRITTEN);
    let boot = configure(ram, &kernel, &cmdline, initrd, config.vcpus, Some(&acpi))
        .map_err(Error::Load)?;
    Ok(Loaded {
        boot,
        linux: true,
        protocol: Some(protocol),
    })
}

/// The timeline event just before a Linux guest's ACPI tables are built (the kernel, initrd
/// and command line are loaded by then).
const TABLES_START: &str = "building ACPI tables";
/// The timeline event once the ACPI tables are in guest memory (`cargo xtask bench` measures
/// the time between the two, by these names).
const TABLES_WRITTEN: &str = "ACPI tables written";

/// The DSDT body of a Linux guest: `\\_S5_`, the legacy PC devices, each virtio-mmio window
/// of `plan`, and the VM generation ID with the Generic Event Device that announces a new one.
pub(super) fn dsdt_devices(plan: &VirtioPlan) -> DsdtDevices {
    DsdtDevices {
        virtio_mmio: plan
            .windows()
            .map(|(base, gsi)| VirtioMmioWindow {
                base,
                size: MMIO_WINDOW_SIZE,
                gsi,
            })
            .collect(),
        vmgenid: Some(VmGenIdWiring {
            address: VMGENID_START,
            gsi: plan.vmgenid_gsi,
        }),
        ..DsdtDevices::pc()
    }
}

/// Writes a Linux guest's ACPI tables (the loader places them; the devices describe
/// themselves in the DSDT, and the FADT's sleep and reset registers are the [`AcpiPm`] block
/// on the port bus).
///
/// [`AcpiPm`]: petrel_devices::acpi::AcpiPm
fn write_acpi_tables(ram: &GuestRam, vcpus: u8, plan: &VirtioPlan) -> Result<AcpiPlacement> {
    let body = dsdt_devices(plan).dsdt_body().map_err(Error::devices)?;
    let config = AcpiConfig {
        vcpus,
        dsdt_body: &body,
        sleep_control_port: SLEEP_CONTROL_PORT,
        sleep_status_port: SLEEP_STATUS_PORT,
        reset_port: RESET_PORT,
        reset_value: RESET_VALUE,
    };
    petrel_loader::write_acpi_tables(ram, &config).map_err(Error::Load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_default_user_and_host_workarounds() {
        assert_eq!(guest_cmdline(None, "", false, true), DEFAULT_CMDLINE);
        let user = guest_cmdline(Some(" console=ttyS0 "), "", false, true);
        assert_eq!(user, "console=ttyS0");
        let c = guest_cmdline(None, "", true, true);
        assert!(c.starts_with(DEFAULT_CMDLINE), "{c}");
        assert!(c.ends_with(EMULATED_HOST_CMDLINE), "{c}");
        assert_eq!(guest_cmdline(None, "", true, false), DEFAULT_CMDLINE);
        let dev = "virtio_mmio.device=4K@0xd0001000:5";
        let with_dev = guest_cmdline(Some("root=/dev/vda"), dev, false, true);
        assert_eq!(with_dev, format!("root=/dev/vda {dev}"));
    }

    fn linux() -> Payload {
        VmConfig::builtin_kernel("test kernel", Vec::new()).payload
    }

    fn raw() -> Payload {
        VmConfig::raw(RawPayload {
            path: "/nonexistent/payload.bin".into(),
            load_addr: 0x1000,
            entry: None,
            regs: vec![],
        })
        .payload
    }

    #[test]
    fn vcpu_counts_no_host_can_run_are_refused_naming_the_field() {
        let e = check_vcpu_count(&raw(), 0).unwrap_err();
        assert_eq!(e.to_string(), "invalid vcpus `0`: at least 1 is needed");
        assert_eq!(e.exit_code(), crate::EXIT_BAD_INPUT);
        let max = petrel_loader::mptable::MAX_CPUS;
        check_vcpu_count(&linux(), max).unwrap();
        let e = check_vcpu_count(&linux(), max + 1).unwrap_err();
        assert!(e.to_string().contains("MP table"), "{e}");
        // The MP table limits Linux guests only; raw payloads are refused later, at load.
        check_vcpu_count(&raw(), max + 1).unwrap();
    }

    #[test]
    fn raw_payloads_need_exactly_one_vcpu_before_their_file_is_read() {
        let ram = GuestRam::new(2 << 20).unwrap();
        let Payload::Raw(payload) = raw() else {
            unreachable!()
        };
        let Err(e) = load_raw(&ram, &payload, 2) else {
            panic!("two vCPUs for a raw payload were accepted");
        };
        assert_eq!(
            e.to_string(),
            "invalid vcpus `2`: raw payloads run on exactly 1 vCPU"
        );
        // One vCPU gets as far as the file, which is missing.
        let Err(e) = load_raw(&ram, &payload, 1) else {
            panic!("a missing payload file was loaded");
        };
        assert!(matches!(e, Error::Load(_)), "{e}");
    }

    #[test]
    fn auto_picks_pvh_when_the_kernel_has_it_except_under_the_emulator_workarounds() {
        use BootProtocol::{Auto, Linux64, Pvh};
        assert_eq!(boot_protocol(Auto, false, true), Pvh);
        assert_eq!(boot_protocol(Auto, false, false), Linux64);
        assert_eq!(boot_protocol(Auto, true, true), Linux64);
        // What the user asked for stands (the loader refuses PVH without the note).
        assert_eq!(boot_protocol(Pvh, true, false), Pvh);
        assert_eq!(boot_protocol(Linux64, false, true), Linux64);
    }

    #[test]
    fn the_dsdt_names_each_virtio_window_and_the_generation_id_after_them() {
        let mut config = VmConfig::builtin_kernel("test kernel", Vec::new());
        let plan = virtio::plan(&config, &GuestRam::new(64 << 20).unwrap()).unwrap();
        assert_eq!(plan.vmgenid_gsi, petrel_guest_mem::alloc::FIRST_DEVICE_GSI);
        config.rng = true;
        let plan = virtio::plan(&config, &GuestRam::new(64 << 20).unwrap()).unwrap();
        let devices = dsdt_devices(&plan);
        let windows: Vec<(u64, u32)> = plan.windows().collect();
        assert_eq!(windows.len(), 1);
        assert_eq!(
            devices.virtio_mmio,
            [VirtioMmioWindow {
                base: windows[0].0,
                size: MMIO_WINDOW_SIZE,
                gsi: windows[0].1,
            }]
        );
        // The generation ID's line is the next free one, never a virtio device's.
        assert_eq!(plan.vmgenid_gsi, windows[0].1 + 1);
        assert_eq!(
            devices.vmgenid,
            Some(VmGenIdWiring {
                address: VMGENID_START,
                gsi: plan.vmgenid_gsi,
            })
        );
        assert!(devices.com1 && devices.i8042 && devices.cmos_rtc);
    }
}

//! Building a VM from a [`VmConfig`] and running it to the end.
//!
//! The order matters: everything the user gave (memory size, files, command line, vCPU count)
//! is checked and loaded before any thread starts or the terminal changes, so bad input leaves
//! nothing behind. Then KVM, devices, one thread per vCPU, and the event loop on this thread
//! until a vCPU stops or a signal arrives; then every vCPU is stopped and joined, the console
//! flushed and the terminal restored.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use petrel_devices::port80::{PostCodeSink, POST_CODE_PORT, POST_CODE_PORT_LEN};
use petrel_devices::rtc::{CmosRtc, SystemClock, RTC_BASE, RTC_PORT_LEN};
use petrel_devices::SERIAL_PORT_LEN;
use petrel_devices::{BusBuilder, BusDevice, BusRange, NonBlockingWriter, OutputThread, Serial};
use petrel_devices::{COM1_BASE, COM1_IRQ, I8042, I8042_BASE, I8042_KBD_IRQ, I8042_PORT_LEN};
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{host_emulates_guest_kernel, Hypervisor, Vm};
use petrel_loader::BootCpuState;
use petrel_vcpu::{
    cpuid, setup, ExitStats, RunOptions, StopReason, VcpuCommand, VcpuHandle, VcpuOutcome,
    VcpuRunner,
};
use vmm_sys_util::eventfd::EventFd;

use crate::boot_timer::{BootTimer, BOOT_TIMER_ADDR, BOOT_TIMER_LEN};
use crate::config::{
    KernelImage, LinuxPayload, Payload, RawPayload, SerialConfig, VmConfig, DEFAULT_CMDLINE,
    EMULATED_HOST_CMDLINE,
};
use crate::debug_port::{DebugPort, DEBUG_PORT, DEBUG_PORT_LEN};
use crate::event_loop::{ConsoleInput, Controller, LoopEnd};
use crate::io::PlatformIo;
use crate::kvm_view::KvmStatsReaders;
use crate::metrics::{PeriodicMetrics, METRICS_INTERVAL};
use crate::report::StatsDocument;
use crate::signals::{self, StopSignals};
use crate::terminal::RawTerminal;
use crate::timeline::Timeline;
use crate::virtio::{self, VirtioPlan};
use crate::{Error, Result};

/// How long the VMM waits for a vCPU thread to leave its loop once told to stop.
pub const VCPU_JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of guest console output buffered before output is dropped (never blocks a vCPU).
pub const SERIAL_OUTPUT_BUFFER: usize = 1 << 20;

/// How a VM ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Why the VM stopped (the first vCPU to stop decides).
    pub stop: StopReason,
    /// The signal that ended the run, if one did.
    pub signal: Option<&'static str>,
    /// Exit statistics of every vCPU.
    pub stats: StatsDocument,
    /// What happened when.
    pub timeline: Timeline,
}

impl RunSummary {
    /// The process exit code: 0 for a guest that halted, reset, powered off or ran to its exit
    /// limit, and for a stop by signal; 1 for a guest fault or a VMM error.
    pub fn exit_code(&self) -> i32 {
        match self.stop {
            StopReason::Halted
            | StopReason::Reset
            | StopReason::PowerOff
            | StopReason::ExitLimit(_)
            | StopReason::Requested => crate::EXIT_OK,
            StopReason::GuestFault { .. } | StopReason::VmmError(_) => crate::EXIT_FAILURE,
        }
    }
}

/// Where serial output goes, and the thread draining it.
struct ConsoleOutput {
    writer: NonBlockingWriter,
    thread: OutputThread,
}

/// The destination of console output, opened (so a bad path is reported) before anything runs.
fn open_console_destination(serial: &SerialConfig) -> Result<Option<Box<dyn Write + Send>>> {
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
    fn start(dest: Option<Box<dyn Write + Send>>) -> Result<Option<Self>> {
        let Some(dest) = dest else { return Ok(None) };
        let (writer, thread) =
            NonBlockingWriter::spawn("petrel-console", dest, SERIAL_OUTPUT_BUFFER)
                .map_err(Error::Devices)?;
        Ok(Some(ConsoleOutput { writer, thread }))
    }

    fn sink(this: &Option<Self>) -> Box<dyn Write + Send> {
        match this {
            Some(c) => Box::new(c.writer.clone()),
            None => Box::new(std::io::sink()),
        }
    }
}

/// What loading the payload produced.
struct Loaded {
    /// The boot vCPU's state.
    boot: BootCpuState,
    /// Linux guests get the in-kernel irqchip and the PC devices; raw payloads do not.
    linux: bool,
}

/// Builds the VM `config` describes and runs it until it stops.
pub fn run(config: &VmConfig) -> Result<RunSummary> {
    run_with_timeline(config, Timeline::new(std::time::Instant::now()))
}

/// [`run`], recording on `timeline` (whose zero the caller took at process start).
pub fn run_with_timeline(config: &VmConfig, timeline: Timeline) -> Result<RunSummary> {
    // 1. The user's input, checked before anything is started.
    let ram = GuestRam::new(config.mem_size).map_err(Error::Memory)?;
    timeline.mark("guest memory mapped");
    if config.vcpus == 0 {
        return Err(bad_vcpus(config.vcpus, "at least 1 is needed"));
    }
    if matches!(config.payload, Payload::Linux(_))
        && config.vcpus > petrel_loader::mptable::MAX_CPUS
    {
        let why = format!(
            "at most {} (the vCPUs the MP table describes must fit in the EBDA)",
            petrel_loader::mptable::MAX_CPUS
        );
        return Err(bad_vcpus(config.vcpus, &why));
    }
    let emulated = host_emulates_guest_kernel();
    let (loaded, virtio_plan) = match &config.payload {
        Payload::Raw(raw) => (load_raw(&ram, raw, config.vcpus)?, VirtioPlan::default()),
        Payload::Linux(linux) => {
            let plan = virtio::plan(config)?;
            (
                load_linux(&ram, linux, config, emulated, &plan.cmdline)?,
                plan,
            )
        }
    };
    let console_dest = open_console_destination(&config.serial)?;
    timeline.mark(if loaded.linux {
        "kernel loaded"
    } else {
        "payload loaded"
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
    if loaded.linux && emulated && config.host_compat {
        eprintln!(
            "petrel: this host's KVM runs guest kernel code in its instruction emulator (PVM): \
             expect a slow guest; added guest workarounds to the command line \
             (--host-compat off to leave it alone)"
        );
    }
    let mut vm = Vm::new(&hv)?;
    vm.register_ram(&ram)?;
    vm.setup_tss_and_identity_map()?;
    if loaded.linux {
        vm.setup_irqchip_and_pit()?;
    }
    let kvm_stats = Arc::new(Mutex::new(KvmStatsReaders::open_vm(&vm)));
    timeline.mark("VM ready (memory slots, irqchip)");

    // 3. From here on threads start: stop signals must be blocked first so every thread
    //    inherits the mask and they arrive through the event loop.
    let stop_signals = StopSignals::new().map_err(Error::Signals)?;
    let console = ConsoleOutput::start(console_dest)?;
    let Devices {
        io,
        console_input,
        serial,
        subscribers,
        virtio_devices,
    } = build_devices(&vm, &ram, &loaded, &console, config, &timeline, virtio_plan)?;
    // Everything that can fail is set up before the first vCPU thread starts, so an error
    // here leaves no thread behind.
    let mut subscribers = subscribers;
    if let Some(path) = &config.metrics {
        let periodic = PeriodicMetrics::new(
            path.clone(),
            METRICS_INTERVAL,
            timeline.clone(),
            kvm_stats.clone(),
        )
        .map_err(Error::EventFd)?;
        subscribers.push(Arc::new(Mutex::new(periodic)));
    }

    let vcpu_exited = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let mut handles = Vec::with_capacity(usize::from(config.vcpus));
    let started = start_vcpus(
        &hv,
        &vm,
        &ram,
        &io,
        &loaded,
        config,
        &vcpu_exited,
        &mut handles,
        &mut kvm_stats.lock().unwrap_or_else(|p| p.into_inner()),
    );
    timeline.mark("vCPUs created and started");

    let _raw_terminal = match (&started, &console_input) {
        (Ok(()), Some(_)) => Some(RawTerminal::enter()),
        _ => None,
    };
    let mut signal = None;
    let loop_result = match started {
        Ok(()) => {
            run_event_loop(vcpu_exited, stop_signals, console_input, subscribers).map(|end| {
                match end {
                    LoopEnd::Signal(s) => {
                        signal = Some(signals::name(s));
                        timeline.mark(&format!("{} received", signals::name(s)));
                    }
                    LoopEnd::VcpuExited => timeline.mark("guest stopped"),
                }
            })
        }
        Err(e) => Err(e),
    };

    // 4. Stop and join every vCPU, whatever happened above.
    for h in &handles {
        let _ = h.send(VcpuCommand::Stop);
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    let mut stuck = None;
    for mut h in handles {
        match h.join(VCPU_JOIN_TIMEOUT) {
            Some(o) => outcomes.push(o),
            None => stuck = Some(h.id()),
        }
    }
    if let Some(c) = console {
        let _ = c.thread.flush_and_join_timeout(Duration::from_secs(2));
    }
    timeline.mark("vCPUs joined, console flushed");
    loop_result?;
    if let Some(id) = stuck {
        return Err(Error::VcpuStuck { id });
    }
    outcomes.sort_by_key(|o| o.id);
    if let Some(at) = outcomes.first().and_then(|o| o.first_run_at) {
        timeline.mark_at("first KVM_RUN", at);
    }
    if let Some(at) = serial.lock().ok().and_then(|s| s.first_output_at()) {
        timeline.mark_at("first serial byte", at);
    }
    let mut kvm_stats = kvm_stats.lock().unwrap_or_else(|p| p.into_inner());
    Ok(summarize(
        outcomes,
        &io,
        signal,
        timeline,
        &mut kvm_stats,
        &virtio_devices,
    ))
}

fn bad_vcpus(n: u8, why: &str) -> Error {
    Error::InvalidArgument {
        what: "--vcpus",
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
    Ok(Loaded { boot, linux: false })
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
    device_cmdline: &str,
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
        device_cmdline,
        emulated,
        config.host_compat,
    );
    let boot = petrel_loader::configure_linux_boot(ram, &kernel, &cmdline, initrd, config.vcpus)
        .map_err(Error::Load)?;
    Ok(Loaded { boot, linux: true })
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

/// The buses and the devices the VMM itself keeps talking to.
struct Devices {
    io: Arc<PlatformIo>,
    console_input: Option<ConsoleInput>,
    serial: Arc<Mutex<Serial>>,
    /// Devices whose work runs on the event loop (virtio).
    subscribers: virtio::Subscribers,
    /// The virtio devices, for reports.
    virtio_devices: Vec<virtio::AttachedDevice>,
}

fn build_devices(
    vm: &Vm,
    ram: &GuestRam,
    loaded: &Loaded,
    console: &Option<ConsoleOutput>,
    config: &VmConfig,
    timeline: &Timeline,
    virtio_plan: VirtioPlan,
) -> Result<Devices> {
    let irqchip = loaded.linux;
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
        .map_err(Error::Devices)?;
    if loaded.linux {
        let kbd_irq = interrupt(vm, I8042_KBD_IRQ, irqchip)?;
        pio.insert(
            BusRange::new(I8042_BASE, I8042_PORT_LEN),
            device(I8042::new(kbd_irq)),
        )
        .map_err(Error::Devices)?;
        let rtc = CmosRtc::new(Box::new(SystemClock), ram.size());
        pio.insert(BusRange::new(RTC_BASE, RTC_PORT_LEN), device(rtc))
            .map_err(Error::Devices)?;
        let post_timeline = timeline.clone();
        let post = PostCodeSink::with_hook(move |c| {
            post_timeline.mark_guest(format!("POST code {:#04x} (port 0x80)", c.code), c.at)
        });
        pio.insert(
            BusRange::new(POST_CODE_PORT, POST_CODE_PORT_LEN),
            device(post),
        )
        .map_err(Error::Devices)?;
    } else {
        let debug = DebugPort::new(ConsoleOutput::sink(console));
        pio.insert(BusRange::new(DEBUG_PORT, DEBUG_PORT_LEN), device(debug))
            .map_err(Error::Devices)?;
    }
    let mut mmio = BusBuilder::new("MMIO");
    mmio.insert(
        BusRange::new(BOOT_TIMER_ADDR, BOOT_TIMER_LEN),
        device(BootTimer::new(timeline.clone())),
    )
    .map_err(Error::Devices)?;
    let (subscribers, virtio_devices) = virtio::attach(virtio_plan, vm, ram, &mut mmio)?;
    let io = Arc::new(PlatformIo {
        pio: pio.build(),
        mmio: mmio.build(),
    });
    // Keyboard input goes to the guest only for an interactive Linux console.
    // A background job leaves stdin alone (reading it would stop Petrel with SIGTTIN).
    let interactive = config.serial == SerialConfig::Stdio && crate::terminal::may_use_stdin();
    let console_input = (loaded.linux && interactive).then(|| ConsoleInput {
        serial: serial.clone(),
        input_ready,
    });
    Ok(Devices {
        io,
        console_input,
        serial,
        subscribers,
        virtio_devices,
    })
}

#[allow(clippy::too_many_arguments)]
fn start_vcpus(
    hv: &Hypervisor,
    vm: &Vm,
    ram: &GuestRam,
    io: &Arc<PlatformIo>,
    loaded: &Loaded,
    config: &VmConfig,
    vcpu_exited: &EventFd,
    handles: &mut Vec<VcpuHandle>,
    kvm_stats: &mut KvmStatsReaders,
) -> Result<()> {
    let supported = hv.supported_cpuid()?;
    // Create and configure every vCPU before starting any, so a failure starts nothing.
    let mut runners = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(u64::from(id))?;
        let mut c = supported.clone();
        cpuid::normalize(&mut c, id, config.vcpus);
        vcpu.fd().set_cpuid2(&c).map_err(|e| Error::Kvm {
            what: "KVM_SET_CPUID2",
            source: e,
        })?;
        if loaded.linux {
            setup::setup_boot_msrs(&vcpu).map_err(Error::Vcpu)?;
            setup::setup_fpu(&vcpu).map_err(Error::Vcpu)?;
            setup::setup_lapic_lints(&vcpu).map_err(Error::Vcpu)?;
        }
        // Application processors wait in KVM for INIT/SIPI from the boot processor.
        if id == 0 {
            setup::apply_boot_state(&vcpu, &loaded.boot).map_err(Error::Vcpu)?;
            if let Payload::Raw(raw) = &config.payload {
                apply_raw_regs(&vcpu, raw)?;
            }
        }
        let options = RunOptions {
            max_exits: config.max_exits,
        };
        kvm_stats.add_vcpu(&vcpu);
        runners.push(VcpuRunner::new(vcpu, io.clone(), ram.clone(), options));
    }
    for runner in runners {
        let exited = vcpu_exited.try_clone().map_err(Error::EventFd)?;
        handles.push(petrel_vcpu::spawn(runner, exited).map_err(Error::Vcpu)?);
    }
    Ok(())
}

fn apply_raw_regs(vcpu: &petrel_hv_sys::Vcpu, raw: &RawPayload) -> Result<()> {
    if raw.regs.is_empty() {
        return Ok(());
    }
    let mut regs = vcpu.regs()?;
    for a in &raw.regs {
        a.reg.set(&mut regs, a.value);
    }
    vcpu.set_regs(&regs)?;
    Ok(())
}

fn run_event_loop(
    vcpu_exited: EventFd,
    signals: StopSignals,
    console: Option<ConsoleInput>,
    devices: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
) -> Result<LoopEnd> {
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(Error::EventLoop)?;
    let controller = Arc::new(Mutex::new(Controller::new(vcpu_exited, signals, console)));
    em.add_subscriber(controller.clone());
    for device in devices {
        em.add_subscriber(device);
    }
    loop {
        em.run().map_err(Error::EventLoop)?;
        if let Some(end) = controller
            .lock()
            .map(|c| c.end)
            .unwrap_or(Some(LoopEnd::VcpuExited))
        {
            return Ok(end);
        }
    }
}

fn summarize(
    outcomes: Vec<VcpuOutcome>,
    io: &PlatformIo,
    signal: Option<&'static str>,
    timeline: Timeline,
    kvm_stats: &mut KvmStatsReaders,
    virtio_devices: &[virtio::AttachedDevice],
) -> RunSummary {
    let stop = outcomes
        .iter()
        .map(|o| &o.stop)
        .find(|s| !matches!(s, StopReason::Requested))
        .cloned()
        .unwrap_or(StopReason::Requested);
    let mut total = ExitStats::default();
    for o in &outcomes {
        total.merge(&o.stats);
    }
    let stats = StatsDocument {
        total: total.report(crate::report::TOP),
        per_vcpu: outcomes
            .iter()
            .map(|o| o.stats.report(crate::report::TOP))
            .collect(),
        unclaimed_port_reads: io.pio.unclaimed_reads(),
        unclaimed_port_writes: io.pio.unclaimed_writes(),
        unclaimed_mmio_reads: io.mmio.unclaimed_reads(),
        unclaimed_mmio_writes: io.mmio.unclaimed_writes(),
        int3_injected: outcomes.iter().map(|o| o.emulation.int3_injected).sum(),
        fwait_skipped: outcomes.iter().map(|o| o.emulation.fwait_skipped).sum(),
        kvm: kvm_stats.read(),
        kvm_unavailable: kvm_stats.unavailable.take(),
        virtio: virtio_devices.iter().map(|d| d.report()).collect(),
    };
    RunSummary {
        stop,
        signal,
        stats,
        timeline,
    }
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
}

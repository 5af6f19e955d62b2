//! Building a VM from a [`VmConfig`] and running it to the end.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petrel_devices::{BusBuilder, BusRange, NonBlockingWriter, OutputThread, Serial};
use petrel_devices::{COM1_BASE, SERIAL_PORT_LEN};
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{Hypervisor, Vm};
use petrel_loader::BootCpuState;
use petrel_vcpu::{cpuid, setup, ExitStats, RunOptions, StopReason, VcpuOutcome, VcpuRunner};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{Payload, RawPayload, SerialConfig, VmConfig};
use crate::debug_port::{DebugPort, DEBUG_PORT, DEBUG_PORT_LEN};
use crate::io::PlatformIo;
use crate::report::StatsDocument;
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
    /// Exit statistics of every vCPU.
    pub stats: StatsDocument,
}

impl RunSummary {
    /// The process exit code: 0 for a guest that halted, reset, powered off or ran to its exit
    /// limit; 1 for a guest fault or a VMM error.
    pub fn exit_code(&self) -> i32 {
        match self.stop {
            StopReason::Halted
            | StopReason::Reset
            | StopReason::PowerOff
            | StopReason::ExitLimit(_)
            | StopReason::Requested => 0,
            StopReason::GuestFault { .. } | StopReason::VmmError(_) => 1,
        }
    }
}

/// Where serial output goes, and the thread draining it.
struct ConsoleOutput {
    writer: NonBlockingWriter,
    thread: OutputThread,
}

impl ConsoleOutput {
    fn open(serial: &SerialConfig) -> Result<Option<Self>> {
        let dest: Box<dyn Write + Send> = match serial {
            SerialConfig::None => return Ok(None),
            SerialConfig::Stdio => Box::new(std::io::stdout()),
            SerialConfig::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::OpenSerialFile {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
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

/// Builds the VM `config` describes and runs it until it stops.
pub fn run(config: &VmConfig) -> Result<RunSummary> {
    match &config.payload {
        Payload::Raw(raw) => run_raw(config, raw),
        Payload::Linux(_) => Err(Error::Unsupported("booting Linux kernels")),
    }
}

fn run_raw(config: &VmConfig, raw: &RawPayload) -> Result<RunSummary> {
    // Check the user's input (memory size, payload file) before touching KVM, so a bad
    // argument is reported as such even on a host without KVM.
    let ram = GuestRam::new(config.mem_size).map_err(Error::Memory)?;
    let state = petrel_loader::load_raw_file(&ram, &raw.path, raw.load_addr, raw.entry)
        .map_err(Error::Load)?;

    let hv = Hypervisor::open()?;
    let mut vm = Vm::new(&hv)?;
    vm.register_ram(&ram)?;
    // No in-kernel irqchip: a raw payload's `hlt` must exit to Petrel, which ends the run.
    vm.setup_tss_and_identity_map()?;

    let console = ConsoleOutput::open(&config.serial)?;
    let mut pio = BusBuilder::new("port I/O");
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let serial = Serial::new(serial_irq, ConsoleOutput::sink(&console));
    pio.insert(
        BusRange::new(COM1_BASE, SERIAL_PORT_LEN),
        Arc::new(Mutex::new(serial)),
    )
    .map_err(Error::Devices)?;
    let debug = DebugPort::new(ConsoleOutput::sink(&console));
    pio.insert(
        BusRange::new(DEBUG_PORT, DEBUG_PORT_LEN),
        Arc::new(Mutex::new(debug)),
    )
    .map_err(Error::Devices)?;
    let io = Arc::new(PlatformIo {
        pio: pio.build(),
        mmio: BusBuilder::new("MMIO").build(),
    });

    let vcpu = vm.create_vcpu(0)?;
    let mut cpuid = hv.supported_cpuid()?;
    cpuid::normalize(&mut cpuid, 0, 1);
    vcpu.fd().set_cpuid2(&cpuid).map_err(|e| Error::Kvm {
        what: "KVM_SET_CPUID2",
        source: e,
    })?;
    apply_raw_state(&vcpu, &state, raw)?;

    let options = RunOptions {
        max_exits: config.max_exits,
    };
    let runner = VcpuRunner::new(vcpu, io.clone(), ram.clone(), options);
    let exited = EventFd::new(0).map_err(Error::EventFd)?;
    let mut handle = petrel_vcpu::spawn(runner, exited.try_clone().map_err(Error::EventFd)?)
        .map_err(Error::Vcpu)?;
    // One vCPU: wait for it to stop by itself.
    let _ = exited.read();
    let outcome = handle
        .join(VCPU_JOIN_TIMEOUT)
        .ok_or(Error::VcpuStuck { id: 0 })?;

    if let Some(c) = console {
        let _ = c.thread.flush_and_join_timeout(Duration::from_secs(2));
    }
    Ok(summarize(vec![outcome], &io))
}

fn apply_raw_state(
    vcpu: &petrel_hv_sys::Vcpu,
    state: &BootCpuState,
    raw: &RawPayload,
) -> Result<()> {
    setup::apply_boot_state(vcpu, state).map_err(Error::Vcpu)?;
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

fn summarize(outcomes: Vec<VcpuOutcome>, io: &PlatformIo) -> RunSummary {
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
    };
    RunSummary { stop, stats }
}

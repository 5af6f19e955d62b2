//! The `KVM_RUN` loop of one vCPU, its thread, and the handle the VMM keeps.
//!
//! The loop turns each exit into calls on an [`IoHandler`] (the VMM implements it over its
//! buses), counts and times every exit, completes what the host's emulator cannot, and stops on
//! a guest reset, power-off, fault, exit limit, or a command from the VMM.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{
    hex_bytes, kick, EmulationOutcome, SystemEvent, Vcpu, VcpuState as SavedState, VmExit,
};
use vmm_sys_util::eventfd::EventFd;

use crate::stats::{ExitKey, ExitStats};
use crate::{Error, Result};

/// `KVM_INTERNAL_ERROR_EMULATION` (api.rst 5, `internal.suberror`).
const SUBERROR_EMULATION: u32 = 1;

/// What a device access asks of the vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    /// Go on running the guest.
    Continue,
    /// The guest asked for a reset (e.g. through the i8042).
    Reset,
    /// The guest asked to power off.
    PowerOff,
}

/// Where port and MMIO accesses go. The VMM implements this over its device buses; the vCPU
/// crate knows nothing about devices.
pub trait IoHandler: Send + Sync {
    /// A port read of `data.len()` bytes; `data` arrives filled with 0xff (an unclaimed port).
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// A port write.
    fn pio_write(&self, port: u16, data: &[u8]) -> IoOutcome;
    /// An MMIO read; `data` arrives filled with 0xff.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// An MMIO write.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> IoOutcome;
}

/// Commands the VMM sends a vCPU thread (followed by a kick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Stop entering the guest until `Resume`.
    Pause,
    /// Carry on after `Pause`.
    Resume,
    /// Leave the run loop for good.
    Stop,
    /// Send a copy of the exit statistics so far (see [`VcpuHandle::stats`]).
    ReportStats,
    /// Send the vCPU's KVM state (see [`VcpuHandle::save_state`]); only a paused vCPU does,
    /// any other answers [`Error::NotPaused`].
    SaveState,
}

/// Where a vCPU thread is in its life, as the thread itself last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// The thread exists but has not looked at its commands yet.
    Starting,
    /// Entering the guest (or about to).
    Running,
    /// Out of `KVM_RUN` and parked until `Resume` or `Stop`.
    Paused,
    /// Out of its loop for good.
    Exited,
}

/// The state a vCPU thread reports and its handle waits on.
#[derive(Debug)]
struct SharedState {
    state: Mutex<VcpuState>,
    changed: Condvar,
}

impl SharedState {
    fn new() -> Arc<Self> {
        Arc::new(SharedState {
            state: Mutex::new(VcpuState::Starting),
            changed: Condvar::new(),
        })
    }

    fn set(&self, state: VcpuState) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Exited is final: a late report from an unwinding loop must not undo it.
        if *s != VcpuState::Exited {
            *s = state;
        }
        self.changed.notify_all();
    }

    fn get(&self) -> VcpuState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done(state)` holds or `timeout` passes; returns the last state seen.
    fn wait_for(&self, timeout: Duration, done: impl Fn(VcpuState) -> bool) -> VcpuState {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| !done(*s))
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// Why a vCPU stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest executed `hlt` with no irqchip to wait on (raw payloads).
    Halted,
    /// The guest asked for a reset.
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The exit limit given in [`RunOptions`] was reached.
    ExitLimit(u64),
    /// The VMM told it to stop.
    Requested,
    /// The guest did something that ends it (triple fault, failed entry, an instruction the
    /// host cannot run): `what` is one line, `details` the registers and bytes.
    GuestFault {
        /// One-line reason.
        what: String,
        /// Registers and instruction bytes.
        details: String,
    },
    /// Petrel itself failed (an ioctl error, a panic in a device).
    VmmError(String),
}

/// Options for the run loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop after this many exits reached Petrel.
    pub max_exits: Option<u64>,
}

/// Instructions Petrel completed for the host's emulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmulationCounts {
    /// `int3` completed by injecting #BP.
    pub int3_injected: u64,
    /// `fwait` skipped.
    pub fwait_skipped: u64,
}

/// What a vCPU thread leaves behind.
#[derive(Debug, Clone)]
pub struct VcpuOutcome {
    /// vCPU index.
    pub id: u64,
    /// Why it stopped.
    pub stop: StopReason,
    /// Its exit statistics.
    pub stats: ExitStats,
    /// Instructions completed for the emulator.
    pub emulation: EmulationCounts,
    /// When it first entered the guest.
    pub first_run_at: Option<Instant>,
}

/// Runs one vCPU until it stops.
#[derive(Debug)]
pub struct VcpuRunner<H: IoHandler + ?Sized> {
    vcpu: Vcpu,
    io: Arc<H>,
    ram: GuestRam,
    options: RunOptions,
    commands: Option<Receiver<VcpuCommand>>,
    shared: Option<Arc<SharedState>>,
    stats_reply: Option<Sender<(ExitStats, EmulationCounts)>>,
    state_reply: Option<Sender<Result<SavedState>>>,
    stats: ExitStats,
    emulation: EmulationCounts,
    first_run_at: Option<Instant>,
    /// Park before the first `KVM_RUN` until `Resume` (a restored VM loaded paused).
    start_paused: bool,
    /// The exit that replaces the first one (tests only: see [`crate::inject`]).
    #[cfg(feature = "fault-injection")]
    inject: Option<VmExit<'static>>,
}

impl<H: IoHandler + ?Sized> VcpuRunner<H> {
    /// A runner for `vcpu`, sending I/O to `io`; `ram` is used to read instructions.
    ///
    /// `vcpu` is ready to run: set up for boot ([`crate::setup`]) or given a saved state with
    /// [`Vcpu::restore_state`], which needs no boot set-up.
    pub fn new(vcpu: Vcpu, io: Arc<H>, ram: GuestRam, options: RunOptions) -> Self {
        VcpuRunner {
            vcpu,
            io,
            ram,
            options,
            commands: None,
            shared: None,
            stats_reply: None,
            state_reply: None,
            stats: ExitStats::default(),
            emulation: EmulationCounts::default(),
            first_run_at: None,
            start_paused: false,
            #[cfg(feature = "fault-injection")]
            inject: crate::inject::exit_from_env(),
        }
    }

    /// Makes the thread park before its first `KVM_RUN`, reporting
    /// [`VcpuState::Paused`], until it gets [`VcpuCommand::Resume`] (or `Stop`). Commands such
    /// as [`VcpuCommand::SaveState`] are answered while it waits.
    pub fn set_start_paused(&mut self, paused: bool) {
        self.start_paused = paused;
    }

    /// The vCPU, e.g. to set registers before running.
    pub fn vcpu(&self) -> &Vcpu {
        &self.vcpu
    }

    /// Runs the loop on the calling thread until the vCPU stops.
    ///
    /// The vCPU is bound to this thread for kicks before anything else, and the commands that
    /// arrived before that are looked at before the first `KVM_RUN`: a command sent at any
    /// moment (even before the thread started) takes effect.
    pub fn run(&mut self) -> VcpuOutcome {
        self.vcpu.bind_kicks();
        let stop = match self.check_commands() {
            Some(stop) => stop,
            None => self.run_loop(),
        };
        self.report(VcpuState::Exited);
        VcpuOutcome {
            id: self.vcpu.id(),
            stop,
            stats: std::mem::take(&mut self.stats),
            emulation: self.emulation,
            first_run_at: self.first_run_at,
        }
    }

    fn run_loop(&mut self) -> StopReason {
        let mut exits: u64 = 0;
        loop {
            if self.first_run_at.is_none() {
                self.first_run_at = Some(Instant::now());
            }
            let exit = match self.vcpu.run() {
                Ok(e) => e,
                Err(e) => return StopReason::VmmError(petrel_util::error_chain(&e)),
            };
            #[cfg(feature = "fault-injection")]
            let exit = match (&exit, self.inject.take()) {
                (VmExit::Interrupted, injected) => {
                    self.inject = injected;
                    exit
                }
                (_, Some(injected)) => injected,
                (_, None) => exit,
            };
            let started = Instant::now();
            let reason = exit.reason_name();
            let (key, step) = handle_exit(&*self.io, exit);
            let step = match step {
                Step::Interrupted => match self.check_commands() {
                    Some(stop) => return stop,
                    None => continue,
                },
                Step::InternalError {
                    suberror,
                    data,
                    ndata,
                } => self.internal_error(suberror, &data[..ndata]),
                Step::Guest(what) => Step::Stop(self.fault(what, None)),
                other => other,
            };
            self.stats
                .record(reason, key, started.elapsed().as_nanos() as u64);
            exits += 1;
            match step {
                Step::Stop(stop) => return stop,
                _ if self.options.max_exits.is_some_and(|m| exits >= m) => {
                    return StopReason::ExitLimit(exits)
                }
                _ => {}
            }
        }
    }

    fn internal_error(&mut self, suberror: u32, data: &[u64]) -> Step {
        if suberror != SUBERROR_EMULATION {
            let what = format!(
                "KVM internal error, suberror {suberror} ({}), data {:x?}",
                suberror_name(suberror),
                data
            );
            return Step::Stop(self.fault(what, None));
        }
        match self
            .vcpu
            .complete_emulation_failure(data, self.ram.memory())
        {
            Ok(EmulationOutcome::InjectedBreakpoint) => {
                self.emulation.int3_injected += 1;
                Step::Continue
            }
            Ok(EmulationOutcome::SkippedFwait) => {
                self.emulation.fwait_skipped += 1;
                Step::Continue
            }
            Ok(EmulationOutcome::Unhandled { rip, bytes }) => {
                let what = format!(
                    "the host's instruction emulator cannot run the instruction at rip {rip:#x}"
                );
                Step::Stop(self.fault(what, Some(bytes)))
            }
            Err(e) => Step::Stop(StopReason::VmmError(petrel_util::error_chain(&e))),
        }
    }

    fn fault(&self, what: String, bytes: Option<Vec<u8>>) -> StopReason {
        let bytes = bytes
            .or_else(|| self.vcpu.instruction_bytes_at_rip(self.ram.memory()))
            .unwrap_or_default();
        let details = format!(
            "{}  instruction bytes at rip: {}",
            self.vcpu.register_dump(),
            hex_bytes(&bytes)
        );
        StopReason::GuestFault { what, details }
    }

    fn report(&self, state: VcpuState) {
        if let Some(shared) = &self.shared {
            shared.set(state);
        }
    }

    /// Reacts to queued commands (after a kick, and once before the first run); `Some` to stop.
    /// While paused it waits here, out of `KVM_RUN`, for `Resume` or `Stop`.
    fn check_commands(&mut self) -> Option<StopReason> {
        let commands = self.commands.take()?;
        let stop = self.follow_commands(&commands);
        self.commands = Some(commands);
        stop
    }

    fn follow_commands(&mut self, commands: &Receiver<VcpuCommand>) -> Option<StopReason> {
        let mut paused = std::mem::take(&mut self.start_paused);
        if paused {
            self.report(VcpuState::Paused);
        }
        loop {
            let cmd = if paused {
                commands.recv().ok()
            } else {
                commands.try_recv().ok()
            };
            match cmd {
                Some(VcpuCommand::Stop) => return Some(StopReason::Requested),
                Some(VcpuCommand::Pause) => {
                    paused = true;
                    self.report(VcpuState::Paused);
                }
                Some(VcpuCommand::Resume) => paused = false,
                Some(VcpuCommand::ReportStats) => {
                    if let Some(reply) = &self.stats_reply {
                        let _ = reply.send((self.stats.clone(), self.emulation));
                    }
                }
                Some(VcpuCommand::SaveState) => {
                    let answer = if paused {
                        // Parked here, this vCPU is not in KVM_RUN and holds no half-done
                        // instruction. Commands are looked at only before the first KVM_RUN or
                        // after one returned EINTR (`Step::Interrupted`), and KVM finishes a
                        // pending port or MMIO access (complete_userspace_io) on entry, before
                        // it honours immediate_exit or a pending signal: api.rst 5, kvm_run:
                        // "userspace can re-enter the guest with an unmasked signal pending or
                        // with the immediate_exit field set to complete pending operations".
                        // A KVM_RUN whose completion needs another exit returns that exit, not
                        // EINTR, and the loop handles it before coming back here.
                        self.vcpu.save_state().map_err(Error::from)
                    } else {
                        Err(Error::NotPaused {
                            id: self.vcpu.id(),
                            state: self.shared.as_ref().map_or(VcpuState::Running, |s| s.get()),
                        })
                    };
                    if let Some(reply) = &self.state_reply {
                        let _ = reply.send(answer);
                    }
                }
                // The VMM dropped its sender: it is gone, so stop.
                None if paused => return Some(StopReason::Requested),
                None => {
                    self.report(VcpuState::Running);
                    return None;
                }
            }
        }
    }
}

/// What the loop does after an exit.
enum Step {
    Continue,
    Interrupted,
    Stop(StopReason),
    Guest(String),
    InternalError {
        suberror: u32,
        data: [u64; 16],
        ndata: usize,
    },
}

fn outcome_step(o: IoOutcome) -> Step {
    match o {
        IoOutcome::Continue => Step::Continue,
        IoOutcome::Reset => Step::Stop(StopReason::Reset),
        IoOutcome::PowerOff => Step::Stop(StopReason::PowerOff),
    }
}

/// Dispatches one exit; string I/O becomes `count` accesses of `size` bytes, in order.
fn handle_exit<H: IoHandler + ?Sized>(io: &H, exit: VmExit<'_>) -> (Option<ExitKey>, Step) {
    match exit {
        VmExit::IoOut {
            port, size, data, ..
        } => {
            for chunk in data.chunks(usize::from(size)) {
                let o = io.pio_write(port, chunk);
                if o != IoOutcome::Continue {
                    return (Some(ExitKey::Port(port)), outcome_step(o));
                }
            }
            (Some(ExitKey::Port(port)), Step::Continue)
        }
        VmExit::IoIn {
            port, size, data, ..
        } => {
            for chunk in data.chunks_mut(usize::from(size)) {
                chunk.fill(0xff);
                io.pio_read(port, chunk);
            }
            (Some(ExitKey::Port(port)), Step::Continue)
        }
        VmExit::MmioRead { addr, data } => {
            data.fill(0xff);
            io.mmio_read(addr, data);
            (Some(ExitKey::Mmio(addr)), Step::Continue)
        }
        VmExit::MmioWrite { addr, data } => (
            Some(ExitKey::Mmio(addr)),
            outcome_step(io.mmio_write(addr, data)),
        ),
        VmExit::Hlt => (None, Step::Stop(StopReason::Halted)),
        VmExit::Interrupted => (None, Step::Interrupted),
        VmExit::IrqWindowOpen => (None, Step::Continue),
        VmExit::SystemEvent(SystemEvent::Reset) => (None, Step::Stop(StopReason::Reset)),
        VmExit::SystemEvent(SystemEvent::Shutdown) => (None, Step::Stop(StopReason::PowerOff)),
        VmExit::SystemEvent(e) => (None, Step::Guest(format!("guest system event {e:?}"))),
        VmExit::Shutdown => (
            None,
            Step::Guest("the guest triple-faulted (KVM_EXIT_SHUTDOWN): it cannot go on".into()),
        ),
        VmExit::FailEntry {
            hardware_reason,
            cpu,
        } => (
            None,
            Step::Guest(format!(
                "VM entry failed on host CPU {cpu}: hardware reason {hardware_reason:#x} \
                 (invalid guest state)"
            )),
        ),
        VmExit::InternalError {
            suberror,
            data,
            ndata,
        } => (
            None,
            Step::InternalError {
                suberror,
                data,
                ndata,
            },
        ),
        VmExit::Debug => (None, Step::Guest("unexpected debug exit".into())),
        VmExit::Unknown { hardware_reason } => (
            None,
            Step::Guest(format!(
                "unknown exit, hardware reason {hardware_reason:#x}"
            )),
        ),
        VmExit::Unsupported { reason } => (
            None,
            Step::Guest(format!("exit reason {reason} is not supported by Petrel")),
        ),
    }
}

fn suberror_name(s: u32) -> &'static str {
    match s {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "event delivery failed",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// The VMM's handle on a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u64,
    thread: Option<JoinHandle<()>>,
    commands: Sender<VcpuCommand>,
    outcome: Receiver<VcpuOutcome>,
    shared: Arc<SharedState>,
    stats: Mutex<Receiver<(ExitStats, EmulationCounts)>>,
    saved: Mutex<Receiver<Result<SavedState>>>,
}

/// Starts `runner` on a thread named `petrel-vcpu<N>`. When it stops, for whatever reason
/// (a panic included), it writes to `exited` so the VMM's event loop notices.
pub fn spawn<H: IoHandler + ?Sized + 'static>(
    runner: VcpuRunner<H>,
    exited: EventFd,
) -> Result<VcpuHandle> {
    let id = runner.vcpu.id();
    spawn_named(runner, exited, format!("petrel-vcpu{id}"))
}

/// [`spawn`] with a thread name of the caller's choosing (at most 15 bytes are kept by Linux).
pub fn spawn_named<H: IoHandler + ?Sized + 'static>(
    mut runner: VcpuRunner<H>,
    exited: EventFd,
    name: String,
) -> Result<VcpuHandle> {
    kick::install_handler()?;
    let id = runner.vcpu.id();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let (out_tx, out_rx) = mpsc::sync_channel(1);
    let (stats_tx, stats_rx) = mpsc::channel();
    let (state_tx, state_rx) = mpsc::channel();
    let shared = SharedState::new();
    runner.commands = Some(cmd_rx);
    runner.shared = Some(shared.clone());
    runner.stats_reply = Some(stats_tx);
    runner.state_reply = Some(state_tx);
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Before the guest runs: the embedder's hook (the binary's seccomp filter).
            petrel_thread_hook::thread_started(petrel_thread_hook::ThreadKind::Vcpu);
            let outcome = catch_unwind(AssertUnwindSafe(|| runner.run())).unwrap_or_else(|p| {
                let msg = petrel_util::panic_message(p.as_ref());
                VcpuOutcome {
                    id,
                    stop: StopReason::VmmError(format!("vCPU {id} thread panicked: {msg}")),
                    stats: ExitStats::default(),
                    emulation: EmulationCounts::default(),
                    first_run_at: None,
                }
            });
            thread_shared.set(VcpuState::Exited);
            let _ = out_tx.send(outcome);
            let _ = exited.write(1);
        })
        .map_err(Error::Spawn)?;
    Ok(VcpuHandle {
        id,
        thread: Some(thread),
        commands: cmd_tx,
        outcome: out_rx,
        shared,
        stats: Mutex::new(stats_rx),
        saved: Mutex::new(state_rx),
    })
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends a command and kicks the thread out of `KVM_RUN` so it sees it.
    pub fn send(&self, cmd: VcpuCommand) -> Result<()> {
        // A closed channel means the thread already left its loop: nothing to tell it.
        let _ = self.commands.send(cmd);
        if let Some(t) = &self.thread {
            kick::kick(t)?;
        }
        Ok(())
    }

    /// What the thread last reported.
    pub fn state(&self) -> VcpuState {
        self.shared.get()
    }

    /// Waits up to `timeout` until the thread reports a state for which `done` holds (after a
    /// [`VcpuCommand::Pause`], `Paused` is the acknowledgement); returns the last state seen.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(VcpuState) -> bool) -> VcpuState {
        self.shared.wait_for(timeout, done)
    }

    /// The exit statistics and emulation counts so far, asked of the thread (a kick, so a
    /// running guest leaves `KVM_RUN` briefly); `None` if it did not answer within `timeout`
    /// (it exited, say).
    pub fn stats(&self, timeout: Duration) -> Option<(ExitStats, EmulationCounts)> {
        let replies = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        // Answers to earlier requests that timed out are stale.
        while replies.try_recv().is_ok() {}
        self.send(VcpuCommand::ReportStats).ok()?;
        replies.recv_timeout(timeout).ok()
    }

    /// The vCPU's KVM state ([`Vcpu::save_state`]), read by the vCPU thread itself while it is
    /// paused: send [`VcpuCommand::Pause`] and wait for [`VcpuState::Paused`] first (and pause
    /// every other vCPU of the VM too, for a consistent snapshot).
    ///
    /// [`Error::NotPaused`] if the thread is running; [`Error::NoReply`] if it did not answer
    /// within `timeout` (it exited, say).
    pub fn save_state(&self, timeout: Duration) -> Result<SavedState> {
        let replies = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        // Answers to earlier requests that timed out are stale.
        while replies.try_recv().is_ok() {}
        self.send(VcpuCommand::SaveState)?;
        match replies.recv_timeout(timeout) {
            Ok(answer) => answer,
            Err(_) => Err(Error::NoReply {
                id: self.id,
                what: "SaveState",
                timeout,
            }),
        }
    }

    /// Waits up to `timeout` for the thread to stop and joins it; `None` if it did not stop
    /// in time (the handle stays usable: send `Stop` and join again).
    pub fn join(&mut self, timeout: Duration) -> Option<VcpuOutcome> {
        match self.outcome.recv_timeout(timeout) {
            Ok(outcome) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                Some(outcome)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<(u16, Vec<u8>)>>,
    }

    impl IoHandler for Recorder {
        fn pio_read(&self, port: u16, data: &mut [u8]) {
            if port == 0x71 {
                data.fill(0x42);
            }
        }
        fn pio_write(&self, port: u16, data: &[u8]) -> IoOutcome {
            self.writes.lock().unwrap().push((port, data.to_vec()));
            if port == 0x64 && data == [0xfe] {
                IoOutcome::Reset
            } else {
                IoOutcome::Continue
            }
        }
        fn mmio_read(&self, _: u64, _: &mut [u8]) {}
        fn mmio_write(&self, _: u64, _: &[u8]) -> IoOutcome {
            IoOutcome::Continue
        }
    }

    #[test]
    fn string_out_is_split_into_accesses() {
        let r = Recorder::default();
        let exit = VmExit::IoOut {
            port: 0x3f8,
            size: 1,
            count: 3,
            data: b"abc",
        };
        let (key, step) = handle_exit(&r, exit);
        assert_eq!(key, Some(ExitKey::Port(0x3f8)));
        assert!(matches!(step, Step::Continue));
        let w = r.writes.lock().unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[2], (0x3f8, b"c".to_vec()));
    }

    #[test]
    fn unclaimed_in_reads_ff_and_claimed_in_is_filled() {
        let r = Recorder::default();
        let mut buf = [0u8; 4];
        handle_exit(
            &r,
            VmExit::IoIn {
                port: 0x60,
                size: 2,
                count: 2,
                data: &mut buf,
            },
        );
        assert_eq!(buf, [0xff; 4]);
        handle_exit(
            &r,
            VmExit::IoIn {
                port: 0x71,
                size: 1,
                count: 4,
                data: &mut buf,
            },
        );
        assert_eq!(buf, [0x42; 4]);
    }

    #[test]
    fn reset_write_stops_and_later_accesses_are_dropped() {
        let r = Recorder::default();
        let exit = VmExit::IoOut {
            port: 0x64,
            size: 1,
            count: 2,
            data: &[0xfe, 0xfe],
        };
        let (_, step) = handle_exit(&r, exit);
        assert!(matches!(step, Step::Stop(StopReason::Reset)));
        assert_eq!(r.writes.lock().unwrap().len(), 1);
    }

    #[test]
    fn fatal_exits_become_guest_faults() {
        let r = Recorder::default();
        for exit in [
            VmExit::Shutdown,
            VmExit::FailEntry {
                hardware_reason: 0x21,
                cpu: 0,
            },
        ] {
            assert!(matches!(handle_exit(&r, exit).1, Step::Guest(_)));
        }
        assert!(matches!(
            handle_exit(&r, VmExit::Hlt).1,
            Step::Stop(StopReason::Halted)
        ));
    }
}

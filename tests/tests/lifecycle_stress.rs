//! The VM's life cycle under fire: VMs with 1 to 40 vCPUs are built, started, paused, resumed
//! and stopped at random moments from another thread, hundreds of times. Every VM must end
//! (no lost kick, no vCPU stuck waiting for a SIPI or in its pause), every pause must be
//! acknowledged by every vCPU, and no call may fail other than for the VM's state.
//!
//! The moments are pseudo-random from a seed printed at the start; set `PETREL_STRESS_SEED` to
//! replay one run, `PETREL_STRESS_VMS` to change how many VMs it starts.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use petrel_tests::kvm_present_or_skip;
use petrel_vmm::config::SerialConfig;
use petrel_vmm::{Error, StopReason, VmConfig, VmState, Vmm, VmmHandle};

/// How long one VM may take from start to its end before the test calls it stuck.
const VM_DEADLINE: Duration = Duration::from_secs(30);
/// VMs started by default.
const DEFAULT_VMS: u32 = 300;

/// xorshift64*: small, deterministic, good enough to spread moments and vCPU counts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Default)]
struct Counts {
    vms: u32,
    vcpus: u64,
    stops: u32,
    pauses_acknowledged: u32,
    resumes: u32,
    refused_for_state: u32,
    stopped_before_start: u32,
}

/// A pause, resume or stats call may find the VM already ended (the demo guest resets within
/// milliseconds); anything else is a failure.
fn allowed(r: Result<(), Error>, counts: &mut Counts) -> bool {
    match r {
        Ok(()) => true,
        Err(Error::InvalidState { .. }) => {
            counts.refused_for_state += 1;
            false
        }
        Err(e) => panic!("a life-cycle call failed: {e}"),
    }
}

/// Plays one VM's other thread: random waits and operations, always ending with a stop.
fn drive(handle: &VmmHandle, rng: &mut Rng, counts: &mut Counts) {
    let ops = 1 + rng.below(6);
    for _ in 0..ops {
        let wait = rng.below(3000);
        if wait > 0 {
            thread::sleep(Duration::from_micros(wait));
        }
        match rng.below(4) {
            0 | 1 => {
                if allowed(handle.pause(), counts) {
                    counts.pauses_acknowledged += 1;
                    let state = handle.state();
                    assert!(
                        matches!(state, VmState::Paused | VmState::Stopped),
                        "after an acknowledged pause the VM is {state:?}"
                    );
                    // Statistics can be read from a paused VM (its vCPUs answer while parked).
                    let _ = handle.stats();
                }
            }
            2 => {
                if allowed(handle.resume(), counts) {
                    counts.resumes += 1;
                }
            }
            _ => break,
        }
    }
    handle.stop();
    counts.stops += 1;
}

#[test]
fn random_pause_resume_stop_never_leaves_a_vm_stuck() {
    if !kvm_present_or_skip("random_pause_resume_stop_never_leaves_a_vm_stuck") {
        return;
    }
    let seed = std::env::var("PETREL_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let vms = std::env::var("PETREL_STRESS_VMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_VMS);
    eprintln!("lifecycle stress: seed {seed} (PETREL_STRESS_SEED), {vms} VMs");
    let mut rng = Rng(seed);
    let mut counts = Counts::default();
    let started = Instant::now();
    for i in 0..vms {
        let vcpus = 1 + rng.below(40) as u8;
        let mut config = VmConfig::builtin_kernel(
            petrel_demo_guest::NAME,
            petrel_demo_guest::demo_kernel_elf(),
        );
        config.vcpus = vcpus;
        config.serial = SerialConfig::None;
        let mut vmm = Vmm::build(&config).expect("the demo VM builds");
        let handle = vmm.handle();
        counts.vms += 1;
        counts.vcpus += u64::from(vcpus);
        // One VM in ten is told to stop before it ever starts.
        let stop_first = rng.below(10) == 0;
        if stop_first {
            handle.stop();
            counts.stops += 1;
            counts.stopped_before_start += 1;
        } else {
            vmm.start().expect("the vCPUs start");
        }
        let (done_tx, done_rx) = mpsc::channel();
        let runner = thread::spawn(move || {
            let result = vmm.run_until_stopped();
            let _ = done_tx.send(());
            result
        });
        if !stop_first {
            drive(&handle, &mut rng, &mut counts);
        }
        if done_rx.recv_timeout(VM_DEADLINE).is_err() {
            panic!(
                "VM {i} ({vcpus} vCPUs, seed {seed}) did not end within {VM_DEADLINE:?} \
                 after its stop: a lost kick or a stuck vCPU"
            );
        }
        let summary = runner
            .join()
            .expect("the VM thread does not panic")
            .unwrap_or_else(|e| panic!("VM {i} ({vcpus} vCPUs, seed {seed}) failed: {e}"));
        assert!(
            matches!(summary.stop, StopReason::Reset | StopReason::Requested),
            "VM {i} ({vcpus} vCPUs, seed {seed}) ended with {:?}",
            summary.stop
        );
        assert_eq!(handle.state(), VmState::Stopped);
        assert!(
            handle.pause().is_err(),
            "a stopped VM cannot be paused again"
        );
    }
    eprintln!(
        "lifecycle stress: {} VMs, {} vCPUs in all, {} stops ({} before start), {} pauses \
         acknowledged, {} resumes, {} calls refused because the VM had ended; stuck: 0; {:.1} s",
        counts.vms,
        counts.vcpus,
        counts.stops,
        counts.stopped_before_start,
        counts.pauses_acknowledged,
        counts.resumes,
        counts.refused_for_state,
        started.elapsed().as_secs_f64()
    );
    assert!(
        counts.pauses_acknowledged > 0,
        "the run paused no VM at all"
    );
}

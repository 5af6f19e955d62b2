//! Petrel's own view of a `KVM_RUN` exit, decoded straight from the shared `kvm_run` page.
//!
//! kvm-ioctls flattens a port-I/O exit into one byte slice, losing the access size and count
//! that `rep outsb`/`rep insw` need (rust-vmm/kvm issue 371), so we read `struct kvm_run`
//! ourselves: `Documentation/virt/kvm/api.rst`, section 5 ("The kvm_run structure").

use kvm_bindings::{
    kvm_run, KVM_EXIT_DEBUG, KVM_EXIT_EXCEPTION, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT,
    KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT,
    KVM_EXIT_UNKNOWN, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};

/// Most data words KVM passes with an internal error (`kvm_run.internal.data`, api.rst 5).
pub const INTERNAL_ERROR_MAX_DATA: usize = 16;

/// What a guest asked for through `KVM_EXIT_SYSTEM_EVENT` (PSCI-style events; on x86 these come
/// from in-kernel devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest powered off.
    Shutdown,
    /// The guest asked for a reset.
    Reset,
    /// The guest crashed.
    Crash,
    /// Another event type, by number.
    Other(u32),
}

/// One exit from `KVM_RUN`, borrowed from the vCPU's `kvm_run` mapping.
#[derive(Debug, PartialEq, Eq)]
pub enum VmExit<'a> {
    /// `in`/`ins`: fill `data`, `count` accesses of `size` bytes each, in order.
    IoIn {
        /// The I/O port.
        port: u16,
        /// Bytes per access: 1, 2 or 4.
        size: u8,
        /// Number of accesses (more than 1 for `rep ins`).
        count: u32,
        /// `size * count` bytes for the guest, in access order.
        data: &'a mut [u8],
    },
    /// `out`/`outs`: `count` accesses of `size` bytes each, in order.
    IoOut {
        /// The I/O port.
        port: u16,
        /// Bytes per access: 1, 2 or 4.
        size: u8,
        /// Number of accesses (more than 1 for `rep outs`).
        count: u32,
        /// `size * count` bytes from the guest, in access order.
        data: &'a [u8],
    },
    /// A read of guest-physical memory no memory slot backs; fill `data`.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// 1 to 8 bytes to fill.
        data: &'a mut [u8],
    },
    /// A write to guest-physical memory no memory slot backs.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// 1 to 8 bytes written.
        data: &'a [u8],
    },
    /// The guest executed `hlt` with no in-kernel irqchip to wait on.
    Hlt,
    /// Triple fault: the guest is dead.
    Shutdown,
    /// VM entry failed; the reason is hardware-specific (VMX exit qualification / SVM code).
    FailEntry {
        /// `hardware_entry_failure_reason`.
        hardware_reason: u64,
        /// The physical CPU the entry failed on.
        cpu: u32,
    },
    /// KVM could not go on by itself (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// `KVM_INTERNAL_ERROR_*`: 1 emulation, 2 simultaneous exceptions, 3 delivery event,
        /// 4 unexpected exit reason.
        suberror: u32,
        /// The first `ndata` words of `internal.data`.
        data: [u64; INTERNAL_ERROR_MAX_DATA],
        /// How many words of `data` are valid.
        ndata: usize,
    },
    /// A system event from the guest.
    SystemEvent(SystemEvent),
    /// `KVM_RUN` returned because of a signal or `immediate_exit` (EINTR or `KVM_EXIT_INTR`).
    Interrupted,
    /// The guest can take an interrupt now (only when requested).
    IrqWindowOpen,
    /// A debug exit (single step or breakpoint, when guest debugging is on).
    Debug,
    /// `KVM_EXIT_UNKNOWN`, with the hardware exit reason.
    Unknown {
        /// `hw.hardware_exit_reason`.
        hardware_reason: u64,
    },
    /// An exit reason Petrel does not handle, by number, or an I/O exit whose geometry in
    /// `kvm_run` is impossible (decoded as `KVM_EXIT_IO` number with `malformed` set).
    Unsupported {
        /// The `exit_reason` number.
        reason: u32,
    },
}

impl VmExit<'_> {
    /// A short stable name for the exit reason, for statistics.
    pub fn reason_name(&self) -> &'static str {
        match self {
            VmExit::IoIn { .. } => "io-in",
            VmExit::IoOut { .. } => "io-out",
            VmExit::MmioRead { .. } => "mmio-read",
            VmExit::MmioWrite { .. } => "mmio-write",
            VmExit::Hlt => "hlt",
            VmExit::Shutdown => "shutdown",
            VmExit::FailEntry { .. } => "fail-entry",
            VmExit::InternalError { .. } => "internal-error",
            VmExit::SystemEvent(_) => "system-event",
            VmExit::Interrupted => "interrupted",
            VmExit::IrqWindowOpen => "irq-window-open",
            VmExit::Debug => "debug",
            VmExit::Unknown { .. } => "unknown",
            VmExit::Unsupported { .. } => "unsupported",
        }
    }
}

/// The `kvm_run` mapping of one vCPU as bytes: the structure followed by the pages KVM
/// points into (port-I/O data lives at `io.data_offset`, usually the second page).
#[derive(Debug)]
pub struct RunRegion<'a> {
    bytes: &'a mut [u8],
}

impl<'a> RunRegion<'a> {
    /// Wraps a `kvm_run` mapping; `None` if it is too short to hold `struct kvm_run` or not
    /// 8-byte aligned.
    pub fn new(bytes: &'a mut [u8]) -> Option<Self> {
        let aligned = (bytes.as_ptr() as usize) % std::mem::align_of::<kvm_run>() == 0;
        (aligned && bytes.len() >= std::mem::size_of::<kvm_run>()).then_some(RunRegion { bytes })
    }

    fn run(&self) -> &kvm_run {
        // SAFETY: `new` checked that the buffer is long enough and aligned for `kvm_run`, a
        // plain-old-data struct for which any bit pattern is valid.
        unsafe { &*(self.bytes.as_ptr() as *const kvm_run) }
    }

    /// Decodes the exit KVM left in this mapping after `KVM_RUN` returned 0.
    pub fn decode(self) -> VmExit<'a> {
        match self.run().exit_reason {
            KVM_EXIT_IO => self.decode_io(),
            KVM_EXIT_MMIO => self.decode_mmio(),
            KVM_EXIT_HLT => VmExit::Hlt,
            KVM_EXIT_SHUTDOWN => VmExit::Shutdown,
            KVM_EXIT_INTR => VmExit::Interrupted,
            KVM_EXIT_IRQ_WINDOW_OPEN => VmExit::IrqWindowOpen,
            KVM_EXIT_DEBUG | KVM_EXIT_EXCEPTION => VmExit::Debug,
            KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: exit_reason says `fail_entry` is the live union member.
                let f = unsafe { self.run().__bindgen_anon_1.fail_entry };
                VmExit::FailEntry {
                    hardware_reason: f.hardware_entry_failure_reason,
                    cpu: f.cpu,
                }
            }
            KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: exit_reason says `internal` is the live union member.
                let i = unsafe { self.run().__bindgen_anon_1.internal };
                let ndata = (i.ndata as usize).min(INTERNAL_ERROR_MAX_DATA);
                VmExit::InternalError {
                    suberror: i.suberror,
                    data: i.data,
                    ndata,
                }
            }
            KVM_EXIT_SYSTEM_EVENT => {
                // SAFETY: exit_reason says `system_event` is the live union member.
                let e = unsafe { self.run().__bindgen_anon_1.system_event };
                VmExit::SystemEvent(match e.type_ {
                    KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                    KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                    other => SystemEvent::Other(other),
                })
            }
            KVM_EXIT_UNKNOWN => {
                // SAFETY: exit_reason says `hw` is the live union member.
                let hw = unsafe { self.run().__bindgen_anon_1.hw };
                VmExit::Unknown {
                    hardware_reason: hw.hardware_exit_reason,
                }
            }
            reason => VmExit::Unsupported { reason },
        }
    }

    fn decode_io(self) -> VmExit<'a> {
        // SAFETY: exit_reason says `io` is the live union member.
        let io = unsafe { self.run().__bindgen_anon_1.io };
        let len = u64::from(io.size) * u64::from(io.count);
        let start = io.data_offset;
        // Never trust geometry we cannot check: an impossible size, or data outside the
        // mapping, would otherwise make us read or write past it.
        let in_bounds = start
            .checked_add(len)
            .is_some_and(|end| end <= self.bytes.len() as u64 && start >= 8);
        if !matches!(io.size, 1 | 2 | 4) || io.count == 0 || !in_bounds {
            return VmExit::Unsupported {
                reason: KVM_EXIT_IO,
            };
        }
        let data = &mut self.bytes[start as usize..(start + len) as usize];
        match u32::from(io.direction) {
            KVM_EXIT_IO_OUT => VmExit::IoOut {
                port: io.port,
                size: io.size,
                count: io.count,
                data,
            },
            KVM_EXIT_IO_IN => VmExit::IoIn {
                port: io.port,
                size: io.size,
                count: io.count,
                data,
            },
            _ => VmExit::Unsupported {
                reason: KVM_EXIT_IO,
            },
        }
    }

    fn decode_mmio(self) -> VmExit<'a> {
        let offset = std::mem::offset_of!(kvm_run, __bindgen_anon_1);
        // SAFETY: exit_reason says `mmio` is the live union member.
        let mmio = unsafe { self.run().__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(mmio.data.len());
        if len == 0 {
            return VmExit::Unsupported {
                reason: KVM_EXIT_MMIO,
            };
        }
        // `data` is the second field of `mmio`, after the 8-byte `phys_addr`.
        let data_start = offset + 8;
        let data = &mut self.bytes[data_start..data_start + len];
        if mmio.is_write != 0 {
            VmExit::MmioWrite {
                addr: mmio.phys_addr,
                data,
            }
        } else {
            VmExit::MmioRead {
                addr: mmio.phys_addr,
                data,
            }
        }
    }
}

/// What an emulation-failure internal error says about the failing instruction
/// (`struct kvm_run.emulation_failure`, api.rst 5: `data[0]` flags, then the length byte and up
/// to 15 instruction bytes).
pub fn emulation_failure_bytes(data: &[u64]) -> Option<Vec<u8>> {
    const FLAG_INSTRUCTION_BYTES: u64 =
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES as u64;
    if data.len() < 3 || data[0] & FLAG_INSTRUCTION_BYTES == 0 {
        return None;
    }
    let mut raw = Vec::with_capacity(16);
    raw.extend_from_slice(&data[1].to_le_bytes());
    raw.extend_from_slice(&data[2].to_le_bytes());
    let len = usize::from(raw[0]).min(15);
    (len > 0).then(|| raw[1..=len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page-aligned, zeroed fake `kvm_run` mapping of two pages.
    struct FakeRun(Vec<u64>);

    impl FakeRun {
        fn new() -> Self {
            FakeRun(vec![0u64; 8192 / 8])
        }
        fn run(&mut self) -> &mut kvm_run {
            // SAFETY: the buffer is 8 KiB, u64-aligned, and kvm_run is plain data.
            unsafe { &mut *(self.0.as_mut_ptr() as *mut kvm_run) }
        }
        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: reinterpreting a Vec<u64>'s storage as bytes, same length in bytes.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, 8192) }
        }
        fn set_io(&mut self, dir: u32, port: u16, size: u8, count: u32, offset: u64) {
            let run = self.run();
            run.exit_reason = KVM_EXIT_IO;
            run.__bindgen_anon_1.io.direction = dir as u8;
            run.__bindgen_anon_1.io.port = port;
            run.__bindgen_anon_1.io.size = size;
            run.__bindgen_anon_1.io.count = count;
            run.__bindgen_anon_1.io.data_offset = offset;
        }
    }

    #[test]
    fn rep_outsb_is_count_accesses_of_size() {
        let mut f = FakeRun::new();
        f.set_io(KVM_EXIT_IO_OUT, 0x3f8, 1, 3, 4096);
        f.bytes()[4096..4099].copy_from_slice(b"abc");
        let exit = RunRegion::new(f.bytes()).unwrap().decode();
        assert_eq!(
            exit,
            VmExit::IoOut {
                port: 0x3f8,
                size: 1,
                count: 3,
                data: b"abc"
            }
        );
    }

    #[test]
    fn io_in_gives_a_writable_buffer() {
        let mut f = FakeRun::new();
        f.set_io(KVM_EXIT_IO_IN, 0x71, 2, 2, 4096);
        match RunRegion::new(f.bytes()).unwrap().decode() {
            VmExit::IoIn {
                port,
                size,
                count,
                data,
            } => {
                assert_eq!((port, size, count, data.len()), (0x71, 2, 2, 4));
                data.copy_from_slice(&[1, 2, 3, 4]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(&f.bytes()[4096..4100], &[1, 2, 3, 4]);
    }

    #[test]
    fn io_outside_the_mapping_or_with_bad_size_is_not_trusted() {
        let mut f = FakeRun::new();
        f.set_io(KVM_EXIT_IO_OUT, 0x10, 1, 2, 8191);
        assert_eq!(
            RunRegion::new(f.bytes()).unwrap().decode().reason_name(),
            "unsupported"
        );
        f.set_io(KVM_EXIT_IO_OUT, 0x10, 3, 1, 4096);
        assert_eq!(
            RunRegion::new(f.bytes()).unwrap().decode().reason_name(),
            "unsupported"
        );
        f.set_io(KVM_EXIT_IO_OUT, 0x10, 4, u32::MAX, u64::MAX - 2);
        assert_eq!(
            RunRegion::new(f.bytes()).unwrap().decode().reason_name(),
            "unsupported"
        );
    }

    #[test]
    fn mmio_read_and_write() {
        let mut f = FakeRun::new();
        {
            let run = f.run();
            run.exit_reason = KVM_EXIT_MMIO;
            run.__bindgen_anon_1.mmio.phys_addr = 0xd000_0000;
            run.__bindgen_anon_1.mmio.len = 4;
            run.__bindgen_anon_1.mmio.is_write = 1;
            run.__bindgen_anon_1.mmio.data = [1, 2, 3, 4, 5, 6, 7, 8];
        }
        let exit = RunRegion::new(f.bytes()).unwrap().decode();
        assert_eq!(
            exit,
            VmExit::MmioWrite {
                addr: 0xd000_0000,
                data: &[1, 2, 3, 4]
            }
        );
        f.run().__bindgen_anon_1.mmio.is_write = 0;
        if let VmExit::MmioRead { data, .. } = RunRegion::new(f.bytes()).unwrap().decode() {
            data.fill(0xaa);
        } else {
            panic!("expected an MMIO read");
        }
        // SAFETY: reading the union member we just wrote.
        let d = unsafe { f.run().__bindgen_anon_1.mmio.data };
        assert_eq!(d, [0xaa, 0xaa, 0xaa, 0xaa, 5, 6, 7, 8]);
    }

    #[test]
    fn simple_exits() {
        let mut f = FakeRun::new();
        for (reason, name) in [
            (KVM_EXIT_HLT, "hlt"),
            (KVM_EXIT_SHUTDOWN, "shutdown"),
            (KVM_EXIT_INTR, "interrupted"),
            (1234, "unsupported"),
        ] {
            f.run().exit_reason = reason;
            assert_eq!(
                RunRegion::new(f.bytes()).unwrap().decode().reason_name(),
                name
            );
        }
    }

    #[test]
    fn fail_entry_and_system_event() {
        let mut f = FakeRun::new();
        f.run().exit_reason = KVM_EXIT_FAIL_ENTRY;
        f.run()
            .__bindgen_anon_1
            .fail_entry
            .hardware_entry_failure_reason = 0x21;
        f.run().__bindgen_anon_1.fail_entry.cpu = 3;
        assert_eq!(
            RunRegion::new(f.bytes()).unwrap().decode(),
            VmExit::FailEntry {
                hardware_reason: 0x21,
                cpu: 3
            }
        );
        f.run().exit_reason = KVM_EXIT_SYSTEM_EVENT;
        f.run().__bindgen_anon_1.system_event.type_ = KVM_SYSTEM_EVENT_RESET;
        assert_eq!(
            RunRegion::new(f.bytes()).unwrap().decode(),
            VmExit::SystemEvent(SystemEvent::Reset)
        );
    }

    #[test]
    fn internal_error_with_instruction_bytes() {
        let mut f = FakeRun::new();
        f.run().exit_reason = KVM_EXIT_INTERNAL_ERROR;
        f.run().__bindgen_anon_1.internal.suberror = 1;
        f.run().__bindgen_anon_1.internal.ndata = 3;
        // flags = instruction bytes present; length 1; the byte 0xcc (int3).
        let mut words = [0u64; INTERNAL_ERROR_MAX_DATA];
        words[0] = 1;
        words[1] = 0x9090_9090_9090_cc01;
        f.run().__bindgen_anon_1.internal.data = words;
        match RunRegion::new(f.bytes()).unwrap().decode() {
            VmExit::InternalError {
                suberror: 1,
                data,
                ndata: 3,
            } => {
                assert_eq!(emulation_failure_bytes(&data[..3]), Some(vec![0xcc]));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(emulation_failure_bytes(&[0, 0x1cc01, 0]), None);
    }

    #[test]
    fn short_or_misaligned_region_is_refused() {
        let mut small = vec![0u64; 4];
        // SAFETY: viewing the Vec<u64> as bytes.
        let b = unsafe { std::slice::from_raw_parts_mut(small.as_mut_ptr() as *mut u8, 32) };
        assert!(RunRegion::new(b).is_none());
        let mut f = FakeRun::new();
        assert!(RunRegion::new(&mut f.bytes()[1..]).is_none());
    }
}

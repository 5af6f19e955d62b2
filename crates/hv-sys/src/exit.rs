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
use std::marker::PhantomData;
use std::ptr::NonNull;

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
///
/// Decoding reads the fields it needs through raw pointers and creates references only to the
/// I/O or MMIO data it hands out, never to the first 8 bytes of `kvm_run` (which hold
/// `immediate_exit`, the byte a kick handler may write at any time; see [`crate::kick`]).
pub struct RunRegion<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _bytes: PhantomData<&'a mut [u8]>,
}

impl std::fmt::Debug for RunRegion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRegion")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The first byte past `kvm_run`'s leading control bytes (`request_interrupt_window`,
/// `immediate_exit`, padding) and the start of what KVM writes on an exit (`exit_reason`);
/// no data KVM points to may start before it (api.rst 5, `struct kvm_run`).
const EXIT_FIELDS_START: usize = std::mem::offset_of!(kvm_run, exit_reason);

// `immediate_exit` lies before EXIT_FIELDS_START, so no slice this module hands out covers it.
const _: () = assert!(std::mem::offset_of!(kvm_run, immediate_exit) < EXIT_FIELDS_START);

impl<'a> RunRegion<'a> {
    /// Wraps a `kvm_run` mapping; `None` if it is too short to hold `struct kvm_run` or not
    /// 8-byte aligned.
    pub fn new(bytes: &'a mut [u8]) -> Option<Self> {
        // SAFETY: an exclusive borrow of `bytes.len()` bytes for 'a: nothing else accesses them.
        unsafe { Self::from_raw_parts(bytes.as_mut_ptr(), bytes.len()) }
    }

    /// Wraps a `kvm_run` mapping given by address and length; `None` as for [`new`](Self::new).
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and nothing else may
    /// access those bytes during `'a`, except for atomic accesses to the first
    /// `offset_of!(kvm_run, exit_reason)` bytes (`immediate_exit` lives there), which this
    /// type neither reads nor covers with a reference.
    pub(crate) unsafe fn from_raw_parts(ptr: *mut u8, len: usize) -> Option<Self> {
        let ptr = NonNull::new(ptr)?;
        let aligned = (ptr.as_ptr() as usize) % std::mem::align_of::<kvm_run>() == 0;
        (aligned && len >= std::mem::size_of::<kvm_run>()).then_some(RunRegion {
            ptr,
            len,
            _bytes: PhantomData,
        })
    }

    /// The mapping as a `kvm_run` pointer: for field reads through `&raw const`, never to be
    /// turned into a reference (that would cover `immediate_exit`).
    fn run(&self) -> *const kvm_run {
        self.ptr.as_ptr().cast::<kvm_run>().cast_const()
    }

    /// `len` bytes at `start`, which the caller checked lie inside the region and at or after
    /// [`EXIT_FIELDS_START`].
    fn data(self, start: usize, len: usize) -> &'a mut [u8] {
        assert!(
            start >= EXIT_FIELDS_START && start.checked_add(len).is_some_and(|e| e <= self.len)
        );
        // SAFETY: inside the region (asserted), which `from_raw_parts`'s contract makes ours
        // for 'a; `self` is consumed, so this is the only reference made from it; and it does
        // not cover `immediate_exit` (before EXIT_FIELDS_START), which a kick handler may write.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len) }
    }

    /// Decodes the exit KVM left in this mapping after `KVM_RUN` returned 0.
    pub fn decode(self) -> VmExit<'a> {
        // SAFETY: `from_raw_parts` checked that the region holds an aligned `kvm_run`, a
        // plain-old-data struct for which any bit pattern is valid; `&raw const` reads the
        // field without a reference to the whole struct. (The same holds for each field read
        // below.)
        let exit_reason = unsafe { (&raw const (*self.run()).exit_reason).read() };
        match exit_reason {
            KVM_EXIT_IO => self.decode_io(),
            KVM_EXIT_MMIO => self.decode_mmio(),
            KVM_EXIT_HLT => VmExit::Hlt,
            KVM_EXIT_SHUTDOWN => VmExit::Shutdown,
            KVM_EXIT_INTR => VmExit::Interrupted,
            KVM_EXIT_IRQ_WINDOW_OPEN => VmExit::IrqWindowOpen,
            KVM_EXIT_DEBUG | KVM_EXIT_EXCEPTION => VmExit::Debug,
            KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: as above; exit_reason says `fail_entry` is the live union member.
                let f = unsafe { (&raw const (*self.run()).__bindgen_anon_1.fail_entry).read() };
                VmExit::FailEntry {
                    hardware_reason: f.hardware_entry_failure_reason,
                    cpu: f.cpu,
                }
            }
            KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: as above; exit_reason says `internal` is the live union member.
                let i = unsafe { (&raw const (*self.run()).__bindgen_anon_1.internal).read() };
                let ndata = (i.ndata as usize).min(INTERNAL_ERROR_MAX_DATA);
                VmExit::InternalError {
                    suberror: i.suberror,
                    data: i.data,
                    ndata,
                }
            }
            KVM_EXIT_SYSTEM_EVENT => {
                // SAFETY: as above; exit_reason says `system_event` is the live union member.
                let e = unsafe { (&raw const (*self.run()).__bindgen_anon_1.system_event).read() };
                VmExit::SystemEvent(match e.type_ {
                    KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                    KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                    other => SystemEvent::Other(other),
                })
            }
            KVM_EXIT_UNKNOWN => {
                // SAFETY: as above; exit_reason says `hw` is the live union member.
                let hw = unsafe { (&raw const (*self.run()).__bindgen_anon_1.hw).read() };
                VmExit::Unknown {
                    hardware_reason: hw.hardware_exit_reason,
                }
            }
            reason => VmExit::Unsupported { reason },
        }
    }

    fn decode_io(self) -> VmExit<'a> {
        // SAFETY: as in `decode`; exit_reason says `io` is the live union member.
        let io = unsafe { (&raw const (*self.run()).__bindgen_anon_1.io).read() };
        let len = u64::from(io.size) * u64::from(io.count);
        let start = io.data_offset;
        // Never trust geometry we cannot check: an impossible size, or data outside the
        // mapping, would otherwise make us read or write past it.
        let in_bounds = start
            .checked_add(len)
            .is_some_and(|end| end <= self.len as u64 && start >= EXIT_FIELDS_START as u64);
        if !matches!(io.size, 1 | 2 | 4) || io.count == 0 || !in_bounds {
            return VmExit::Unsupported {
                reason: KVM_EXIT_IO,
            };
        }
        let data = self.data(start as usize, len as usize);
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
        // SAFETY: as in `decode`; exit_reason says `mmio` is the live union member.
        let mmio = unsafe { (&raw const (*self.run()).__bindgen_anon_1.mmio).read() };
        let len = (mmio.len as usize).min(mmio.data.len());
        if len == 0 {
            return VmExit::Unsupported {
                reason: KVM_EXIT_MMIO,
            };
        }
        // `data` is the second field of `mmio`, after the 8-byte `phys_addr`.
        let data_start = offset + 8;
        let data = self.data(data_start, len);
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
    fn io_data_over_the_control_bytes_is_refused() {
        // `immediate_exit` (byte 1) is the kick handler's: no data slice may cover it.
        let mut f = FakeRun::new();
        for offset in [0, 1, 7] {
            f.set_io(KVM_EXIT_IO_IN, 0x10, 1, 2, offset);
            assert_eq!(
                RunRegion::new(f.bytes()).unwrap().decode().reason_name(),
                "unsupported",
                "data_offset {offset}"
            );
        }
    }

    #[test]
    fn a_kick_may_land_while_an_exit_is_borrowed() {
        // What `Vcpu::run` does: a region from a raw mapping, decoded, and while its data is
        // borrowed the kick handler stores to `immediate_exit` through the mapping's pointer.
        let mut f = FakeRun::new();
        f.set_io(KVM_EXIT_IO_IN, 0x71, 1, 4, 4096);
        let base = f.0.as_mut_ptr().cast::<u8>();
        let flag_at = std::mem::offset_of!(kvm_run, immediate_exit);
        // SAFETY: the buffer is 8 KiB, ours for the test, and only the atomic store below
        // touches its first 8 bytes while the region lives.
        let region = unsafe { RunRegion::from_raw_parts(base, 8192) }.unwrap();
        let VmExit::IoIn { data, .. } = region.decode() else {
            panic!("expected an I/O read");
        };
        data[0] = 0x11;
        // SAFETY: inside the buffer; every access to this byte is atomic.
        unsafe { std::sync::atomic::AtomicU8::from_ptr(base.add(flag_at)) }
            .store(1, std::sync::atomic::Ordering::Relaxed);
        data[3] = 0x44;
        assert_eq!(&f.bytes()[4096..4100], &[0x11, 0, 0, 0x44]);
        assert_eq!(f.run().immediate_exit, 1);
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

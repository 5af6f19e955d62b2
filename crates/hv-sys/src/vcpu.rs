//! A vCPU handle: `KVM_RUN` decoded into [`VmExit`], registers, and the emulation-failure
//! handler for hosts whose instruction emulator gives up on some instructions.

use std::fmt::Write as _;
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_run, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::exit::{emulation_failure_bytes, RunRegion, VmExit};
use crate::kick::{self, KickSlot};
use crate::vm::KeepAlive;
use crate::{Error, Result};

/// The x86 `int3` opcode (Intel SDM vol. 2A, "INT n/INTO/INT3/INT1").
pub const OPCODE_INT3: u8 = 0xcc;
/// The x87 `fwait`/`wait` opcode (Intel SDM vol. 2B, "WAIT/FWAIT").
pub const OPCODE_FWAIT: u8 = 0x9b;
/// Breakpoint exception vector, #BP (Intel SDM vol. 3A, table 6-1).
pub const VECTOR_BP: u8 = 3;
/// x87 FPU status word: error summary bit, set when an unmasked exception is pending
/// (Intel SDM vol. 1, 8.1.3).
pub const FPU_STATUS_ES: u16 = 1 << 7;

/// How an emulation failure was dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmulationOutcome {
    /// `int3`: RIP moved past it and #BP injected, as hardware would have done.
    InjectedBreakpoint,
    /// `fwait` with no unmasked x87 exception pending: a no-op, RIP moved past it.
    SkippedFwait,
    /// An instruction Petrel does not complete; the VM must stop.
    Unhandled {
        /// Guest RIP of the instruction.
        rip: u64,
        /// Up to 15 bytes at RIP (empty if they could not be read).
        bytes: Vec<u8>,
    },
}

/// `KVM_RUN _IO(KVMIO, 0x80)` (include/uapi/linux/kvm.h; api.rst 4.10), issued here rather
/// than through kvm-ioctls, whose `VcpuFd::run` makes a `&mut kvm_run` over the structure that
/// a kick handler may be writing (`immediate_exit`).
mod ioctls {
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
}

/// This crate's own shared mapping of a vCPU's `kvm_run` area (api.rst 5, "The kvm_run
/// structure": the vCPU fd is mmap()ed at offset 0, for the `KVM_GET_VCPU_MMAP_SIZE` bytes of
/// api.rst 4.5). kvm-ioctls maps it
/// too, but hands it out only as `&mut kvm_run`, a reference that would both cover the byte the
/// kick handler writes and be too narrow for the I/O data pages that follow the structure.
/// Here the mapping is a raw pointer: [`Vcpu::run`] and the kick handler access
/// `immediate_exit` only atomically, and [`RunRegion`] makes references only to the exit data
/// it returns.
#[derive(Debug)]
struct RunMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this struct; the pointer is only
// dereferenced by `Vcpu::run` (through `&mut Vcpu`) and, for the `immediate_exit` byte, by
// atomic stores, which are sound from any thread.
unsafe impl Send for RunMapping {}
// SAFETY: as above; `&RunMapping` allows nothing but reading the pointer.
unsafe impl Sync for RunMapping {}

impl RunMapping {
    /// Maps `len` bytes of `fd`'s `kvm_run` area, shared and read-write.
    fn new(fd: &VcpuFd, len: usize) -> std::result::Result<Self, vmm_sys_util::errno::Error> {
        // SAFETY: a new mapping at an address the kernel picks, so it replaces nothing; the
        // result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(vmm_sys_util::errno::Error::last());
        }
        let ptr =
            NonNull::new(addr.cast::<u8>()).ok_or(vmm_sys_util::errno::Error::new(libc::EINVAL))?;
        Ok(RunMapping { ptr, len })
    }

    /// The address of `kvm_run.immediate_exit`, if the mapping holds a whole `kvm_run`.
    fn immediate_exit(&self) -> *mut u8 {
        if self.len < std::mem::size_of::<kvm_run>() {
            return std::ptr::null_mut();
        }
        // SAFETY: inside the mapping, which holds a whole `kvm_run` (checked above).
        unsafe {
            self.ptr
                .as_ptr()
                .add(std::mem::offset_of!(kvm_run, immediate_exit))
        }
    }
}

impl Drop for RunMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` and nothing uses it any more: `Vcpu::drop`
        // retired the kick slot (no handler writes to it after that) and the exits borrowed
        // from it borrow the `Vcpu`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One vCPU.
///
/// It keeps the guest RAM registered with its VM alive: KVM reaches guest memory through the
/// host addresses of the memory slots for as long as any vCPU of the VM exists, so the mappings
/// must outlive the vCPU, not just the [`Vm`](crate::Vm) handle.
#[derive(Debug)]
pub struct Vcpu {
    id: u64,
    fd: VcpuFd,
    /// `kvm_run`, unmapped after `Drop::drop` retired `kick` (fields drop after it).
    run: RunMapping,
    kick: Arc<KickSlot>,
    /// The MSRs [`save_state`](Self::save_state) reads (`KVM_GET_MSR_INDEX_LIST`).
    pub(crate) msr_index_list: Arc<[u32]>,
    /// Bytes `KVM_GET_XSAVE2` fills, `None` where KVM lacks `KVM_CAP_XSAVE2` (read once at
    /// `Vm::new`; it could grow only if the process asked for more guest XSTATE features with
    /// arch_prctl afterwards, which Petrel does not).
    pub(crate) xsave2_size: Option<usize>,
    /// Dropped after `fd` (fields drop in declaration order).
    _ram: KeepAlive,
}

impl Vcpu {
    pub(crate) fn new(id: u64, fd: VcpuFd, mmap_size: usize, ram: KeepAlive) -> Result<Self> {
        let run =
            RunMapping::new(&fd, mmap_size).map_err(|e| Error::CreateVcpu { id, source: e })?;
        let kick = KickSlot::new(run.immediate_exit());
        Ok(Vcpu {
            id,
            fd,
            run,
            kick,
            msr_index_list: Arc::from(Vec::new()),
            xsave2_size: None,
            _ram: ram,
        })
    }

    /// Binds this vCPU to the calling thread for kicks ([`crate::kick`]): from now on a kick
    /// sent to this thread makes the vCPU's current or next `KVM_RUN` return at once. The first
    /// [`run`](Self::run) on a thread does this too; call it earlier when a command may be sent
    /// before the first run, then look at the commands, then run.
    pub fn bind_kicks(&self) {
        if !kick::is_bound(&self.kick) {
            kick::bind(&self.kick);
        }
    }

    /// The vCPU's index (and initial APIC id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The kvm-ioctls handle, for calls this crate does not wrap (MSRs, LAPIC, FPU).
    ///
    /// Nothing reachable through `&VcpuFd` can unmap guest memory or this vCPU's `kvm_run`:
    /// `KVM_RUN` and the `kvm_run` accessors of kvm-ioctls need `&mut VcpuFd`, and the mapping
    /// they use is not the one the kick handler writes.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Enters the guest until the next exit (`KVM_RUN`) and decodes it.
    ///
    /// A kick ([`crate::kick`]) from another thread makes this return
    /// [`VmExit::Interrupted`] promptly, whether it lands before or during the call.
    pub fn run(&mut self) -> Result<VmExit<'_>> {
        self.bind_kicks();
        // SAFETY: KVM_RUN on our own vCPU fd takes no argument; the kernel writes only the
        // `kvm_run` mapping (and guest memory, which the VM and this vCPU keep mapped). No
        // reference into the mapping is live: exits borrow `self`, which `&mut self` excludes.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(&self.fd, ioctls::KVM_RUN()) };
        if ret < 0 {
            let e = vmm_sys_util::errno::Error::last();
            if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN {
                self.clear_immediate_exit();
                return Ok(VmExit::Interrupted);
            }
            return Err(Error::Run {
                id: self.id,
                source: e,
            });
        }
        // SAFETY: the mapping is `run.len` bytes, read-write, for as long as `self`, which the
        // result borrows mutably, so nothing else in Rust accesses it meanwhile. The one
        // exception is `immediate_exit`, which the kick handler writes atomically and which
        // `RunRegion` neither reads nor covers with a reference.
        let region = unsafe { RunRegion::from_raw_parts(self.run.ptr.as_ptr(), self.run.len) };
        Ok(region
            .map(RunRegion::decode)
            .unwrap_or(VmExit::Unsupported { reason: u32::MAX }))
    }

    /// Resets `immediate_exit` after a kick made `KVM_RUN` return.
    fn clear_immediate_exit(&self) {
        let flag = self.run.immediate_exit();
        if flag.is_null() {
            return;
        }
        // SAFETY: the byte is inside the live mapping (`self`), and every Rust access to it is
        // atomic (this one and the kick handler's). Relaxed: a kick that lands after KVM_RUN
        // returned and before this store is merged into this return (the caller looks at its
        // commands next); one that lands after it makes the next KVM_RUN return at once.
        unsafe { AtomicU8::from_ptr(flag) }.store(0, Ordering::Relaxed);
    }

    /// Sets the CPUID table the guest sees (`KVM_SET_CPUID2`); before the first run.
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid).map_err(|e| Error::Registers {
            what: "KVM_SET_CPUID2",
            source: e,
        })
    }

    /// General-purpose registers (`KVM_GET_REGS`).
    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(|e| Error::Registers {
            what: "KVM_GET_REGS",
            source: e,
        })
    }

    /// Sets the general-purpose registers (`KVM_SET_REGS`).
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(|e| Error::Registers {
            what: "KVM_SET_REGS",
            source: e,
        })
    }

    /// Special registers (`KVM_GET_SREGS`).
    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(|e| Error::Registers {
            what: "KVM_GET_SREGS",
            source: e,
        })
    }

    /// Sets the special registers (`KVM_SET_SREGS`).
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd.set_sregs(sregs).map_err(|e| Error::Registers {
            what: "KVM_SET_SREGS",
            source: e,
        })
    }

    /// Deals with `KVM_EXIT_INTERNAL_ERROR` suberror 1 (the host's instruction emulator gave
    /// up): reads the instruction, completes `int3` by injecting #BP and `fwait` as the no-op
    /// it is with no x87 exception pending, and reports anything else as unhandled.
    pub fn complete_emulation_failure<M: GuestMemory + ?Sized>(
        &self,
        data: &[u64],
        ram: &M,
    ) -> Result<EmulationOutcome> {
        let mut regs = self.regs()?;
        let bytes = match emulation_failure_bytes(data) {
            Some(b) => b,
            None => self.instruction_bytes_at_rip(ram).unwrap_or_default(),
        };
        match bytes.first() {
            Some(&OPCODE_INT3) => {
                let mut events = self.fd.get_vcpu_events().map_err(|e| Error::Registers {
                    what: "KVM_GET_VCPU_EVENTS",
                    source: e,
                })?;
                regs.rip = regs.rip.wrapping_add(1);
                self.set_regs(&regs)?;
                // A trap-class exception: delivered with RIP after the instruction, exactly
                // what `int3` does on hardware (Intel SDM vol. 3A, 6.5).
                events.exception.injected = 1;
                events.exception.nr = VECTOR_BP;
                events.exception.has_error_code = 0;
                events.exception.error_code = 0;
                events.flags = 0;
                self.fd
                    .set_vcpu_events(&events)
                    .map_err(|e| Error::Registers {
                        what: "KVM_SET_VCPU_EVENTS",
                        source: e,
                    })?;
                Ok(EmulationOutcome::InjectedBreakpoint)
            }
            Some(&OPCODE_FWAIT) => {
                let fpu = self.fd.get_fpu().map_err(|e| Error::Registers {
                    what: "KVM_GET_FPU",
                    source: e,
                })?;
                if fpu.fsw & FPU_STATUS_ES != 0 {
                    return Ok(EmulationOutcome::Unhandled {
                        rip: regs.rip,
                        bytes,
                    });
                }
                regs.rip = regs.rip.wrapping_add(1);
                self.set_regs(&regs)?;
                Ok(EmulationOutcome::SkippedFwait)
            }
            _ => Ok(EmulationOutcome::Unhandled {
                rip: regs.rip,
                bytes,
            }),
        }
    }

    /// Reads up to 15 instruction bytes at CS:RIP, translating through the guest's page tables
    /// (`KVM_TRANSLATE`) and reading only guest RAM (`ram`, any vm-memory guest memory).
    pub fn instruction_bytes_at_rip<M: GuestMemory + ?Sized>(&self, ram: &M) -> Option<Vec<u8>> {
        let regs = self.regs().ok()?;
        let sregs = self.sregs().ok()?;
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        let mut out = Vec::with_capacity(15);
        // Byte by byte, so an instruction crossing a page boundary is translated per page.
        for i in 0..15u64 {
            let t = self.fd.translate_gva(linear.wrapping_add(i)).ok()?;
            if t.valid == 0 {
                break;
            }
            let mut b = [0u8];
            if ram
                .read_slice(&mut b, GuestAddress(t.physical_address))
                .is_err()
            {
                break;
            }
            out.push(b[0]);
        }
        Some(out)
    }

    /// A multi-line dump of the registers, for error messages.
    pub fn register_dump(&self) -> String {
        let mut s = String::new();
        match self.regs() {
            Ok(r) => {
                let _ = writeln!(
                    s,
                    "  rip={:#018x} rsp={:#018x} rflags={:#010x}\n  rax={:#018x} rbx={:#018x} \
                     rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x}",
                    r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
                );
            }
            Err(e) => {
                let _ = writeln!(s, "  (registers unavailable: {e})");
            }
        }
        if let Ok(sr) = self.sregs() {
            let _ = writeln!(
                s,
                "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\n  cs={} ss={} ds={}",
                sr.cr0,
                sr.cr2,
                sr.cr3,
                sr.cr4,
                sr.efer,
                segment(&sr.cs),
                segment(&sr.ss),
                segment(&sr.ds)
            );
        }
        s
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // No kick handler may touch `kvm_run` once the mapping goes (with `fd`, after this).
        self.kick.retire();
        kick::unbind_if_bound(&self.kick);
    }
}

fn segment(s: &kvm_segment) -> String {
    format!(
        "{:#06x}(base={:#x} limit={:#x} l={} db={})",
        s.selector, s.base, s.limit, s.l, s.db
    )
}

/// Formats instruction bytes as hex, e.g. `0f a2`.
pub fn hex_bytes(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(unreadable)".into();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

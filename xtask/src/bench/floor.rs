//! The floor for exit handling: a loop that calls `KVM_RUN` directly, with nothing around it.
//!
//! It builds the smallest VM that runs the same real-mode guest as the bench's Petrel case
//! (a loop of `out 0x10, al`): one memory slot, one vCPU, no irqchip, no devices, no threads.
//! Each `KVM_RUN` returns `KVM_EXIT_IO` for the port write and the loop enters the guest again
//! at once, so the time per iteration is what KVM itself costs per exit on this host. The
//! loop calls `ioctl(2)` itself and reads the exit from the shared `kvm_run` page, so that
//! xtask's unoptimised (debug) build adds next to nothing per iteration.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_run, kvm_userspace_memory_region, KVM_EXIT_IO, KVM_EXIT_IO_OUT};
use kvm_ioctls::{Kvm, VcpuExit};

use crate::error::{Error, Result};

/// Guest-physical address (and size) of the floor VM's memory: 64 KiB from 0.
const MEM_SIZE: usize = 0x1_0000;

/// Where the guest code goes, as with `petrel run --raw` (its default load address).
pub const LOAD_ADDR: u64 = 0x1000;

/// Where KVM may put its real-mode TSS (three pages in the 32-bit gap, far from the slot),
/// as Petrel's layout does.
const TSS_ADDR: usize = 0xfffb_d000;

/// `KVM_RUN`, `_IO(KVMIO, 0x80)` with `KVMIO` = 0xAE (include/uapi/linux/kvm.h).
const KVM_RUN: libc::c_ulong = 0xae80;

/// Anonymous memory for the guest, unmapped on drop.
#[derive(Debug)]
struct Anon {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Anon {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; it
        // aliases nothing of ours, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Other(format!(
                "floor VM: mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self { ptr, len })
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "write past the mapping");
        // SAFETY: the range lies inside the mapping (checked above), which is ours and
        // writable; `bytes` cannot overlap a mapping made by `mmap`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.cast::<u8>().add(offset),
                bytes.len(),
            )
        };
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses them after this.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Runs `code` (real mode, loaded at [`LOAD_ADDR`]) for `exits` port-write exits to `port`
/// and returns the time the `exits` calls of `KVM_RUN` took, from the first (which enters
/// the guest for the first time, as Petrel's span also starts at its first `KVM_RUN`). Any
/// other exit is an error.
///
/// The first call's time is measured with the rest but through kvm-ioctls's own `run`;
/// the others call `ioctl(2)` directly.
pub fn time_port_exits(code: &[u8], port: u16, exits: u64) -> Result<Duration> {
    let kvm_err = |what: &str, e: kvm_ioctls::Error| Error::Other(format!("floor VM: {what}: {e}"));
    let kvm = Kvm::new().map_err(|e| kvm_err("opening /dev/kvm", e))?;
    let mut mem = Anon::new(MEM_SIZE)?;
    mem.write(LOAD_ADDR as usize, code);
    let vm = kvm.create_vm().map_err(|e| kvm_err("KVM_CREATE_VM", e))?;
    vm.set_tss_address(TSS_ADDR)
        .map_err(|e| kvm_err("KVM_SET_TSS_ADDR", e))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: the region is our own anonymous mapping, which outlives the VM (`mem` is
    // declared before `vm`, so it is dropped after it), and it is the VM's only slot.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| kvm_err("KVM_SET_USER_MEMORY_REGION", e))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| kvm_err("KVM_CREATE_VCPU", e))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| kvm_err("KVM_GET_SREGS", e))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| kvm_err("KVM_SET_SREGS", e))?;
    let mut regs = vcpu.get_regs().map_err(|e| kvm_err("KVM_GET_REGS", e))?;
    regs.rip = LOAD_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| kvm_err("KVM_SET_REGS", e))?;

    let start = Instant::now();
    // The first exit goes through kvm-ioctls, which checks it fully.
    match vcpu.run() {
        Ok(VcpuExit::IoOut(p, _)) if p == port => {}
        Ok(other) => {
            return Err(Error::Other(format!(
                "floor VM: expected a write to port {port:#x}, got {other:?}"
            )))
        }
        Err(e) => return Err(kvm_err("KVM_RUN", e)),
    }
    let fd = vcpu.as_raw_fd();
    let run: *const kvm_run = vcpu.get_kvm_run();
    for i in 1..exits {
        // SAFETY: `fd` is the vCPU's open file descriptor and KVM_RUN takes no argument;
        // `vcpu`, which owns the fd, lives to the end of this function.
        let rc = unsafe { libc::ioctl(fd, KVM_RUN, 0) };
        // SAFETY: `run` points to the vCPU's kvm_run page, mapped by kvm-ioctls for as long
        // as `vcpu` lives; KVM wrote it before the ioctl returned. Volatile: the kernel, not
        // this code, writes it.
        let (reason, io) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*run).exit_reason),
                std::ptr::read_volatile(&raw const (*run).__bindgen_anon_1.io),
            )
        };
        if rc != 0 {
            return Err(Error::Other(format!(
                "floor VM: KVM_RUN failed at exit {}: {}",
                i + 1,
                std::io::Error::last_os_error()
            )));
        }
        if reason != KVM_EXIT_IO || io.port != port || u32::from(io.direction) != KVM_EXIT_IO_OUT {
            return Err(Error::Other(format!(
                "floor VM: exit {} was reason {reason} (port {:#x}), not a write to port {port:#x}",
                i + 1,
                io.port
            )));
        }
    }
    Ok(start.elapsed())
}

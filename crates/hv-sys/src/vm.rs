//! A KVM virtual machine: memory slots, the in-kernel irqchip and PIT, irqfd and ioeventfd.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use std::any::Any;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Cap, IoEventAddress, VmFd};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Hypervisor, Result, Vcpu};

/// `KVM_SET_IDENTITY_MAP_ADDR`: the one page KVM needs for its real-mode identity map on Intel
/// hosts (api.rst 4.64), placed where no RAM is: in the 32-bit MMIO gap, right below the TSS.
/// A guest's memory layout must leave it (and the TSS) free.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// `KVM_SET_TSS_ADDR`: the three pages KVM needs for its TSS on Intel hosts (api.rst 4.48,
/// "a three-page region in the first 4GB of the guest physical address space"), right after
/// the identity-map page.
pub const KVM_TSS_START: u64 = 0xfffb_d000;

// The identity-map page and the 3-page TSS touch and stay below 4 GiB, as KVM requires.
const _: () = {
    assert!(KVM_IDENTITY_MAP_START + 0x1000 == KVM_TSS_START);
    assert!(KVM_TSS_START + 3 * 0x1000 <= 1 << 32);
};

/// What the VM and its vCPUs hold to keep registered guest memory mapped: a clone of the
/// memory object that was registered (sharing its mappings), or whatever the caller of
/// [`Vm::register_raw_slot`] handed in.
pub(crate) type KeepAlive = Arc<Mutex<Vec<Box<dyn Any + Send + Sync>>>>;

/// One VM file descriptor and what Petrel needs from it.
///
/// The VM keeps the memory registered with it alive (a clone of each
/// [`GuestMemoryMmap`] shares its mappings), and so does each of its vCPUs: no safe call can
/// unmap memory that KVM still lets a guest reach. The raw `VmFd`, with which a vCPU could be
/// made that keeps nothing alive, is reachable only through the unsafe [`Vm::fd`].
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    vcpu_mmap_size: usize,
    max_vcpus: usize,
    /// Every memory slot registered so far, in slot-number order (slot `i` is `slots[i]`).
    slots: Vec<kvm_userspace_memory_region>,
    /// Whether the slots carry `KVM_MEM_LOG_DIRTY_PAGES`.
    dirty_logging: bool,
    /// `KVM_GET_MSR_INDEX_LIST`, handed to each vCPU for its snapshots.
    msr_index_list: Arc<[u32]>,
    /// Bytes `KVM_GET_XSAVE2` fills (`KVM_CAP_XSAVE2`), `None` where KVM lacks it.
    xsave2_size: Option<usize>,
    /// Dropped after `fd` (fields drop in declaration order); shared with every vCPU.
    ram: KeepAlive,
}

impl Vm {
    /// Creates a VM (`KVM_CREATE_VM`).
    pub fn new(hv: &Hypervisor) -> Result<Self> {
        let fd = hv.kvm().create_vm().map_err(Error::CreateVm)?;
        // api.rst 4.42 (KVM_GET_XSAVE2): the size comes from KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
        // on the VM; 0 means the capability (and the ioctl) is missing.
        let xsave2_size = usize::try_from(fd.check_extension_int(Cap::Xsave2))
            .ok()
            .filter(|&n| n > 0);
        Ok(Vm {
            fd,
            vcpu_mmap_size: hv.vcpu_mmap_size(),
            max_vcpus: hv.max_vcpus(),
            slots: Vec::new(),
            dirty_logging: false,
            msr_index_list: hv.msr_index_list().into(),
            xsave2_size,
            ram: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The kvm-ioctls handle, for calls this crate does not wrap.
    ///
    /// Unsafe because a `VmFd` can create a vCPU (`VmFd::create_vcpu`, or a device) that keeps
    /// this VM, and so its memory slots, alive in the kernel without keeping the guest RAM
    /// mapped, which [`Vm::create_vcpu`] and [`Vm::register_memory`] guarantee.
    ///
    /// ```compile_fail,E0133
    /// # fn f(vm: &petrel_hv_sys::Vm) {
    /// let vcpu = vm.fd().create_vcpu(0); // a vCPU that keeps no guest RAM alive: refused
    /// # }
    /// ```
    ///
    /// # Safety
    ///
    /// Through the handle, the caller must not:
    /// - create vCPUs or devices (`create_vcpu`, `create_vcpu_from_rawfd`, `create_device`,
    ///   `create_guest_memfd`) or duplicate the descriptor, unless whatever it creates is
    ///   closed before the guest memory registered with this VM is unmapped (use
    ///   [`Vm::create_vcpu`], whose vCPUs keep that memory alive);
    /// - add, change or remove memory slots (`set_user_memory_region`): this `Vm` numbers and
    ///   re-registers its slots itself; use [`Vm::register_memory`] or
    ///   [`Vm::register_raw_slot`].
    pub unsafe fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The kvm-ioctls handle, for this crate's own calls (none of which creates a vCPU).
    pub(crate) fn vm_fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `mem` as a KVM memory slot (`KVM_SET_USER_MEMORY_REGION`),
    /// in region order, with dirty logging if [`set_dirty_logging`](Self::set_dirty_logging)
    /// turned it on. Any bitmap type will do (Petrel's VMM uses vm-memory's `AtomicBitmap`).
    ///
    /// The VM and its vCPUs keep a clone of `mem` (it shares the regions' mappings, which vm-memory
    /// unmaps only when the last clone goes) for as long as they exist.
    pub fn register_memory<B>(&mut self, mem: &GuestMemoryMmap<B>) -> Result<()>
    where
        B: Bitmap + Send + Sync + 'static,
    {
        let regions: Vec<(u64, u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as u64))
            .collect();
        self.ram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(mem.clone()));
        for (guest_addr, size, host_addr) in regions {
            self.add_slot(guest_addr, size, host_addr)?;
        }
        Ok(())
    }

    /// Registers one memory slot from raw addresses: `size` bytes of host memory at
    /// `host_addr` appear to the guest at `guest_addr`. `keep_alive` is held by the VM and its
    /// vCPUs until the last of them goes (pass the owner of the mapping, or `()`).
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + size` must be memory mapped read-write in this process, not
    /// overlapping any other slot's, that stays mapped until the VM and every vCPU it created
    /// are dropped (which holding `keep_alive` may ensure), and that nothing else relies on
    /// staying unchanged: the guest may write any byte of it at any time.
    pub unsafe fn register_raw_slot(
        &mut self,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        keep_alive: Box<dyn Any + Send + Sync>,
    ) -> Result<()> {
        self.ram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(keep_alive);
        self.add_slot(guest_addr, size, host_addr)
    }

    fn add_slot(&mut self, guest_addr: u64, size: u64, host_addr: u64) -> Result<()> {
        let slot = kvm_userspace_memory_region {
            slot: self.slots.len() as u32,
            flags: self.slot_flags(),
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        self.set_slot(slot)?;
        self.slots.push(slot);
        Ok(())
    }

    fn slot_flags(&self) -> u32 {
        if self.dirty_logging {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        }
    }

    fn set_slot(&self, slot: kvm_userspace_memory_region) -> Result<()> {
        // SAFETY: every slot this VM registers is either a region of a `GuestMemoryMmap` that
        // this VM and each of its vCPUs keep alive (the clones in `ram`, which share the
        // regions' mappings) for as long as KVM can use the slot, or a raw slot whose caller
        // promised the same (`register_raw_slot`'s contract). The regions of one
        // `GuestMemoryMmap` never overlap (vm-memory refuses to build one that does), and
        // re-registering a slot changes only its flags (api.rst 4.35: the flags of an existing
        // slot may be changed).
        unsafe { self.fd.set_user_memory_region(slot) }.map_err(|e| Error::MemorySlot {
            guest_addr: slot.guest_phys_addr,
            source: e,
        })
    }

    /// Turns KVM's dirty page log on or off for every memory slot, now and for RAM registered
    /// later: each slot is registered again with or without `KVM_MEM_LOG_DIRTY_PAGES` (api.rst
    /// 4.35, `KVM_SET_USER_MEMORY_REGION`). Turning it on starts a fresh, empty log.
    ///
    /// The log records the guest's own writes (and KVM's, e.g. kvmclock pages); writes the VMM
    /// makes through its mapping are not in it.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<()> {
        if on == self.dirty_logging {
            return Ok(());
        }
        let previous = self.dirty_logging;
        self.dirty_logging = on;
        let flags = self.slot_flags();
        for i in 0..self.slots.len() {
            let slot = kvm_userspace_memory_region {
                flags,
                ..self.slots[i]
            };
            if let Err(e) = self.set_slot(slot) {
                // Put the slots already changed back, so the flags stay the same everywhere.
                self.dirty_logging = previous;
                for done in &self.slots[..i] {
                    let _ = self.set_slot(*done);
                }
                return Err(e);
            }
            self.slots[i] = slot;
        }
        Ok(())
    }

    /// Whether [`set_dirty_logging`](Self::set_dirty_logging) has turned the dirty log on.
    pub fn dirty_logging(&self) -> bool {
        self.dirty_logging
    }

    /// KVM's dirty page log (`KVM_GET_DIRTY_LOG`, api.rst 4.7), one bitmap per memory slot in
    /// slot order (the regions of each memory registered, in registration order):
    /// bit `i % 64` of word `i / 64` is page `i` of the slot (4 KiB pages, from the slot's
    /// guest address). Each call also clears KVM's log, so it reports the pages written since
    /// the previous call (or since logging was turned on).
    ///
    /// An error if logging is off: KVM keeps no log then.
    pub fn dirty_pages(&self) -> Result<Vec<Vec<u64>>> {
        if !self.dirty_logging {
            return Err(Error::DirtyLoggingOff);
        }
        self.slots
            .iter()
            .map(|s| {
                self.fd
                    .get_dirty_log(s.slot, s.memory_size as usize)
                    .map_err(|e| Error::Platform {
                        what: "KVM_GET_DIRTY_LOG",
                        source: e,
                    })
            })
            .collect()
    }

    /// Places the pages KVM needs for real-mode and TSS emulation on Intel hosts: the
    /// identity-map page and the 3-page TSS (api.rst, `KVM_SET_TSS_ADDR` and
    /// `KVM_SET_IDENTITY_MAP_ADDR`), at [`KVM_IDENTITY_MAP_START`] and [`KVM_TSS_START`], which
    /// the guest's layout must leave free of RAM.
    pub fn setup_tss_and_identity_map(&self) -> Result<()> {
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(|e| Error::Platform {
                what: "KVM_SET_IDENTITY_MAP_ADDR",
                source: e,
            })?;
        self.fd
            .set_tss_address(KVM_TSS_START as usize)
            .map_err(|e| Error::Platform {
                what: "KVM_SET_TSS_ADDR",
                source: e,
            })
    }

    /// Creates the in-kernel PIC/IOAPIC/LAPIC (api.rst, `KVM_CREATE_IRQCHIP`) and PIT (`KVM_CREATE_PIT2`, with a dummy
    /// speaker port so port 0x61 is handled in the kernel). With them, `hlt` waits in the
    /// kernel for an interrupt instead of exiting to Petrel.
    pub fn setup_irqchip_and_pit(&self) -> Result<()> {
        self.fd.create_irq_chip().map_err(|e| Error::Platform {
            what: "KVM_CREATE_IRQCHIP",
            source: e,
        })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(|e| Error::Platform {
            what: "KVM_CREATE_PIT2",
            source: e,
        })
    }

    /// Makes a write to `event` inject interrupt line `gsi` without a return to the VMM
    /// (api.rst, `KVM_IRQFD`).
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|e| Error::Irqfd { gsi, source: e })
    }

    /// Makes a guest write to `addr` signal `event` inside the kernel (api.rst, `KVM_IOEVENTFD`), optionally only when the written value equals `datamatch`.
    pub fn register_ioeventfd(
        &self,
        event: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<()> {
        let raw = match addr {
            IoEventAddress::Pio(a) | IoEventAddress::Mmio(a) => a,
        };
        let r = match datamatch {
            Some(v) => self.fd.register_ioevent(event, &addr, v),
            None => self
                .fd
                .register_ioevent(event, &addr, kvm_ioctls::NoDatamatch),
        };
        r.map_err(|e| Error::Ioeventfd {
            addr: raw,
            source: e,
        })
    }

    /// The most vCPUs this VM may have.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// Creates vCPU `id` (`KVM_CREATE_VCPU`) and maps its `kvm_run`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(|e| Error::CreateVcpu { id, source: e })?;
        let mut vcpu = Vcpu::new(id, fd, self.vcpu_mmap_size, self.ram.clone())?;
        vcpu.msr_index_list = self.msr_index_list.clone();
        vcpu.xsave2_size = self.xsave2_size;
        Ok(vcpu)
    }
}

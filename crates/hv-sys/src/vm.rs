//! A KVM virtual machine: memory slots, the in-kernel irqchip and PIT, irqfd and ioeventfd.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use petrel_guest_mem::{layout, GuestRam};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Hypervisor, Result, Vcpu};

/// One VM file descriptor and what Petrel needs from it.
///
/// The VM keeps every [`GuestRam`] registered with it alive (a clone shares the mapping), and
/// so does each of its vCPUs: no safe call can unmap memory that KVM still lets a guest reach.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    vcpu_mmap_size: usize,
    max_vcpus: usize,
    next_slot: u32,
    /// Dropped after `fd` (fields drop in declaration order); shared with every vCPU.
    ram: Arc<Mutex<Vec<GuestRam>>>,
}

impl Vm {
    /// Creates a VM (`KVM_CREATE_VM`).
    pub fn new(hv: &Hypervisor) -> Result<Self> {
        let fd = hv.kvm().create_vm().map_err(Error::CreateVm)?;
        Ok(Vm {
            fd,
            vcpu_mmap_size: hv.vcpu_mmap_size(),
            max_vcpus: hv.max_vcpus(),
            next_slot: 0,
            ram: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The kvm-ioctls handle, for calls this crate does not wrap.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `ram` as a KVM memory slot (`KVM_SET_USER_MEMORY_REGION`).
    ///
    /// The VM and its vCPUs keep a clone of `ram` (the same mapping) for as long as they exist.
    pub fn register_ram(&mut self, ram: &GuestRam) -> Result<()> {
        self.ram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ram.clone());
        for region in ram.regions() {
            let slot = kvm_userspace_memory_region {
                slot: self.next_slot,
                flags: 0,
                guest_phys_addr: region.guest_addr,
                memory_size: region.size,
                userspace_addr: region.host_addr,
            };
            // SAFETY: the host range belongs to `ram`'s mapping, which this VM and each of its
            // vCPUs keep alive (the clone pushed above) for as long as KVM can use the slot;
            // slots never overlap because `GuestRam` regions do not.
            unsafe { self.fd.set_user_memory_region(slot) }.map_err(|e| Error::MemorySlot {
                guest_addr: region.guest_addr,
                source: e,
            })?;
            self.next_slot += 1;
        }
        Ok(())
    }

    /// Places the pages KVM needs for real-mode and TSS emulation on Intel hosts: the
    /// identity-map page and the 3-page TSS (api.rst, `KVM_SET_TSS_ADDR` and
    /// `KVM_SET_IDENTITY_MAP_ADDR`), inside the MMIO gap where no RAM is.
    pub fn setup_tss_and_identity_map(&self) -> Result<()> {
        self.fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(|e| Error::Platform {
                what: "KVM_SET_IDENTITY_MAP_ADDR",
                source: e,
            })?;
        self.fd
            .set_tss_address(layout::KVM_TSS_START as usize)
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
        Ok(Vcpu::new(id, fd, self.vcpu_mmap_size, self.ram.clone()))
    }
}

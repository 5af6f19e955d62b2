//! VMGenID: the virtual machine generation ID (Microsoft, "Virtual Machine Generation ID",
//! 2012), a 128-bit value in guest memory that changes whenever the VM may have been
//! duplicated or rolled back, with a notification to the guest.
//!
//! The VMM creates a [`VmGenId`] at the guest address the loader set aside (8-byte aligned,
//! in memory the guest never allocates), with an `EventFd` it registers as a KVM irqfd on a
//! GSI of its choice. The DSDT describes both ([`crate::acpi::dsdt::vmgenid_aml`] for the
//! device and its `ADDR`, [`crate::acpi::dsdt::ged_aml`] for the interrupt): Linux's vmgenid
//! driver (since 5.18) maps the 16 bytes, adds them to its entropy pool, and on the
//! device's notification (0x80, sent by the Generic Event Device's `_EVT` when the interrupt
//! fires) reads them again, reseeds, and tells user space (a `uevent`).
//!
//! The ID is part of a snapshot ([`VmGenIdState`]). A restored VM, and every clone of one
//! snapshot, gets a new one from [`VmGenId::regenerate`].

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::{Error, Result};

/// Length of the generation ID in guest memory, in bytes.
pub const VMGENID_LEN: u64 = 16;
/// The alignment the specification asks of the ID's address.
const VMGENID_ALIGN: u64 = 8;

/// The saved state of a [`VmGenId`]: its address and the ID the guest saw last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGenIdState {
    /// The guest-physical address of the 16 bytes.
    pub address: u64,
    /// The generation ID, as the guest reads it (byte 0 at `address`).
    pub generation_id: [u8; 16],
}

/// The VM generation ID: 16 random bytes at a guest address, and the interrupt that tells the
/// guest they changed.
#[derive(Debug)]
pub struct VmGenId {
    address: GuestAddress,
    generation_id: [u8; 16],
    interrupt: EventFd,
}

impl VmGenId {
    /// Makes the device for a new VM: draws a random ID from the host (`getrandom(2)`) and
    /// writes it at `address` in `mem`. `interrupt` is the `EventFd` the VMM registers as the
    /// irqfd of the GSI the DSDT's Generic Event Device names; a new VM needs no notification,
    /// so nothing is written to it here.
    ///
    /// # Errors
    ///
    /// [`Error::VmGenIdMisaligned`] for an address not 8-byte aligned,
    /// [`Error::VmGenIdWrite`] when the 16 bytes are not in `mem`, [`Error::Entropy`] when
    /// the host has no random bytes to give.
    pub fn new<M: GuestMemory + ?Sized>(
        mem: &M,
        address: GuestAddress,
        interrupt: EventFd,
    ) -> Result<Self> {
        check_aligned(address.0)?;
        let dev = VmGenId {
            address,
            generation_id: random_id()?,
            interrupt,
        };
        dev.write_id(mem)?;
        Ok(dev)
    }

    /// Rebuilds the device from a snapshot's state, with the ID the guest saw (already in the
    /// restored guest memory, so nothing is written). Call [`VmGenId::regenerate`] next, once
    /// the vCPUs' state (the local APICs) is restored and the irqfd registered, and before
    /// the guest runs: a notification raised before the local APICs are restored is lost.
    ///
    /// # Errors
    ///
    /// [`Error::VmGenIdMisaligned`] for a state whose address is not 8-byte aligned.
    pub fn from_state(state: &VmGenIdState, interrupt: EventFd) -> Result<Self> {
        check_aligned(state.address)?;
        Ok(VmGenId {
            address: GuestAddress(state.address),
            generation_id: state.generation_id,
            interrupt,
        })
    }

    /// Gives the VM a new generation ID: a fresh random one (never the one before), written
    /// to guest memory, then the interrupt raised so that the guest reads it.
    ///
    /// # Errors
    ///
    /// [`Error::Entropy`], [`Error::VmGenIdWrite`] (the ID is then unchanged), or
    /// [`Error::Interrupt`] (the ID is already in guest memory; the guest sees it at its next
    /// read, not at once).
    pub fn regenerate<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<()> {
        let previous = self.generation_id;
        let mut id = random_id()?;
        while id == previous {
            id = random_id()?;
        }
        self.generation_id = id;
        if let Err(e) = self.write_id(mem) {
            self.generation_id = previous;
            return Err(e);
        }
        self.interrupt.write(1).map_err(Error::Interrupt)
    }

    /// The saved state, for a snapshot.
    pub fn state(&self) -> VmGenIdState {
        VmGenIdState {
            address: self.address.0,
            generation_id: self.generation_id,
        }
    }

    /// The current generation ID.
    pub fn generation_id(&self) -> [u8; 16] {
        self.generation_id
    }

    /// The guest-physical address of the ID (for the DSDT's `ADDR`).
    pub fn address(&self) -> GuestAddress {
        self.address
    }

    /// The `EventFd` that raises the device's interrupt, for the VMM to register as an irqfd.
    pub fn interrupt(&self) -> &EventFd {
        &self.interrupt
    }

    fn write_id<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<()> {
        mem.write_slice(&self.generation_id, self.address)
            .map_err(|source| Error::VmGenIdWrite {
                addr: self.address.0,
                source,
            })
    }
}

fn check_aligned(addr: u64) -> Result<()> {
    if addr % VMGENID_ALIGN == 0 {
        Ok(())
    } else {
        Err(Error::VmGenIdMisaligned { addr })
    }
}

/// 16 random bytes from the host's `getrandom(2)`, without blocking (`GRND_NONBLOCK`, the flag
/// Petrel's seccomp filters already allow for virtio-rng): a host whose pool is not yet
/// initialized gives [`Error::Entropy`] rather than a VM that waits for it.
fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    petrel_util::fill_random(&mut id).map_err(Error::Entropy)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const ADDR: GuestAddress = GuestAddress(0x9_f000);

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn in_guest(mem: &GuestMemoryMmap, addr: GuestAddress) -> [u8; 16] {
        let mut id = [0u8; 16];
        mem.read_slice(&mut id, addr).unwrap();
        id
    }

    #[test]
    fn new_writes_a_random_id_without_an_interrupt() {
        let mem = mem();
        let a = VmGenId::new(&mem, ADDR, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        assert_eq!(in_guest(&mem, ADDR), a.generation_id());
        assert_ne!(a.generation_id(), [0; 16]);
        assert!(a.interrupt().read().is_err(), "a new VM was notified");
        // Two VMs never share an ID (2^-128 odds of a false failure).
        let b = VmGenId::new(
            &mem,
            GuestAddress(0x1000),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        assert_ne!(a.generation_id(), b.generation_id());
        // Nothing around the 16 bytes was touched.
        let mut around = [0u8; 8];
        mem.read_slice(&mut around, GuestAddress(ADDR.0 - 8))
            .unwrap();
        assert_eq!(around, [0; 8]);
        mem.read_slice(&mut around, GuestAddress(ADDR.0 + VMGENID_LEN))
            .unwrap();
        assert_eq!(around, [0; 8]);
    }

    #[test]
    fn restore_keeps_the_id_and_regenerate_changes_it_and_notifies() {
        let mem = mem();
        let first = VmGenId::new(&mem, ADDR, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        let state = first.state();
        assert_eq!(state.address, ADDR.0);
        assert_eq!(state.generation_id, first.generation_id());

        let mut restored =
            VmGenId::from_state(&state, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        assert_eq!(restored.state(), state);
        assert_eq!(restored.address(), ADDR);
        restored.regenerate(&mem).unwrap();
        assert_ne!(restored.generation_id(), state.generation_id);
        assert_eq!(in_guest(&mem, ADDR), restored.generation_id());
        assert_eq!(restored.interrupt().read().unwrap(), 1);
        // Two clones of one snapshot get different IDs.
        let mut clone = VmGenId::from_state(&state, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        clone.regenerate(&mem).unwrap();
        assert_ne!(clone.generation_id(), restored.generation_id());
    }

    #[test]
    fn state_round_trips_through_json() {
        let state = VmGenIdState {
            address: 0x9_f000,
            generation_id: *b"0123456789abcdef",
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<VmGenIdState>(&json).unwrap(), state);
    }

    #[test]
    fn bad_addresses_are_errors() {
        let mem = mem();
        let irq = || EventFd::new(EFD_NONBLOCK).unwrap();
        assert!(matches!(
            VmGenId::new(&mem, GuestAddress(0x9_f004), irq()),
            Err(Error::VmGenIdMisaligned { addr: 0x9_f004 })
        ));
        // The last 8 bytes of RAM: the ID would run past it.
        let err = VmGenId::new(&mem, GuestAddress((1 << 20) - 8), irq()).unwrap_err();
        assert!(matches!(err, Error::VmGenIdWrite { addr, .. } if addr == (1 << 20) - 8));
        assert!(err.to_string().contains("0xffff8"), "{err}");
        assert!(matches!(
            VmGenId::from_state(
                &VmGenIdState {
                    address: 3,
                    generation_id: [0; 16]
                },
                irq()
            ),
            Err(Error::VmGenIdMisaligned { addr: 3 })
        ));
        // A restored ID outside RAM: regenerate fails, keeps the ID, raises nothing.
        let state = VmGenIdState {
            address: 2 << 20,
            generation_id: [7; 16],
        };
        let mut dev = VmGenId::from_state(&state, irq()).unwrap();
        assert!(matches!(
            dev.regenerate(&mem),
            Err(Error::VmGenIdWrite { .. })
        ));
        assert_eq!(dev.state(), state);
        assert!(dev.interrupt().read().is_err());
    }
}

//! The device bus: a table of address ranges, frozen at build time, that routes guest accesses
//! to the device that owns the whole access.
//!
//! A [`BusBuilder`] collects `(range, device)` pairs, refusing empty, wrapping and overlapping
//! ranges; [`BusBuilder::build`] freezes them into a [`Bus`], a sorted `Vec` searched without a
//! lock. Each device sits behind its own `Mutex`, so accesses to different devices from
//! different vCPUs never contend.
//!
//! An access is *claimed* only when every byte of it, `[addr, addr + len)`, lies inside one
//! device's range. Anything else (no device at that address, an access straddling the end of a
//! range, a zero-length access) is *unclaimed*: reads are filled with `0xff`, what real hardware
//! answers on a floating bus, writes are dropped, and both are counted, never logged, because a
//! guest can trigger them as often as it likes.
//!
//! A device whose mutex is poisoned (a panic on another vCPU thread while it held the lock) is
//! still called: the guard is recovered from the `PoisonError`. Device models here keep no
//! invariant that a half-finished access can break in a memory-unsafe way, the vCPU that panicked
//! already stops the VM, and recovering keeps the other vCPU threads from panicking in turn while
//! the VM winds down. Such accesses are counted in [`Bus::poisoned_accesses`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioAddressOffset, PioRange};
use vm_device::{DeviceMmio, DevicePio};

/// What a device asks of the vCPU after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusOutcome {
    /// Re-enter the guest as usual.
    Continue,
    /// Stop the VM; the vCPU never re-enters the guest.
    Stop(StopRequest),
}

/// Errors from building a [`Bus`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device was inserted with a zero-length range.
    #[error("cannot insert {device} on the {bus} bus: range {range} is empty")]
    InsertEmptyRange {
        /// The bus's name.
        bus: &'static str,
        /// The device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
    },
    /// A device was inserted with a range that runs past `u64::MAX`.
    #[error("cannot insert {device} on the {bus} bus: range {range} runs past the address space")]
    InsertWrappingRange {
        /// The bus's name.
        bus: &'static str,
        /// The device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
    },
    /// A device was inserted over addresses another device already holds.
    #[error(
        "cannot insert {device} on the {bus} bus at {range}: it overlaps {existing_device} at {existing}"
    )]
    InsertOverlappingRange {
        /// The bus's name.
        bus: &'static str,
        /// The new device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
        /// The name of the device already there.
        existing_device: &'static str,
        /// The range it holds.
        existing: BusRange,
    },
    /// A vm-device port I/O device was inserted at a range past the 16-bit port space.
    #[error("cannot insert {device} on the {bus} bus: range {range} is past port 0xffff")]
    InsertPioRange {
        /// The bus's name.
        bus: &'static str,
        /// The device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
    },
}

/// Why a device asks the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest asked for a reset (e.g. i8042 command 0xFE); the VMM stops the VM cleanly.
    Reset,
    /// The guest asked to power off.
    PowerOff,
}

/// A device that answers guest accesses on a [`Bus`].
pub trait BusDevice: Send {
    /// Handles a read; `offset` is relative to the device's range base; fill all of `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// Handles a write; `offset` is relative to the device's range base.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome;

    /// A short name for diagnostics ([`Bus::devices`], error messages).
    ///
    /// Read once when the device is inserted, never on the access path.
    fn name(&self) -> &'static str {
        "unnamed"
    }
}

/// A half-open address range `[base, base + len)` on a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BusRange {
    /// First address of the range.
    pub base: u64,
    /// Number of addresses in the range.
    pub len: u64,
}

impl BusRange {
    /// Makes a range of `len` addresses starting at `base`.
    pub const fn new(base: u64, len: u64) -> Self {
        BusRange { base, len }
    }

    /// The last address inside the range, or `None` when the range is empty or runs past
    /// `u64::MAX`.
    pub fn last(&self) -> Option<u64> {
        self.len
            .checked_sub(1)
            .and_then(|l| self.base.checked_add(l))
    }

    /// Whether `[addr, addr + len)` lies wholly inside this range (false for `len == 0`).
    pub fn contains_access(&self, addr: u64, len: u64) -> bool {
        let (Some(last), Some(access_last)) = (
            self.last(),
            len.checked_sub(1).and_then(|l| addr.checked_add(l)),
        ) else {
            return false;
        };
        addr >= self.base && access_last <= last
    }

    /// Whether the two ranges share at least one address (both must be non-empty).
    fn overlaps(&self, other: &BusRange) -> bool {
        match (self.last(), other.last()) {
            (Some(a), Some(b)) => self.base <= b && other.base <= a,
            _ => false,
        }
    }
}

/// vm-device's port I/O range, on Petrel's bus.
impl From<PioRange> for BusRange {
    fn from(r: PioRange) -> Self {
        BusRange::new(u64::from(r.base().0), u64::from(r.size()))
    }
}

/// vm-device's MMIO range, on Petrel's bus.
impl From<MmioRange> for BusRange {
    fn from(r: MmioRange) -> Self {
        BusRange::new(r.base().0, r.size())
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last() {
            Some(last) => write!(f, "[{:#x}..={:#x}]", self.base, last),
            None => write!(f, "[{:#x}, len {:#x}]", self.base, self.len),
        }
    }
}

/// What an entry of the table calls: a Petrel [`BusDevice`] behind its own mutex (which can
/// ask the vCPU to stop), or a device that speaks rust-vmm's vm-device traits (which locks, if
/// it needs to, inside its `DevicePio`/`DeviceMmio`; e.g. vm-device's impl for `Mutex<T>`).
enum Target {
    Petrel(Arc<Mutex<dyn BusDevice>>),
    Pio(Arc<dyn DevicePio + Send + Sync>),
    Mmio(Arc<dyn DeviceMmio + Send + Sync>),
}

/// One device in the frozen table.
struct Entry {
    range: BusRange,
    name: &'static str,
    device: Target,
}

/// Collects devices and their ranges, then freezes them into a [`Bus`].
pub struct BusBuilder {
    name: &'static str,
    entries: Vec<Entry>,
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("name", &self.name)
            .field("devices", &DeviceList(&self.entries))
            .finish()
    }
}

impl BusBuilder {
    /// Starts an empty bus called `name` (e.g. `"pio"`, `"mmio"`; used in errors).
    pub fn new(name: &'static str) -> Self {
        BusBuilder {
            name,
            entries: Vec::new(),
        }
    }

    /// Adds `device` at `range`.
    ///
    /// Refuses an empty range, a range that runs past `u64::MAX`, and a range that shares an
    /// address with one already inserted (ranges that only touch, one ending where the next
    /// begins, are fine). The error names both ranges.
    pub fn insert(
        &mut self,
        range: BusRange,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Error> {
        let name = lock_device(&device).0.name();
        self.push(range, name, Target::Petrel(device))
    }

    /// Adds a device that implements rust-vmm's [`DevicePio`] (e.g. an `Arc<Mutex<T>>` with
    /// `T: MutDevicePio`) at `range`, which must lie in the 16-bit port space; `name` is for
    /// diagnostics. It is called with vm-device's [`PioAddress`] base and offset; its writes
    /// never stop the VM. Refuses the same ranges as [`insert`](Self::insert).
    pub fn insert_pio(
        &mut self,
        range: BusRange,
        name: &'static str,
        device: Arc<dyn DevicePio + Send + Sync>,
    ) -> Result<(), Error> {
        if range.last().is_some_and(|last| last > u64::from(u16::MAX)) {
            return Err(Error::InsertPioRange {
                bus: self.name,
                device: name,
                range,
            });
        }
        self.push(range, name, Target::Pio(device))
    }

    /// Adds a device that implements rust-vmm's [`DeviceMmio`] (e.g. an `Arc<Mutex<T>>` with
    /// `T: MutDeviceMmio`) at `range`; `name` is for diagnostics. It is called with vm-device's
    /// [`MmioAddress`] base and offset; its writes never stop the VM. Refuses the same ranges
    /// as [`insert`](Self::insert).
    pub fn insert_mmio(
        &mut self,
        range: BusRange,
        name: &'static str,
        device: Arc<dyn DeviceMmio + Send + Sync>,
    ) -> Result<(), Error> {
        self.push(range, name, Target::Mmio(device))
    }

    fn push(&mut self, range: BusRange, name: &'static str, device: Target) -> Result<(), Error> {
        if range.len == 0 {
            return Err(Error::InsertEmptyRange {
                bus: self.name,
                device: name,
                range,
            });
        }
        if range.last().is_none() {
            return Err(Error::InsertWrappingRange {
                bus: self.name,
                device: name,
                range,
            });
        }
        if let Some(existing) = self.entries.iter().find(|e| e.range.overlaps(&range)) {
            return Err(Error::InsertOverlappingRange {
                bus: self.name,
                device: name,
                range,
                existing_device: existing.name,
                existing: existing.range,
            });
        }
        self.entries.push(Entry {
            range,
            name,
            device,
        });
        Ok(())
    }

    /// Freezes the table into a [`Bus`].
    pub fn build(mut self) -> Bus {
        self.entries.sort_by_key(|e| e.range.base);
        Bus {
            name: self.name,
            entries: self.entries,
            unclaimed_reads: AtomicU64::new(0),
            unclaimed_writes: AtomicU64::new(0),
            poisoned_accesses: AtomicU64::new(0),
        }
    }
}

/// A frozen table of devices, shared by the vCPU threads as `Arc<Bus>`.
///
/// Lookup is a binary search over a sorted `Vec` with no lock; only the device found is locked.
pub struct Bus {
    name: &'static str,
    entries: Vec<Entry>,
    unclaimed_reads: AtomicU64,
    unclaimed_writes: AtomicU64,
    poisoned_accesses: AtomicU64,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("devices", &DeviceList(&self.entries))
            .field("unclaimed_reads", &self.unclaimed_reads())
            .field("unclaimed_writes", &self.unclaimed_writes())
            .field("poisoned_accesses", &self.poisoned_accesses())
            .finish()
    }
}

impl Bus {
    /// The name given to [`BusBuilder::new`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Finds the device owning every byte of `[addr, addr + len)`.
    fn find(&self, addr: u64, len: usize) -> Option<&Entry> {
        // Entries are sorted by base and do not overlap: the only candidate is the last one
        // whose base is at or below `addr`.
        let idx = self.entries.partition_point(|e| e.range.base <= addr);
        let entry = self.entries.get(idx.checked_sub(1)?)?;
        let len = u64::try_from(len).ok()?;
        entry.range.contains_access(addr, len).then_some(entry)
    }

    /// Reads `data.len()` bytes at `addr`.
    ///
    /// Fills `data` with 0xff and counts it when no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some(entry) => {
                let offset = addr - entry.range.base;
                match &entry.device {
                    Target::Petrel(device) => {
                        let (mut dev, poisoned) = lock_device(device);
                        self.count_poisoned(poisoned);
                        dev.read(offset, data);
                    }
                    // The range was checked at insertion to lie below 0x10000.
                    Target::Pio(device) => {
                        device.pio_read(pio_base(entry.range), offset as PioAddressOffset, data)
                    }
                    Target::Mmio(device) => {
                        device.mmio_read(MmioAddress(entry.range.base), offset, data)
                    }
                }
            }
            None => {
                data.fill(0xff);
                self.unclaimed_reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes `data` at `addr` and returns what the device asks of the vCPU.
    ///
    /// Unclaimed writes are counted and dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> BusOutcome {
        match self.find(addr, data.len()) {
            Some(entry) => {
                let offset = addr - entry.range.base;
                match &entry.device {
                    Target::Petrel(device) => {
                        let (mut dev, poisoned) = lock_device(device);
                        self.count_poisoned(poisoned);
                        dev.write(offset, data)
                    }
                    Target::Pio(device) => {
                        device.pio_write(pio_base(entry.range), offset as PioAddressOffset, data);
                        BusOutcome::Continue
                    }
                    Target::Mmio(device) => {
                        device.mmio_write(MmioAddress(entry.range.base), offset, data);
                        BusOutcome::Continue
                    }
                }
            }
            None => {
                self.unclaimed_writes.fetch_add(1, Ordering::Relaxed);
                BusOutcome::Continue
            }
        }
    }

    /// Reads that no device claimed since the bus was built.
    pub fn unclaimed_reads(&self) -> u64 {
        self.unclaimed_reads.load(Ordering::Relaxed)
    }

    /// Writes that no device claimed since the bus was built.
    pub fn unclaimed_writes(&self) -> u64 {
        self.unclaimed_writes.load(Ordering::Relaxed)
    }

    /// Accesses that found their device's mutex poisoned and went ahead with the recovered guard.
    pub fn poisoned_accesses(&self) -> u64 {
        self.poisoned_accesses.load(Ordering::Relaxed)
    }

    /// The devices on the bus, in address order, with their names (for diagnostics).
    pub fn devices(&self) -> impl Iterator<Item = (BusRange, &'static str)> + '_ {
        self.entries.iter().map(|e| (e.range, e.name))
    }

    fn count_poisoned(&self, poisoned: bool) {
        if poisoned {
            self.poisoned_accesses.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The vm-device base address of a port range (checked at insertion to fit 16 bits).
fn pio_base(range: BusRange) -> PioAddress {
    PioAddress(range.base as PioAddressOffset)
}

/// Locks a device, recovering the guard if another thread panicked while holding it.
fn lock_device<'a>(
    device: &'a Mutex<dyn BusDevice + 'static>,
) -> (MutexGuard<'a, dyn BusDevice + 'static>, bool) {
    match device.lock() {
        Ok(guard) => (guard, false),
        Err(poison) => (poison.into_inner(), true),
    }
}

/// Debug helper that prints entries as `range: name`.
struct DeviceList<'a>(&'a [Entry]);

impl fmt::Debug for DeviceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|e| (e.range.to_string(), e.name)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with `offset + i` so tests can see the offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
        outcome: Option<BusOutcome>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
            self.last_write = Some((offset, data.to_vec()));
            self.outcome.unwrap_or(BusOutcome::Continue)
        }
        fn name(&self) -> &'static str {
            "probe"
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn bus_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Bus>();
        assert_send_sync::<Arc<Bus>>();
    }

    #[test]
    fn overlapping_ranges_are_refused_and_named() {
        let mut b = BusBuilder::new("pio");
        b.insert(BusRange::new(0x10, 0x10), probe()).unwrap();
        for (base, len) in [(0x8, 0x9), (0x1f, 1), (0x12, 2), (0x0, 0x100), (0x10, 0x10)] {
            let err = b.insert(BusRange::new(base, len), probe()).unwrap_err();
            assert!(
                matches!(err, Error::InsertOverlappingRange { existing, .. }
                    if existing == BusRange::new(0x10, 0x10)),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("[0x10..=0x1f]"), "{msg}");
            assert!(msg.contains(&BusRange::new(base, len).to_string()), "{msg}");
            assert!(msg.contains("pio"), "{msg}");
        }
    }

    #[test]
    fn touching_ranges_are_allowed() {
        let mut b = BusBuilder::new("pio");
        b.insert(BusRange::new(0x10, 0x10), probe()).unwrap();
        b.insert(BusRange::new(0x20, 0x10), probe()).unwrap();
        b.insert(BusRange::new(0x0, 0x10), probe()).unwrap();
        let bus = b.build();
        let bases: Vec<u64> = bus.devices().map(|(r, _)| r.base).collect();
        assert_eq!(bases, [0x0, 0x10, 0x20]);
        assert!(bus.devices().all(|(_, n)| n == "probe"));
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        let mut b = BusBuilder::new("mmio");
        assert!(matches!(
            b.insert(BusRange::new(0x10, 0), probe()),
            Err(Error::InsertEmptyRange { .. })
        ));
        assert!(matches!(
            b.insert(BusRange::new(u64::MAX, 2), probe()),
            Err(Error::InsertWrappingRange { .. })
        ));
        // The very top of the address space is usable.
        b.insert(BusRange::new(u64::MAX, 1), probe()).unwrap();
        let bus = b.build();
        let mut data = [0u8; 1];
        bus.read(u64::MAX, &mut data);
        assert_eq!(data, [0]);
        assert_eq!(bus.unclaimed_reads(), 0);
    }

    #[test]
    fn reads_at_first_and_last_byte_reach_the_device() {
        let mut b = BusBuilder::new("pio");
        b.insert(BusRange::new(0x3f8, 8), probe()).unwrap();
        let bus = b.build();

        let mut one = [0u8; 1];
        bus.read(0x3f8, &mut one);
        assert_eq!(one, [0]);
        bus.read(0x3ff, &mut one);
        assert_eq!(one, [7]);

        let mut four = [0u8; 4];
        bus.read(0x3fc, &mut four);
        assert_eq!(four, [4, 5, 6, 7]);
        assert_eq!(bus.unclaimed_reads(), 0);
    }

    #[test]
    fn straddling_and_outside_accesses_are_unclaimed_and_counted() {
        let mut b = BusBuilder::new("pio");
        let dev = probe();
        b.insert(BusRange::new(0x3f8, 8), dev.clone()).unwrap();
        let bus = b.build();

        // Straddles the end of the range.
        let mut two = [0u8; 2];
        bus.read(0x3ff, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        // Straddles the start.
        bus.read(0x3f7, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        // Just past the end, and far away.
        let mut one = [0u8; 1];
        bus.read(0x400, &mut one);
        assert_eq!(one, [0xff]);
        bus.read(0x80, &mut one);
        assert_eq!(one, [0xff]);
        // Wraps past u64::MAX.
        bus.read(u64::MAX, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        // Zero-length accesses are claimed by nobody.
        bus.read(0x3f8, &mut []);
        assert_eq!(bus.unclaimed_reads(), 6);

        assert_eq!(bus.write(0x3ff, &[1, 2]), BusOutcome::Continue);
        assert_eq!(bus.write(0x400, &[1]), BusOutcome::Continue);
        assert_eq!(bus.unclaimed_writes(), 2);
        assert!(dev.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn writes_reach_the_device_with_offset_and_return_its_outcome() {
        let mut b = BusBuilder::new("pio");
        let dev = probe();
        dev.lock().unwrap().outcome = Some(BusOutcome::Stop(StopRequest::Reset));
        b.insert(BusRange::new(0x60, 5), dev.clone()).unwrap();
        b.insert(BusRange::new(0x70, 2), probe()).unwrap();
        let bus = b.build();

        assert_eq!(
            bus.write(0x64, &[0xfe]),
            BusOutcome::Stop(StopRequest::Reset)
        );
        assert_eq!(dev.lock().unwrap().last_write, Some((4, vec![0xfe])));
        assert_eq!(bus.write(0x71, &[3]), BusOutcome::Continue);
        assert_eq!(bus.unclaimed_writes(), 0);
    }

    #[test]
    fn poisoned_device_is_still_served_and_counted() {
        let mut b = BusBuilder::new("pio");
        let dev = probe();
        b.insert(BusRange::new(0x80, 1), dev.clone()).unwrap();
        let bus = b.build();

        let poisoner = dev.clone();
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the device mutex");
        })
        .join();
        assert!(joined.is_err());
        assert!(dev.is_poisoned());

        let mut one = [0u8; 1];
        bus.read(0x80, &mut one);
        assert_eq!(one, [0]);
        assert_eq!(bus.write(0x80, &[9]), BusOutcome::Continue);
        assert_eq!(bus.poisoned_accesses(), 2);
        assert_eq!(bus.unclaimed_reads(), 0);
    }

    /// A device that speaks vm-device's traits only: it records the base and offset it is
    /// called with and answers reads with the offset's low byte.
    #[derive(Default)]
    struct RustVmmDevice {
        calls: Vec<(u64, u64, Vec<u8>)>,
    }

    impl vm_device::MutDevicePio for RustVmmDevice {
        fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
            data.fill(offset as u8);
            self.calls
                .push((u64::from(base.0), u64::from(offset), Vec::new()));
        }
        fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
            self.calls
                .push((u64::from(base.0), u64::from(offset), data.to_vec()));
        }
    }

    impl vm_device::MutDeviceMmio for RustVmmDevice {
        fn mmio_read(&mut self, base: MmioAddress, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.calls.push((base.0, offset, Vec::new()));
        }
        fn mmio_write(&mut self, base: MmioAddress, offset: u64, data: &[u8]) {
            self.calls.push((base.0, offset, data.to_vec()));
        }
    }

    #[test]
    fn vm_device_devices_sit_on_the_bus_beside_petrel_ones() {
        let pio_dev = Arc::new(Mutex::new(RustVmmDevice::default()));
        let mmio_dev = Arc::new(Mutex::new(RustVmmDevice::default()));
        let mut b = BusBuilder::new("pio");
        b.insert(BusRange::new(0x100, 4), probe()).unwrap();
        b.insert_pio(BusRange::new(0x200, 8), "rust-vmm", pio_dev.clone())
            .unwrap();
        // The same checks as for Petrel's devices, naming the vm-device one.
        let e = b
            .insert_pio(BusRange::new(0x102, 4), "late", pio_dev.clone())
            .unwrap_err();
        assert!(e.to_string().contains("overlaps probe"), "{e}");
        let e = b
            .insert_pio(BusRange::new(0xfffe, 4), "high", pio_dev.clone())
            .unwrap_err();
        assert!(matches!(e, Error::InsertPioRange { .. }), "{e}");
        b.insert_mmio(BusRange::new(0xd000_0000, 0x1000), "mmio", mmio_dev.clone())
            .unwrap();
        let bus = b.build();

        let mut two = [0u8; 2];
        bus.read(0x203, &mut two);
        assert_eq!(two, [3, 3]);
        assert_eq!(bus.write(0x206, &[9, 8]), BusOutcome::Continue);
        // A straddling access is still unclaimed, never reaching the device.
        bus.read(0x207, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        assert_eq!(
            pio_dev.lock().unwrap().calls,
            [(0x200, 3, vec![]), (0x200, 6, vec![9, 8])]
        );
        bus.write(0xd000_0010, &[1, 2, 3, 4]);
        assert_eq!(
            mmio_dev.lock().unwrap().calls,
            [(0xd000_0000, 0x10, vec![1, 2, 3, 4])]
        );
        let names: Vec<_> = bus.devices().map(|(_, n)| n).collect();
        assert_eq!(names, ["probe", "rust-vmm", "mmio"]);
    }

    #[test]
    fn vm_device_ranges_convert() {
        let pio = PioRange::new(PioAddress(0x3f8), 8).unwrap();
        assert_eq!(BusRange::from(pio), BusRange::new(0x3f8, 8));
        let mmio = MmioRange::new(MmioAddress(0xd000_1000), 0x1000).unwrap();
        assert_eq!(BusRange::from(mmio), BusRange::new(0xd000_1000, 0x1000));
    }

    #[test]
    fn empty_bus_answers_all_ff() {
        let bus = BusBuilder::new("pio").build();
        let mut data = [0u8; 4];
        bus.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.write(0, &data), BusOutcome::Continue);
        assert_eq!((bus.unclaimed_reads(), bus.unclaimed_writes()), (1, 1));
        assert!(format!("{bus:?}").contains("unclaimed_reads: 1"));
    }
}

//! A CMOS real-time clock (Motorola MC146818A) with its 128 bytes of CMOS RAM.
//!
//! Port 0x70 selects a register (bit 7 is the NMI mask, accepted and ignored: NMIs are KVM's
//! business), port 0x71 reads or writes it. The time registers are computed from a [`Clock`] at
//! each read, in BCD or binary and 12- or 24-hour form as register B says; nothing ticks in the
//! background and no interrupt is raised (IRQ 8 is not wired).
//!
//! The guest may set the clock the way Linux's `mc146818_set_time` does (register B SET bit,
//! write the fields, clear SET): the device then keeps an offset from the host clock. Fields that
//! do not make a valid date are refused and counted, leaving the previous offset.
//!
//! The memory-size bytes follow the layout QEMU fills in and SeaBIOS reads (QEMU
//! `hw/i386/pc.c` `pc_cmos_init`; SeaBIOS `src/fw/paravirt.c` via `CMOS_MEM_*`), for the
//! benefit of firmware and tools that look there.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{BusDevice, BusOutcome};

/// Errors from the CMOS RTC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A saved device state that this device cannot take (a value out of range, a length that
    /// does not match); the device is left as it was, or reset where noted.
    #[error("cannot restore {device}: {why}")]
    InvalidState {
        /// The device's name.
        device: &'static str,
        /// What is wrong with the state.
        why: String,
    },
}

/// First port of the RTC: the index port (IBM PC/AT Technical Reference, system I/O map).
pub const RTC_BASE: u64 = 0x70;
/// The RTC decodes two ports: index (0x70) and data (0x71).
pub const RTC_PORT_LEN: u64 = 2;
/// ISA IRQ of the RTC (IBM PC/AT convention). Not raised by this model.
pub const RTC_IRQ: u32 = 8;
/// Start of the 32-bit MMIO gap: RAM below 4 GiB ends here (Petrel's layout,
/// `petrel_guest_mem::layout::MMIO32_START`).
pub const MMIO_GAP_START: u64 = 0xd000_0000;

/// Offset of the index port in the range.
const INDEX_OFFSET: u64 = 0;
/// Offset of the data port in the range.
const DATA_OFFSET: u64 = 1;
/// Port 0x70 bit 7: NMI disable (IBM PC/AT Technical Reference, CMOS index port).
const INDEX_NMI_DISABLE: u8 = 0x80;
/// Size of CMOS RAM addressable through the index port (MC146818A: 64 bytes; PC chipsets: 128).
const CMOS_LEN: usize = 128;

// Register indices (MC146818A datasheet, address map; century from the IBM PC/AT convention
// that ACPI's FADT `century` field usually points at).
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// The registers the clock computes.
const TIME_REGS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DAY_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// MC146818 register A bit 7: update in progress. Always reads 0 here: each read computes a
/// consistent time, so a guest polling for it to clear never waits.
const A_UIP: u8 = 0x80;
/// MC146818 register A default: divider 010 (32.768 kHz time base), rate 0110 (1024 Hz).
const A_DEFAULT: u8 = 0x26;
/// MC146818 register B bit 7: SET, updates halted while the guest sets the time.
const B_SET: u8 = 0x80;
/// MC146818 register B bit 4: update-ended interrupt enable.
const B_UIE: u8 = 0x10;
/// MC146818 register B bit 2: data mode, 1 = binary, 0 = BCD.
const B_DM_BINARY: u8 = 0x04;
/// MC146818 register B bit 1: 1 = 24-hour mode.
const B_24H: u8 = 0x02;
/// Register B default: 24-hour, BCD, no interrupts (what PC firmware leaves).
const B_DEFAULT: u8 = B_24H;
/// MC146818 register C bit 7: IRQF, some enabled flag is set.
const C_IRQF: u8 = 0x80;
/// MC146818 register C bit 4: update-ended flag.
const C_UF: u8 = 0x10;
/// MC146818 register D bit 7: valid RAM and time (battery good).
const D_VRT: u8 = 0x80;
/// Hours register bit 7 in 12-hour mode: PM.
const HOURS_PM: u8 = 0x80;

// Memory-size bytes (QEMU `pc_cmos_init`, read by SeaBIOS as CMOS_MEM_*).
/// Base memory in KiB, low byte (high byte at 0x16).
const CMOS_BASE_MEM_LOW: usize = 0x15;
/// Extended memory above 1 MiB in KiB, capped at 0xffff, low byte (high byte at 0x18).
const CMOS_EXT_MEM_LOW: usize = 0x17;
/// Copy of the extended memory size (0x30/0x31), the one the BIOS actually reports.
const CMOS_EXT_MEM2_LOW: usize = 0x30;
/// 64 KiB blocks between 16 MiB and the end of low RAM, capped at 0xffff (0x34/0x35).
const CMOS_MEM_ABOVE_16M_LOW: usize = 0x34;
/// 64 KiB blocks above 4 GiB, 24 bits (0x5b/0x5c/0x5d).
const CMOS_MEM_ABOVE_4G_LOW: usize = 0x5b;
/// Conventional memory reported to firmware: 640 KiB.
const BASE_MEM_KIB: u64 = 640;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Where the time comes from.
pub trait Clock: Send {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until told otherwise; clones share the same time (for tests).
#[derive(Debug, Clone)]
pub struct FixedClock(Arc<Mutex<SystemTime>>);

impl FixedClock {
    /// A clock showing `secs` seconds after the Unix epoch.
    pub fn from_unix_secs(secs: u64) -> Self {
        FixedClock(Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(secs))))
    }

    /// Sets the time.
    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += d;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Seconds since the Unix epoch, rounded down (negative before 1970), saturating.
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let floor = if d.subsec_nanos() > 0 {
                whole.saturating_add(1)
            } else {
                whole
            };
            -floor
        }
    }
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    /// 1-12.
    month: u8,
    /// 1-31.
    day: u8,
    /// 0-23.
    hour: u8,
    minute: u8,
    second: u8,
    /// 1-7, Sunday = 1 (MC146818A datasheet, day-of-week register).
    weekday: u8,
}

/// Days since 1970-01-01 of the proleptic Gregorian date `(year, month, day)`.
///
/// Counts in years that start on March 1, so the leap day is the last day of its year, and in
/// 400-year eras of exactly 146097 days, so only a small non-negative year-of-era is ever
/// divided.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = i64::from(month);
    let day = i64::from(day);
    // January and February belong to the previous March-based year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400); // 0..=399
    let month_from_march = (month + 9) % 12; // March = 0 .. February = 11
                                             // Month lengths from March repeat 31,30,31,30,31 every five months: 153 days.
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1; // 0..=365
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of day `days` since 1970-01-01; inverse of
/// [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // 0..=146096
                                            // Remove the leap days (every 4th year, not every 100th, but every 400th) to find the year.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // 1..=31
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=12, 1..=31).
    (year, month as u8, day as u8)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl DateTime {
    fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400); // 0..86400
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (Sunday = 1, so Thursday = 5).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

/// Counters kept by a [`CmosRtc`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcStats {
    /// Times the guest set the clock (each accepted commit of the time fields).
    pub time_sets: u64,
    /// Time settings refused because the fields did not make a valid date.
    pub invalid_time_sets: u64,
    /// Accesses past the two ports (only when called directly, not through a bus).
    pub invalid_accesses: u64,
}

/// The saved state of a [`CmosRtc`].
///
/// The time is not saved, only how the guest's clock relates to the host's: after a restore
/// the clock follows the host clock with the same offset, as Firecracker's and QEMU's do (the
/// time that passed between snapshot and restore has passed for the guest too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// The register selected through the index port (0x70), NMI bit removed: 0 to 127.
    pub index: u8,
    /// The 128 bytes of CMOS RAM: registers A to D at 0x0a-0x0d (C and D are computed when
    /// read), the time registers as last latched (they mean something only while register B's
    /// SET bit is on), the memory-size bytes and whatever else the guest stored.
    pub cmos: Vec<u8>,
    /// Guest time minus host time, in seconds: what the guest set the clock to.
    pub guest_offset_secs: i64,
    /// Guest time (seconds since the Unix epoch) when register C was last read, for its
    /// update-ended flag.
    pub reg_c_read_at_secs: i64,
}

/// The CMOS RTC; see the [module docs](self).
pub struct CmosRtc {
    clock: Box<dyn Clock>,
    index: u8,
    /// CMOS RAM. The time registers hold values only while register B's SET bit is on.
    ram: [u8; CMOS_LEN],
    /// Guest time minus host time, in seconds.
    offset_secs: i64,
    /// Guest time (seconds) when register C was last read, for the update-ended flag.
    c_read_at: i64,
    stats: RtcStats,
}

impl fmt::Debug for CmosRtc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmosRtc")
            .field("index", &self.index)
            .field("offset_secs", &self.offset_secs)
            .field("stats", &self.stats)
            .finish()
    }
}

impl CmosRtc {
    /// An RTC reading `clock`, with the memory-size bytes filled in for `ram_size` bytes of
    /// guest RAM laid out below [`MMIO_GAP_START`] and from 4 GiB up.
    pub fn new(clock: Box<dyn Clock>, ram_size: u64) -> CmosRtc {
        let mut ram = [0u8; CMOS_LEN];
        ram[usize::from(REG_A)] = A_DEFAULT;
        ram[usize::from(REG_B)] = B_DEFAULT;
        ram[usize::from(REG_D)] = D_VRT;
        fill_memory_size(&mut ram, ram_size);
        let mut rtc = CmosRtc {
            clock,
            index: 0,
            ram,
            offset_secs: 0,
            c_read_at: 0,
            stats: RtcStats::default(),
        };
        rtc.c_read_at = rtc.guest_secs();
        rtc
    }

    /// The RTC's counters.
    pub fn stats(&self) -> RtcStats {
        self.stats
    }

    /// The CMOS RAM, the selected register and the guest's clock offset, for a snapshot.
    pub fn save_state(&self) -> RtcState {
        RtcState {
            index: self.index,
            cmos: self.ram.to_vec(),
            guest_offset_secs: self.offset_secs,
            reg_c_read_at_secs: self.c_read_at,
        }
    }

    /// Puts `state` into this RTC (one built anew with [`CmosRtc::new`] when a VM is restored);
    /// its clock and counters stay. The guest's time is this RTC's clock plus the saved offset.
    ///
    /// Fails, changing nothing ([`Error::InvalidState`]), when the CMOS RAM is not 128 bytes or
    /// the index is past it.
    pub fn restore_state(&mut self, state: &RtcState) -> Result<(), Error> {
        let invalid = |why: String| Error::InvalidState {
            device: "cmos-rtc",
            why,
        };
        let ram: [u8; CMOS_LEN] = state.cmos.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "{} bytes of CMOS RAM, expected {CMOS_LEN}",
                state.cmos.len()
            ))
        })?;
        if usize::from(state.index) >= CMOS_LEN {
            return Err(invalid(format!(
                "register index {:#04x} is past the {CMOS_LEN} bytes of CMOS RAM",
                state.index
            )));
        }
        self.index = state.index;
        self.ram = ram;
        self.offset_secs = state.guest_offset_secs;
        self.c_read_at = state.reg_c_read_at_secs;
        Ok(())
    }

    fn reg_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }

    fn guest_secs(&self) -> i64 {
        unix_secs(self.clock.now()).saturating_add(self.offset_secs)
    }

    /// Encodes a 0-99 value per register B's data mode.
    fn encode(&self, v: u8) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.reg_b() & B_DM_BINARY != 0 {
            Some(v)
        } else {
            from_bcd(v)
        }
    }

    /// The value of time register `reg` for `t`, in register B's format.
    fn time_field(&self, t: &DateTime, reg: u8) -> u8 {
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => {
                if self.reg_b() & B_24H != 0 {
                    self.encode(t.hour)
                } else {
                    let h12 = match t.hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    let pm = if t.hour >= 12 { HOURS_PM } else { 0 };
                    self.encode(h12) | pm
                }
            }
            REG_DAY_OF_WEEK => self.encode(t.weekday),
            REG_DAY_OF_MONTH => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u8),
            _ => self.ram[usize::from(reg)],
        }
    }

    /// Copies the current time into the time registers of CMOS RAM.
    fn latch_time(&mut self) {
        let now = DateTime::from_unix(self.guest_secs());
        for reg in TIME_REGS {
            self.ram[usize::from(reg)] = self.time_field(&now, reg);
        }
    }

    /// Reads the time registers of CMOS RAM back as a time, if they make a valid one.
    fn latched_time(&self) -> Option<DateTime> {
        let r = |reg: u8| self.ram[usize::from(reg)];
        let second = self.decode(r(REG_SECONDS)).filter(|&v| v < 60)?;
        let minute = self.decode(r(REG_MINUTES)).filter(|&v| v < 60)?;
        let hour = if self.reg_b() & B_24H != 0 {
            self.decode(r(REG_HOURS)).filter(|&v| v < 24)?
        } else {
            let raw = r(REG_HOURS);
            let h = self
                .decode(raw & !HOURS_PM)
                .filter(|v| (1..=12).contains(v))?;
            h % 12 + if raw & HOURS_PM != 0 { 12 } else { 0 }
        };
        let month = self.decode(r(REG_MONTH)).filter(|v| (1..=12).contains(v))?;
        let year = i64::from(self.decode(r(REG_YEAR)).filter(|&v| v < 100)?);
        let century = i64::from(self.decode(r(REG_CENTURY)).filter(|&v| v < 100)?);
        let year = century * 100 + year;
        let day = self
            .decode(r(REG_DAY_OF_MONTH))
            .filter(|&v| v >= 1 && v <= days_in_month(year, month))?;
        Some(DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            // Derived from the date; the guest's day-of-week byte is not trusted.
            weekday: 0,
        })
    }

    /// Makes the time registers of CMOS RAM the guest's time from now on.
    fn commit_time(&mut self) {
        match self.latched_time() {
            Some(t) => {
                self.offset_secs = t.to_unix().saturating_sub(unix_secs(self.clock.now()));
                self.stats.time_sets += 1;
            }
            None => self.stats.invalid_time_sets += 1,
        }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let set = self.reg_b() & B_SET != 0;
        match reg {
            r if TIME_REGS.contains(&r) && !set => {
                let now = DateTime::from_unix(self.guest_secs());
                self.time_field(&now, r)
            }
            REG_A => self.ram[usize::from(REG_A)] & !A_UIP,
            REG_C => {
                let now = self.guest_secs();
                let mut c = 0;
                if !set && now != self.c_read_at {
                    c |= C_UF;
                    if self.reg_b() & B_UIE != 0 {
                        c |= C_IRQF;
                    }
                }
                self.c_read_at = now;
                c
            }
            REG_D => D_VRT,
            _ => self.ram[usize::from(reg)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        let set = self.reg_b() & B_SET != 0;
        match reg {
            r if TIME_REGS.contains(&r) => {
                if set {
                    self.ram[usize::from(r)] = value;
                } else {
                    // Setting one field while the clock runs: start from the current time.
                    self.latch_time();
                    self.ram[usize::from(r)] = value;
                    self.commit_time();
                }
            }
            REG_A => self.ram[usize::from(REG_A)] = value & !A_UIP,
            REG_B => {
                let entering_set = !set && value & B_SET != 0;
                let leaving_set = set && value & B_SET == 0;
                if entering_set {
                    // Freeze the time in the format in force until now.
                    self.latch_time();
                }
                self.ram[usize::from(REG_B)] = value;
                if leaving_set {
                    self.commit_time();
                }
            }
            // C and D are read-only.
            REG_C | REG_D => {}
            _ => self.ram[usize::from(reg)] = value,
        }
    }
}

/// Fills the memory-size bytes for `ram_size` bytes of RAM split around the MMIO gap.
fn fill_memory_size(ram: &mut [u8; CMOS_LEN], ram_size: u64) {
    let below_4g = ram_size.min(MMIO_GAP_START);
    let above_4g = ram_size - below_4g;
    let mut put = |at: usize, v: u64, bytes: usize| {
        for i in 0..bytes {
            ram[at + i] = (v >> (8 * i)) as u8;
        }
    };
    put(CMOS_BASE_MEM_LOW, BASE_MEM_KIB.min(below_4g / KIB), 2);
    let ext_kib = (below_4g.saturating_sub(MIB) / KIB).min(0xffff);
    put(CMOS_EXT_MEM_LOW, ext_kib, 2);
    put(CMOS_EXT_MEM2_LOW, ext_kib, 2);
    let above_16m = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff);
    put(CMOS_MEM_ABOVE_16M_LOW, above_16m, 2);
    let blocks_4g = (above_4g / (64 * KIB)).min(0xff_ffff);
    put(CMOS_MEM_ABOVE_4G_LOW, blocks_4g, 3);
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                // The index port is write-only; the bus floats.
                Some(INDEX_OFFSET) => 0xff,
                Some(DATA_OFFSET) => self.read_register(self.index),
                _ => {
                    self.stats.invalid_accesses += 1;
                    0xff
                }
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        for (i, &value) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(INDEX_OFFSET) => self.index = value & !INDEX_NMI_DISABLE,
                Some(DATA_OFFSET) => self.write_register(self.index, value),
                _ => self.stats.invalid_accesses += 1,
            }
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        "cmos-rtc"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_307;

    fn rtc_at(secs: u64, ram: u64) -> (CmosRtc, FixedClock) {
        let clock = FixedClock::from_unix_secs(secs);
        (CmosRtc::new(Box::new(clock.clone()), ram), clock)
    }

    fn rd(rtc: &mut CmosRtc, reg: u8) -> u8 {
        rtc.write(INDEX_OFFSET, &[reg]);
        let mut b = [0u8; 1];
        rtc.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn wr(rtc: &mut CmosRtc, reg: u8, v: u8) {
        rtc.write(INDEX_OFFSET, &[reg]);
        rtc.write(DATA_OFFSET, &[v]);
    }

    fn time_regs(rtc: &mut CmosRtc) -> [u8; 8] {
        TIME_REGS.map(|r| rd(rtc, r))
    }

    #[test]
    fn civil_conversions_round_trip_and_match_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(days_from_civil(2100, 3, 1), 47_541);
        assert_eq!(civil_from_days(47_540), (2100, 2, 28)); // 2100 is not a leap year
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d <= days_in_month(y, m));
        }
    }

    #[test]
    fn bcd_readout_of_a_known_timestamp() {
        let (mut rtc, _) = rtc_at(LEAP_DAY, 256 * MIB);
        // sec, min, hour, weekday (Thursday = 5), day, month, year, century.
        assert_eq!(
            time_regs(&mut rtc),
            [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(rd(&mut rtc, REG_B), B_DEFAULT);
    }

    #[test]
    fn binary_and_12_hour_readouts() {
        let (mut rtc, _) = rtc_at(LEAP_DAY, 256 * MIB);
        wr(&mut rtc, REG_B, B_24H | B_DM_BINARY);
        assert_eq!(time_regs(&mut rtc), [7, 45, 13, 5, 29, 2, 24, 20]);
        // 12-hour binary: 1 PM.
        wr(&mut rtc, REG_B, B_DM_BINARY);
        assert_eq!(rd(&mut rtc, REG_HOURS), HOURS_PM | 1);
        // 12-hour BCD at midnight: 12 AM.
        let (mut rtc, _) = rtc_at(LEAP_DAY - (13 * 3600 + 45 * 60 + 7), 256 * MIB);
        wr(&mut rtc, REG_B, 0);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x12);
    }

    #[test]
    fn status_registers() {
        let (mut rtc, _) = rtc_at(LEAP_DAY, 256 * MIB);
        assert_eq!(rd(&mut rtc, REG_A), A_DEFAULT);
        assert_eq!(rd(&mut rtc, REG_D), D_VRT);
        // UIP cannot be made to stick, D cannot be written.
        wr(&mut rtc, REG_A, 0xa6);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
        wr(&mut rtc, REG_D, 0);
        assert_eq!(rd(&mut rtc, REG_D), D_VRT);
        // The NMI-disable bit of the index is ignored.
        assert_eq!(rd(&mut rtc, REG_D | INDEX_NMI_DISABLE), D_VRT);
    }

    #[test]
    fn register_c_reports_update_ended_once_then_reads_clear() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY, 256 * MIB);
        assert_eq!(rd(&mut rtc, REG_C), 0);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(rd(&mut rtc, REG_C), C_UF);
        assert_eq!(rd(&mut rtc, REG_C), 0);
        // With UIE enabled the flag also sets IRQF.
        wr(&mut rtc, REG_B, B_DEFAULT | B_UIE);
        clock.advance(Duration::from_secs(1));
        assert_eq!(rd(&mut rtc, REG_C), C_IRQF | C_UF);
        assert_eq!(rd(&mut rtc, REG_C), 0);
    }

    #[test]
    fn guest_sets_the_time_like_linux() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY, 256 * MIB);
        // mc146818_set_time: SET, write fields, clear SET. 2031-12-31 23:59:58.
        wr(&mut rtc, REG_B, B_DEFAULT | B_SET);
        // While SET is on the registers hold what was latched and what is written.
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x07);
        for (reg, v) in [
            (REG_YEAR, 0x31),
            (REG_MONTH, 0x12),
            (REG_DAY_OF_MONTH, 0x31),
            (REG_HOURS, 0x23),
            (REG_MINUTES, 0x59),
            (REG_SECONDS, 0x58),
        ] {
            wr(&mut rtc, reg, v);
        }
        clock.advance(Duration::from_secs(10));
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x58, "frozen while SET");
        wr(&mut rtc, REG_B, B_DEFAULT);
        assert_eq!(rtc.stats().time_sets, 1);
        // The clock runs on from the new time: two seconds later it is a new year (a Thursday).
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            time_regs(&mut rtc),
            [0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x32, 0x20]
        );
    }

    #[test]
    fn invalid_time_settings_are_refused_and_counted() {
        let (mut rtc, _) = rtc_at(LEAP_DAY, 256 * MIB);
        // Not BCD.
        wr(&mut rtc, REG_MINUTES, 0x7a);
        // February 30th, set field by field while running.
        wr(&mut rtc, REG_DAY_OF_MONTH, 0x30);
        assert_eq!(rtc.stats().invalid_time_sets, 2);
        assert_eq!(rtc.stats().time_sets, 0);
        assert_eq!(
            time_regs(&mut rtc),
            [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        // A valid single-field write while running takes effect at once.
        wr(&mut rtc, REG_MINUTES, 0x10);
        assert_eq!(rd(&mut rtc, REG_MINUTES), 0x10);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0x07);
    }

    #[test]
    fn memory_bytes_for_256_mib() {
        let (mut rtc, _) = rtc_at(0, 256 * MIB);
        // 640 KiB base.
        assert_eq!((rd(&mut rtc, 0x15), rd(&mut rtc, 0x16)), (0x80, 0x02));
        // 255 MiB of extended memory is more than 0xffff KiB: capped.
        assert_eq!((rd(&mut rtc, 0x17), rd(&mut rtc, 0x18)), (0xff, 0xff));
        assert_eq!((rd(&mut rtc, 0x30), rd(&mut rtc, 0x31)), (0xff, 0xff));
        // (256 - 16) MiB / 64 KiB = 3840 = 0x0f00.
        assert_eq!((rd(&mut rtc, 0x34), rd(&mut rtc, 0x35)), (0x00, 0x0f));
        assert_eq!(
            [rd(&mut rtc, 0x5b), rd(&mut rtc, 0x5c), rd(&mut rtc, 0x5d)],
            [0, 0, 0]
        );
    }

    #[test]
    fn memory_bytes_for_5_gib() {
        let (mut rtc, _) = rtc_at(0, 5 << 30);
        // Below the gap: 0xd000_0000 = 3328 MiB; (3328 - 16) MiB / 64 KiB = 52992 = 0xcf00.
        assert_eq!((rd(&mut rtc, 0x34), rd(&mut rtc, 0x35)), (0x00, 0xcf));
        // Above 4 GiB: 5 GiB - 3328 MiB = 1792 MiB = 28672 blocks = 0x007000.
        assert_eq!(
            [rd(&mut rtc, 0x5b), rd(&mut rtc, 0x5c), rd(&mut rtc, 0x5d)],
            [0x00, 0x70, 0x00]
        );
    }

    #[test]
    fn memory_bytes_for_a_tiny_guest() {
        // 8 MiB: 7 MiB extended = 7168 KiB = 0x1c00, nothing above 16 MiB.
        let (mut rtc, _) = rtc_at(0, 8 * MIB);
        assert_eq!((rd(&mut rtc, 0x17), rd(&mut rtc, 0x18)), (0x00, 0x1c));
        assert_eq!((rd(&mut rtc, 0x34), rd(&mut rtc, 0x35)), (0, 0));
    }

    #[test]
    fn cmos_ram_is_guest_writable_and_ports_behave() {
        let (mut rtc, _) = rtc_at(LEAP_DAY, 256 * MIB);
        wr(&mut rtc, 0x7f, 0xa5);
        assert_eq!(rd(&mut rtc, 0x7f), 0xa5);
        // outw 0x70: index and data in one access.
        rtc.write(INDEX_OFFSET, &[0x40, 0x3c]);
        assert_eq!(rd(&mut rtc, 0x40), 0x3c);
        // The index port reads as a floating bus.
        let mut b = [0u8; 1];
        rtc.read(INDEX_OFFSET, &mut b);
        assert_eq!(b, [0xff]);
        rtc.read(2, &mut b);
        assert_eq!(rtc.stats().invalid_accesses, 1);
    }

    #[test]
    fn times_before_1970_and_the_system_clock_work() {
        let clock = FixedClock::from_unix_secs(0);
        clock.set(UNIX_EPOCH - Duration::from_millis(500));
        let mut rtc = CmosRtc::new(Box::new(clock), 256 * MIB);
        // 1969-12-31 23:59:59, Wednesday.
        assert_eq!(
            time_regs(&mut rtc),
            [0x59, 0x59, 0x23, 0x04, 0x31, 0x12, 0x69, 0x19]
        );
        let mut rtc = CmosRtc::new(Box::new(SystemClock), 256 * MIB);
        let century = rd(&mut rtc, REG_CENTURY);
        assert!(from_bcd(century).is_some_and(|c| c >= 20));
    }

    #[test]
    fn a_restored_rtc_keeps_the_guest_time_and_nvram_and_follows_the_host_clock() {
        let (mut a, clock_a) = rtc_at(LEAP_DAY, 256 * MIB);
        // The guest sets 2031-12-31 23:59:58 and stores bytes in NVRAM, binary mode.
        wr(&mut a, REG_B, B_DEFAULT | B_SET);
        for (reg, v) in [
            (REG_YEAR, 0x31),
            (REG_MONTH, 0x12),
            (REG_DAY_OF_MONTH, 0x31),
            (REG_HOURS, 0x23),
            (REG_MINUTES, 0x59),
            (REG_SECONDS, 0x58),
        ] {
            wr(&mut a, reg, v);
        }
        wr(&mut a, REG_B, B_DEFAULT);
        assert_eq!(a.stats().time_sets, 1);
        wr(&mut a, REG_B, B_DEFAULT | B_DM_BINARY);
        wr(&mut a, 0x40, 0xab);
        wr(&mut a, 0x7f, 0xcd);
        a.write(INDEX_OFFSET, &[0x40]);
        let state = a.save_state();
        clock_a.advance(Duration::from_secs(1));

        // Restored on a host whose clock is an hour later.
        let (mut b, clock_b) = rtc_at(LEAP_DAY + 3600, 64 * MIB);
        b.restore_state(&state).unwrap();
        assert_eq!(b.save_state(), state);
        // The selected register reads first, without an index write.
        let mut byte = [0u8; 1];
        b.read(DATA_OFFSET, &mut byte);
        assert_eq!(byte[0], 0xab);
        assert_eq!(rd(&mut b, 0x7f), 0xcd);
        // The memory bytes are the saved VM's, not the new RTC's.
        assert_eq!(
            rd(&mut b, CMOS_EXT_MEM_LOW as u8),
            rd(&mut a, CMOS_EXT_MEM_LOW as u8)
        );
        // Binary mode; the hour passed for the guest too: 2032-01-01 00:59:58.
        assert_eq!(rd(&mut b, REG_B), B_DEFAULT | B_DM_BINARY);
        assert_eq!(time_regs(&mut b), [58, 59, 0, 5, 1, 1, 32, 20]);
        clock_b.advance(Duration::from_secs(2));
        assert_eq!(rd(&mut b, REG_MINUTES), 0);
        assert_eq!(rd(&mut b, REG_HOURS), 1);
    }

    #[test]
    fn bad_rtc_states_are_refused_and_json_round_trips() {
        let (mut rtc, _) = rtc_at(LEAP_DAY, 256 * MIB);
        let good = rtc.save_state();
        let short = RtcState {
            cmos: vec![0; 64],
            ..good.clone()
        };
        let err = rtc.restore_state(&short).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidState {
                    device: "cmos-rtc",
                    ..
                }
            ),
            "{err}"
        );
        let past = RtcState {
            index: 0x80,
            ..good.clone()
        };
        assert!(rtc.restore_state(&past).is_err());
        assert_eq!(rtc.save_state(), good);

        let json = serde_json::to_string(&good).unwrap();
        let back: RtcState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, good);
    }
}

//! The boot-timer byte: a guest marks "booted" by writing the value 123 to the first byte of
//! the 32-bit MMIO gap ([`BOOT_TIMER_ADDR`]). This is Firecracker's convention (its
//! `BootTimer` device at `BOOT_DEVICE_MEM_START`), so init scripts written for Firecracker work
//! unchanged, e.g. `devmem 0xd0000000 8 123`.

use std::time::Instant;

use petrel_devices::{BusDevice, BusOutcome};
/// Where the byte is. Re-exported from `petrel-guest-mem`, whose layout places it, so that a
/// user of this device finds its address here.
pub use petrel_guest_mem::layout::BOOT_TIMER_ADDR;

use crate::timeline::Timeline;

/// The value that marks the guest as booted.
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// The device decodes one page.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// Records the guest's boot-timer writes on the timeline.
#[derive(Debug)]
pub struct BootTimer {
    timeline: Timeline,
    marks: u64,
}

impl BootTimer {
    /// A boot timer writing to `timeline`.
    pub fn new(timeline: Timeline) -> Self {
        BootTimer { timeline, marks: 0 }
    }

    /// How many times the guest wrote the magic value.
    pub fn marks(&self) -> u64 {
        self.marks
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            self.marks += 1;
            self.timeline
                .mark_guest("guest boot-timer write (123)".into(), Instant::now());
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        "boot-timer"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_0_marks() {
        let t = Timeline::new(Instant::now());
        let mut b = BootTimer::new(t.clone());
        b.write(0, &[1]);
        b.write(4, &[123]);
        b.write(0, &[123, 0, 0, 0]);
        assert_eq!(b.marks(), 1);
        assert!(t.events().iter().any(|e| e.what.contains("boot-timer")));
    }
}

//! The POST-code port (0x80): firmware and early boot code write progress codes here.
//!
//! [`PostCodeSink`] keeps the last code, the number of writes, and the last
//! [`POST_CODE_HISTORY`] writes with their arrival [`Instant`] (older ones fall off: the history
//! never grows), and can call a hook on each write, e.g. to feed a boot timeline. Reads return
//! the last code written, as POST-code display cards latch it.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::{BusDevice, BusOutcome};

/// The POST diagnostic port (IBM PC/AT convention; also Linux's default `io_delay` port).
pub const POST_CODE_PORT: u64 = 0x80;
/// The sink decodes one port.
pub const POST_CODE_PORT_LEN: u64 = 1;
/// How many recent writes [`PostCodeSink::history`] keeps.
pub const POST_CODE_HISTORY: usize = 64;

/// One write to the POST-code port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostCode {
    /// The byte written.
    pub code: u8,
    /// When the write arrived.
    pub at: Instant,
}

/// A hook called on each write, under the device's lock: it must be quick, must not block, and
/// must not call back into the bus.
pub type PostCodeHook = Box<dyn FnMut(PostCode) + Send>;

/// The POST-code port; see the [module docs](self).
#[derive(Default)]
pub struct PostCodeSink {
    last: Option<u8>,
    count: u64,
    history: VecDeque<PostCode>,
    hook: Option<PostCodeHook>,
    invalid_accesses: u64,
}

impl fmt::Debug for PostCodeSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostCodeSink")
            .field("last", &self.last)
            .field("count", &self.count)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl PostCodeSink {
    /// A sink with no hook.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that also calls `hook` on each write (see [`PostCodeHook`] for its rules).
    pub fn with_hook(hook: impl FnMut(PostCode) + Send + 'static) -> Self {
        PostCodeSink {
            hook: Some(Box::new(hook)),
            ..Self::default()
        }
    }

    /// The last code written, if any.
    pub fn last_code(&self) -> Option<u8> {
        self.last
    }

    /// How many codes have been written.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The most recent writes (at most [`POST_CODE_HISTORY`]), oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &PostCode> + '_ {
        self.history.iter()
    }

    /// Accesses at offsets other than 0 (only when called directly, not through a bus).
    pub fn invalid_accesses(&self) -> u64 {
        self.invalid_accesses
    }

    fn record(&mut self, code: u8) {
        let entry = PostCode {
            code,
            at: Instant::now(),
        };
        self.last = Some(code);
        self.count = self.count.wrapping_add(1);
        if self.history.len() == POST_CODE_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
        if let Some(hook) = self.hook.as_mut() {
            hook(entry);
        }
    }
}

impl BusDevice for PostCodeSink {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = if offset.checked_add(i as u64) == Some(0) {
                // Nothing latched yet: the bus floats.
                self.last.unwrap_or(0xff)
            } else {
                self.invalid_accesses += 1;
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        for (i, &code) in data.iter().enumerate() {
            if offset.checked_add(i as u64) == Some(0) {
                self.record(code);
            } else {
                self.invalid_accesses += 1;
            }
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        "post-code"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn rd(s: &mut PostCodeSink) -> u8 {
        let mut b = [0u8; 1];
        s.read(0, &mut b);
        b[0]
    }

    #[test]
    fn reads_return_the_last_code() {
        let mut s = PostCodeSink::new();
        assert_eq!(rd(&mut s), 0xff);
        assert_eq!(s.last_code(), None);
        assert_eq!(s.write(0, &[0x10]), BusOutcome::Continue);
        s.write(0, &[0xaa]);
        assert_eq!(rd(&mut s), 0xaa);
        assert_eq!(s.last_code(), Some(0xaa));
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn history_is_bounded_ordered_and_timestamped() {
        let mut s = PostCodeSink::new();
        let start = Instant::now();
        for code in 0..=255u8 {
            s.write(0, &[code]);
        }
        assert_eq!(s.count(), 256);
        assert_eq!(s.history().len(), POST_CODE_HISTORY);
        let codes: Vec<u8> = s.history().map(|p| p.code).collect();
        let expected: Vec<u8> = (256 - POST_CODE_HISTORY as u16..256)
            .map(|c| c as u8)
            .collect();
        assert_eq!(codes, expected);
        let times: Vec<Instant> = s.history().map(|p| p.at).collect();
        assert!(times[0] >= start);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn hook_sees_every_write() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut s = PostCodeSink::with_hook(move |p| sink.lock().unwrap().push(p.code));
        s.write(0, &[1]);
        s.write(0, &[2]);
        assert_eq!(*seen.lock().unwrap(), [1, 2]);
    }

    #[test]
    fn through_a_bus_only_single_byte_accesses_reach_it() {
        let mut b = crate::BusBuilder::new("pio");
        let dev = Arc::new(Mutex::new(PostCodeSink::new()));
        b.insert(
            crate::BusRange::new(POST_CODE_PORT, POST_CODE_PORT_LEN),
            dev.clone(),
        )
        .unwrap();
        let bus = b.build();
        bus.write(0x80, &[0x42]);
        // A 2-byte write straddles the port's end: unclaimed.
        bus.write(0x80, &[0x43, 0x00]);
        let mut byte = [0u8; 1];
        bus.read(0x80, &mut byte);
        assert_eq!(byte, [0x42]);
        assert_eq!(dev.lock().unwrap().count(), 1);
        assert_eq!(bus.unclaimed_writes(), 1);
        // Called directly with an offset past the port: counted, not recorded.
        dev.lock().unwrap().write(1, &[7]);
        assert_eq!(dev.lock().unwrap().invalid_accesses(), 1);
        assert_eq!(dev.lock().unwrap().count(), 1);
    }
}

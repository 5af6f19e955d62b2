//! The legacy PC devices on the port-I/O bus, as the VMM wires them: 16550 serial (COM1),
//! i8042, CMOS RTC (on a fixed clock the input moves) and the port 0x80 POST-code sink.
//!
//! The input is a sequence of [`Op`]s: port reads and writes of 1, 2 or 4 bytes (mostly on the
//! devices' ports, sometimes anywhere), bytes typed on the serial console, Ctrl+Alt+Del, and
//! time passing. After each step the harness checks that no device mutex was poisoned (a
//! device panicked on the access), that a stop request only ever comes from the i8042's reset
//! line, and never a power-off (none of these devices can power the machine off).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Unstructured;
use petrel_devices::{
    BusBuilder, BusOutcome, BusRange, CmosRtc, FixedClock, PostCodeSink, Serial, StopRequest,
    COM1_BASE, I8042, I8042_BASE, I8042_PORT_LEN, POST_CODE_PORT, POST_CODE_PORT_LEN, RTC_BASE,
    RTC_PORT_LEN, SERIAL_PORT_LEN,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{put_bytes, take_bytes, Encode};

/// The ports the devices answer, in the order a `port` field below 0x8000 picks them.
pub fn device_ports() -> Vec<u16> {
    let range = |base: u64, len: u64| (base..base + len).map(|p| p as u16);
    range(COM1_BASE, SERIAL_PORT_LEN)
        .chain(range(I8042_BASE, I8042_PORT_LEN))
        .chain(range(RTC_BASE, RTC_PORT_LEN))
        .chain(range(POST_CODE_PORT, POST_CODE_PORT_LEN))
        .collect()
}

/// One step of a legacy-bus input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// A port read.
    Read {
        /// Below 0x8000: the device port of that index (modulo their number); else a raw port
        /// (low 10 bits).
        port: u16,
        /// 1, 2 or 4 bytes (selector modulo 3).
        size: u8,
    },
    /// A port write of the low `size` bytes of `value`.
    Write {
        /// As for `Read`.
        port: u16,
        /// As for `Read`.
        size: u8,
        /// The value, little-endian.
        value: u32,
    },
    /// Bytes typed on the serial console.
    SerialInput {
        /// The bytes.
        bytes: &'a [u8],
    },
    /// The host sends Ctrl+Alt+Del to the keyboard.
    CtrlAltDel,
    /// The RTC's clock moves on.
    Tick {
        /// Milliseconds.
        millis: u32,
    },
}

impl<'a> Op<'a> {
    /// Reads one step; `Err` when the input is used up.
    pub fn take(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.is_empty() {
            return Err(arbitrary::Error::NotEnoughData);
        }
        let tag: u8 = u.arbitrary()?;
        Ok(match tag % 5 {
            0 => Op::Read {
                port: u.arbitrary()?,
                size: u.arbitrary()?,
            },
            1 => Op::Write {
                port: u.arbitrary()?,
                size: u.arbitrary()?,
                value: u.arbitrary()?,
            },
            2 => Op::SerialInput {
                bytes: take_bytes(u)?,
            },
            3 => Op::CtrlAltDel,
            _ => Op::Tick {
                millis: u.arbitrary()?,
            },
        })
    }

    /// Appends the step as [`Op::take`] reads it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Read { port, size } => {
                out.push(0);
                port.put(out);
                size.put(out);
            }
            Op::Write { port, size, value } => {
                out.push(1);
                port.put(out);
                size.put(out);
                value.put(out);
            }
            Op::SerialInput { bytes } => {
                out.push(2);
                put_bytes(out, bytes);
            }
            Op::CtrlAltDel => out.push(3),
            Op::Tick { millis } => {
                out.push(4);
                millis.put(out);
            }
        }
    }
}

/// The `port` field that names `port` in a step: its index among [`device_ports`], or the raw
/// port with the top bit set.
pub fn port_field(port: u16) -> u16 {
    match device_ports().iter().position(|&p| p == port) {
        Some(i) => i as u16,
        None => 0x8000 | port,
    }
}

fn resolve(ports: &[u16], port: u16) -> u16 {
    if port & 0x8000 == 0 {
        ports[usize::from(port) % ports.len()]
    } else {
        port & 0x3ff
    }
}

/// The access size a selector stands for.
fn access_size(size: u8) -> usize {
    [1, 2, 4][usize::from(size % 3)]
}

/// The most steps one input runs.
const MAX_OPS: usize = 2048;

/// Runs a legacy-bus input.
pub fn bus(data: &[u8]) {
    let ports = device_ports();
    let com1_irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let kbd_irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let serial = Arc::new(Mutex::new(Serial::new(com1_irq, Box::new(std::io::sink()))));
    let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq)));
    let clock = FixedClock::from_unix_secs(1_700_000_000);
    let rtc = Arc::new(Mutex::new(CmosRtc::new(Box::new(clock.clone()), 512 << 20)));
    let mut pio = BusBuilder::new("pio");
    pio.insert(BusRange::new(COM1_BASE, SERIAL_PORT_LEN), serial.clone())
        .expect("serial");
    pio.insert(BusRange::new(I8042_BASE, I8042_PORT_LEN), i8042.clone())
        .expect("i8042");
    pio.insert(BusRange::new(RTC_BASE, RTC_PORT_LEN), rtc)
        .expect("rtc");
    pio.insert(
        BusRange::new(POST_CODE_PORT, POST_CODE_PORT_LEN),
        Arc::new(Mutex::new(PostCodeSink::new())),
    )
    .expect("port 0x80");
    let pio = pio.build();

    let mut u = Unstructured::new(data);
    for _ in 0..MAX_OPS {
        let Ok(op) = Op::take(&mut u) else { break };
        match op {
            Op::Read { port, size } => {
                let mut buf = [0u8; 4];
                pio.read(
                    u64::from(resolve(&ports, port)),
                    &mut buf[..access_size(size)],
                );
            }
            Op::Write { port, size, value } => {
                let port = resolve(&ports, port);
                let outcome = pio.write(u64::from(port), &value.to_le_bytes()[..access_size(size)]);
                let i8042_ports = I8042_BASE..I8042_BASE + I8042_PORT_LEN;
                match outcome {
                    BusOutcome::Continue => {}
                    BusOutcome::Stop(StopRequest::Reset) => assert!(
                        i8042_ports.contains(&u64::from(port)),
                        "a write to port {port:#x} asked for a reset"
                    ),
                    BusOutcome::Stop(StopRequest::PowerOff) => {
                        panic!("a write to port {port:#x} asked for a power-off")
                    }
                }
            }
            Op::SerialInput { bytes } => {
                let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
                let space = s.input_space();
                let taken = s.enqueue_input(bytes);
                assert!(
                    taken <= bytes.len() && taken <= space,
                    "serial took {taken} of {} bytes with room for {space}",
                    bytes.len()
                );
            }
            Op::CtrlAltDel => {
                let _ = i8042
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send_ctrl_alt_del();
            }
            Op::Tick { millis } => clock.advance(Duration::from_millis(u64::from(millis))),
        }
        assert_eq!(pio.poisoned_accesses(), 0, "a device panicked on an access");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_back_as_encoded() {
        let ops = [
            Op::Read {
                port: port_field(0x3fd),
                size: 0,
            },
            Op::Write {
                port: port_field(0x511),
                size: 2,
                value: 0x1234_5678,
            },
            Op::SerialInput { bytes: b"root\n" },
            Op::CtrlAltDel,
            Op::Tick { millis: 1000 },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            op.encode(&mut bytes);
        }
        let mut u = Unstructured::new(&bytes);
        let back: Vec<Op> = std::iter::from_fn(|| Op::take(&mut u).ok()).collect();
        assert_eq!(back, ops);
        assert_eq!(resolve(&device_ports(), port_field(0x3fd)), 0x3fd);
        assert_eq!(resolve(&device_ports(), port_field(0x211)), 0x211);
    }
}

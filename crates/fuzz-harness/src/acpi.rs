//! The ACPI sleep and reset registers ([`AcpiPm`]) on the port-I/O bus, as the VMM wires them.
//!
//! The input is a sequence of [`Op`]s: port reads and writes of 1, 2 or 4 bytes, on the
//! block's three ports or on the ports around it (so that accesses straddle its edges). The
//! harness checks each step against the whole model of the device: a write stops the VM only
//! when it is one byte of SLP_EN with SLP_TYP = S5 at the sleep control port (power-off) or
//! one byte of RESET_VALUE at the reset port (reset), and then always; a read wholly inside
//! the block answers zeros, any other read floats (0xff); no access panics the device.

use std::sync::{Arc, Mutex};

use arbitrary::Unstructured;
use petrel_devices::acpi::{
    AcpiPm, ACPI_PM_BASE, ACPI_PM_PORT_LEN, RESET_PORT, RESET_VALUE, S5_SLP_TYP,
    SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_EN,
};
use petrel_devices::{BusBuilder, BusOutcome, BusRange, StopRequest};

use crate::Encode;

/// The first port a raw `port` field can name: 8 ports below the block.
const RAW_PORT_BASE: u16 = ACPI_PM_BASE as u16 - 8;
/// Raw ports span 32 ports from [`RAW_PORT_BASE`], past both ends of the block.
const RAW_PORT_MASK: u16 = 0x1f;

/// The block's ports, in the order a `port` field below 0x8000 picks them.
pub const DEVICE_PORTS: [u16; 3] = [SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT];

/// One step of an ACPI register input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A port read.
    Read {
        /// Below 0x8000: the block's port of that index (modulo 3); else a port around the
        /// block (0x5f8 plus the low 5 bits).
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
}

impl Op {
    /// Reads one step; `Err` when the input is used up.
    pub fn take(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        if u.is_empty() {
            return Err(arbitrary::Error::NotEnoughData);
        }
        let tag: u8 = u.arbitrary()?;
        Ok(if tag % 2 == 0 {
            Op::Read {
                port: u.arbitrary()?,
                size: u.arbitrary()?,
            }
        } else {
            Op::Write {
                port: u.arbitrary()?,
                size: u.arbitrary()?,
                value: u.arbitrary()?,
            }
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
        }
    }
}

/// The `port` field that names `port`: its index among [`DEVICE_PORTS`], or the raw port.
///
/// # Panics
///
/// For a port neither in the block nor among the 32 raw ports around it.
pub fn port_field(port: u16) -> u16 {
    match DEVICE_PORTS.iter().position(|&p| p == port) {
        Some(i) => i as u16,
        None => {
            let offset = port
                .checked_sub(RAW_PORT_BASE)
                .filter(|&o| o <= RAW_PORT_MASK)
                .unwrap_or_else(|| panic!("port {port:#x} is out of the harness's reach"));
            0x8000 | offset
        }
    }
}

fn resolve(port: u16) -> u16 {
    if port & 0x8000 == 0 {
        DEVICE_PORTS[usize::from(port) % DEVICE_PORTS.len()]
    } else {
        RAW_PORT_BASE + (port & RAW_PORT_MASK)
    }
}

/// The access size a selector stands for.
fn access_size(size: u8) -> usize {
    [1, 2, 4][usize::from(size % 3)]
}

/// What the bus must answer to a write of `bytes` at `port`.
fn expected_write(port: u16, bytes: &[u8]) -> BusOutcome {
    const S5_FIELDS: u8 = (0b111 << 2) | SLP_EN;
    match (port, bytes) {
        (SLEEP_CONTROL_PORT, &[v]) if v & S5_FIELDS == (S5_SLP_TYP << 2) | SLP_EN => {
            BusOutcome::Stop(StopRequest::PowerOff)
        }
        (RESET_PORT, &[RESET_VALUE]) => BusOutcome::Stop(StopRequest::Reset),
        _ => BusOutcome::Continue,
    }
}

/// What a read of `len` bytes at `port` must give: zeros inside the block, the floating bus
/// elsewhere.
fn expected_read(port: u16, len: usize) -> u8 {
    let block = BusRange::new(ACPI_PM_BASE, ACPI_PM_PORT_LEN);
    if block.contains_access(u64::from(port), len as u64) {
        0
    } else {
        0xff
    }
}

/// The most steps one input runs.
const MAX_OPS: usize = 4096;

/// Runs an ACPI register input.
pub fn pm(data: &[u8]) {
    let mut pio = BusBuilder::new("pio");
    pio.insert(
        BusRange::new(ACPI_PM_BASE, ACPI_PM_PORT_LEN),
        Arc::new(Mutex::new(AcpiPm::new())),
    )
    .expect("acpi-pm");
    let pio = pio.build();

    let mut u = Unstructured::new(data);
    for _ in 0..MAX_OPS {
        let Ok(op) = Op::take(&mut u) else { break };
        match op {
            Op::Read { port, size } => {
                let port = resolve(port);
                let len = access_size(size);
                let mut buf = [0x5a; 4];
                pio.read(u64::from(port), &mut buf[..len]);
                let want = expected_read(port, len);
                assert!(
                    buf[..len].iter().all(|&b| b == want),
                    "a {len}-byte read at {port:#x} gave {:02x?}, not {want:#x}s",
                    &buf[..len]
                );
            }
            Op::Write { port, size, value } => {
                let port = resolve(port);
                let bytes = &value.to_le_bytes()[..access_size(size)];
                let outcome = pio.write(u64::from(port), bytes);
                assert_eq!(
                    outcome,
                    expected_write(port, bytes),
                    "a write of {bytes:02x?} at {port:#x}"
                );
            }
        }
        assert_eq!(
            pio.poisoned_accesses(),
            0,
            "the device panicked on an access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_back_as_encoded() {
        let ops = [
            Op::Read {
                port: port_field(SLEEP_STATUS_PORT),
                size: 0,
            },
            Op::Write {
                port: port_field(0x5ff),
                size: 2,
                value: 0x3434,
            },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            op.encode(&mut bytes);
        }
        let mut u = Unstructured::new(&bytes);
        let back: Vec<Op> = std::iter::from_fn(|| Op::take(&mut u).ok()).collect();
        assert_eq!(back, ops);
        assert_eq!(resolve(port_field(RESET_PORT)), RESET_PORT);
        assert_eq!(resolve(port_field(0x5f8)), 0x5f8);
        assert_eq!(resolve(port_field(0x617)), 0x617);
    }

    #[test]
    fn the_model_knows_both_stops() {
        assert_eq!(
            expected_write(SLEEP_CONTROL_PORT, &[0x34]),
            BusOutcome::Stop(StopRequest::PowerOff)
        );
        assert_eq!(
            expected_write(RESET_PORT, &[RESET_VALUE]),
            BusOutcome::Stop(StopRequest::Reset)
        );
        assert_eq!(
            expected_write(SLEEP_CONTROL_PORT, &[0x34, 0]),
            BusOutcome::Continue
        );
        assert_eq!(
            expected_write(SLEEP_STATUS_PORT, &[0x34]),
            BusOutcome::Continue
        );
        assert_eq!(expected_read(RESET_PORT, 1), 0);
        assert_eq!(expected_read(RESET_PORT, 2), 0xff);
        assert_eq!(expected_read(0x5ff, 1), 0xff);
    }

    /// Pseudo-random inputs (a fixed xorshift stream) through the harness on stable, a
    /// check of the model beyond the stored seeds.
    #[test]
    fn random_inputs_agree_with_the_model() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut data = vec![0u8; 4096];
        for _ in 0..64 {
            for b in data.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            pm(&data);
        }
    }
}

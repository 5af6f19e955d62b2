//! An i8042 PS/2 keyboard controller with a keyboard and no AUX (mouse) port.
//!
//! It exists for two reasons: a Linux guest booted with `reboot=k` resets the machine by
//! writing command 0xFE to port 0x64, which here becomes [`BusOutcome::Stop`] with
//! [`StopRequest::Reset`]; and Linux's i8042 and atkbd drivers probe the controller at boot,
//! which should succeed quickly and without error messages or timeouts.
//!
//! `vm_superio::I8042Device` only knows the reset command, answers 0 to every read (so the
//! status register never shows a reply) and signals reset through a trigger rather than a return
//! value; this model implements the controller command set Linux uses and a minimal keyboard.
//!
//! Ports: data at 0x60, status (read) / command (write) at 0x64. The device takes one bus range,
//! [`I8042_BASE`] .. + [`I8042_PORT_LEN`]; offsets 1-3 (ports 0x61-0x63) are not i8042 ports and
//! read 0xff (counted). Port 0x61 (system control port B) is served inside KVM by its in-kernel
//! PIT, before any exit reaches the bus.
//!
//! The keyboard interrupt ([`I8042_KBD_IRQ`]) is raised only when a byte from the keyboard
//! (its answers to commands written to port 0x60, a byte written with command 0xD2, or a key
//! the host sends) reaches the output buffer while CTR bit 0 enables it; controller replies and
//! reset never raise it.
//!
//! The host can press keys: [`I8042::send_ctrl_alt_del`] (Firecracker's `SendCtrlAltDel`
//! action) queues Ctrl-Alt-Del as the keyboard would send it. A real keyboard sends scan code
//! set 2 (its default, and what Linux's atkbd keeps when the controller translates), and the
//! controller translates it to set 1 while CTR bit 6 is set, which is how a PC BIOS leaves it
//! and how this model starts; so the guest reads set-1 codes, or set-2 codes if it turned
//! translation off (Linux `i8042.direct`), or set-1 codes from a keyboard it switched to set 1.
//! Linux's atkbd turns the keys into input events, and the VT keyboard handler maps
//! Ctrl-Alt-Del to `ctrl_alt_del()` (drivers/tty/vt/keyboard.c `fn_boot_it`), which reboots or
//! signals init.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::trigger::EventFdTrigger;
use crate::{BusDevice, BusOutcome, StopRequest};

/// Errors from the i8042 controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The i8042 keyboard buffer has no room for a whole key sequence (the guest is not reading
    /// its keyboard); nothing was queued.
    #[error(
        "cannot send {keys}: the i8042 keyboard buffer has room for {free} of its {needed} bytes (the guest is not reading the keyboard)"
    )]
    I8042BufferFull {
        /// The key sequence.
        keys: &'static str,
        /// Bytes the sequence takes.
        needed: usize,
        /// Bytes free in the buffer.
        free: usize,
    },
    /// The guest set its keyboard to a scan code set the host cannot send keys in (set 3, or
    /// set 1 with the controller translating); nothing was queued.
    #[error(
        "cannot send {keys}: the guest keyboard uses scan code set {set} with translation {}",
        if *translated { "on" } else { "off" }
    )]
    I8042ScanSet {
        /// The key sequence.
        keys: &'static str,
        /// The keyboard's scan code set.
        set: u8,
        /// Whether the controller translates (CTR bit 6).
        translated: bool,
    },
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

/// First port of the controller: the data port (IBM PC/AT Technical Reference, system I/O map).
pub const I8042_BASE: u64 = 0x60;
/// Length of the controller's bus range: ports 0x60-0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// Offset of the data port (0x60) in the range.
pub const I8042_DATA_OFFSET: u64 = 0;
/// Offset of the status/command port (0x64) in the range.
pub const I8042_COMMAND_OFFSET: u64 = 4;
/// ISA IRQ of the keyboard (IBM PC/AT convention).
pub const I8042_KBD_IRQ: u32 = 1;

// Status register bits (8042 status register; names as in Linux drivers/input/serio/i8042.h).
/// Status bit 0: output buffer full.
const STR_OBF: u8 = 0x01;
/// Status bit 2: system flag, mirrors CTR bit 2.
const STR_SYS: u8 = 0x04;
/// Status bit 3: the last write was to the command port (A2 = 1).
const STR_CMDDAT: u8 = 0x08;
/// Status bit 4: keyboard not inhibited (Linux `I8042_STR_KEYLOCK`; clear means "keylock").
const STR_KEYLOCK: u8 = 0x10;

// Controller configuration byte ("command byte", internal RAM byte 0) bits (8042 CTR).
/// CTR bit 0: keyboard interrupt enable.
const CTR_KBDINT: u8 = 0x01;
/// CTR bit 2: system flag (POST passed).
const CTR_SYS: u8 = 0x04;
/// CTR bit 4: keyboard interface disabled.
const CTR_KBDDIS: u8 = 0x10;
/// CTR bit 5: AUX interface disabled.
const CTR_AUXDIS: u8 = 0x20;
/// CTR bit 6: translate keyboard scan code set 2 to set 1.
const CTR_XLATE: u8 = 0x40;
/// What a PC BIOS leaves after POST: keyboard interrupt on, system flag, translation on; the
/// AUX interface off since there is none.
const CTR_DEFAULT: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE;

// Output port bits (8042 output port, read with 0xD0, written with 0xD1).
/// Output port bit 0: system reset line, active low.
const OUTP_RESET_HIGH: u8 = 0x01;
/// Output port bit 1: A20 gate (always enabled under KVM; stored only).
const OUTP_A20: u8 = 0x02;
const OUTP_DEFAULT: u8 = OUTP_RESET_HIGH | OUTP_A20;

// Controller commands written to port 0x64 (8042 command set; Linux i8042.h `I8042_CMD_*`).
/// 0x20-0x3f: read internal RAM byte (0x20 = CTR).
const CMD_READ_RAM_FIRST: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
/// 0x60-0x7f: write internal RAM byte from the next data byte (0x60 = CTR).
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
/// Disable the AUX interface.
const CMD_AUX_DISABLE: u8 = 0xa7;
/// Enable the AUX interface.
const CMD_AUX_ENABLE: u8 = 0xa8;
/// AUX interface test: 0x00 ok, 0x01 clock stuck low, 0x02 clock stuck high, ...
const CMD_AUX_TEST: u8 = 0xa9;
/// Controller self test: answers 0x55.
const CMD_SELF_TEST: u8 = 0xaa;
/// Keyboard interface test: 0x00 ok.
const CMD_KBD_TEST: u8 = 0xab;
/// Disable the keyboard interface.
const CMD_KBD_DISABLE: u8 = 0xad;
/// Enable the keyboard interface.
const CMD_KBD_ENABLE: u8 = 0xae;
/// Read the output port.
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
/// Write the output port from the next data byte.
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
/// Write the next data byte to the output buffer as if the keyboard sent it.
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
/// Write the next data byte to the output buffer as if the AUX device sent it.
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
/// Send the next data byte to the AUX device.
const CMD_WRITE_AUX: u8 = 0xd4;
/// Read the test inputs (keyboard/AUX clock and data lines).
const CMD_READ_TEST_INPUTS: u8 = 0xe0;
/// 0xf0-0xff: pulse the output port bits 0-3 whose bit is 0 in the command's low nibble; bit 0
/// is the reset line, so 0xfe is "pulse reset".
const CMD_PULSE_FIRST: u8 = 0xf0;

/// Self-test reply: controller OK.
const SELF_TEST_OK: u8 = 0x55;
/// Interface test reply: no error.
const INTERFACE_OK: u8 = 0x00;
/// AUX interface test reply: clock line stuck high, i.e. nothing connected.
const AUX_CLOCK_STUCK_HIGH: u8 = 0x02;

// Keyboard commands and replies (IBM PS/2 keyboard; Linux atkbd.c `ATKBD_CMD_*`).
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_SCAN_SET: u8 = 0xf0;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_TYPEMATIC: u8 = 0xf3;
const KBD_CMD_RESEND: u8 = 0xfe;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;
/// MF2 keyboard ID: 0xab 0x83, or 0xab 0x41 once 0x83 goes through set-2-to-1 translation.
const KBD_ID: u8 = 0xab;
const KBD_ID_MF2: u8 = 0x83;
const KBD_ID_MF2_TRANSLATED: u8 = 0x41;
const KBD_DEFAULT_SCAN_SET: u8 = 2;

/// A key by its make codes in scan code sets 1 and 2 (Microsoft, "Keyboard Scan Code
/// Specification", rev. 1.3a, 2000, its table of keys and codes: Left Ctrl = set 1 `1D`,
/// set 2 `14`; Left Alt = `38`, `11`; Delete = `E0 53`, `E0 71`).
#[derive(Debug, Clone, Copy)]
struct Key {
    set1: u8,
    set2: u8,
    /// The key's codes carry the 0xE0 prefix (an "extended" key).
    extended: bool,
}

const KEY_LEFT_CTRL: Key = Key {
    set1: 0x1d,
    set2: 0x14,
    extended: false,
};
const KEY_LEFT_ALT: Key = Key {
    set1: 0x38,
    set2: 0x11,
    extended: false,
};
const KEY_DELETE: Key = Key {
    set1: 0x53,
    set2: 0x71,
    extended: true,
};
/// Prefix of an extended key's codes, make and break, in sets 1 and 2 (same specification).
const SCAN_EXTENDED: u8 = 0xe0;
/// Set 2: a break (release) code is the make code after this prefix (same specification).
const SCAN2_BREAK_PREFIX: u8 = 0xf0;
/// Set 1: a break code is the make code with this bit set (same specification).
const SCAN1_BREAK_BIT: u8 = 0x80;

/// Keyboard bytes waiting for the output buffer. A keyboard answers any command with at most
/// three bytes; a guest that writes commands without reading the answers fills this and the
/// rest is dropped and counted.
const KBD_QUEUE_LEN: usize = 16;
/// Internal RAM of the controller (32 bytes addressable by commands 0x20-0x3f / 0x60-0x7f).
const RAM_LEN: usize = 32;

/// Where the next byte written to port 0x60 goes, after a controller command that takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Internal RAM byte (0x60-0x7f).
    Ram(u8),
    /// Output port (0xd1).
    OutputPort,
    /// Output buffer, as keyboard data (0xd2).
    KbdBuffer,
    /// Output buffer, as AUX data (0xd3).
    AuxBuffer,
    /// The AUX device (0xd4).
    AuxDevice,
}

impl Pending {
    /// The controller command that left this wait (the on-disk form of it).
    fn command(self) -> u8 {
        match self {
            Pending::Ram(index) => CMD_WRITE_RAM_FIRST + index,
            Pending::OutputPort => CMD_WRITE_OUTPUT_PORT,
            Pending::KbdBuffer => CMD_WRITE_KBD_BUFFER,
            Pending::AuxBuffer => CMD_WRITE_AUX_BUFFER,
            Pending::AuxDevice => CMD_WRITE_AUX,
        }
    }

    /// The wait a controller command leaves, if it takes a data byte.
    fn from_command(cmd: u8) -> Option<Pending> {
        match cmd {
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST => {
                Some(Pending::Ram(cmd - CMD_WRITE_RAM_FIRST))
            }
            CMD_WRITE_OUTPUT_PORT => Some(Pending::OutputPort),
            CMD_WRITE_KBD_BUFFER => Some(Pending::KbdBuffer),
            CMD_WRITE_AUX_BUFFER => Some(Pending::AuxBuffer),
            CMD_WRITE_AUX => Some(Pending::AuxDevice),
            _ => None,
        }
    }
}

/// The saved state of an [`I8042`] and its keyboard. The status register is not saved: it
/// follows from these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The controller's 32 bytes of internal RAM; byte 0 is the command byte (CTR).
    pub ram: Vec<u8>,
    /// The controller's output port (bit 0: reset line high, bit 1: A20).
    pub output_port: u8,
    /// The byte in the output buffer (status bit 0, OBF), if any.
    pub output_buffer: Option<u8>,
    /// Whether the byte in the output buffer came from the keyboard (it goes back to the
    /// keyboard queue if a controller reply takes its place).
    pub output_from_keyboard: bool,
    /// What the data port reads with the output buffer empty: the last byte read.
    pub last_output: u8,
    /// Whether the last write went to the command port (status bit 3, A2).
    pub last_write_was_command: bool,
    /// The controller command (0x60-0x7f, 0xd1-0xd4) waiting for its data byte on port 0x60.
    pub pending_command: Option<u8>,
    /// Keyboard bytes waiting for the output buffer, oldest first (at most 16).
    pub keyboard_queue: Vec<u8>,
    /// The keyboard command (0xed, 0xf0, 0xf3) waiting for its parameter byte.
    pub keyboard_pending_command: Option<u8>,
    /// The keyboard's scan code set, 1 to 3.
    pub keyboard_scan_set: u8,
    /// The keyboard's last byte, for its resend command (0xfe).
    pub keyboard_last_sent: u8,
}

/// Counters kept by an [`I8042`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct I8042Stats {
    /// Keyboard interrupts raised.
    pub kbd_irqs: u64,
    /// Controller commands this model does not implement (ignored).
    pub unknown_commands: u64,
    /// Keyboard bytes dropped because the guest did not read earlier ones.
    pub kbd_bytes_dropped: u64,
    /// Bytes sent to the absent AUX device (dropped).
    pub aux_bytes_dropped: u64,
    /// Accesses to ports 0x61-0x63 (or past the range when called directly).
    pub invalid_accesses: u64,
    /// Times raising the interrupt failed.
    pub trigger_failures: u64,
    /// Scan code bytes queued by the host ([`I8042::send_ctrl_alt_del`]).
    pub host_keys_sent: u64,
}

/// The i8042 controller; see the [module docs](self).
#[derive(Debug)]
pub struct I8042 {
    irq: EventFdTrigger,
    /// Internal RAM; byte 0 is the CTR.
    ram: [u8; RAM_LEN],
    output_port: u8,
    /// The output buffer and whether its byte came from the keyboard.
    out: Option<(u8, bool)>,
    /// What the data port reads when the output buffer is empty (the last byte, as hardware).
    last_out: u8,
    last_write_was_command: bool,
    pending: Option<Pending>,
    kbd_queue: VecDeque<u8>,
    /// A keyboard command waiting for its parameter byte.
    kbd_expect: Option<u8>,
    kbd_scan_set: u8,
    kbd_last_sent: u8,
    stats: I8042Stats,
    /// A stop asked for by a write that came through vm-device's `MutDevicePio`, whose writes
    /// return nothing: kept for [`take_stop_request`](Self::take_stop_request).
    stop_request: Option<StopRequest>,
}

impl I8042 {
    /// A controller that raises `kbd_interrupt` (the irqfd of IRQ 1) for keyboard data.
    pub fn new(kbd_interrupt: EventFd) -> I8042 {
        let mut ram = [0u8; RAM_LEN];
        ram[0] = CTR_DEFAULT;
        I8042 {
            irq: EventFdTrigger::new(kbd_interrupt),
            ram,
            output_port: OUTP_DEFAULT,
            out: None,
            last_out: 0,
            last_write_was_command: false,
            pending: None,
            kbd_queue: VecDeque::with_capacity(KBD_QUEUE_LEN),
            kbd_expect: None,
            kbd_scan_set: KBD_DEFAULT_SCAN_SET,
            kbd_last_sent: 0,
            stats: I8042Stats::default(),
            stop_request: None,
        }
    }

    /// The stop (a reset, command 0xFE) the guest asked for through a write made with
    /// vm-device's [`MutDevicePio`](vm_device::MutDevicePio), whose writes cannot return it;
    /// taken once. Petrel's [`Bus`](crate::Bus) returns it from the write instead.
    pub fn take_stop_request(&mut self) -> Option<StopRequest> {
        self.stop_request.take()
    }

    /// Records a stop from a vm-device write (see [`take_stop_request`](Self::take_stop_request)).
    pub(crate) fn keep_stop_request(&mut self, outcome: BusOutcome) {
        if let BusOutcome::Stop(request) = outcome {
            self.stop_request = Some(request);
        }
    }

    /// The controller's counters.
    pub fn stats(&self) -> I8042Stats {
        self.stats
    }

    /// Presses and releases Ctrl-Alt-Del, as Firecracker's `SendCtrlAltDel`: Left Ctrl, Left
    /// Alt and Delete down, then Delete, Left Alt and Left Ctrl up, in the codes the guest
    /// reads (see the [module docs](self)): with translation on (the default),
    /// `1D 38 E0 53 E0 D3 B8 9D`; in set 2 untranslated,
    /// `14 11 E0 71 E0 F0 71 F0 11 F0 14`. The first byte goes to the output buffer at once
    /// if it is free, raising IRQ 1; each next one when the guest has read the one before.
    ///
    /// All or nothing: fails without queueing a byte when the keyboard buffer cannot take the
    /// whole sequence ([`Error::I8042BufferFull`]: the guest is not reading its keyboard), or
    /// when the guest switched the keyboard to a scan code set the sequence cannot be sent in
    /// ([`Error::I8042ScanSet`]).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), Error> {
        const KEYS: &str = "Ctrl-Alt-Del";
        let presses = [
            (KEY_LEFT_CTRL, true),
            (KEY_LEFT_ALT, true),
            (KEY_DELETE, true),
            (KEY_DELETE, false),
            (KEY_LEFT_ALT, false),
            (KEY_LEFT_CTRL, false),
        ];
        let translated = self.ctr() & CTR_XLATE != 0;
        let set1 = match (self.kbd_scan_set, translated) {
            // The controller turns the keyboard's set 2 into set 1.
            (2, true) | (1, false) => true,
            (2, false) => false,
            (set, translated) => {
                return Err(Error::I8042ScanSet {
                    keys: KEYS,
                    set,
                    translated,
                })
            }
        };
        let mut bytes = Vec::with_capacity(12);
        for (key, down) in presses {
            if key.extended {
                bytes.push(SCAN_EXTENDED);
            }
            match (set1, down) {
                (true, true) => bytes.push(key.set1),
                (true, false) => bytes.push(key.set1 | SCAN1_BREAK_BIT),
                (false, true) => bytes.push(key.set2),
                (false, false) => bytes.extend([SCAN2_BREAK_PREFIX, key.set2]),
            }
        }
        let free = KBD_QUEUE_LEN - self.kbd_queue.len();
        if bytes.len() > free {
            return Err(Error::I8042BufferFull {
                keys: KEYS,
                needed: bytes.len(),
                free,
            });
        }
        self.kbd_queue.extend(&bytes);
        if let Some(&last) = bytes.last() {
            self.kbd_last_sent = last;
        }
        self.stats.host_keys_sent += bytes.len() as u64;
        self.pump();
        Ok(())
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    /// The controller's and keyboard's state, for a snapshot.
    pub fn save_state(&self) -> I8042State {
        I8042State {
            ram: self.ram.to_vec(),
            output_port: self.output_port,
            output_buffer: self.out.map(|(byte, _)| byte),
            output_from_keyboard: matches!(self.out, Some((_, true))),
            last_output: self.last_out,
            last_write_was_command: self.last_write_was_command,
            pending_command: self.pending.map(Pending::command),
            keyboard_queue: self.kbd_queue.iter().copied().collect(),
            keyboard_pending_command: self.kbd_expect,
            keyboard_scan_set: self.kbd_scan_set,
            keyboard_last_sent: self.kbd_last_sent,
        }
    }

    /// Puts `state` into this controller (one built anew with [`I8042::new`] when a VM is
    /// restored); the interrupt `EventFd` and the counters stay this controller's. If a keyboard
    /// byte is waiting in the output buffer with the keyboard interrupt enabled, IRQ 1 is raised
    /// once, so that a guest that had not yet taken it is not left waiting.
    ///
    /// Fails, changing nothing ([`Error::InvalidState`]), when the RAM is not 32 bytes, the
    /// keyboard queue is longer than 16, the pending commands are not ones that wait for a
    /// byte, or the scan code set is not 1 to 3.
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), Error> {
        let invalid = |why: String| Error::InvalidState {
            device: "i8042",
            why,
        };
        let ram: [u8; RAM_LEN] = state.ram.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "{} bytes of controller RAM, expected {RAM_LEN}",
                state.ram.len()
            ))
        })?;
        if state.keyboard_queue.len() > KBD_QUEUE_LEN {
            return Err(invalid(format!(
                "{} bytes in the keyboard queue, at most {KBD_QUEUE_LEN} fit",
                state.keyboard_queue.len()
            )));
        }
        let pending = match state.pending_command {
            None => None,
            Some(cmd) => Some(Pending::from_command(cmd).ok_or_else(|| {
                invalid(format!("controller command {cmd:#04x} takes no data byte"))
            })?),
        };
        if let Some(cmd) = state.keyboard_pending_command {
            if ![KBD_CMD_SET_LEDS, KBD_CMD_TYPEMATIC, KBD_CMD_SCAN_SET].contains(&cmd) {
                return Err(invalid(format!(
                    "keyboard command {cmd:#04x} takes no parameter byte"
                )));
            }
        }
        if !(1..=3).contains(&state.keyboard_scan_set) {
            return Err(invalid(format!(
                "scan code set {} (the keyboard has sets 1 to 3)",
                state.keyboard_scan_set
            )));
        }
        self.ram = ram;
        self.output_port = state.output_port;
        self.out = state
            .output_buffer
            .map(|byte| (byte, state.output_from_keyboard));
        self.last_out = state.last_output;
        self.last_write_was_command = state.last_write_was_command;
        self.pending = pending;
        self.kbd_queue = state.keyboard_queue.iter().copied().collect();
        self.kbd_expect = state.keyboard_pending_command;
        self.kbd_scan_set = state.keyboard_scan_set;
        self.kbd_last_sent = state.keyboard_last_sent;
        if matches!(self.out, Some((_, true))) && self.ctr() & CTR_KBDINT != 0 {
            if self.irq.trigger().is_ok() {
                self.stats.kbd_irqs += 1;
            } else {
                self.stats.trigger_failures += 1;
            }
        }
        Ok(())
    }

    fn status(&self) -> u8 {
        let mut s = STR_KEYLOCK;
        if self.ctr() & CTR_SYS != 0 {
            s |= STR_SYS;
        }
        if self.out.is_some() {
            s |= STR_OBF;
        }
        if self.last_write_was_command {
            s |= STR_CMDDAT;
        }
        // IBF (bit 1) is never set: every write is handled before the vCPU resumes.
        s
    }

    /// Puts a controller reply in the output buffer. A keyboard byte still there goes back to
    /// the head of the keyboard queue rather than being lost.
    fn reply(&mut self, byte: u8) {
        if let Some((kbd_byte, true)) = self.out {
            if self.kbd_queue.len() < KBD_QUEUE_LEN {
                self.kbd_queue.push_front(kbd_byte);
            } else {
                self.stats.kbd_bytes_dropped += 1;
            }
        }
        self.out = Some((byte, false));
    }

    /// Queues a byte from the keyboard and moves it to the output buffer if that is free.
    fn kbd_send(&mut self, byte: u8) {
        self.kbd_last_sent = byte;
        if self.kbd_queue.len() < KBD_QUEUE_LEN {
            self.kbd_queue.push_back(byte);
        } else {
            self.stats.kbd_bytes_dropped += 1;
        }
        self.pump();
    }

    /// Moves the next keyboard byte into a free output buffer, raising IRQ 1 if enabled.
    fn pump(&mut self) {
        if self.out.is_some() || self.ctr() & CTR_KBDDIS != 0 {
            return;
        }
        if let Some(byte) = self.kbd_queue.pop_front() {
            self.out = Some((byte, true));
            if self.ctr() & CTR_KBDINT != 0 {
                if self.irq.trigger().is_ok() {
                    self.stats.kbd_irqs += 1;
                } else {
                    self.stats.trigger_failures += 1;
                }
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.out.take() {
            self.last_out = byte;
        }
        self.pump();
        self.last_out
    }

    fn write_command(&mut self, cmd: u8) -> BusOutcome {
        self.last_write_was_command = true;
        // A new command abandons one still waiting for its data byte.
        self.pending = None;
        match cmd {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                self.reply(self.ram[usize::from(cmd - CMD_READ_RAM_FIRST)]);
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST => {
                self.pending = Some(Pending::Ram(cmd - CMD_WRITE_RAM_FIRST));
            }
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUXDIS,
            CMD_AUX_TEST => self.reply(AUX_CLOCK_STUCK_HIGH),
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_KBD_TEST => self.reply(INTERFACE_OK),
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => {
                self.ram[0] &= !CTR_KBDDIS;
                self.pump();
            }
            CMD_READ_OUTPUT_PORT => self.reply(self.output_port),
            CMD_WRITE_OUTPUT_PORT => self.pending = Some(Pending::OutputPort),
            CMD_WRITE_KBD_BUFFER => self.pending = Some(Pending::KbdBuffer),
            CMD_WRITE_AUX_BUFFER => self.pending = Some(Pending::AuxBuffer),
            CMD_WRITE_AUX => self.pending = Some(Pending::AuxDevice),
            CMD_READ_TEST_INPUTS => self.reply(0),
            CMD_PULSE_FIRST..=u8::MAX => {
                if cmd & OUTP_RESET_HIGH == 0 {
                    return BusOutcome::Stop(StopRequest::Reset);
                }
            }
            _ => self.stats.unknown_commands += 1,
        }
        BusOutcome::Continue
    }

    fn write_data(&mut self, byte: u8) -> BusOutcome {
        self.last_write_was_command = false;
        match self.pending.take() {
            Some(Pending::Ram(index)) => {
                self.ram[usize::from(index) % RAM_LEN] = byte;
                if index == 0 {
                    // The keyboard interface may just have been enabled.
                    self.pump();
                }
            }
            Some(Pending::OutputPort) => {
                self.output_port = byte;
                if byte & OUTP_RESET_HIGH == 0 {
                    return BusOutcome::Stop(StopRequest::Reset);
                }
            }
            Some(Pending::KbdBuffer) => self.kbd_send(byte),
            // There is no AUX port: echo the byte without the AUX-data status bit. Linux's
            // loopback probe (0xd3) then concludes at once that there is no working AUX port
            // instead of waiting for a timeout, and 0xa9 confirms nothing is connected.
            Some(Pending::AuxBuffer) => self.reply(byte),
            Some(Pending::AuxDevice) => self.stats.aux_bytes_dropped += 1,
            None => self.keyboard_command(byte),
        }
        BusOutcome::Continue
    }

    /// The keyboard's side of a byte written to port 0x60.
    fn keyboard_command(&mut self, byte: u8) {
        if let Some(cmd) = self.kbd_expect.take() {
            match cmd {
                KBD_CMD_SCAN_SET => match byte {
                    0 => {
                        self.kbd_send(KBD_ACK);
                        self.kbd_send(self.kbd_scan_set);
                    }
                    1..=3 => {
                        self.kbd_scan_set = byte;
                        self.kbd_send(KBD_ACK);
                    }
                    _ => self.kbd_send(KBD_RESEND),
                },
                // LEDs and typematic rate: nothing to show or repeat, acknowledged.
                _ => self.kbd_send(KBD_ACK),
            }
            return;
        }
        match byte {
            KBD_CMD_SET_LEDS | KBD_CMD_TYPEMATIC | KBD_CMD_SCAN_SET => {
                self.kbd_expect = Some(byte);
                self.kbd_send(KBD_ACK);
            }
            KBD_CMD_ECHO => self.kbd_send(KBD_CMD_ECHO),
            KBD_CMD_GET_ID => {
                self.kbd_send(KBD_ACK);
                self.kbd_send(KBD_ID);
                self.kbd_send(if self.ctr() & CTR_XLATE != 0 {
                    KBD_ID_MF2_TRANSLATED
                } else {
                    KBD_ID_MF2
                });
            }
            KBD_CMD_RESEND => {
                let last = self.kbd_last_sent;
                self.kbd_send(last);
            }
            KBD_CMD_RESET => {
                self.kbd_scan_set = KBD_DEFAULT_SCAN_SET;
                self.kbd_send(KBD_ACK);
                self.kbd_send(KBD_BAT_OK);
            }
            // Enable/disable scanning, set defaults, set-3 key modes (0xf4-0xfd): no keys are
            // ever scanned here, so acknowledging is the whole job.
            0xf4..=0xfd => self.kbd_send(KBD_ACK),
            _ => self.kbd_send(KBD_RESEND),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                Some(I8042_DATA_OFFSET) => self.read_data(),
                Some(I8042_COMMAND_OFFSET) => self.status(),
                _ => {
                    self.stats.invalid_accesses += 1;
                    0xff
                }
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        for (i, &byte) in data.iter().enumerate() {
            let outcome = match offset.checked_add(i as u64) {
                Some(I8042_DATA_OFFSET) => self.write_data(byte),
                Some(I8042_COMMAND_OFFSET) => self.write_command(byte),
                _ => {
                    self.stats.invalid_accesses += 1;
                    BusOutcome::Continue
                }
            };
            if outcome != BusOutcome::Continue {
                return outcome;
            }
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        "i8042"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: u64 = I8042_DATA_OFFSET;
    const CMD: u64 = I8042_COMMAND_OFFSET;

    struct Rig {
        dev: I8042,
        irq: EventFd,
    }

    impl Rig {
        fn new() -> Rig {
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let dev = I8042::new(irq.try_clone().unwrap());
            Rig { dev, irq }
        }
        fn rd(&mut self, offset: u64) -> u8 {
            let mut b = [0u8; 1];
            self.dev.read(offset, &mut b);
            b[0]
        }
        fn wr(&mut self, offset: u64, v: u8) -> BusOutcome {
            self.dev.write(offset, &[v])
        }
        fn cmd(&mut self, v: u8) {
            assert_eq!(self.wr(CMD, v), BusOutcome::Continue);
        }
        /// What Linux's `i8042_command` does for a reply: wait for OBF, then read data.
        fn reply(&mut self) -> Option<u8> {
            (self.rd(CMD) & STR_OBF != 0).then(|| self.rd(DATA))
        }
        fn irqs(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }
    }

    #[test]
    fn pulse_reset_command_stops_the_vm_without_an_interrupt() {
        let mut r = Rig::new();
        assert_eq!(r.wr(CMD, 0xfe), BusOutcome::Stop(StopRequest::Reset));
        assert_eq!(r.irqs(), 0);
        // Any pulse command with bit 0 clear pulses the reset line; 0xff pulses nothing.
        assert_eq!(r.wr(CMD, 0xf0), BusOutcome::Stop(StopRequest::Reset));
        assert_eq!(r.wr(CMD, 0xff), BusOutcome::Continue);
        // Reset through the output port (0xd1, bit 0 low) too; A20-only writes do not reset.
        r.cmd(CMD_WRITE_OUTPUT_PORT);
        assert_eq!(r.wr(DATA, 0xdf), BusOutcome::Continue);
        r.cmd(CMD_WRITE_OUTPUT_PORT);
        assert_eq!(r.wr(DATA, 0xde), BusOutcome::Stop(StopRequest::Reset));
        assert_eq!(r.irqs(), 0);
    }

    #[test]
    fn reset_through_a_bus() {
        let mut b = crate::BusBuilder::new("pio");
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        b.insert(
            crate::BusRange::new(I8042_BASE, I8042_PORT_LEN),
            std::sync::Arc::new(std::sync::Mutex::new(I8042::new(irq))),
        )
        .unwrap();
        let bus = b.build();
        assert_eq!(
            bus.write(0x64, &[0xfe]),
            BusOutcome::Stop(StopRequest::Reset)
        );
    }

    #[test]
    fn self_test_and_interface_tests_reply() {
        let mut r = Rig::new();
        assert_eq!(r.rd(CMD) & STR_OBF, 0);
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.rd(CMD) & (STR_OBF | STR_CMDDAT), STR_OBF | STR_CMDDAT);
        assert_eq!(r.rd(DATA), SELF_TEST_OK);
        assert_eq!(r.rd(CMD) & STR_OBF, 0);
        r.cmd(CMD_KBD_TEST);
        assert_eq!(r.reply(), Some(INTERFACE_OK));
        r.cmd(CMD_AUX_TEST);
        assert_eq!(r.reply(), Some(AUX_CLOCK_STUCK_HIGH));
        // Controller replies never raise the keyboard interrupt.
        assert_eq!(r.irqs(), 0);
    }

    #[test]
    fn command_byte_round_trip() {
        let mut r = Rig::new();
        r.cmd(0x20);
        assert_eq!(r.reply(), Some(CTR_DEFAULT));
        r.cmd(0x60);
        assert_eq!(r.wr(DATA, 0x47), BusOutcome::Continue);
        r.cmd(0x20);
        assert_eq!(r.reply(), Some(0x47));
        // Other internal RAM bytes round-trip too.
        r.cmd(0x7f);
        r.wr(DATA, 0x5a);
        r.cmd(0x3f);
        assert_eq!(r.reply(), Some(0x5a));
    }

    #[test]
    fn status_register_looks_like_an_unlocked_post_ok_controller() {
        let mut r = Rig::new();
        assert_eq!(r.rd(CMD), STR_KEYLOCK | STR_SYS);
        r.cmd(CMD_KBD_DISABLE);
        assert_eq!(r.rd(CMD), STR_KEYLOCK | STR_SYS | STR_CMDDAT);
        r.cmd(0x20);
        assert_eq!(r.reply(), Some(CTR_DEFAULT | CTR_KBDDIS));
        r.cmd(CMD_KBD_ENABLE);
        r.cmd(0x20);
        assert_eq!(r.reply(), Some(CTR_DEFAULT));
        r.cmd(CMD_AUX_ENABLE);
        r.cmd(0x20);
        assert_eq!(r.reply(), Some(CTR_DEFAULT & !CTR_AUXDIS));
        r.cmd(CMD_READ_OUTPUT_PORT);
        assert_eq!(r.reply(), Some(OUTP_DEFAULT));
    }

    /// The sequence Linux's i8042 driver runs at probe (drivers/input/serio/i8042.c:
    /// `i8042_controller_check`, `_selftest`, `_init`, `i8042_check_aux`,
    /// `i8042_enable_kbd_port`): every reply is there when OBF is polled, none times out.
    #[test]
    fn linux_probe_sequence_finds_a_keyboard_and_no_aux_port() {
        let mut r = Rig::new();
        // i8042_flush: nothing stale.
        assert_eq!(r.reply(), None);
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.reply(), Some(SELF_TEST_OK));
        // Two identical CTR reads, then write it back with the keyboard disabled.
        r.cmd(0x20);
        let ctr = r.reply().unwrap();
        r.cmd(0x20);
        assert_eq!(r.reply(), Some(ctr));
        assert_ne!(r.rd(CMD) & STR_KEYLOCK, 0, "keylock would be reported");
        let ctr = (ctr | CTR_KBDDIS) & !CTR_KBDINT;
        r.cmd(0x60);
        r.wr(DATA, ctr);
        // AUX loopback: the byte comes back, but not flagged as AUX data.
        r.cmd(CMD_WRITE_AUX_BUFFER);
        r.wr(DATA, 0x5a);
        assert_eq!(r.rd(CMD) & (STR_OBF | 0x20), STR_OBF);
        // AUX test: nothing connected, so the driver gives up on AUX.
        r.cmd(CMD_AUX_TEST);
        assert_eq!(r.reply(), Some(AUX_CLOCK_STUCK_HIGH));
        // Enable the keyboard port with its interrupt.
        let ctr = (ctr & !CTR_KBDDIS) | CTR_KBDINT;
        r.cmd(0x60);
        r.wr(DATA, ctr);
        assert_eq!(r.irqs(), 0);
        // atkbd: GETID answered by ACK + translated MF2 ID, one interrupt per byte.
        r.wr(DATA, KBD_CMD_GET_ID);
        let mut got = Vec::new();
        while let Some(b) = r.reply() {
            got.push(b);
        }
        assert_eq!(got, [KBD_ACK, KBD_ID, KBD_ID_MF2_TRANSLATED]);
        assert_eq!(r.irqs(), 3);
        assert_eq!(r.dev.stats().kbd_irqs, 3);
        // Set LEDs: ACK for the command and for its parameter.
        r.wr(DATA, KBD_CMD_SET_LEDS);
        assert_eq!(r.reply(), Some(KBD_ACK));
        r.wr(DATA, 0x00);
        assert_eq!(r.reply(), Some(KBD_ACK));
        assert_eq!(r.dev.stats().unknown_commands, 0);
    }

    #[test]
    fn keyboard_reset_and_scan_set_query() {
        let mut r = Rig::new();
        r.wr(DATA, KBD_CMD_RESET);
        assert_eq!(r.reply(), Some(KBD_ACK));
        assert_eq!(r.reply(), Some(KBD_BAT_OK));
        r.wr(DATA, KBD_CMD_SCAN_SET);
        assert_eq!(r.reply(), Some(KBD_ACK));
        r.wr(DATA, 0);
        assert_eq!(r.reply(), Some(KBD_ACK));
        assert_eq!(r.reply(), Some(KBD_DEFAULT_SCAN_SET));
        r.wr(DATA, KBD_CMD_RESEND);
        assert_eq!(r.reply(), Some(KBD_DEFAULT_SCAN_SET));
        r.wr(DATA, 0x01);
        assert_eq!(r.reply(), Some(KBD_RESEND));
    }

    #[test]
    fn keyboard_interrupt_follows_ctr_and_disable() {
        let mut r = Rig::new();
        // Interrupt off: data still arrives, no IRQ.
        r.cmd(0x60);
        r.wr(DATA, CTR_DEFAULT & !CTR_KBDINT);
        r.wr(DATA, KBD_CMD_ECHO);
        assert_eq!(r.reply(), Some(KBD_CMD_ECHO));
        assert_eq!(r.irqs(), 0);
        // Keyboard disabled: the byte waits until the interface is enabled again.
        r.cmd(0x60);
        r.wr(DATA, CTR_DEFAULT | CTR_KBDDIS);
        r.cmd(CMD_WRITE_KBD_BUFFER);
        r.wr(DATA, 0x1c);
        assert_eq!(r.reply(), None);
        r.cmd(CMD_KBD_ENABLE);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.reply(), Some(0x1c));
    }

    #[test]
    fn controller_reply_does_not_lose_a_pending_keyboard_byte() {
        let mut r = Rig::new();
        r.wr(DATA, KBD_CMD_ECHO);
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.reply(), Some(SELF_TEST_OK));
        assert_eq!(r.reply(), Some(KBD_CMD_ECHO));
        assert_eq!(r.reply(), None);
    }

    #[test]
    fn unread_keyboard_bytes_are_bounded_and_counted() {
        let mut r = Rig::new();
        for _ in 0..100 {
            r.wr(DATA, KBD_CMD_ECHO);
        }
        // One in the output buffer, KBD_QUEUE_LEN queued, the rest dropped.
        let dropped = 100 - 1 - KBD_QUEUE_LEN as u64;
        assert_eq!(r.dev.stats().kbd_bytes_dropped, dropped);
        let mut n = 0;
        while r.reply().is_some() {
            n += 1;
        }
        assert_eq!(n, 1 + KBD_QUEUE_LEN);
    }

    /// Reads the keyboard bytes the way Linux's i8042 interrupt handler does (status, then
    /// data), checking that each came with one interrupt, as keyboard (not AUX) data.
    fn read_keys(r: &mut Rig) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let status = r.rd(CMD);
            if status & STR_OBF == 0 {
                break;
            }
            // No AUX-data bit (0x20), and the byte's interrupt was raised.
            assert_eq!(status & 0x20, 0);
            assert_eq!(r.irqs(), 1, "one interrupt per byte");
            got.push(r.rd(DATA));
        }
        assert_eq!(r.irqs(), 0);
        got
    }

    #[test]
    fn ctrl_alt_del_reaches_a_translating_controller_as_set_1() {
        let mut r = Rig::new();
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(
            read_keys(&mut r),
            [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
        );
        assert_eq!(r.dev.stats().kbd_irqs, 8);
        assert_eq!(r.dev.stats().host_keys_sent, 8);
        // Again, after the guest read everything.
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(read_keys(&mut r).len(), 8);
    }

    #[test]
    fn ctrl_alt_del_in_set_2_without_translation() {
        let mut r = Rig::new();
        r.cmd(0x60);
        r.wr(DATA, CTR_DEFAULT & !CTR_XLATE);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(
            read_keys(&mut r),
            [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
        // A keyboard the guest switched to set 1 sends set 1 itself.
        r.wr(DATA, KBD_CMD_SCAN_SET);
        r.wr(DATA, 1);
        assert_eq!(read_keys(&mut r), [KBD_ACK, KBD_ACK]);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(
            read_keys(&mut r),
            [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
        );
        // Set 3 is refused, and nothing is queued.
        r.wr(DATA, KBD_CMD_SCAN_SET);
        r.wr(DATA, 3);
        assert_eq!(read_keys(&mut r), [KBD_ACK, KBD_ACK]);
        assert!(matches!(
            r.dev.send_ctrl_alt_del(),
            Err(Error::I8042ScanSet {
                set: 3,
                translated: false,
                ..
            })
        ));
        assert_eq!(read_keys(&mut r), [0u8; 0]);
    }

    #[test]
    fn ctrl_alt_del_waits_while_the_keyboard_is_disabled() {
        let mut r = Rig::new();
        r.cmd(CMD_KBD_DISABLE);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(read_keys(&mut r), [0u8; 0]);
        r.cmd(CMD_KBD_ENABLE);
        assert_eq!(read_keys(&mut r).len(), 8);
    }

    #[test]
    fn ctrl_alt_del_into_a_full_buffer_is_refused_whole() {
        let mut r = Rig::new();
        // The guest does not read: one byte in the output buffer, 10 of 16 queued.
        for _ in 0..11 {
            r.wr(DATA, KBD_CMD_ECHO);
        }
        let err = r.dev.send_ctrl_alt_del().unwrap_err();
        assert!(matches!(
            err,
            Error::I8042BufferFull {
                needed: 8,
                free: 6,
                ..
            }
        ));
        assert!(
            err.to_string().contains("not reading the keyboard"),
            "{err}"
        );
        // Nothing of it was queued: the guest reads only its echoes.
        let mut got = Vec::new();
        while let Some(b) = r.reply() {
            got.push(b);
        }
        assert_eq!(got, [KBD_CMD_ECHO; 11]);
        assert_eq!(r.irqs(), 11);
        assert_eq!(r.dev.stats().host_keys_sent, 0);
        // With room again it goes through.
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(read_keys(&mut r).len(), 8);
    }

    #[test]
    fn other_ports_in_the_range_float_and_are_counted() {
        let mut r = Rig::new();
        let mut three = [0u8; 3];
        r.dev.read(1, &mut three);
        assert_eq!(three, [0xff; 3]);
        assert_eq!(r.dev.write(2, &[0xfe]), BusOutcome::Continue);
        assert_eq!(r.dev.stats().invalid_accesses, 4);
        r.cmd(0x01);
        assert_eq!(r.dev.stats().unknown_commands, 1);
    }

    #[test]
    fn a_restored_controller_carries_on_where_the_saved_one_was() {
        let mut a = Rig::new();
        // The keyboard answers GET_ID with three bytes; the guest has read the first.
        assert_eq!(a.wr(DATA, KBD_CMD_GET_ID), BusOutcome::Continue);
        assert_eq!(a.irqs(), 1);
        assert_eq!(a.rd(DATA), KBD_ACK);
        // A controller command waiting for its data byte: write CTR.
        a.cmd(CMD_WRITE_RAM_FIRST);
        let state = a.dev.save_state();
        assert_eq!(state.pending_command, Some(CMD_WRITE_RAM_FIRST));
        assert_eq!(state.output_buffer, Some(KBD_ID));
        assert_eq!(state.keyboard_queue, [KBD_ID_MF2_TRANSLATED]);

        let mut b = Rig::new();
        b.dev.restore_state(&state).unwrap();
        assert_eq!(b.dev.save_state(), state);
        // A keyboard byte waits with the interrupt enabled: raised once more.
        assert_eq!(b.irqs(), 1);
        assert_eq!(b.rd(CMD), a.rd(CMD));
        // The pending command takes the next data byte: a CTR without interrupts.
        assert_eq!(b.wr(DATA, CTR_DEFAULT & !CTR_KBDINT), BusOutcome::Continue);
        b.cmd(CMD_READ_RAM_FIRST);
        // The controller reply pushed the keyboard byte back into the queue.
        assert_eq!(b.reply(), Some(CTR_DEFAULT & !CTR_KBDINT));
        assert_eq!(b.reply(), Some(KBD_ID));
        assert_eq!(b.reply(), Some(KBD_ID_MF2_TRANSLATED));
        assert_eq!(b.reply(), None);
        assert_eq!(b.irqs(), 0);
    }

    #[test]
    fn bad_i8042_states_are_refused_and_change_nothing() {
        let mut r = Rig::new();
        let good = r.dev.save_state();
        let bad = [
            I8042State {
                ram: vec![0; 31],
                ..good.clone()
            },
            I8042State {
                keyboard_queue: vec![0; 17],
                ..good.clone()
            },
            I8042State {
                pending_command: Some(CMD_SELF_TEST),
                ..good.clone()
            },
            I8042State {
                keyboard_pending_command: Some(KBD_CMD_ECHO),
                ..good.clone()
            },
            I8042State {
                keyboard_scan_set: 4,
                ..good.clone()
            },
        ];
        for state in bad {
            let err = r.dev.restore_state(&state).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidState {
                        device: "i8042",
                        ..
                    }
                ),
                "{err}"
            );
            assert_eq!(r.dev.save_state(), good);
        }
    }

    #[test]
    fn i8042_state_round_trips_through_json() {
        let mut r = Rig::new();
        r.cmd(CMD_WRITE_OUTPUT_PORT);
        assert_eq!(r.wr(DATA, 0xdf), BusOutcome::Continue);
        r.wr(DATA, KBD_CMD_SCAN_SET);
        let state = r.dev.save_state();
        assert_eq!(state.keyboard_pending_command, Some(KBD_CMD_SCAN_SET));
        let json = serde_json::to_string(&state).unwrap();
        let back: I8042State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}

//! The counter guest: a tiny 64-bit ELF kernel that counts, once a second, forever.
//!
//! [`counter_guest_elf`] returns an ELF64 executable (x86-64, `ET_EXEC`) in the same layout
//! as the other guests (one `PT_LOAD` at [`LOAD_ADDR`], code at file offset 0x100 =
//! `e_entry` [`ENTRY_ADDR`]), with only the Linux x86 64-bit boot protocol entry. The same
//! code, as GNU `as` source, is in `crates/demo-guest/guest/counter_guest.S`; a unit test
//! reassembles that listing when binutils are installed and checks that it gives the same
//! bytes.
//!
//! It is the guest of the snapshot tests: its state is in a register, in guest memory and in a
//! device, and its output says exactly where it is.
//!
//! 1. it sets the counter, a `u32` at [`COUNTER_ADDR`] (in the segment's tail, so in guest
//!    memory and not in the file), to 0;
//! 2. it reads the CMOS RTC's seconds (index 0 through ports 0x70/0x71) until they change;
//! 3. it prints [`TICK_PREFIX`], the counter in decimal and CR LF on COM1 (0x3f8, polling the
//!    line status register 0x3fd for THR empty before each byte), adds one to the counter and
//!    goes back to 2.
//!
//! So it prints `Petrel counter guest: tick 0`, `... tick 1`, one line a second; a snapshot
//! restored in another process goes on from the next number. Interrupts stay off; the vCPU
//! spins on port reads (one exit each) between ticks.

use crate::elf::{self, CODE_OFFSET};
use crate::LOAD_ADDR;

/// The entry point (`e_entry`): the first byte of the code, at file offset 0x100.
pub const ENTRY_ADDR: u64 = LOAD_ADDR + CODE_OFFSET as u64;

/// How Petrel's tests name this guest.
pub const NAME: &str = "the counter guest";

/// What each line starts with; the count in decimal and CR LF follow.
pub const TICK_PREFIX: &str = "Petrel counter guest: tick ";

/// Guest-physical address of the counter (a little-endian `u32`).
pub const COUNTER_ADDR: u64 = LOAD_ADDR + 0x1000;

/// Size of the loaded segment in memory: the file, the counter's page (0x101000) and the stack
/// (0x102000..0x103000).
const SEGMENT_MEMSZ: u64 = 0x3000;

/// The code. Offsets in the comments are from the start of this array (file offset 0x100,
/// address 0x100100); `(-> 0x..)` is the target of a relative jump, call or RIP-relative
/// `lea`. Local labels of the `.S` listing (`1:`, `2:`) appear as offsets.
#[rustfmt::skip]
const CODE: [u8; CODE_LEN] = [
    // start:
    0xfa, // 0x00: cli  ; interrupts stay off
    0xbc, 0x00, 0x30, 0x10, 0x00, // 0x01: mov esp, STACK_TOP  ; own stack: rsp = 0x103000
    0xc7, 0x04, 0x25, 0x00, 0x10, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x06: mov dword [0x101000], 0  ; count from 0
    // next:
    0xe8, 0x38, 0x00, 0x00, 0x00, // 0x11: call seconds (-> 0x4e)  ; al = RTC seconds now
    0x88, 0xc3, // 0x16: mov bl, al  ; remember them
    // wait:
    0xe8, 0x31, 0x00, 0x00, 0x00, // 0x18: call seconds (-> 0x4e)  ; read them again
    0x38, 0xd8, // 0x1d: cmp al, bl  ; changed?
    0x74, 0xf7, // 0x1f: je wait (-> 0x18)  ; not yet: poll again
    0x48, 0x8d, 0x35, 0x70, 0x00, 0x00, 0x00, // 0x21: lea rsi, [rip+msg_tick] (-> 0x98)  ; "Petrel counter guest: tick "
    0xe8, 0x5a, 0x00, 0x00, 0x00, // 0x28: call puts (-> 0x87)
    0x8b, 0x04, 0x25, 0x00, 0x10, 0x10, 0x00, // 0x2d: mov eax, dword [0x101000]  ; the count
    0xe8, 0x1c, 0x00, 0x00, 0x00, // 0x34: call putdec (-> 0x55)  ; in decimal
    0x48, 0x8d, 0x35, 0x74, 0x00, 0x00, 0x00, // 0x39: lea rsi, [rip+msg_eol] (-> 0xb4)  ; CR LF
    0xe8, 0x42, 0x00, 0x00, 0x00, // 0x40: call puts (-> 0x87)
    0xff, 0x04, 0x25, 0x00, 0x10, 0x10, 0x00, // 0x45: inc dword [0x101000]  ; one more
    0xeb, 0xc3, // 0x4c: jmp next (-> 0x11)  ; wait for the next second
    // seconds:
    0x31, 0xc0, // 0x4e: xor eax, eax  ; CMOS index 0: seconds (NMI stays enabled)
    0xe6, 0x70, // 0x50: out 0x70, al  ; select it
    0xe4, 0x71, // 0x52: in al, 0x71  ; read it
    0xc3, // 0x54: ret
    // putdec:
    0x31, 0xc9, // 0x55: xor ecx, ecx  ; digits pushed so far
    0xbf, 0x0a, 0x00, 0x00, 0x00, // 0x57: mov edi, 10  ; the base
    0x31, 0xd2, // 0x5c: xor edx, edx  ; edx:eax = the value
    0xf7, 0xf7, // 0x5e: div edi  ; eax = value / 10, edx = value % 10
    0x52, // 0x60: push rdx  ; keep the digit (least significant first)
    0xff, 0xc1, // 0x61: inc ecx  ; one more digit
    0x85, 0xc0, // 0x63: test eax, eax  ; anything left?
    0x75, 0xf5, // 0x65: jnz 0x5c  ; yes: next digit
    0x58, // 0x67: pop rax  ; most significant digit left
    0x04, 0x30, // 0x68: add al, 0x30  ; to ASCII '0'..'9'
    0xe8, 0x05, 0x00, 0x00, 0x00, // 0x6a: call putc (-> 0x74)  ; print it (keeps ecx)
    0xff, 0xc9, // 0x6f: dec ecx  ; one fewer to go
    0x75, 0xf4, // 0x71: jnz 0x67  ; until all are printed
    0xc3, // 0x73: ret
    // putc:
    0x50, // 0x74: push rax  ; keep the byte
    0xba, 0xfd, 0x03, 0x00, 0x00, // 0x75: mov edx, 0x3fd  ; COM1 line status register
    0xec, // 0x7a: in al, dx  ; read LSR
    0xa8, 0x20, // 0x7b: test al, 0x20  ; THR empty?
    0x74, 0xfb, // 0x7d: jz 0x7a  ; not yet: poll again
    0x58, // 0x7f: pop rax  ; the byte
    0xba, 0xf8, 0x03, 0x00, 0x00, // 0x80: mov edx, 0x3f8  ; COM1 transmit holding register
    0xee, // 0x85: out dx, al  ; send it
    0xc3, // 0x86: ret
    // puts:
    0x8a, 0x06, // 0x87: mov al, [rsi]  ; next byte
    0x84, 0xc0, // 0x89: test al, al  ; end of string?
    0x74, 0x0a, // 0x8b: jz 0x97
    0xe8, 0xe2, 0xff, 0xff, 0xff, // 0x8d: call putc (-> 0x74)
    0x48, 0xff, 0xc6, // 0x92: inc rsi  ; the byte after
    0xeb, 0xf0, // 0x95: jmp puts (-> 0x87)
    0xc3, // 0x97: ret
];

/// Length of [`CODE`]; the strings follow it directly.
const CODE_LEN: usize = 0x98;

/// The strings, NUL-terminated, right after [`CODE`] (offsets as in its comments).
const STRINGS: [&[u8]; 2] = [
    b"Petrel counter guest: tick \0", // 0x98: msg_tick
    b"\r\n\0",                        // 0xb4: msg_eol
];

/// Everything after the headers: code and strings (the bytes of `guest/counter_guest.S`).
fn body() -> Vec<u8> {
    let mut body = CODE.to_vec();
    for s in STRINGS {
        body.extend_from_slice(s);
    }
    body
}

/// Builds the counter guest: a complete ELF64 x86-64 executable, described in the module
/// documentation. The result is the same on every call (under 0x200 bytes).
pub fn counter_guest_elf() -> Vec<u8> {
    elf::kernel_elf(&body(), SEGMENT_MEMSZ, None)
}

/// The counts in `output` (the guest's console output), in order, from every complete line
/// (a last line without its line feed is left out: it may be cut short).
pub fn ticks(output: &str) -> Vec<u64> {
    let complete = output.rfind('\n').map_or("", |end| &output[..end]);
    complete
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(TICK_PREFIX))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn one_load_segment_covering_the_counter_and_the_stack() {
        let elf = counter_guest_elf();
        assert_eq!(&elf[0..4], b"\x7fELF");
        assert_eq!(u64_at(&elf, 0x18), ENTRY_ADDR, "e_entry");
        let ph = usize::try_from(u64_at(&elf, 0x20)).unwrap();
        assert_eq!(u64_at(&elf, ph + 40), SEGMENT_MEMSZ, "p_memsz");
        assert!(
            LOAD_ADDR + (elf.len() as u64) <= COUNTER_ADDR,
            "the counter is past the file"
        );
        // mov esp, <end of the segment>
        let top = u32::try_from(LOAD_ADDR + SEGMENT_MEMSZ).unwrap();
        assert_eq!(&CODE[2..6], &top.to_le_bytes());
        // Every access to the counter uses COUNTER_ADDR.
        let addr = u32::try_from(COUNTER_ADDR).unwrap().to_le_bytes();
        let uses = CODE.windows(4).filter(|w| *w == addr).count();
        assert_eq!(uses, 3, "set, read, increment");
    }

    #[test]
    fn the_leas_point_at_the_strings() {
        let mut starts = Vec::new();
        let mut at = CODE_LEN;
        for s in STRINGS {
            starts.push(at);
            at += s.len();
        }
        assert_eq!(STRINGS[0], format!("{TICK_PREFIX}\0").as_bytes());
        let mut leas = 0;
        for i in 0..CODE_LEN - 6 {
            if CODE[i..i + 3] == [0x48, 0x8d, 0x35] {
                let disp = i32::from_le_bytes(CODE[i + 3..i + 7].try_into().unwrap());
                let target = (i + 7).checked_add_signed(disp as isize).unwrap();
                assert!(starts.contains(&target), "lea at {i:#x} -> {target:#x}");
                leas += 1;
            }
        }
        assert_eq!(leas, 2, "one lea per string");
    }

    #[test]
    fn ticks_are_read_from_complete_lines_only() {
        let out = "Petrel counter guest: tick 0\r\nPetrel counter guest: tick 1\r\nPetrel coun";
        assert_eq!(ticks(out), [0, 1]);
        let cut = "Petrel counter guest: tick 0\r\nPetrel counter guest: tick 1";
        assert_eq!(ticks(cut), [0], "tick 1 might be tick 12 cut short");
        assert_eq!(ticks("noise\nPetrel counter guest: tick 12\r\n"), [12]);
    }

    #[test]
    fn reference_listing_assembles_to_the_same_bytes() {
        if let Some(assembled) = elf::assemble_listing("counter_guest.S") {
            elf::assert_same_bytes(&body(), &assembled);
        }
    }
}

//! The keyboard guest: a tiny 64-bit ELF kernel that waits for Ctrl-Alt-Del.
//!
//! [`keyboard_guest_elf`] returns an ELF64 executable (x86-64, `ET_EXEC`) in the same layout
//! as the demo guest (one `PT_LOAD` at [`LOAD_ADDR`](crate::LOAD_ADDR), code at file offset
//! 0x100 = `e_entry` [`ENTRY_ADDR`]), without a PVH note: it has only the Linux x86 64-bit boot
//! protocol entry (long mode, identity map, interrupts off; `rsi` is not used). The same code,
//! as GNU `as` source, is in `crates/demo-guest/guest/keyboard_guest.S`; a unit test
//! reassembles that listing when binutils are installed and checks that it gives the same
//! bytes.
//!
//! Unlike the demo guest, which resets within milliseconds, this one runs until someone
//! presses Ctrl-Alt-Del, so tests can pause, resume and inspect a running VM:
//!
//! 1. it prints [`WAITING_LINE`] (then CR LF) on COM1 (0x3f8), polling the line status
//!    register (0x3fd) for THR empty before each byte, as the demo guest does;
//! 2. it polls the i8042: reads the status register (port 0x64) until bit 0 (output buffer
//!    full) is set, then reads the byte from the data port (0x60), and repeats until that byte
//!    is 0x53, the scan code set 1 make code of Delete. Petrel's i8042 delivers Ctrl-Alt-Del
//!    (Firecracker's `SendCtrlAltDel`) as `1D 38 E0 53 E0 D3 B8 9D` with translation on, its
//!    default;
//! 3. it prints [`RESETTING_LINE`] (then CR LF) and writes 0xFE to port 0x64 (pulse the reset
//!    line), which ends the run in Petrel with exit status 0. Should that write return (no
//!    i8042), it stops with `cli; hlt` in a loop.
//!
//! Interrupts stay off throughout, so the guest needs no IDT and the keyboard's IRQ 1 is never
//! taken. While it waits the vCPU spins on port reads (one exit to the VMM per read), so a
//! VM running it keeps one host CPU busy until it is paused or ends.

use crate::elf::{self, CODE_OFFSET, LOAD_ADDR};

/// The entry point (`e_entry`): the first byte of the code, at file offset 0x100.
pub const ENTRY_ADDR: u64 = LOAD_ADDR + CODE_OFFSET as u64;

/// How Petrel's tests name this guest.
pub const NAME: &str = "the keyboard guest";

/// The line the guest prints on COM1 (followed by CR LF) before it polls the i8042.
pub const WAITING_LINE: &str = "Petrel keyboard guest: waiting for Ctrl-Alt-Del";

/// The line the guest prints on COM1 (followed by CR LF) when it has read the Delete make
/// code, just before it writes 0xFE to the i8042 command port (0x64).
pub const RESETTING_LINE: &str = "Petrel keyboard guest: got Ctrl-Alt-Del, resetting";

/// The scan code the guest waits for: Delete's make code in set 1 (after the extended prefix
/// 0xE0, which the guest ignores like every other byte).
pub const DELETE_MAKE_CODE: u8 = 0x53;

/// Size of the loaded segment in memory: the file, then the stack (0x101000..0x102000).
const SEGMENT_MEMSZ: u64 = 0x2000;

/// The code. Offsets in the comments are from the start of this array (file offset 0x100,
/// address 0x100100); `(-> 0x...)` is the target of a relative jump, call or RIP-relative
/// `lea`. Local labels of the `.S` listing (`1:`, `2:`) appear as offsets.
#[rustfmt::skip]
const CODE: [u8; CODE_LEN] = [
    // start:
    0xfa, // 0x00: cli  ; interrupts stay off
    0xbc, 0x00, 0x20, 0x10, 0x00, // 0x01: mov esp, STACK_TOP  ; own stack: rsp = 0x102000
    0x48, 0x8d, 0x35, 0x49, 0x00, 0x00, 0x00, // 0x06: lea rsi, [rip+msg_wait] (-> 0x56)  ; "... waiting for Ctrl-Alt-Del"
    0xe8, 0x33, 0x00, 0x00, 0x00, // 0x0d: call puts (-> 0x45)
    // poll:
    0xe4, 0x64, // 0x12: in al, 0x64  ; i8042 status register
    0xa8, 0x01, // 0x14: test al, 1  ; OBF: a byte in the output buffer?
    0x74, 0xfa, // 0x16: jz poll (-> 0x12)  ; not yet: poll again
    0xe4, 0x60, // 0x18: in al, 0x60  ; take the byte from the data port
    0x3c, 0x53, // 0x1a: cmp al, 0x53  ; Delete make code (set 1)?
    0x75, 0xf4, // 0x1c: jne poll (-> 0x12)  ; another key byte: keep polling
    0x48, 0x8d, 0x35, 0x63, 0x00, 0x00, 0x00, // 0x1e: lea rsi, [rip+msg_reset] (-> 0x88)  ; "... got Ctrl-Alt-Del, resetting"
    0xe8, 0x1b, 0x00, 0x00, 0x00, // 0x25: call puts (-> 0x45)
    0xb0, 0xfe, // 0x2a: mov al, 0xfe  ; i8042 command: pulse reset line
    0xe6, 0x64, // 0x2c: out 0x64, al  ; write it to the i8042 command port
    // halt:
    0xfa, // 0x2e: cli  ; still here (no i8042): stop for good
    0xf4, // 0x2f: hlt
    0xeb, 0xfc, // 0x30: jmp halt (-> 0x2e)  ; in case an NMI wakes us
    // putc:
    0x50, // 0x32: push rax  ; keep the byte
    0xba, 0xfd, 0x03, 0x00, 0x00, // 0x33: mov edx, 0x3fd  ; COM1 line status register
    0xec, // 0x38: in al, dx  ; read LSR
    0xa8, 0x20, // 0x39: test al, 0x20  ; THR empty?
    0x74, 0xfb, // 0x3b: jz 0x38  ; not yet: poll again
    0x58, // 0x3d: pop rax  ; the byte
    0xba, 0xf8, 0x03, 0x00, 0x00, // 0x3e: mov edx, 0x3f8  ; COM1 transmit holding register
    0xee, // 0x43: out dx, al  ; send it
    0xc3, // 0x44: ret
    // puts:
    0x8a, 0x06, // 0x45: mov al, [rsi]  ; next byte
    0x84, 0xc0, // 0x47: test al, al  ; end of string?
    0x74, 0x0a, // 0x49: jz 0x55
    0xe8, 0xe2, 0xff, 0xff, 0xff, // 0x4b: call putc (-> 0x32)
    0x48, 0xff, 0xc6, // 0x50: inc rsi
    0xeb, 0xf0, // 0x53: jmp 0x45
    0xc3, // 0x55: ret
];

/// Length of [`CODE`]; the strings follow it directly.
const CODE_LEN: usize = 0x56;

/// The strings, NUL-terminated, right after [`CODE`] (offsets as in its comments).
const STRINGS: [&[u8]; 2] = [
    b"Petrel keyboard guest: waiting for Ctrl-Alt-Del\r\n\0", // 0x56: msg_wait
    b"Petrel keyboard guest: got Ctrl-Alt-Del, resetting\r\n\0", // 0x88: msg_reset
];

/// Everything after the headers: code and strings (the bytes of `guest/keyboard_guest.S`).
fn body() -> Vec<u8> {
    let mut body = CODE.to_vec();
    for s in STRINGS {
        body.extend_from_slice(s);
    }
    body
}

/// Builds the keyboard guest: a complete ELF64 x86-64 executable, described in the module
/// documentation. The result is the same on every call (under 0x200 bytes).
pub fn keyboard_guest_elf() -> Vec<u8> {
    elf::kernel_elf(&body(), SEGMENT_MEMSZ, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn one_load_segment_covering_the_file_and_the_stack() {
        let elf = keyboard_guest_elf();
        assert_eq!(&elf[0..4], b"\x7fELF");
        assert_eq!(u16_at(&elf, 0x10), 2, "ET_EXEC");
        assert_eq!(u16_at(&elf, 0x12), 0x3e, "EM_X86_64");
        assert_eq!(u64_at(&elf, 0x18), ENTRY_ADDR, "e_entry");
        assert_eq!(u16_at(&elf, 0x38), 1, "one program header, no PVH note");
        let ph = usize::try_from(u64_at(&elf, 0x20)).unwrap();
        assert_eq!(u32_at(&elf, ph), 1, "PT_LOAD");
        assert_eq!(u64_at(&elf, ph + 8), 0, "p_offset");
        assert_eq!(u64_at(&elf, ph + 16), LOAD_ADDR, "p_vaddr");
        assert_eq!(u64_at(&elf, ph + 24), LOAD_ADDR, "p_paddr");
        assert_eq!(u64_at(&elf, ph + 32), elf.len() as u64, "p_filesz");
        assert_eq!(u64_at(&elf, ph + 40), SEGMENT_MEMSZ, "p_memsz");
        // cli; mov esp, <end of the segment>: the stack is the last 4 KiB, past the file.
        let stack_top = u32::try_from(LOAD_ADDR + SEGMENT_MEMSZ).unwrap();
        let mut start = vec![0xfa, 0xbc];
        start.extend_from_slice(&stack_top.to_le_bytes());
        assert_eq!(&elf[CODE_OFFSET..CODE_OFFSET + 6], &start[..]);
        assert!(LOAD_ADDR + elf.len() as u64 <= u64::from(stack_top) - 0x1000);
    }

    #[test]
    fn both_lines_are_present_and_the_leas_point_at_them() {
        let elf = keyboard_guest_elf();
        let mut starts = Vec::new();
        let mut at = CODE_LEN;
        for (s, line) in STRINGS.iter().zip([WAITING_LINE, RESETTING_LINE]) {
            let mut want = line.as_bytes().to_vec();
            want.extend_from_slice(b"\r\n\0");
            assert_eq!(*s, &want[..]);
            assert!(find(&elf, &want).is_some(), "{line:?} missing");
            starts.push(at);
            at += s.len();
        }
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
    fn polls_the_i8042_for_delete_then_resets() {
        let poll = [
            0xe4,
            0x64, // in al, 0x64
            0xa8,
            0x01, // test al, 1
            0x74,
            0xfa, // jz back to the in
            0xe4,
            0x60, // in al, 0x60
            0x3c,
            DELETE_MAKE_CODE, // cmp al, 0x53
            0x75,
            0xf4, // jne back to the status read
        ];
        let at = find(&CODE, &poll).expect("the polling loop");
        let reset = [0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfc];
        let reset_at = find(&CODE, &reset).expect("the reset and halt loop");
        assert!(reset_at > at, "the reset follows the loop");
    }

    #[test]
    fn reference_listing_assembles_to_the_same_bytes() {
        if let Some(assembled) = elf::assemble_listing("keyboard_guest.S") {
            elf::assert_same_bytes(&body(), &assembled);
        }
    }
}

/*
 * Reference listing for Petrel's keyboard guest (crates/demo-guest/src/keyboard.rs).
 *
 * This file is documentation and a cross-check: the Rust code carries the same
 * machine code as a hand-written byte array, and a unit test reassembles this
 * listing with GNU as/objcopy (when present) and compares the bytes.
 *
 *   as --64 -o keyboard_guest.o keyboard_guest.S && objcopy -O binary -j .text keyboard_guest.o keyboard_guest.bin
 *   objdump -D -b binary -m i386:x86-64 -M intel keyboard_guest.bin
 *
 * The bytes below start at file offset 0x100 of the ELF (after the ELF header
 * and one program header, which the Rust code writes), and the file is loaded
 * at physical = virtual address 0x100000, so `start` is at 0x100100 (e_entry).
 * Memory map of the loaded segment:
 *   0x100000  ELF headers
 *   0x100100  64-bit code, strings                        (file ends < 0x101000)
 *   0x101000  stack, 4 KiB, top at 0x102000 = end of p_memsz (not in the file)
 *
 * Entry: the Linux x86 64-bit boot protocol (long mode, identity map, interrupts
 * off).  The guest prints a line on COM1, polls the i8042 until it reads the
 * Delete make code (0x53, scan code set 1, as the i8042 delivers Ctrl-Alt-Del
 * with translation on: 1D 38 E0 53 E0 D3 B8 9D), prints a second line and
 * resets the machine by writing 0xFE to port 0x64.  Interrupts stay off.
 */
        .intel_syntax noprefix

        .set STACK_TOP,  0x102000       /* top of the 4 KiB stack in the .bss-like tail */

        .text
start:
        cli                             /* interrupts stay off */
        mov     esp, STACK_TOP          /* own stack: rsp = 0x102000 */
        lea     rsi, [rip+msg_wait]     /* "... waiting for Ctrl-Alt-Del" */
        call    puts
poll:   in      al, 0x64                /* i8042 status register */
        test    al, 1                   /* OBF: a byte in the output buffer? */
        jz      poll                    /* not yet: poll again */
        in      al, 0x60                /* take the byte from the data port */
        cmp     al, 0x53                /* Delete make code (set 1)? */
        jne     poll                    /* another key byte: keep polling */
        lea     rsi, [rip+msg_reset]    /* "... got Ctrl-Alt-Del, resetting" */
        call    puts
        mov     al, 0xfe                /* i8042 command: pulse reset line */
        out     0x64, al                /* write it to the i8042 command port */
halt:   cli                             /* still here (no i8042): stop for good */
        hlt
        jmp     halt                    /* in case an NMI wakes us */

/* ---- putc: al = byte -> COM1.  Clobbers edx. ----------------------------- */
putc:
        push    rax                     /* keep the byte */
        mov     edx, 0x3fd              /* COM1 line status register */
1:      in      al, dx                  /* read LSR */
        test    al, 0x20                /* THR empty? */
        jz      1b                      /* not yet: poll again */
        pop     rax                     /* the byte */
        mov     edx, 0x3f8              /* COM1 transmit holding register */
        out     dx, al                  /* send it */
        ret

/* ---- puts: rsi = NUL-terminated string.  Clobbers al, edx, rsi. -------- */
puts:
1:      mov     al, [rsi]               /* next byte */
        test    al, al                  /* end of string? */
        jz      2f
        call    putc
        inc     rsi
        jmp     1b
2:      ret

/* ---- strings ------------------------------------------------------------ */
msg_wait:   .asciz "Petrel keyboard guest: waiting for Ctrl-Alt-Del\r\n"
msg_reset:  .asciz "Petrel keyboard guest: got Ctrl-Alt-Del, resetting\r\n"

/*
 * Reference listing for Petrel's counter guest (crates/demo-guest/src/counter.rs).
 *
 * This file is documentation and a cross-check: the Rust code carries the same
 * machine code as a hand-written byte array, and a unit test reassembles this
 * listing with GNU as/objcopy (when present) and compares the bytes.
 *
 *   as --64 -o counter_guest.o counter_guest.S && objcopy -O binary -j .text counter_guest.o counter_guest.bin
 *   objdump -D -b binary -m i386:x86-64 -M intel counter_guest.bin
 *
 * The bytes below start at file offset 0x100 of the ELF, loaded at physical =
 * virtual address 0x100000, so `start` is at 0x100100 (e_entry).
 * Memory map of the loaded segment:
 *   0x100000  ELF headers
 *   0x100100  64-bit code, strings                        (file ends < 0x101000)
 *   0x101000  the counter, a u32 (not in the file)
 *   0x102000  stack, 4 KiB, top at 0x103000 = end of p_memsz (not in the file)
 *
 * Entry: the Linux x86 64-bit boot protocol (long mode, identity map, interrupts
 * off).  The guest counts forever: each time the CMOS RTC's seconds register
 * changes it prints "Petrel counter guest: tick N" (N in decimal, from 0) and a
 * CR LF on COM1, then adds one to the counter in memory.  The count lives in
 * guest memory and the pace comes from the RTC, so a snapshot restored later
 * (in another process) goes on from the next number, once a second.
 * Interrupts stay off.
 */
        .intel_syntax noprefix

        .set COUNTER,    0x101000       /* the u32 count, in the segment's tail */
        .set STACK_TOP,  0x103000       /* top of the 4 KiB stack */

        .text
start:
        cli                             /* interrupts stay off */
        mov     esp, STACK_TOP          /* own stack: rsp = 0x103000 */
        mov     dword ptr [COUNTER], 0  /* count from 0 */
next:   call    seconds                 /* al = RTC seconds now */
        mov     bl, al                  /* remember them */
wait:   call    seconds                 /* read them again */
        cmp     al, bl                  /* changed? */
        je      wait                    /* not yet: poll again */
        lea     rsi, [rip+msg_tick]     /* "Petrel counter guest: tick " */
        call    puts
        mov     eax, dword ptr [COUNTER] /* the count */
        call    putdec                  /* in decimal */
        lea     rsi, [rip+msg_eol]      /* CR LF */
        call    puts
        inc     dword ptr [COUNTER]     /* one more */
        jmp     next                    /* wait for the next second */

/* ---- seconds: al = CMOS register 0 (RTC seconds). ------------------------ */
seconds:
        xor     eax, eax                /* CMOS index 0: seconds (NMI stays enabled) */
        out     0x70, al                /* select it */
        in      al, 0x71                /* read it */
        ret

/* ---- putdec: eax = value -> COM1 in decimal.  Clobbers eax, ecx, edx, edi. */
putdec:
        xor     ecx, ecx                /* digits pushed so far */
        mov     edi, 10                 /* the base */
1:      xor     edx, edx                /* edx:eax = the value */
        div     edi                     /* eax = value / 10, edx = value % 10 */
        push    rdx                     /* keep the digit (least significant first) */
        inc     ecx                     /* one more digit */
        test    eax, eax                /* anything left? */
        jnz     1b                      /* yes: next digit */
2:      pop     rax                     /* most significant digit left */
        add     al, 0x30                /* to ASCII '0'..'9' */
        call    putc                    /* print it (keeps ecx) */
        dec     ecx                     /* one fewer to go */
        jnz     2b                      /* until all are printed */
        ret

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

/* ---- puts: rsi = NUL-terminated string -> COM1.  Clobbers eax, edx, rsi. -- */
puts:
        mov     al, [rsi]               /* next byte */
        test    al, al                  /* end of string? */
        jz      1f
        call    putc
        inc     rsi
        jmp     puts
1:      ret

msg_tick:
        .asciz  "Petrel counter guest: tick "
msg_eol:
        .asciz  "\r\n"

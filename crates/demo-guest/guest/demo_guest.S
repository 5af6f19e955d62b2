/*
 * Reference listing for Petrel's built-in demo guest (crates/vmm/src/demo_guest.rs).
 *
 * This file is documentation and a cross-check: the Rust code carries the same
 * machine code as hand-written byte arrays, and a unit test reassembles this
 * listing with GNU as/objcopy (when present) and compares the bytes.
 *
 *   as --64 -o demo_guest.o demo_guest.S && objcopy -O binary -j .text demo_guest.o demo_guest.bin
 *   objdump -D -b binary -m i386:x86-64 -M intel demo_guest.bin   (the 64-bit part)
 *
 * The bytes below start at file offset 0x100 of the ELF (after the ELF header,
 * two program headers and the PVH note, which the Rust code writes), and the
 * file is loaded at physical = virtual address 0x100000, so `start` is at
 * 0x100100 (e_entry).  Memory map of the loaded segment:
 *   0x100000  ELF headers, PVH note
 *   0x100100  64-bit code, strings, PVH entry code, GDT   (file ends < 0x101000)
 *   0x101000  PVH page tables: PML4, PDPT, 4 page directories (not in the file)
 *   0x107000  stack, 4 KiB, top at 0x108000 = end of p_memsz (not in the file)
 */
        .intel_syntax noprefix

        .set LOAD_ADDR,  0x100000       /* PT_LOAD p_paddr = p_vaddr */
        .set CODE_ADDR,  0x100100       /* address of `start` (file offset 0x100) */
        .set STACK_TOP,  0x108000       /* top of the 4 KiB stack in the .bss-like tail */
        .set PML4,       0x101000       /* PVH only: page tables in the .bss-like tail */
        .set PDPT,       0x102000
        .set PD,         0x103000       /* four page directories: 0..4 GiB, 2 MiB pages */
        .set PD_END,     0x107000

        .text
start:
/* ---- Linux x86 64-bit boot protocol entry (ELF e_entry) ---------------- */
entry64:
        cli                             /* interrupts stay off */
        mov     esp, STACK_TOP          /* own stack: rsp = 0x108000 */
        movzx   ecx, byte ptr [rsi+0x1e8] /* ecx = boot_params.e820_entries */
        cmp     ecx, 128                /* at most E820_MAX_ENTRIES_ZEROPAGE */
        jbe     1f                      /* count is sane */
        mov     ecx, 128                /* clamp */
1:      add     rsi, 0x2d0              /* rsi = &boot_params.e820_table[0] */
        mov     edx, 20                 /* sizeof(struct boot_e820_entry) */
        /* fall through into main */

/* ---- main: rsi = memory map, ecx = entries, edx = entry size ------------ */
main:
        call    ram_bytes               /* rax = bytes of type-1 RAM */
        shr     rax, 20                 /* bytes -> MiB */
        mov     rbp, rax                /* keep MiB in rbp */
        lea     rsi, [rip+msg_hello]    /* greeting line */
        call    puts
        lea     rsi, [rip+msg_cpu]      /* "cpu: " */
        call    puts
        xor     eax, eax                /* CPUID leaf 0 */
        cpuid                           /* vendor in ebx, edx, ecx */
        sub     rsp, 16                 /* 13-byte buffer on the stack */
        mov     [rsp], ebx              /* vendor chars 0..3 */
        mov     [rsp+4], edx            /* vendor chars 4..7 */
        mov     [rsp+8], ecx            /* vendor chars 8..11 */
        mov     byte ptr [rsp+12], 0    /* NUL terminator */
        mov     rsi, rsp                /* print the vendor */
        call    puts
        add     rsp, 16                 /* drop the buffer */
        lea     rsi, [rip+msg_crlf]     /* end of line */
        call    puts
        lea     rsi, [rip+msg_mem]      /* "memory: " */
        call    puts
        mov     rax, rbp                /* MiB */
        call    print_dec
        lea     rsi, [rip+msg_mib]      /* " MiB\r\n" */
        call    puts
        lea     rsi, [rip+msg_time]     /* "time: " */
        call    puts
        call    print_time              /* "YYYY-MM-DD hh:mm:ss UTC\r\n" */
        lea     rsi, [rip+msg_reset]    /* "Petrel demo guest: resetting" */
        call    puts
        mov     al, 0xfe                /* i8042 command: pulse reset line */
        out     0x64, al                /* write it to the i8042 command port */
        xor     eax, eax                /* still here: no i8042 (QEMU microvm) */
        push    rax
        push    rax                     /* 16 zero bytes on the stack */
        lidt    [rsp]                   /* IDT base 0, limit 0: no usable vector */
        div     eax                     /* #DE -> #GP -> #DF -> triple fault: shutdown */
halt:   cli                             /* nothing worked: stop here for good */
        hlt
        jmp     halt                    /* in case an NMI wakes us */

/* ---- ram_bytes: rsi = table, ecx = entries, edx = entry size -> rax ------
 * Sums the sizes of the type-1 (RAM) entries.  e820 and PVH memmap entries
 * both start with {u64 addr, u64 size, u32 type}.  Clobbers rcx, rsi. */
ram_bytes:
        xor     eax, eax                /* total = 0 */
        test    ecx, ecx                /* empty table? */
        jz      2f
1:      cmp     dword ptr [rsi+16], 1   /* type == RAM? */
        jne     3f
        add     rax, [rsi+8]            /* total += size */
3:      add     rsi, rdx                /* next entry */
        dec     ecx
        jnz     1b
2:      ret

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

/* ---- print_dec: rax = unsigned value, printed in decimal.
 * Clobbers rax, rcx, edx, rsi. */
print_dec:
        sub     rsp, 24                 /* digit buffer: 20 digits + NUL */
        lea     rsi, [rsp+23]           /* fill from the end */
        mov     byte ptr [rsi], 0       /* NUL terminator */
        mov     ecx, 10                 /* divisor */
1:      xor     edx, edx                /* rdx:rax / 10 */
        div     rcx                     /* rax = quotient, rdx = digit */
        add     dl, '0'                 /* digit -> ASCII */
        dec     rsi
        mov     [rsi], dl               /* store it, most significant last */
        test    rax, rax                /* more digits? */
        jnz     1b
        call    puts                    /* print the digits */
        add     rsp, 24                 /* drop the buffer */
        ret

/* ---- print2: al = 0..99, printed as two decimal digits.
 * Clobbers eax, cl, edx. */
print2:
        movzx   eax, al                 /* ax = value */
        mov     cl, 10
        div     cl                      /* al = tens, ah = ones */
        add     ax, 0x3030              /* both to ASCII */
        call    putc                    /* tens (putc keeps rax) */
        mov     al, ah                  /* ones */
        jmp     putc                    /* tail call */

/* ---- rtc_read: al = CMOS register -> al = raw value. ------------------- */
rtc_read:
        out     0x70, al                /* select the register */
        in      al, 0x71                /* read it */
        ret

/* ---- rtc_field: al = CMOS register, bl = status B -> al = binary value.
 * to_bin: al = raw value -> binary (BCD unless status B bit 2).
 * Clobbers ecx. */
rtc_field:
        call    rtc_read
to_bin:
        test    bl, 4                   /* DM: binary mode? */
        jnz     1f                      /* yes: value is already binary */
        movzx   ecx, al                 /* ecx = BCD byte */
        shr     ecx, 4                  /* tens digit */
        and     eax, 0x0f               /* ones digit */
        lea     ecx, [rcx+rcx*4]        /* tens * 5 */
        lea     eax, [rax+rcx*2]        /* ones + tens * 10 */
1:      ret

/* ---- print_time: reads the CMOS RTC, prints "YYYY-MM-DD hh:mm:ss UTC\r\n".
 * Clobbers rax, rbx, rcx, rdx, rsi. */
print_time:
        mov     al, 0x0b                /* status register B */
        call    rtc_read
        cmp     al, 0xff                /* floating bus: no RTC at all */
        je      9f
        mov     bl, al                  /* bl = status B for to_bin */
        mov     ecx, 100000             /* bounded wait for a stuck UIP */
1:      mov     al, 0x0a                /* status register A */
        call    rtc_read
        test    al, 0x80                /* UIP: update in progress? */
        jz      2f                      /* no: the time registers are stable */
        dec     ecx
        jnz     1b                      /* give up after 100000 polls */
2:      mov     al, 0x32                /* century */
        call    rtc_field
        cmp     al, 19                  /* plausible century? */
        jb      3f
        cmp     al, 99
        jbe     4f
3:      mov     al, 20                  /* no century register: assume 20xx */
4:      call    print2                  /* century */
        mov     al, 0x09                /* year */
        call    rtc_field
        call    print2
        mov     al, '-'
        call    putc
        mov     al, 0x08                /* month */
        call    rtc_field
        call    print2
        mov     al, '-'
        call    putc
        mov     al, 0x07                /* day of month */
        call    rtc_field
        call    print2
        mov     al, ' '
        call    putc
        mov     al, 0x04                /* hours (bit 7 = PM in 12-hour mode) */
        call    rtc_read
        mov     bh, al                  /* keep the PM flag */
        and     al, 0x7f                /* strip it */
        call    to_bin
        test    bl, 2                   /* 24-hour mode? */
        jnz     5f
        cmp     al, 12                  /* 12-hour mode: 12 AM/PM -> 0 */
        jne     6f
        mov     al, 0
6:      test    bh, 0x80                /* PM? */
        jz      5f
        add     al, 12                  /* PM: +12 */
5:      call    print2
        mov     al, ':'
        call    putc
        mov     al, 0x02                /* minutes */
        call    rtc_field
        call    print2
        mov     al, ':'
        call    putc
        mov     al, 0x00                /* seconds */
        call    rtc_field
        call    print2
        lea     rsi, [rip+msg_utc]      /* " UTC\r\n" */
        jmp     puts                    /* tail call */
9:      lea     rsi, [rip+msg_nortc]    /* "unavailable\r\n" */
        jmp     puts                    /* tail call */

/* ---- strings ------------------------------------------------------------ */
msg_hello:  .asciz "Petrel demo guest: hello from a 64-bit guest\r\n"
msg_cpu:    .asciz "cpu: "
msg_crlf:   .asciz "\r\n"
msg_mem:    .asciz "memory: "
msg_mib:    .asciz " MiB\r\n"
msg_time:   .asciz "time: "
msg_utc:    .asciz " UTC\r\n"
msg_nortc:  .asciz "unavailable\r\n"
msg_reset:  .asciz "Petrel demo guest: resetting\r\n"

/* ---- PVH entry (ELF note XEN_ELFNOTE_PHYS32_ENTRY) ------------------------
 * 32-bit protected mode, paging off, flat segments, ebx = &struct hvm_start_info.
 * Builds an identity map of 0..4 GiB with 2 MiB pages, enters long mode, and
 * continues in main with the PVH memory map. */
        .code32
pvh_entry:
        cli                             /* interrupts stay off */
        mov     esp, STACK_TOP          /* own stack */
        xor     ecx, ecx                /* ecx = 0 for the stores below */
        mov     edi, PML4               /* clear the PML4 and PDPT pages */
1:      mov     [edi], ecx
        add     edi, 4
        cmp     edi, PD                 /* up to the first page directory */
        jb      1b
        mov     eax, 0x83               /* PDE: 2 MiB page at 0, Present|Write|PS */
2:      mov     [edi], eax              /* low half: address and flags */
        mov     [edi+4], ecx            /* high half: 0 (below 4 GiB) */
        add     eax, 0x200000           /* next 2 MiB */
        add     edi, 8                  /* next PDE */
        cmp     edi, PD_END             /* 4 x 512 PDEs = 4 GiB */
        jb      2b
        mov     dword ptr [PML4], PDPT + 3       /* PML4[0] -> PDPT, Present|Write */
        mov     dword ptr [PDPT], PD + 3         /* PDPT[0] -> PD 0..1 GiB */
        mov     dword ptr [PDPT+8], PD + 0x1003  /* PDPT[1] -> PD 1..2 GiB */
        mov     dword ptr [PDPT+16], PD + 0x2003 /* PDPT[2] -> PD 2..3 GiB */
        mov     dword ptr [PDPT+24], PD + 0x3003 /* PDPT[3] -> PD 3..4 GiB */
        mov     eax, PML4
        mov     cr3, eax                /* page-table root */
        mov     eax, cr4
        or      eax, 0x20               /* CR4.PAE */
        mov     cr4, eax
        mov     ecx, 0xc0000080         /* IA32_EFER */
        rdmsr
        or      eax, 0x100              /* EFER.LME */
        wrmsr
        lgdt    [CODE_ADDR + gdt_ptr - start]   /* our GDT (absolute address) */
        mov     eax, cr0
        or      eax, 0x80000001         /* CR0.PG | CR0.PE: long mode is active */
        mov     cr0, eax
        ljmp    0x08, CODE_ADDR + pvh64 - start /* load the 64-bit CS */

        .code64
pvh64:
        mov     eax, 0x10               /* flat data segment */
        mov     ds, eax
        mov     es, eax
        mov     ss, eax
        mov     ebx, ebx                /* rbx = &hvm_start_info (zero-extend) */
        xor     ecx, ecx                /* no memory map unless found below */
        cmp     dword ptr [rbx], 0x336ec578 /* XEN_HVM_START_MAGIC_VALUE? */
        jne     1f
        cmp     dword ptr [rbx+4], 1    /* version >= 1 has the memmap fields */
        jb      1f
        mov     rsi, [rbx+0x28]         /* memmap_paddr (u64 at 40) */
        mov     ecx, [rbx+0x30]         /* memmap_entries (u32 at 48) */
1:      mov     edx, 24                 /* sizeof(struct hvm_memmap_table_entry) */
        jmp     main                    /* the same main as the 64-bit entry */

gdt:    .quad   0                       /* null descriptor */
        .quad   0x00af9b000000ffff      /* 0x08: 64-bit code, DPL 0, accessed */
        .quad   0x00cf93000000ffff      /* 0x10: flat data, writable, accessed */
gdt_ptr:
        .word   23                      /* limit: 3 descriptors */
        .quad   CODE_ADDR + gdt - start /* base (lgdt in 32-bit mode reads 4 bytes) */
end:

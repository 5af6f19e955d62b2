# A 32-bit (i386) static program for the boot test's virtio-blk-ro guest: it makes system
# calls both ways a 32-bit program does and prints "int80 vdso" if both work.
#   1. `int $0x80` directly (what hand-written code and old binaries do);
#   2. through the vDSO's __kernel_vsyscall (what a 32-bit libc does), found in the
#      auxiliary vector as AT_SYSINFO; it uses sysenter, syscall or int $0x80, whichever
#      the kernel chose for this CPU.
# i386 system call numbers: arch/x86/entry/syscalls/syscall_32.tbl (1 exit, 4 write).
# Assembled at test time with `as --32` and linked with `ld -m elf_i386 -static`.
.globl _start
.text
_start:
    movl $4, %eax                   # write(
    movl $1, %ebx                   #   stdout,
    movl $first, %ecx               #   "int80 ",
    movl $first_len, %edx           #   its length)
    int $0x80                       # the legacy gate
    movl (%esp), %eax               # argc, at the top of the initial stack
    leal 8(%esp,%eax,4), %esi       # envp: past argc, argv[] and argv's NULL
1:  cmpl $0, (%esi)                 # the NULL that ends envp?
    je 2f                           # yes: auxv follows it
    addl $4, %esi                   # no: next environment pointer
    jmp 1b                          # and look again
2:  addl $4, %esi                   # auxv: pairs of (type, value)
3:  movl (%esi), %eax               # this entry's type
    testl %eax, %eax                # AT_NULL (0): the end, no AT_SYSINFO
    je 9f                           # then fail
    cmpl $32, %eax                  # AT_SYSINFO (32: arch/x86/include/uapi/asm/auxvec.h)
    je 4f                           # found it
    addl $8, %esi                   # next pair
    jmp 3b                          # and look again
4:  movl 4(%esi), %edi              # its value: __kernel_vsyscall's address
    movl $4, %eax                   # write(
    movl $1, %ebx                   #   stdout,
    movl $second, %ecx              #   "vdso\n",
    movl $second_len, %edx          #   its length)
    call *%edi                      # through the vDSO
    movl $1, %eax                   # exit(
    xorl %ebx, %ebx                 #   0)
    call *%edi                      # through the vDSO; does not return
9:  movl $1, %eax                   # exit(
    movl $3, %ebx                   #   3: no vDSO entry point)
    int $0x80                       # the legacy gate; does not return
.data
first: .ascii "int80 "
first_len = . - first
second: .ascii "vdso\n"
second_len = . - second

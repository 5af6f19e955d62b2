# The guest loop of the kvmsample program (https://github.com/soulxu/kvmsample): it writes an
# ever-increasing 16-bit counter to port 0x10 forever. Each `out` is one exit to the VMM, so
# this is the smallest program that shows KVM's execution cycle; stop it with --max-exits.
#   petrel run --raw examples/kvmsample-loop/kvmsample-loop.bin --real-mode --max-exits 5
# Rebuild: as --32 -o /tmp/k.o kvmsample-loop.S && objcopy -O binary /tmp/k.o kvmsample-loop.bin
    .code16
    .text
    .globl _start
_start:
1:  out %ax, $0x10      # e7 10     write the counter to port 0x10 (an I/O exit)
    inc %ax             # 40        next value
    jmp 1b              # eb fb     forever

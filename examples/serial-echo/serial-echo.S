# A guest that echoes its serial input: it polls COM1 for a byte, stops at EOT (0x04, Ctrl-D),
# and writes every other byte back out. 16-bit real mode, loaded at 0x1000.
#   printf 'hello\4' | petrel run --raw examples/serial-echo/serial-echo.bin --real-mode
# Rebuild: as --32 -o /tmp/e.o serial-echo.S && objcopy -O binary /tmp/e.o serial-echo.bin
    .code16
    .text
    .globl _start
_start:
1:  mov $0x3fd, %dx     # ba fd 03  COM1's line status register (LSR)
    in (%dx), %al       # ec        read it
    test $0x01, %al     # a8 01     bit 0: data ready?
    jz 1b               # 74 f8     not yet: poll again
    mov $0x3f8, %dx     # ba f8 03  COM1's receive buffer register (RBR)
    in (%dx), %al       # ec        take the byte
    cmp $0x04, %al      # 3c 04     EOT, the end of the input?
    je 2f               # 74 03     yes: stop
    out %al, (%dx)      # ee        no: echo it through THR (same port as RBR)
    jmp 1b              # eb ed     wait for the next byte
2:  hlt                 # f4        end the run (Petrel exits with code 0)

# The demo guest from LWN's "Using the KVM API" (https://lwn.net/Articles/658511/).
# 16-bit real mode. Start it with al=2 and bl=2: it prints their sum as a digit and a newline
# on the serial port, then halts.
#   petrel run --raw examples/lwn-demo/lwn-demo.bin --real-mode --reg rax=2 --reg rbx=2
# Rebuild: as --32 -o /tmp/d.o lwn-demo.S && objcopy -O binary /tmp/d.o lwn-demo.bin
    .code16
    .text
    .globl _start
_start:
    mov $0x3f8, %dx     # ba f8 03  COM1's data register (THR)
    add %bl, %al        # 00 d8     al = al + bl
    add $'0', %al       # 04 30     turn the digit into ASCII
    out %al, (%dx)      # ee        print it
    mov $'\n', %al      # b0 0a     a newline
    out %al, (%dx)      # ee        print it
    hlt                 # f4        end the run

# The gdb side of `cargo xtask hot-text` (xtask/src/hot_text.rs), run as
#     gdb -q -batch -x collect.py --args PROGRAM ARGS...
# It stops the program at its first instruction, puts a breakpoint on the entry of every
# function in the program's symbol table, lets it run and, once it has exited, writes the
# functions it entered to $HOT_TEXT_OUT, one symbol a line, in the order of their first entry.
# Each breakpoint is removed after its first hit, so the program soon runs at its own pace.
# The program's process ID goes to $HOT_TEXT_PID once it is stopped, for the caller to drive
# and signal it.
import os
import subprocess

import gdb

program = gdb.current_progspace().filename
out_path = os.environ["HOT_TEXT_OUT"]
pid_path = os.environ["HOT_TEXT_PID"]

# Text symbols defined in the file (`nm`: t or T), by their address in it.
functions = []
listing = subprocess.run(
    ["nm", "--defined-only", program], capture_output=True, text=True, check=True
).stdout
for line in listing.splitlines():
    fields = line.split()
    if len(fields) == 3 and fields[1] in "tT":
        functions.append((int(fields[0], 16), fields[2]))

entered = []
seen = set()


class FirstEntry(gdb.Breakpoint):
    """A breakpoint on one function's entry that records the function and lets it run on."""

    def __init__(self, address, name):
        super().__init__(f"*{address:#x}", internal=True)
        self.name = name

    def stop(self):
        if self.name not in seen:
            seen.add(self.name)
            entered.append(self.name)
            # A breakpoint may not be deleted from its own stop(): gdb's event loop does it.
            gdb.post_event(self.delete)
        return False


gdb.execute("set pagination off")
gdb.execute("set confirm off")
# The program's signals are its own: the VMM kicks vCPU threads with real-time signals, and
# SIGTERM is how the caller ends a run.
for signal in ["SIGTERM", "SIGINT", "SIGHUP", "SIGPIPE", "SIGCHLD", "SIGUSR1", "SIGUSR2",
               "SIGALRM", "SIGSYS"] + [f"SIG{n}" for n in range(34, 65)]:
    gdb.execute(f"handle {signal} nostop noprint pass")
gdb.execute("starti")
pid = gdb.selected_inferior().pid

# A position-independent program (ELF type ET_DYN, 3) is loaded where its first mapping of the
# file starts; nm gives addresses from 0. A fixed one (ET_EXEC, 2) is where nm says.
with open(program, "rb") as f:
    header = f.read(18)
base = 0
if int.from_bytes(header[16:18], "little") == 3:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if (len(fields) >= 6 and int(fields[2], 16) == 0
                    and os.path.realpath(fields[5]) == os.path.realpath(program)):
                base = int(fields[0].split("-")[0], 16)
                break
    if base == 0:
        raise gdb.GdbError(f"{program} is not mapped in process {pid}")

for address, name in functions:
    FirstEntry(base + address, name)
with open(pid_path, "w") as f:
    f.write(f"{pid}\n")
gdb.execute("continue")
with open(out_path, "w") as f:
    f.writelines(name + "\n" for name in entered)

"""Drives Petrel through an unchanged Firecracker client library, firecracker-python 0.0.5.

Run by crates/vmm-bin/tests/fc_client.rs, with the venv's python, which has
`firecracker-python==0.0.5` installed from PyPI:

    python fc_client.py --binary DIR/firecracker --data DIR/data --kernel KERNEL \
        --rootfs DISK --waiting-line LINE --resetting-line LINE

`--binary` is a link named `firecracker` to the petrel binary. The script starts it with the
library's own process helper (`firecracker.process.ProcessManager.start`, which writes the
VMM's stdout to DATA/ID/firecracker.log and its pid to DATA/ID/firecracker.pid), with the
arguments the library's `MicroVM` passes (`--api-sock`, `--id`, `--log-path`), then configures
and runs the keyboard guest through `firecracker.api.Api`, the library's REST client:
boot source, machine config, root drive, InstanceStart, describe, pause, resume,
SendCtrlAltDel. It exits 0 when every step did what Firecracker would do and the VMM exited 0.

The library's `MicroVM` class is not used: it sets up TAP devices, iptables rules and docker
images, which need root and change the host. For the same reason the package's `__init__`
is not run (as root it creates /var/lib/firecracker, and it imports all of MicroVM's
dependencies): the script registers the installed package directory as the `firecracker`
package and imports the modules it uses (`api`, `process`) from it, unchanged.
"""

import argparse
import importlib.util
import os
import signal
import sys
import time
import types

# Stop (and kill the VMM) well before the Rust test's own deadline.
SCRIPT_DEADLINE_S = 90
# How long to wait for the socket, a guest line, or the VMM's exit.
STEP_DEADLINE_S = 30
VM_ID = "fc-client-vm"


def step(text):
    print(f"fc_client.py: {text}", flush=True)


def import_library():
    """Imports firecracker.api and firecracker.process without running the package's __init__."""
    spec = importlib.util.find_spec("firecracker")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("fc_client.py: the firecracker package (firecracker-python) is not installed")
    package = types.ModuleType("firecracker")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["firecracker"] = package
    from firecracker import api, exceptions, process

    return api, exceptions, process


def wait_for(what, check):
    deadline = time.monotonic() + STEP_DEADLINE_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {STEP_DEADLINE_S} s waiting for {what}")
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    for flag in ("binary", "data", "kernel", "rootfs", "waiting-line", "resetting-line"):
        parser.add_argument(f"--{flag}", required=True)
    args = parser.parse_args()

    def on_alarm(_signum, _frame):
        raise TimeoutError(f"fc_client.py ran longer than {SCRIPT_DEADLINE_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(SCRIPT_DEADLINE_S)

    api_mod, exceptions, process = import_library()
    vm_dir = os.path.join(args.data, VM_ID)
    os.makedirs(vm_dir, exist_ok=True)
    sock = os.path.join(vm_dir, "firecracker.socket")
    log_path = os.path.join(vm_dir, f"{VM_ID}.log")
    console = os.path.join(vm_dir, "firecracker.log")
    # MicroVM creates the log file before starting the VMM, as Firecracker wants it to exist.
    open(log_path, "w").close()

    manager = process.ProcessManager(verbose=True, level="DEBUG")
    manager._config.binary_path = args.binary
    manager._config.data_path = args.data
    step(f"starting {args.binary} with ProcessManager.start")
    pid = manager.start(VM_ID, ["--api-sock", sock, "--id", VM_ID, "--log-path", log_path])
    step(f"VMM pid {pid}")
    exit_code = None

    def console_text():
        with open(console, errors="replace") as f:
            return f.read()

    try:
        assert manager.is_running(VM_ID), "ProcessManager.is_running says no"
        # get_pid checks that the process is named `firecracker`.
        found, created = manager.get_pid(VM_ID)
        assert found == pid, (found, pid)
        step(f"ProcessManager.get_pid: {found}, named firecracker, started {created}")

        api = api_mod.Api(sock)

        def describe():
            return api.describe.get().json()

        def answers():
            try:
                return describe()
            except exceptions.APIError:
                return None

        info = wait_for("the API socket", answers)
        step(f"describe: {info}")
        assert info["id"] == VM_ID, info
        assert info["state"] == "Not started", info
        version = api.version.get().json()
        step(f"version: {version}")
        assert version["firecracker_version"], version

        api.boot.put(kernel_image_path=args.kernel, boot_args="console=ttyS0 reboot=k panic=1")
        api.machine_config.put(vcpu_count=1, mem_size_mib=128)
        api.drive.put(
            drive_id="rootfs", path_on_host=args.rootfs, is_root_device=True, is_read_only=False
        )
        config = api.vm_config.get().json()
        step(f"vm_config: {config}")
        assert config["boot-source"]["kernel_image_path"] == args.kernel, config
        assert config["machine-config"]["mem_size_mib"] == 128, config
        assert [d["drive_id"] for d in config["drives"]] == ["rootfs"], config

        try:
            api.machine_config.put(vcpu_count=1, mem_size_mib=128, no_such_field=1)
            raise AssertionError("an unknown field was accepted")
        except exceptions.APIError as e:
            step(f"a bad request raises APIError: {e}")
            assert "no_such_field" in str(e), e

        api.actions.put(action_type="InstanceStart")
        step("InstanceStart accepted")

        wait_for("the guest's first line", lambda: args.waiting_line in console_text())
        step(f"the guest says: {args.waiting_line}")
        assert describe()["state"] == "Running"

        api.vm.patch(state="Paused")
        assert describe()["state"] == "Paused"
        step("paused")
        api.vm.patch(state="Resumed")
        assert describe()["state"] == "Running"
        step("resumed")

        api.actions.put(action_type="SendCtrlAltDel")
        step("SendCtrlAltDel accepted")

        def exited():
            done, status = os.waitpid(pid, os.WNOHANG)
            # A (non-empty, so true) tuple once the VMM has exited.
            return (os.waitstatus_to_exitcode(status),) if done == pid else None

        (exit_code,) = wait_for("the VMM to exit", exited)
        api.close()
    finally:
        if exit_code is None:
            # Something failed: do not leave the VMM running.
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
    text = console_text()
    assert args.resetting_line in text, text
    step(f"the guest says: {args.resetting_line}")
    assert not os.path.exists(sock), f"{sock} is left behind"
    with open(log_path) as f:
        log = f.read()
    # Firecracker's log format: "<time> [<id>:<thread>] <message>".
    assert f"[{VM_ID}:" in log, log
    step(f"--log-path has {len(log.splitlines())} lines in Firecracker's format")
    return exit_code

if __name__ == "__main__":
    code = main()
    step(f"the VMM exited with status {code}")
    sys.exit(0 if code == 0 else 1)

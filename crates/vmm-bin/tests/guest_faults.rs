//! Every way a guest ends badly, with the built-in seccomp filters on, as users run Petrel: a
//! triple fault (with the instruction at RIP mapped and not), an instruction the host cannot
//! run, accesses no device claims, and (through the `fault-injection` feature, which the tests'
//! build of `petrel` has: see `Cargo.toml`) the exits no guest reaches on a given host and a
//! device panic on a vCPU thread and on the VMM thread.
//!
//! Each run must end with exit code 1 and its report on stderr. A call outside a thread's
//! filter would end it with exit code 148 and a `seccomp:` line instead: the report is made on
//! the vCPU thread, under its filter (the first of these, a jump to unmapped memory, did that
//! until `KVM_TRANSLATE` was allowed).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use petrel_tests::kvm_present_or_skip;

mod support;
use support::{wait_until, TempDir};

/// Where the test kernels are linked and start, as `ld -Ttext=0x200000` would put them.
const LOAD_ADDR: u64 = 0x20_0000;
/// File offset of the code: one page, as `ld` aligns the segment.
const CODE_OFFSET: usize = 0x1000;
/// How long one run may take before the test kills `petrel` and fails (the machine is shared).
const DEADLINE: Duration = Duration::from_secs(60);
/// The variable the `fault-injection` feature reads (petrel_vcpu::inject::VARIABLE).
const INJECT: &str = "PETREL_INJECT_FAULT";

/// `movabs $0x7000000000, %rax; jmp *%rax`: a jump far outside the boot identity map (4 GiB).
const JUMP_TO_UNMAPPED: &[u8] = &[
    0x48, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x00, 0x00, // movabs $0x7000000000, %rax
    0xff, 0xe0, //                                                 jmp *%rax
];
/// `ud2` with no IDT: #UD, #GP, #DF, triple fault, at a mapped RIP.
const UD2: &[u8] = &[0x0f, 0x0b];
/// A port write (the first exit to reach Petrel), then `ud2`.
const OUT_THEN_UD2: &[u8] = &[
    0xe6, 0x80, // out %al, $0x80
    0x0f, 0x0b, // ud2
];

/// A 64-bit ELF kernel (`ET_EXEC`, x86-64) whose one `PT_LOAD` puts `code` at [`LOAD_ADDR`],
/// its entry point.
fn kernel_elf(code: &[u8]) -> Vec<u8> {
    let mut elf = Vec::with_capacity(CODE_OFFSET + code.len());
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00"); // 64-bit, little-endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    let len = code.len() as u64;
    for word in [CODE_OFFSET as u64, LOAD_ADDR, LOAD_ADDR, len, len, 0x1000] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(code);
    elf
}

/// What one run of `petrel` left.
struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Reads `from` to its end on a thread.
fn drain<R: Read + Send + 'static>(mut from: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut all = Vec::new();
        // A read error ends the capture; the assertions on what arrived tell the rest.
        let _ = from.read_to_end(&mut all);
        all
    })
}

/// Boots `code` as a kernel with the default seccomp filters, `args` added and `env` set
/// (`RUST_BACKTRACE=1` always: a backtrace is what a panic hook would read).
fn boot(code: &[u8], args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = TempDir::new("guest-fault");
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, kernel_elf(code)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_petrel"));
    cmd.arg("--kernel").arg(&kernel).args(["--mem", "64M"]);
    cmd.args(args).env("RUST_BACKTRACE", "1").env_remove(INJECT);
    cmd.envs(env.iter().copied());
    run(cmd, None)
}

/// Runs `cmd` to its end (killed past [`DEADLINE`]); `stdin`, if given, is written to it.
fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("start petrel");
    let err = drain(child.stderr.take().unwrap());
    // Kept open (and dropped at the end): the guest's console input does not end.
    let mut input = child.stdin.take();
    if let (Some(pipe), Some(bytes)) = (input.as_mut(), stdin) {
        pipe.write_all(bytes).unwrap();
    }
    let status = wait_until(&mut child, Instant::now() + DEADLINE);
    drop(input);
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let status = status.unwrap_or_else(|| panic!("petrel ran past {DEADLINE:?}: {stderr}"));
    Run {
        code: status.code(),
        stderr,
    }
}

/// The run ended as a guest fault must: exit code 1, the report that names `what`, with the
/// registers and the instruction bytes, and no call outside a filter.
fn assert_guest_error(r: &Run, what: &str) {
    assert_no_seccomp_trap(r);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let report = format!("petrel: guest error: {what}");
    assert!(r.stderr.contains(&report), "no `{report}`: {}", r.stderr);
    assert!(r.stderr.contains("  rip="), "{}", r.stderr);
    assert!(
        r.stderr.contains("  instruction bytes at rip: "),
        "{}",
        r.stderr
    );
}

fn assert_no_seccomp_trap(r: &Run) {
    assert!(
        r.code != Some(148) && !r.stderr.contains("seccomp:"),
        "a thread made a call its filter forbids: {}",
        r.stderr
    );
}

/// The line of the report with the instruction bytes.
fn instruction_bytes(r: &Run) -> &str {
    r.stderr
        .lines()
        .find_map(|l| l.strip_prefix("  instruction bytes at rip: "))
        .unwrap_or_default()
}

#[test]
fn a_jump_to_unmapped_memory_is_reported_as_a_triple_fault() {
    if !kvm_present_or_skip("a_jump_to_unmapped_memory_is_reported_as_a_triple_fault") {
        return;
    }
    let r = boot(JUMP_TO_UNMAPPED, &["--serial", "none"], &[]);
    assert_guest_error(&r, "the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
    assert!(r.stderr.contains("rip=0x0000007000000000"), "{}", r.stderr);
    // KVM_TRANSLATE finds no mapping there.
    assert_eq!(instruction_bytes(&r), "(unreadable)", "{}", r.stderr);
}

#[test]
fn a_triple_fault_at_mapped_code_shows_its_instruction_bytes() {
    if !kvm_present_or_skip("a_triple_fault_at_mapped_code_shows_its_instruction_bytes") {
        return;
    }
    let r = boot(UD2, &["--serial", "none"], &[]);
    assert_guest_error(&r, "the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
    // Read through the guest's page tables (KVM_TRANSLATE), then guest RAM.
    assert!(instruction_bytes(&r).starts_with("0f 0b"), "{}", r.stderr);
}

#[test]
fn an_instruction_the_host_cannot_run_is_reported() {
    if !kvm_present_or_skip("an_instruction_the_host_cannot_run_is_reported") {
        return;
    }
    // popcnt: KVM's instruction emulator lacks it, so a host that emulates guest kernel code
    // (PVM) gives up on it; hardware runs it, and the ud2 after it triple-faults.
    let code = [0xf3, 0x48, 0x0f, 0xb8, 0xc3, 0x0f, 0x0b]; // popcnt %rbx, %rax; ud2
    let r = boot(&code, &["--serial", "none"], &[]);
    if r.stderr.contains("instruction emulator (PVM)") {
        assert_guest_error(
            &r,
            "the host's instruction emulator cannot run the instruction at rip 0x200000",
        );
        assert!(
            instruction_bytes(&r).starts_with("f3 48 0f b8 c3 0f 0b"),
            "{}",
            r.stderr
        );
    } else {
        eprintln!("this host runs popcnt: checking the triple fault of the ud2 after it");
        assert_guest_error(&r, "the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
    }
}

#[test]
fn accesses_no_device_claims_go_on_and_the_fault_after_them_is_reported() {
    if !kvm_present_or_skip("accesses_no_device_claims_go_on_and_the_fault_after_them_is_reported")
    {
        return;
    }
    // No device refuses an access: one nothing claims reads 0xff and its write is dropped
    // (crates/devices/src/bus.rs), counted, and the guest goes on, here to its ud2.
    let code = [
        0xbb, 0x00, 0x00, 0x00, 0xe0, // mov $0xe0000000, %ebx  ; in the MMIO gap, no device
        0xc7, 0x03, 0x78, 0x56, 0x34, 0x12, // movl $0x12345678, (%rbx)
        0x8b, 0x03, //                   mov (%rbx), %eax
        0x66, 0xba, 0x34, 0x12, //       mov $0x1234, %dx        ; no device either
        0xee, //                         out %al, (%dx)
        0xec, //                         in (%dx), %al
        0x0f, 0x0b, //                   ud2
    ];
    let r = boot(&code, &["--serial", "none", "--exit-stats=json"], &[]);
    assert_guest_error(&r, "the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
    assert!(instruction_bytes(&r).starts_with("0f 0b"), "{}", r.stderr);
    // The registers after them: eax = 0xffffffff read back from the MMIO gap, then al = 0xff
    // from the port.
    assert!(r.stderr.contains("rax=0x00000000ffffffff"), "{}", r.stderr);
}

#[test]
fn exits_no_guest_reaches_here_are_reported_under_the_filters() {
    if !kvm_present_or_skip("exits_no_guest_reaches_here_are_reported_under_the_filters") {
        return;
    }
    for (fault, what) in [
        (
            "fail-entry",
            "VM entry failed on host CPU 0: hardware reason 0x21",
        ),
        ("unknown-exit", "unknown exit, hardware reason 0x7f"),
        (
            "unsupported-exit",
            "exit reason 99 is not supported by Petrel",
        ),
        (
            "internal-error",
            "KVM internal error, suberror 3 (event delivery failed)",
        ),
        (
            "emulation-failure-without-bytes",
            "the host's instruction emulator cannot run the instruction at rip",
        ),
        ("crash-event", "guest system event Crash"),
        ("debug-exit", "unexpected debug exit"),
    ] {
        let r = boot(OUT_THEN_UD2, &["--serial", "none"], &[(INJECT, fault)]);
        assert_guest_error(&r, what);
        if fault == "emulation-failure-without-bytes" {
            // kvm_run had none: read through the guest's page tables, at the `out` or (where
            // KVM moved RIP past it before the exit) at the ud2.
            let bytes = instruction_bytes(&r);
            assert!(
                bytes.starts_with("0f 0b") || bytes.starts_with("e6 80 0f 0b"),
                "{r:?}"
            );
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}, stderr:\n{}", self.code, self.stderr)
    }
}

/// The run ended as a device panic must: exit code 1, the VMM error `error`, the panic's own
/// report without a backtrace, and no call outside a filter.
fn assert_device_panic(r: &Run, error: &str, thread: &str) {
    assert_no_seccomp_trap(r);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains(error), "no `{error}`: {r:?}");
    let hook = format!("thread '{thread}' panicked at crates/vmm/src/inject.rs:");
    assert!(r.stderr.contains(&hook), "no `{hook}`: {r:?}");
    assert!(r.stderr.contains("note: no backtrace"), "{r:?}");
}

#[test]
fn a_device_panic_on_a_vcpu_thread_ends_with_a_vmm_error() {
    if !kvm_present_or_skip("a_device_panic_on_a_vcpu_thread_ends_with_a_vmm_error") {
        return;
    }
    for backtrace in ["1", "0"] {
        let r = boot(
            OUT_THEN_UD2,
            &["--serial", "none"],
            &[(INJECT, "vcpu-device-panic"), ("RUST_BACKTRACE", backtrace)],
        );
        assert_device_panic(
            &r,
            "petrel: error: vCPU 0 thread panicked: injected device panic \
             (PETREL_INJECT_FAULT=vcpu-device-panic)",
            "petrel-vcpu0",
        );
    }
}

#[test]
fn a_device_panic_on_the_vmm_thread_ends_with_a_vmm_error() {
    if !kvm_present_or_skip("a_device_panic_on_the_vmm_thread_ends_with_a_vmm_error") {
        return;
    }
    let dir = TempDir::new("guest-fault-vmm");
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, kernel_elf(&[0xeb, 0xfe])).unwrap(); // jmp . (forever)
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_petrel"));
    cmd.arg("--kernel").arg(&kernel);
    cmd.args(["--mem", "64M", "--serial", "stdio"]);
    cmd.env("RUST_BACKTRACE", "1")
        .env(INJECT, "vmm-device-panic");
    // Host input for the guest's UART: the serial input reads it on the VMM thread.
    let r = run(cmd, Some(b"x"));
    assert_device_panic(
        &r,
        "petrel: error: device work on the event loop panicked: injected device panic \
         (PETREL_INJECT_FAULT=vmm-device-panic)",
        "main",
    );
}

/// A pseudo-terminal: (controller, the terminal itself).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the two integers; the name, termios and
    // window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and belong to nothing else.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

/// Whether the terminal of `fd` is in canonical mode.
fn canonical(fd: &OwnedFd) -> bool {
    // SAFETY: termios is plain data; tcgetattr fills it for an open terminal descriptor.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t.c_lflag & libc::ICANON != 0
}

#[test]
fn a_device_panic_with_the_console_on_a_terminal_leaves_the_terminal_restored() {
    if !kvm_present_or_skip(
        "a_device_panic_with_the_console_on_a_terminal_leaves_the_terminal_restored",
    ) {
        return;
    }
    // The guest waits for a byte from the UART (LSR bit 0), then writes a port.
    let code = [
        0x66, 0xba, 0xfd, 0x03, // wait: mov $0x3fd, %dx
        0xec, //                         in (%dx), %al
        0xa8, 0x01, //                   test $1, %al
        0x74, 0xf7, //                   jz wait
        0xe6, 0x80, //                   out %al, $0x80  ; the device panic
        0xeb, 0xfe, //                   jmp .
    ];
    let dir = TempDir::new("guest-fault-tty");
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, kernel_elf(&code)).unwrap();
    let (controller, terminal) = pty();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_petrel"));
    cmd.arg("--kernel").arg(&kernel);
    cmd.args(["--mem", "64M", "--serial", "stdio"]);
    cmd.env("RUST_BACKTRACE", "1")
        .env(INJECT, "vcpu-device-panic");
    cmd.stdin(Stdio::from(terminal.try_clone().unwrap()));
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: between fork and exec, only async-signal-safe calls: the child leads a new
    // session whose controlling terminal is its stdin, so Petrel sees an interactive console.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start petrel");
    let err = drain(child.stderr.take().unwrap());
    // Petrel puts the terminal in raw mode once the guest runs; then the guest gets its byte.
    let deadline = Instant::now() + DEADLINE;
    while canonical(&terminal) && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(!canonical(&terminal), "the terminal never went raw");
    std::fs::File::from(controller.try_clone().unwrap())
        .write_all(b"x")
        .unwrap();
    let status = wait_until(&mut child, deadline);
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let r = Run {
        code: status
            .map(|s| s.code())
            .unwrap_or_else(|| panic!("timed out: {stderr}")),
        stderr,
    };
    assert_device_panic(
        &r,
        "petrel: error: vCPU 0 thread panicked: injected device panic",
        "petrel-vcpu0",
    );
    // Written while the terminal was raw: lines end in CR LF.
    assert!(
        r.stderr
            .contains("(PETREL_INJECT_FAULT=vcpu-device-panic)\r\n"),
        "{r:?}"
    );
    assert!(canonical(&terminal), "the terminal was left raw");
}

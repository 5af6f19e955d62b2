//! Serial console input end to end: 100 KiB piped into `petrel`'s stdin reach a raw guest that
//! echoes them (`examples/serial-echo`), every byte, in order, and come back on stdout.
//!
//! More than the std stdin buffer (8 KiB) and far more than the UART's FIFO: input that waited
//! anywhere epoll cannot see would stall the guest until the deadline.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use petrel_tests::kvm_present_or_skip;

/// The echo guest, from the workspace root.
const SERIAL_ECHO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/serial-echo/serial-echo.bin"
);
/// The byte that ends the echo guest (EOT).
const EOT: u8 = 0x04;
/// How much input to send, terminator not counted.
const INPUT_LEN: usize = 100 * 1024;
/// How long the whole run may take before the test kills `petrel` and fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// `len` pseudo-random bytes (xorshift64) with no [`EOT`] among them.
fn input_without_eot(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes()[5];
        if b != EOT {
            out.push(b);
        }
    }
    out
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

/// Waits for `child` until `deadline`; kills it and returns `None` past that.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for petrel") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn piped_input_reaches_an_echo_guest_whole_and_in_order() {
    if !kvm_present_or_skip("piped_input_reaches_an_echo_guest_whole_and_in_order") {
        return;
    }
    let input = input_without_eot(INPUT_LEN);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["run", "--raw", SERIAL_ECHO, "--real-mode"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start petrel");

    let mut stdin = child.stdin.take().expect("stdin is piped");
    let sent = input.clone();
    let feeder = thread::spawn(move || {
        stdin.write_all(&sent)?;
        stdin.write_all(&[EOT])
        // Dropping `stdin` closes the pipe.
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));

    let status = wait_until(&mut child, started + DEADLINE);
    let out = stdout.join().expect("stdout reader");
    let err = String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned();
    let fed = feeder.join().expect("stdin writer");
    let Some(status) = status else {
        panic!(
            "petrel still ran after {DEADLINE:?}, killed: {} of {INPUT_LEN} bytes echoed; \
             stdin writer: {fed:?}; stderr:\n{err}",
            out.len()
        );
    };
    eprintln!("echoed {} bytes in {:?}", out.len(), started.elapsed());

    assert_eq!(status.code(), Some(0), "stderr:\n{err}");
    fed.expect("petrel took all the input");
    assert_eq!(out.len(), INPUT_LEN, "stderr:\n{err}");
    if let Some(i) = out.iter().zip(&input).position(|(a, b)| a != b) {
        panic!(
            "byte {i} differs: echoed {:#04x}, sent {:#04x}",
            out[i], input[i]
        );
    }
}

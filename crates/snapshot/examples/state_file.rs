//! Write a state file, read it back, and watch damaged copies be refused: the container checks
//! a state file's length and CRC before it parses the body, so a truncated or corrupted file
//! is an error that says what is wrong, never a panic or a half-restored VM.
//!
//! `cargo run -p petrel-snapshot --example state_file`

use std::fs;
use std::path::Path;

use petrel_snapshot::{read_file, write_file, Error, Problem, HEADER_LEN};
use serde::{Deserialize, Serialize};

/// A device's saved state, as a crate that owns a device would define it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct UartState {
    divisor: u16,
    line_control: u8,
    pending_input: Vec<u8>,
}

/// Reads `path` and prints what the reader said; returns the problem it found, if any.
fn check(what: &str, path: &Path) -> Option<Problem> {
    match read_file::<UartState>(path) {
        Ok(state) => {
            println!("{what}: read back {state:?}");
            None
        }
        Err(Error::InvalidFile { problem, .. }) => {
            println!("{what}: refused: {problem}");
            Some(problem)
        }
        Err(other) => panic!("{what}: unexpected error: {other}"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("petrel-state-file-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let path = dir.join("uart.state");

    let state = UartState {
        divisor: 1,
        line_control: 0x03,
        pending_input: b"ls\n".to_vec(),
    };
    write_file(&path, &state)?;
    let bytes = fs::read(&path)?;
    println!(
        "wrote {} ({} bytes: a {HEADER_LEN}-byte header, then {})",
        path.display(),
        bytes.len(),
        String::from_utf8_lossy(&bytes[HEADER_LEN..])
    );
    assert!(check("intact", &path).is_none());

    // One bit flipped in the body: the CRC no longer matches.
    let mut corrupted = bytes.clone();
    corrupted[HEADER_LEN + 2] ^= 0x01;
    fs::write(&path, &corrupted)?;
    let problem = check("one bit flipped", &path);
    assert!(matches!(problem, Some(Problem::Checksum { .. })));

    // The last bytes missing: the body is shorter than the header says.
    fs::write(&path, &bytes[..bytes.len() - 5])?;
    let problem = check("truncated body", &path);
    assert!(matches!(problem, Some(Problem::Length { .. })));

    // Cut inside the header.
    fs::write(&path, &bytes[..10])?;
    let problem = check("truncated header", &path);
    assert!(matches!(problem, Some(Problem::TooShort { len: 10 })));

    fs::remove_dir_all(&dir)?;
    Ok(())
}

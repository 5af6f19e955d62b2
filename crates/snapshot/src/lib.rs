//! The container of a Petrel snapshot state file: it frames and checks a serde body, and knows
//! nothing of what the body holds (each crate owns the serde types of its own state).
//!
//! A state file is a 32-byte header followed by the body:
//!
//! | offset | size | field                                                    |
//! |--------|------|----------------------------------------------------------|
//! | 0      | 8    | magic, `PETRELSN`                                        |
//! | 8      | 4    | format version, little-endian ([`FORMAT_VERSION`])       |
//! | 12     | 4    | reserved, zero                                           |
//! | 16     | 8    | body length in bytes, little-endian                      |
//! | 24     | 8    | CRC-64/XZ of the body, little-endian                     |
//! | 32     | n    | body: UTF-8 JSON                                         |
//!
//! Versioning rule: the format version changes whenever a body written by a newer Petrel could
//! be misread by an older one. A Petrel reads every format version up to its own
//! ([`FORMAT_VERSION`]) and refuses newer ones with an error that says so.
//!
//! ```
//! let bytes = petrel_snapshot::encode(&vec![1u32, 2, 3]).unwrap();
//! let back: Vec<u32> = petrel_snapshot::decode(&bytes).unwrap();
//! assert_eq!(back, [1, 2, 3]);
//! let mut bad = bytes.clone();
//! *bad.last_mut().unwrap() ^= 1;
//! assert!(petrel_snapshot::decode::<Vec<u32>>(&bad).is_err());
//! ```

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first eight bytes of every Petrel state file.
pub const MAGIC: [u8; 8] = *b"PETRELSN";
/// The format this Petrel writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 32;

/// CRC-64/XZ (the ECMA-182 polynomial, reflected, as xz uses it).
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// What is wrong with a state file's bytes.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Fewer bytes than a header.
    #[error("it is {len} bytes long, shorter than the {HEADER_LEN}-byte header (truncated?)")]
    TooShort {
        /// The file's length.
        len: usize,
    },
    /// The magic bytes are not Petrel's.
    #[error("it does not start with Petrel's magic bytes: not a Petrel state file")]
    BadMagic,
    /// A version this Petrel does not read.
    #[error(
        "it has format version {found}; this Petrel reads versions 1 to {FORMAT_VERSION} \
         (was it written by a newer Petrel?)"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// The body is not as long as the header says.
    #[error("its body is {actual} bytes but the header says {expected} (truncated?)")]
    Length {
        /// What the header says.
        expected: u64,
        /// What follows the header.
        actual: u64,
    },
    /// The body's checksum does not match.
    #[error(
        "its checksum does not match (stored {stored:#018x}, computed {computed:#018x}): \
         the file is corrupted"
    )]
    Checksum {
        /// The checksum in the header.
        stored: u64,
        /// The checksum of the body.
        computed: u64,
    },
    /// The body passed the checks but does not parse as this Petrel's state.
    #[error("its contents do not parse: {0}")]
    Body(#[source] serde_json::Error),
}

/// Errors from writing or reading a state file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state could not be encoded.
    #[error("cannot encode the snapshot state: {0}")]
    Encode(#[source] serde_json::Error),
    /// A bad state file (the bytes of one, when no path is known).
    #[error("snapshot state: {0}")]
    Invalid(#[source] Problem),
    /// A bad state file.
    #[error("snapshot state file {}: {problem}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: Problem,
    },
    /// The file could not be read.
    #[error("cannot read snapshot state file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file could not be written.
    #[error("cannot write snapshot state file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The header of a state file, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub format_version: u32,
    /// Body length.
    pub body_len: u64,
    /// CRC-64/XZ of the body.
    pub crc: u64,
}

/// Frames `body` as a state file of the current [`FORMAT_VERSION`].
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>> {
    let mut out = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut out, body).map_err(Error::Encode)?;
    seal(&mut out);
    Ok(out)
}

/// Frames body bytes as they are (JSON or not) with a valid header and checksum: for tools and
/// fuzzers that need to reach the body's parser past the container's checks.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(body);
    seal(&mut out);
    out
}

/// Writes the header of `out` (header space followed by the body).
fn seal(out: &mut [u8]) {
    let body_bytes = &out[HEADER_LEN..];
    let header = Header {
        format_version: FORMAT_VERSION,
        body_len: body_bytes.len() as u64,
        crc: CRC.checksum(body_bytes),
    };
    out[..HEADER_LEN].copy_from_slice(&header_bytes(&header));
}

fn header_bytes(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&h.format_version.to_le_bytes());
    b[16..24].copy_from_slice(&h.body_len.to_le_bytes());
    b[24..32].copy_from_slice(&h.crc.to_le_bytes());
    b
}

/// Checks the header of `bytes` (magic, version; not the body).
pub fn read_header(bytes: &[u8]) -> std::result::Result<Header, Problem> {
    if bytes.len() < HEADER_LEN {
        return Err(Problem::TooShort { len: bytes.len() });
    }
    if bytes[0..8] != MAGIC {
        return Err(Problem::BadMagic);
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let format_version = u32_at(8);
    if format_version == 0 || format_version > FORMAT_VERSION {
        return Err(Problem::UnsupportedVersion {
            found: format_version,
        });
    }
    Ok(Header {
        format_version,
        body_len: u64_at(16),
        crc: u64_at(24),
    })
}

/// Checks a state file's bytes (header, length, checksum) and returns its body.
pub fn verified_body(bytes: &[u8]) -> std::result::Result<&[u8], Problem> {
    let header = read_header(bytes)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != header.body_len {
        return Err(Problem::Length {
            expected: header.body_len,
            actual: body.len() as u64,
        });
    }
    let computed = CRC.checksum(body);
    if computed != header.crc {
        return Err(Problem::Checksum {
            stored: header.crc,
            computed,
        });
    }
    Ok(body)
}

fn decode_problem<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, Problem> {
    let body = verified_body(bytes)?;
    serde_json::from_slice(body).map_err(Problem::Body)
}

/// Checks and parses a state file's bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_problem(bytes).map_err(Error::Invalid)
}

/// Writes `body` to `path` as a state file: to a temporary file beside it first, synced and
/// then renamed over `path`, so a crash never leaves a half-written state file under that name.
pub fn write_file<T: Serialize>(path: &Path, body: &T) -> Result<()> {
    let bytes = encode(body)?;
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(())
}

/// Reads, checks and parses the state file at `path`.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_problem(&bytes).map_err(|problem| Error::InvalidFile {
        path: path.to_path_buf(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Body {
        name: String,
        values: Vec<u64>,
    }

    fn body() -> Body {
        Body {
            name: "vm".into(),
            values: vec![1, 2, u64::MAX],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("petrel-snapshot-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        write_file(&path, &body()).unwrap();
        assert_eq!(read_file::<Body>(&path).unwrap(), body());
        assert!(!dir.join("state.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_damage_is_named() {
        let good = encode(&body()).unwrap();
        let problem = |b: &[u8]| decode_problem::<Body>(b).unwrap_err();

        assert!(matches!(
            problem(&good[..10]),
            Problem::TooShort { len: 10 }
        ));
        let truncated = problem(&good[..good.len() - 1]);
        assert!(matches!(truncated, Problem::Length { .. }), "{truncated}");
        assert!(truncated.to_string().contains("truncated"));

        let mut other = good.clone();
        other[0..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        assert!(matches!(problem(&other), Problem::BadMagic));

        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let e = problem(&newer);
        assert!(matches!(e, Problem::UnsupportedVersion { found } if found == FORMAT_VERSION + 1));
        assert!(e.to_string().contains("newer Petrel"));

        let mut flipped = good.clone();
        let mid = HEADER_LEN + (good.len() - HEADER_LEN) / 2;
        flipped[mid] ^= 0x20;
        assert!(matches!(problem(&flipped), Problem::Checksum { .. }));

        // A frame of the same bytes is the same file.
        assert_eq!(frame(&good[HEADER_LEN..]), good);

        // Checksummed but not this Petrel's body.
        let wrong = encode(&vec!["not", "a", "body"]).unwrap();
        assert!(matches!(problem(&wrong), Problem::Body(_)));
    }

    #[test]
    fn file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/petrel/state");
        let e = read_file::<Body>(missing).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/petrel/state"), "{e}");
        let dir = std::env::temp_dir().join(format!("petrel-snap-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage");
        fs::write(&path, b"hello, this is not a snapshot at all, really").unwrap();
        let e = read_file::<Body>(&path).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("garbage") && text.contains("magic"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

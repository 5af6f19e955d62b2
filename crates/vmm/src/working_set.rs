//! A snapshot's working set: the pages of guest memory a restored guest touched, recorded in a
//! file beside the snapshot so that later restores can bring those pages in before the guest
//! asks for them (REAP: Ustiugov et al., "Benchmarking, Analysis, and Optimization of
//! Serverless Function Snapshots", ASPLOS 2021).
//!
//! The file is `<state file>.working-set` ([`file_for`]). It is a Petrel container
//! ([`petrel_snapshot`]: magic, format version, length, CRC-64) around a JSON body that names
//! its kind and its own version, the page size, the guest's memory size, the CRC-64 of the
//! state file it was recorded with, and the pages as runs of page numbers in the memory file
//! (`[first, count, written]`). It holds no memory contents: a wrong or stale file can only
//! make a restore bring in pages it does not need, never change what the guest reads. A file
//! for another snapshot, another memory size, a newer format or with bad bytes is ignored
//! with a notice ([`Notice::WorkingSetIgnored`](crate::Notice::WorkingSetIgnored)).
//!
//! What a restoring process does with it is its [`WorkingSetMode`].

use std::fs::File;
use std::path::{Path, PathBuf};

use petrel_guest_mem::{GuestRam, PageRun, PAGE};
use serde::{Deserialize, Serialize};

/// What a restore does about the snapshot's working set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkingSetMode {
    /// Bring the pages of a valid working-set file in before the guest runs; without a file,
    /// nothing (the default).
    #[default]
    Prefetch,
    /// Bring nothing in; when the VM ends, write the pages the guest touched since the
    /// restore to the working-set file.
    Record,
    /// Neither read nor write a working-set file.
    Off,
}

impl WorkingSetMode {
    /// The mode's name on the command line: `prefetch`, `record` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            WorkingSetMode::Prefetch => "prefetch",
            WorkingSetMode::Record => "record",
            WorkingSetMode::Off => "off",
        }
    }

    /// The mode named `name` ([`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            WorkingSetMode::Prefetch,
            WorkingSetMode::Record,
            WorkingSetMode::Off,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// The working-set file of the snapshot whose state file is `state_path`: the same path with
/// `.working-set` appended.
pub fn file_for(state_path: &Path) -> PathBuf {
    let mut name = state_path.as_os_str().to_owned();
    name.push(".working-set");
    PathBuf::from(name)
}

/// The body's `kind`.
const KIND: &str = "petrel working set";
/// The body's format version: what this Petrel writes and the newest it reads.
const VERSION: u32 = 1;

/// The body of a working-set file.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    kind: String,
    version: u32,
    page_size: u64,
    mem_size: u64,
    /// The CRC-64 of the state file's body (its header's), which identifies the snapshot.
    state_crc: u64,
    /// `[first page, pages, written (0 or 1)]`, in order.
    runs: Vec<[u64; 3]>,
}

/// Which snapshot a working set belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotId {
    /// Guest memory size in bytes.
    pub mem_size: u64,
    /// The CRC-64 in the state file's header.
    pub state_crc: u64,
}

/// A working set written by [`Recorder::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The file written.
    pub path: PathBuf,
    /// Pages in the set.
    pub pages: u64,
    /// Of those, pages the guest wrote.
    pub written: u64,
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "working set of {} pages ({:.1} MiB, {} written) saved to {}",
            self.pages,
            (self.pages * PAGE) as f64 / f64::from(1 << 20),
            self.written,
            self.path.display()
        )
    }
}

/// Writes `runs` as the working set of snapshot `id` to `path` (a temporary file beside it,
/// synced, then renamed over it).
pub fn write(path: &Path, id: SnapshotId, runs: &[PageRun]) -> Result<(), String> {
    let body = Body {
        kind: KIND.into(),
        version: VERSION,
        page_size: PAGE,
        mem_size: id.mem_size,
        state_crc: id.state_crc,
        runs: runs
            .iter()
            .map(|r| [r.first, r.count, u64::from(r.written)])
            .collect(),
    };
    petrel_snapshot::write_file(path, &body).map_err(|e| crate::error_chain(&e))
}

/// Reads the working set at `path` for snapshot `id`: `Ok(None)` when there is no such file,
/// `Err(why)` when it cannot be used (unreadable, damaged, another format, another snapshot).
pub fn read(path: &Path, id: SnapshotId) -> Result<Option<Vec<PageRun>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    decode(&bytes, id).map(Some)
}

/// The working set beside the state file `state_path` ([`file_for`]), for a guest of
/// `mem_size` bytes (a page-fault handler knows it from the memory file's length): [`read`]
/// with the snapshot's identity taken from the state file's header. `Ok(None)`: no working-set
/// file.
pub fn read_beside(state_path: &Path, mem_size: u64) -> Result<Option<Vec<PageRun>>, String> {
    let mut header = [0u8; petrel_snapshot::HEADER_LEN];
    std::fs::File::open(state_path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .map_err(|e| format!("cannot read the state file {}: {e}", state_path.display()))?;
    let state_crc = petrel_snapshot::read_header(&header)
        .map_err(|p| format!("the state file {}: {p}", state_path.display()))?
        .crc;
    read(
        &file_for(state_path),
        SnapshotId {
            mem_size,
            state_crc,
        },
    )
}

/// Checks and parses a working-set file's bytes for snapshot `id`.
fn decode(bytes: &[u8], id: SnapshotId) -> Result<Vec<PageRun>, String> {
    let body: Body = petrel_snapshot::decode(bytes).map_err(|e| match e {
        petrel_snapshot::Error::Invalid(problem) => problem.to_string(),
        other => crate::error_chain(&other),
    })?;
    if body.kind != KIND {
        return Err(format!("it is a {:?}, not a working set", body.kind));
    }
    if body.version > VERSION {
        return Err(format!(
            "its format version {} is newer than this Petrel's ({VERSION})",
            body.version
        ));
    }
    if body.page_size != PAGE {
        return Err(format!(
            "it counts {}-byte pages, not {PAGE}-byte ones",
            body.page_size
        ));
    }
    if body.mem_size != id.mem_size || body.state_crc != id.state_crc {
        return Err(format!(
            "it was recorded for another snapshot (memory {} bytes, state CRC {:#018x}; this \
             one: {} bytes, {:#018x})",
            body.mem_size, body.state_crc, id.mem_size, id.state_crc
        ));
    }
    let pages = id.mem_size / PAGE;
    let mut next = 0u64;
    let mut runs = Vec::with_capacity(body.runs.len());
    for [first, count, written] in body.runs {
        let end = first.checked_add(count).filter(|&e| e <= pages);
        if count == 0 || first < next || end.is_none() || written > 1 {
            return Err(format!(
                "it has a bad run [{first}, {count}, {written}]: runs must be in order, not \
                 overlap, and lie within the guest's {pages} pages"
            ));
        }
        next = first + count;
        runs.push(PageRun {
            first,
            count,
            written: written == 1,
        });
    }
    Ok(runs)
}

/// Records a restored guest's working set when it ends ([`WorkingSetMode::Record`]).
#[derive(Debug)]
pub struct Recorder {
    /// This process's `/proc/self/pagemap`, opened at the restore (a seccomp filter may forbid
    /// opening it later).
    pagemap: File,
    path: PathBuf,
    id: SnapshotId,
    /// Whether a set was saved on request ([`Recorder::record`]) before the VM ended.
    saved: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// A recorder that will write snapshot `id`'s working set to `path`.
    pub fn new(path: PathBuf, id: SnapshotId) -> std::io::Result<Self> {
        Ok(Recorder {
            pagemap: File::open("/proc/self/pagemap")?,
            path,
            id,
            saved: Default::default(),
        })
    }

    /// Writes the pages of `ram` this process has mapped now (see
    /// [`GuestRam::touched_pages`]) as the working set (again, if it was saved before).
    pub fn record(&self, ram: &GuestRam) -> Result<Recorded, String> {
        let fail = |why: String| {
            format!(
                "cannot save the working set to {}: {why}",
                self.path.display()
            )
        };
        let runs = ram
            .touched_pages(&self.pagemap)
            .map_err(|e| fail(crate::error_chain(&e)))?;
        write(&self.path, self.id, &runs).map_err(fail)?;
        self.saved.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Recorded {
            path: self.path.clone(),
            pages: runs.iter().map(|r| r.count).sum(),
            written: runs.iter().filter(|r| r.written).map(|r| r.count).sum(),
        })
    }

    /// Whether a working set was saved already (on request, before the VM ended): the end
    /// then leaves it as it is, since the pages touched up to that request were the ones asked
    /// for.
    pub fn saved(&self) -> bool {
        self.saved.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SnapshotId = SnapshotId {
        mem_size: 16 << 20,
        state_crc: 0x1234,
    };

    fn runs() -> Vec<PageRun> {
        vec![
            PageRun {
                first: 0,
                count: 3,
                written: false,
            },
            PageRun {
                first: 10,
                count: 1,
                written: true,
            },
        ]
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("petrel-ws-vmm-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn encoded(body: &Body) -> Vec<u8> {
        petrel_snapshot::encode(body).unwrap()
    }

    fn body() -> Body {
        Body {
            kind: KIND.into(),
            version: VERSION,
            page_size: PAGE,
            mem_size: ID.mem_size,
            state_crc: ID.state_crc,
            runs: vec![[0, 3, 0], [10, 1, 1]],
        }
    }

    #[test]
    fn modes_by_name() {
        for m in [
            WorkingSetMode::Prefetch,
            WorkingSetMode::Record,
            WorkingSetMode::Off,
        ] {
            assert_eq!(WorkingSetMode::from_name(m.name()), Some(m));
        }
        assert_eq!(WorkingSetMode::from_name("on"), None);
        assert_eq!(WorkingSetMode::default(), WorkingSetMode::Prefetch);
    }

    #[test]
    fn the_file_sits_beside_the_state_file() {
        assert_eq!(
            file_for(Path::new("/s/vm.state")),
            Path::new("/s/vm.state.working-set")
        );
    }

    #[test]
    fn written_sets_read_back_and_a_missing_file_is_none() {
        let path = dir().join("round-trip.working-set");
        write(&path, ID, &runs()).unwrap();
        assert_eq!(read(&path, ID).unwrap(), Some(runs()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read(&path, ID).unwrap(), None);
    }

    #[test]
    fn another_snapshot_or_format_is_refused_with_the_reason() {
        let other_crc = SnapshotId {
            state_crc: 0x9999,
            ..ID
        };
        let why = decode(&encoded(&body()), other_crc).unwrap_err();
        assert!(why.contains("another snapshot"), "{why}");
        let other_size = SnapshotId {
            mem_size: 32 << 20,
            ..ID
        };
        assert!(decode(&encoded(&body()), other_size)
            .unwrap_err()
            .contains("another snapshot"));
        let newer = Body {
            version: VERSION + 1,
            ..body()
        };
        assert!(decode(&encoded(&newer), ID).unwrap_err().contains("newer"));
        let huge = Body {
            page_size: 2 << 20,
            ..body()
        };
        assert!(decode(&encoded(&huge), ID).unwrap_err().contains("pages"));
        let kind = Body {
            kind: "something else".into(),
            ..body()
        };
        assert!(decode(&encoded(&kind), ID)
            .unwrap_err()
            .contains("not a working set"));
    }

    #[test]
    fn bad_runs_and_bad_bytes_are_refused() {
        let pages = ID.mem_size / PAGE;
        for bad in [
            vec![[5, 1, 0], [2, 1, 0]], // out of order
            vec![[0, 4, 0], [3, 1, 0]], // overlapping
            vec![[pages - 1, 2, 0]],    // past the end
            vec![[u64::MAX, 2, 0]],     // overflowing
            vec![[0, 0, 0]],            // empty
            vec![[0, 1, 2]],            // not a flag
        ] {
            let b = Body {
                runs: bad.clone(),
                ..body()
            };
            assert!(
                decode(&encoded(&b), ID).unwrap_err().contains("bad run"),
                "{bad:?}"
            );
        }
        let mut bytes = encoded(&body());
        *bytes.last_mut().unwrap() ^= 1;
        assert!(decode(&bytes, ID).unwrap_err().contains("checksum"));
        assert!(decode(b"PETRELSN", ID).is_err());
        // A state file is not a working set.
        let state = petrel_snapshot::encode(&serde_json::json!({"machine": {}})).unwrap();
        assert!(decode(&state, ID).is_err());
    }

    #[test]
    fn a_handler_finds_the_set_beside_the_state_file() {
        let state = dir().join("beside.state");
        let bytes = petrel_snapshot::encode(&serde_json::json!({"machine": 1})).unwrap();
        std::fs::write(&state, &bytes).unwrap();
        let id = SnapshotId {
            mem_size: ID.mem_size,
            state_crc: petrel_snapshot::read_header(&bytes).unwrap().crc,
        };
        assert_eq!(read_beside(&state, ID.mem_size).unwrap(), None);
        write(&file_for(&state), id, &runs()).unwrap();
        assert_eq!(read_beside(&state, ID.mem_size).unwrap(), Some(runs()));
        assert!(read_beside(&state, 2 * ID.mem_size)
            .unwrap_err()
            .contains("another snapshot"));
        assert!(read_beside(&dir().join("none.state"), ID.mem_size)
            .unwrap_err()
            .contains("cannot read the state file"));
        std::fs::remove_file(file_for(&state)).unwrap();
        std::fs::remove_file(&state).unwrap();
    }

    #[test]
    fn the_recorder_writes_what_the_guest_touched() {
        let ram = GuestRam::new(ID.mem_size).unwrap();
        ram.write(5 * PAGE, &[1]).unwrap();
        let path = dir().join("recorded.working-set");
        let recorded = Recorder::new(path.clone(), ID)
            .unwrap()
            .record(&ram)
            .unwrap();
        assert!(recorded.pages >= 1, "{recorded:?}");
        let runs = read(&path, ID).unwrap().unwrap();
        assert!(runs
            .iter()
            .any(|r| (r.first..r.first + r.count).contains(&5)));
        std::fs::remove_file(&path).unwrap();
    }
}

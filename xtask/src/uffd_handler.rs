//! Petrel's page-fault handler (the `uffd_handler` example of `petrel-vmm`) run beside a
//! restoring petrel, for the boot tests and the bench: started until it listens, waited for
//! once its petrel ended, and its closing line read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::host;

/// How long the handler may take to listen, and to end once its petrel ended.
pub const LIMIT: Duration = Duration::from_secs(10);

/// What the handler prints on stderr when its VMM closed the connection (it then exits 0):
/// `served N pages; M removals of B bytes` follows, then `; prefetched P pages` when it was
/// given a working set ([`Closing`]).
pub const CLOSING: &str = "the VMM closed the connection; served ";

/// What the closing line adds when the handler filled a working set ahead of the guest.
pub const PREFETCHED: &str = "; prefetched ";

/// The numbers of the handler's closing line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// Faults it filled.
    pub pages: u64,
    /// `UFFD_EVENT_REMOVE` events it read (a balloon giving memory back).
    pub removals: u64,
    /// The bytes those removals covered.
    pub removed_bytes: u64,
    /// Pages it filled ahead of the guest (0 without a working set).
    pub prefetched: u64,
}

impl Closing {
    /// Reads `...served N pages; M removals of B bytes[; prefetched P pages]` from `line`.
    pub fn parse(line: &str) -> Option<Closing> {
        let rest = &line[line.find(CLOSING)? + CLOSING.len()..];
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (pages, removals, bytes, prefetched) = match words.as_slice() {
            [p, "pages;", r, "removals", "of", b, "bytes"] => (p, r, b, "0"),
            [p, "pages;", r, "removals", "of", b, "bytes;", "prefetched", f, "pages"] => {
                (p, r, b, *f)
            }
            _ => return None,
        };
        Some(Closing {
            pages: pages.parse().ok()?,
            removals: removals.parse().ok()?,
            removed_bytes: bytes.parse().ok()?,
            prefetched: prefetched.parse().ok()?,
        })
    }
}

/// A running `uffd_handler SOCKET MEMFILE [STATE]`, killed (and reaped) if it is still running
/// when dropped, and its socket removed then.
pub struct Handler {
    child: host::Reaped,
    /// Where it listens.
    pub socket: PathBuf,
    log: PathBuf,
}

impl Handler {
    /// Starts `handler` listening on `socket` and serving `mem` (given `state`, it prefetches
    /// that snapshot's working set), its stderr in `log`, and waits (at most [`LIMIT`]) until
    /// it listens.
    pub fn start(
        handler: &Path,
        socket: PathBuf,
        mem: &Path,
        state: Option<&Path>,
        log: PathBuf,
    ) -> Result<Self> {
        let _ = fs::remove_file(&socket);
        let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(handler);
        cmd.arg(&socket).arg(mem).args(state);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
        let mut h = Handler {
            child: host::Reaped(child),
            socket,
            log,
        };
        let deadline = Instant::now() + LIMIT;
        while !h.socket.exists() {
            let ended = h.child.try_wait().ok().flatten();
            if ended.is_some() || Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "the page-fault handler did not listen on {} ({}); stderr: {}",
                    h.socket.display(),
                    ended.map_or("still running".into(), |s| s.to_string()),
                    h.stderr_tail()
                )));
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(h)
    }

    /// Waits (at most [`LIMIT`]) for the handler to end by itself, once its petrel closed the
    /// connection: it must exit 0 and have said [`CLOSING`]. Returns that line.
    pub fn finish(mut self) -> Result<String> {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() < LIMIT => thread::sleep(Duration::from_millis(5)),
                _ => break None,
            }
        };
        match status {
            Some(s) if s.success() => {
                let output = fs::read_to_string(&self.log).unwrap_or_default();
                output
                    .lines()
                    .find(|l| l.contains(CLOSING))
                    .map(|l| l.trim().to_owned())
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "the page-fault handler never said `{CLOSING}...`; stderr: {}",
                            self.stderr_tail()
                        ))
                    })
            }
            Some(s) => Err(Error::Other(format!(
                "the page-fault handler ended with {s} after its petrel; stderr: {}",
                self.stderr_tail()
            ))),
            // Dropping `self` kills it.
            None => Err(Error::Other(format!(
                "the page-fault handler still ran {} s after its petrel ended (killed); stderr: \
                 {}",
                LIMIT.as_secs(),
                self.stderr_tail()
            ))),
        }
    }

    /// The last lines of its stderr, for an error.
    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines = host::tail_lines(&text, 3);
        if lines.is_empty() {
            "(none)".into()
        } else {
            lines.join(" / ")
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        // The handler itself is killed, if it still runs, when `child` is dropped after this.
        let _ = fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_line_gives_its_pages_removals_and_prefetch() {
        let line = "uffd_handler: the VMM closed the connection; served 5021 pages; 1024 \
                    removals of 4194304 bytes";
        assert_eq!(
            Closing::parse(line),
            Some(Closing {
                pages: 5021,
                removals: 1024,
                removed_bytes: 4 << 20,
                prefetched: 0,
            })
        );
        let ahead = "uffd_handler: the VMM closed the connection; served 0 pages; 0 removals \
                     of 0 bytes; prefetched 3490 pages";
        assert_eq!(
            Closing::parse(ahead),
            Some(Closing {
                pages: 0,
                removals: 0,
                removed_bytes: 0,
                prefetched: 3490,
            })
        );
        assert!(ahead.contains(PREFETCHED));
        assert_eq!(
            Closing::parse("uffd_handler: the VMM closed the connection; served 12 pages"),
            None
        );
        assert_eq!(Closing::parse("Error: broken pipe"), None);
    }

    #[test]
    fn a_handler_is_waited_for_until_it_listens_and_its_end_judged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xtask-uffd-handler-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Stands in for uffd_handler (arguments SOCKET MEM): "listens" by creating SOCKET,
        // then ends as the name of MEM says.
        let fake = dir.join("fake_handler");
        fs::write(
            &fake,
            "#!/bin/sh\n\
             case \"$2\" in *never-listens) exit 2;; esac\n\
             : > \"$1\"\n\
             case \"$2\" in\n\
             *serves) echo 'uffd_handler: the VMM closed the connection; served 3 pages; 0 \
             removals of 0 bytes' >&2; exit 0;;\n\
             *fails) echo 'Error: broken pipe' >&2; exit 1;;\n\
             *) exit 0;;\n\
             esac\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let run = |how: &str| {
            let socket = dir.join(format!("{how}.sock"));
            let log = dir.join(format!("{how}.log"));
            Handler::start(&fake, socket.clone(), &dir.join(how), None, log)
                .and_then(|h| h.finish())
                .map(|said| (said, socket.exists()))
                .map_err(|e| e.to_string())
        };
        let closing = "uffd_handler: the VMM closed the connection; served 3 pages; 0 removals \
                       of 0 bytes";
        // Its socket is removed once it ended.
        assert_eq!(run("serves"), Ok((closing.to_owned(), false)));
        let e = run("fails").unwrap_err();
        assert!(
            e.contains("ended with exit status: 1") && e.contains("broken pipe"),
            "{e}"
        );
        let e = run("says-nothing").unwrap_err();
        assert!(e.contains("never said"), "{e}");
        let e = run("never-listens").unwrap_err();
        assert!(
            e.contains("did not listen") && e.contains("exit status: 2"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

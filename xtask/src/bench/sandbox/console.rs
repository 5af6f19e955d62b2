//! The guest's console on a VMM's stdout pipe: complete lines, each stamped with the moment
//! the read that completed it returned, and the console input on its stdin.

use std::io::{Read, Write};
use std::process::{ChildStdin, ChildStdout};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::bench::ms;
use crate::error::{Error, IoContext, Result};

/// Complete console lines and when each was read, from the chunks of a pipe.
#[derive(Debug, Default)]
pub(super) struct Lines {
    partial: Vec<u8>,
    done: Vec<(Instant, String)>,
}

impl Lines {
    /// Adds a chunk read at `at`: each line it completes is stamped `at` (trailing `\r` cut).
    pub(super) fn push(&mut self, at: Instant, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_owned();
                self.done.push((at, line));
                self.partial.clear();
            } else {
                self.partial.push(byte);
            }
        }
    }

    /// When the first complete line that `want` accepts was read.
    pub(super) fn find(&self, want: &dyn Fn(&str) -> bool) -> Option<Instant> {
        self.done.iter().find(|(_, l)| want(l)).map(|(at, _)| *at)
    }

    /// Every complete line, each with the milliseconds since `since` when it was read.
    pub(super) fn timed_text(&self, since: Instant) -> String {
        self.done
            .iter()
            .map(|(at, l)| format!("{:9.1} {l}\n", ms(at.saturating_duration_since(since))))
            .collect()
    }

    /// The last `n` complete lines, for error messages.
    pub(super) fn tail(&self, n: usize) -> String {
        let from = self.done.len().saturating_sub(n);
        self.done[from..]
            .iter()
            .map(|(_, l)| l.trim())
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// A guest console on a VMM's stdout pipe, read on a thread that stamps each chunk when
/// `read` returns it, and keeps reading until the VMM closes it.
pub(super) struct Console {
    chunks: Receiver<(Instant, Vec<u8>)>,
    pub(super) lines: Lines,
}

impl Console {
    pub(super) fn start(mut out: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A receiver gone still leaves the pipe drained until the VMM ends.
                        let _ = tx.send((Instant::now(), buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Self {
            chunks: rx,
            lines: Lines::default(),
        }
    }

    /// Waits up to `limit` for a line that `want` accepts; returns when it was read.
    pub(super) fn wait_for(
        &mut self,
        what: &str,
        want: &dyn Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.lines.find(want) {
                return Ok(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok((at, bytes)) => self.lines.push(at, &bytes),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Other(format!(
                        "no {what} on the console within {} s; it ends with `{}`",
                        limit.as_secs(),
                        self.lines.tail(3)
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Other(format!(
                        "the VMM closed the console before {what}; it ends with `{}`",
                        self.lines.tail(3)
                    )))
                }
            }
        }
    }
}

/// Writes `line` and a newline to the guest's console input.
pub(super) fn type_line(stdin: &mut ChildStdin, line: &str) -> Result<()> {
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| stdin.flush())
        .ctx(|| "writing to the VMM's stdin".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_when_completed() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let t2 = t0 + Duration::from_millis(9);
        let mut l = Lines::default();
        l.push(t0, b"[ 1.0] boot\r\nping 1\r\nans");
        l.push(t1, b"wer ping 1");
        let want = |s: &str| s == "answer ping 1";
        // The answer is not complete until its newline.
        assert_eq!(l.find(&want), None);
        l.push(t2, b"\r\nanswer ping 10\r\n");
        assert_eq!(l.find(&want), Some(t2));
        // The tty's echo of the typed line is not the answer; a longer line is not either.
        assert_eq!(l.find(&|s: &str| s == "ping 1"), Some(t0));
        assert_eq!(l.find(&|s: &str| s == "answer ping 1 "), None);
        assert_eq!(l.tail(2), "answer ping 1 / answer ping 10");
        assert!(l
            .timed_text(t0)
            .ends_with("      9.0 answer ping 1\n      9.0 answer ping 10\n"));
    }
}

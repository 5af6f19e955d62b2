//! Following a growing log file (a guest's serial log) for a line, and how often to look.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a running scenario's exit status and serial log are checked.
pub const POLL: Duration = Duration::from_millis(50);

/// Follows a growing log file and notes when a line first shows up in it.
#[derive(Debug)]
pub struct LogWatch {
    path: PathBuf,
    needle: &'static str,
    text: Vec<u8>,
    scanned: usize,
    seen_at: Option<Duration>,
}

impl LogWatch {
    /// Watches `path` (which need not exist yet) for `needle`.
    pub fn new(path: &Path, needle: &'static str) -> Self {
        Self {
            path: path.to_owned(),
            needle,
            text: Vec::new(),
            scanned: 0,
            seen_at: None,
        }
    }

    /// Reads what was added to the file since the last call; if `needle` is there for the
    /// first time, records `now` as the time it appeared.
    pub fn poll(&mut self, now: Duration) {
        if let Ok(mut f) = fs::File::open(&self.path) {
            let len = self.text.len() as u64;
            if f.seek(SeekFrom::Start(len)).is_ok() {
                let _ = f.read_to_end(&mut self.text);
            }
        }
        if self.seen_at.is_some() {
            return;
        }
        let needle = self.needle.as_bytes();
        // Start far enough back to catch a needle split across two reads.
        let from = self.scanned.saturating_sub(needle.len() - 1);
        if self.text[from..].windows(needle.len()).any(|w| w == needle) {
            self.seen_at = Some(now);
        }
        self.scanned = self.text.len();
    }

    /// When the needle first appeared, if it has.
    pub fn seen_at(&self) -> Option<Duration> {
        self.seen_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_watch_follows_a_growing_file() {
        let dir = std::env::temp_dir().join(format!("xtask-logwatch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        let _ = fs::remove_file(&path);
        let mut w = LogWatch::new(&path, "Run /init as init process");
        w.poll(Duration::from_secs(1));
        assert_eq!(w.seen_at(), None, "no file yet");
        fs::write(&path, "[ 1.0] Freeing memory\r\n[ 2.0] Run /ini").unwrap();
        w.poll(Duration::from_secs(2));
        assert_eq!(w.seen_at(), None, "half a line");
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"t as init process\r\n").unwrap();
        w.poll(Duration::from_secs(3));
        assert_eq!(
            w.seen_at(),
            Some(Duration::from_secs(3)),
            "split across reads"
        );
        std::io::Write::write_all(&mut f, b"Run /init as init process\r\n").unwrap();
        w.poll(Duration::from_secs(4));
        assert_eq!(
            w.seen_at(),
            Some(Duration::from_secs(3)),
            "the first time counts"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

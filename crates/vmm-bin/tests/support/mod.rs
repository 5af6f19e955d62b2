//! Helpers shared by the whole-VMM tests that start `petrel` as a process.

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A fresh directory under the system's temporary directory, removed with its contents when
/// dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/petrel-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("petrel-{tag}-{}-{n}", std::process::id()));
        // A leftover from a killed run with the same pid would make the test see stale files.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a failure leaves a directory in /tmp, which is no reason to fail a test.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` until `deadline`; kills it and returns `None` past that.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
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

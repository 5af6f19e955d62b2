//! Checks that run on the host while a boot-test VM runs: a [`LiveCheck`] talks to the
//! guest over a device (a TCP connection to its listener, a vsock connection) once the guest
//! says on its serial console that it is ready, in a thread of its own, with every wait
//! bounded by the scenario's deadline and the VMM's exit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::log_watch::{LogWatch, POLL};

/// What a [`LiveCheck`] is given.
#[derive(Debug)]
pub struct LiveContext<'a> {
    /// The guest's serial log, growing while the VM runs (it may not exist yet).
    pub serial: &'a Path,
    /// When to give up: the scenario's time limit.
    pub deadline: Instant,
    /// Set once the VMM has exited.
    pub stop: &'a AtomicBool,
    /// Sent once the check is ready for the guest (its host sockets are bound): the VMM
    /// starts only then (or once the check has ended).
    pub ready: mpsc::Sender<()>,
}

impl LiveContext<'_> {
    /// Whether to give up: the VMM exited or the deadline passed.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Waits until the serial log holds `needle`; `false` if [`Self::should_stop`] came
    /// first. The VMM's exit is noticed only after a last look at the log.
    pub fn wait_for(&self, needle: &'static str) -> bool {
        let mut watch = LogWatch::new(self.serial, needle);
        let start = Instant::now();
        loop {
            let stopping = self.should_stop();
            watch.poll(start.elapsed());
            if watch.seen_at().is_some() {
                return true;
            }
            if stopping {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until the serial log holds a whole line (its newline written) that starts with
    /// `prefix`, and returns it without its line ending; `None` if [`Self::should_stop`] came
    /// first. For a cue whose line carries values: the console writes a line a byte at a time,
    /// so a line seen by [`Self::wait_for`] may still be partly written.
    pub fn wait_for_line(&self, prefix: &str) -> Option<String> {
        loop {
            let stopping = self.should_stop();
            let text = std::fs::read(self.serial).unwrap_or_default();
            if let Some(line) = whole_line(&String::from_utf8_lossy(&text), prefix) {
                return Some(line);
            }
            if stopping {
                return None;
            }
            thread::sleep(POLL);
        }
    }
}

/// The first line of `text` that starts with `prefix` and is ended by a newline, without its
/// `\r\n` or `\n`.
fn whole_line(text: &str, prefix: &str) -> Option<String> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end_matches(['\r', '\n']))
        .find(|l| l.starts_with(prefix))
        .map(str::to_owned)
}

/// A check that runs on the host, in a thread of its own, while the VM runs: talking to the
/// guest over a device once the guest says (on its serial console) that it is ready.
pub trait LiveCheck: std::fmt::Debug + Send + Sync {
    /// Runs the check until it is done or [`LiveContext::should_stop`]; every wait in it is
    /// bounded. Returns notes when it passed, failures otherwise.
    fn run(&self, cx: &LiveContext<'_>) -> LiveResult;
}

/// How long the VMM's start waits for a [`LiveCheck`] to say it is ready.
const LIVE_READY_WAIT: Duration = Duration::from_secs(10);

/// What a [`LiveCheck`] returns.
pub type LiveResult = std::result::Result<Vec<String>, Vec<String>>;

/// A running [`LiveCheck`]: its thread and the flag that tells it the VMM exited (also set
/// when this is dropped, so that a scenario that failed to start does not leave it running).
pub struct LiveRun {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<LiveResult>>,
}

impl LiveRun {
    /// Starts `check` in a thread and waits (bounded) until it is ready for the guest.
    pub fn start(check: Arc<dyn LiveCheck>, serial: &Path, deadline: Instant) -> LiveRun {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, ready_rx) = mpsc::channel();
        let serial = serial.to_owned();
        let thread_stop = stop.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let thread_failed = failed.clone();
        let handle = thread::spawn(move || {
            let result = check.run(&LiveContext {
                serial: &serial,
                deadline,
                stop: &thread_stop,
                ready,
            });
            thread_failed.store(result.is_err(), Ordering::Relaxed);
            result
        });
        // An error here means the check ended (its failure is reported when joined) or is
        // slow to start; either way the VMM starts.
        let _ = ready_rx.recv_timeout(LIVE_READY_WAIT);
        LiveRun {
            stop,
            failed,
            handle: Some(handle),
        }
    }

    /// Whether the check has already ended with failures, while the VMM may still run.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Tells the check the VMM exited and takes its result.
    pub fn finish(mut self) -> LiveResult {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(result)) => result,
            _ => Err(vec!["the live check's thread panicked".into()]),
        }
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for a cue and says whether it came.
    #[derive(Debug)]
    struct Cue;

    impl LiveCheck for Cue {
        fn run(&self, cx: &LiveContext<'_>) -> LiveResult {
            let _ = cx.ready.send(());
            if cx.wait_for("GUEST-READY") {
                Ok(vec!["saw it".into()])
            } else {
                Err(vec!["no cue".into()])
            }
        }
    }

    fn log_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_check_sees_the_guests_cue() {
        let serial = log_path("cue.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        let run = LiveRun::start(Arc::new(Cue), &serial, deadline);
        std::fs::write(&serial, "boot\r\nGUEST-READY 5555\r\n").unwrap();
        // Until the check has seen it (the VMM would still be running).
        thread::sleep(Duration::from_millis(300));
        assert_eq!(run.finish(), Ok(vec!["saw it".to_owned()]));
        std::fs::remove_file(&serial).unwrap();
    }

    #[test]
    fn a_check_ends_with_the_vmm_or_the_deadline() {
        let serial = log_path("none.log");
        std::fs::write(&serial, "boot\r\n").unwrap();
        let start = Instant::now();
        let run = LiveRun::start(Arc::new(Cue), &serial, start + Duration::from_secs(60));
        assert_eq!(run.finish(), Err(vec!["no cue".to_owned()]));
        let run = LiveRun::start(Arc::new(Cue), &serial, Instant::now());
        thread::sleep(Duration::from_millis(100));
        assert_eq!(run.finish(), Err(vec!["no cue".to_owned()]));
        assert!(start.elapsed() < Duration::from_secs(10));
        std::fs::remove_file(&serial).unwrap();
    }

    #[test]
    fn a_cue_line_counts_once_its_newline_is_written() {
        assert_eq!(whole_line("boot\r\nCUE total=1 fr", "CUE"), None);
        assert_eq!(
            whole_line("boot\r\nCUE total=1 free=2\r\nmore", "CUE"),
            Some("CUE total=1 free=2".to_owned())
        );
        assert_eq!(whole_line("a CUE\n", "CUE"), None, "only at a line's start");

        let serial = log_path("line.log");
        std::fs::write(&serial, "boot\r\nCUE total=1 fr").unwrap();
        let stop = AtomicBool::new(false);
        let (ready, _) = mpsc::channel();
        let cx = LiveContext {
            serial: &serial,
            deadline: Instant::now() + Duration::from_secs(30),
            stop: &stop,
            ready,
        };
        let writer = {
            let serial = serial.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100));
                std::fs::write(&serial, "boot\r\nCUE total=1 free=2\r\n").unwrap();
            })
        };
        assert_eq!(
            cx.wait_for_line("CUE"),
            Some("CUE total=1 free=2".to_owned())
        );
        writer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(cx.wait_for_line("NEVER"), None);
        std::fs::remove_file(&serial).unwrap();
    }

    #[test]
    fn a_failed_check_says_so_before_the_vmm_ends() {
        let serial = log_path("failed.log");
        std::fs::write(&serial, "boot\r\n").unwrap();
        // The deadline passes at once: the check gives up while the "VMM" still runs.
        let run = LiveRun::start(Arc::new(Cue), &serial, Instant::now());
        let waited = Instant::now();
        while !run.failed() && waited.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(run.failed());
        assert_eq!(run.finish(), Err(vec!["no cue".to_owned()]));

        let run = LiveRun::start(
            Arc::new(Cue),
            &serial,
            Instant::now() + Duration::from_secs(30),
        );
        std::fs::write(&serial, "boot\r\nGUEST-READY\r\n").unwrap();
        thread::sleep(Duration::from_millis(300));
        assert!(!run.failed(), "a check that passed has not failed");
        assert_eq!(run.finish(), Ok(vec!["saw it".to_owned()]));
        std::fs::remove_file(&serial).unwrap();
    }
}

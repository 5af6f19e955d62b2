//! Running a VMM process and watching it: when its first output byte came, when it exited,
//! and how much memory it held.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::procfs::{self, MemSplit};
use crate::error::{Error, IoContext, Result};
use crate::host;

/// Kills a process (by its id, with SIGKILL) unless disarmed within a time limit.
#[derive(Debug)]
pub struct Watchdog {
    disarm: Option<Sender<()>>,
    thread: Option<JoinHandle<bool>>,
}

impl Watchdog {
    /// Starts the clock for process `pid`.
    pub fn arm(pid: u32, limit: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || match rx.recv_timeout(limit) {
            Err(RecvTimeoutError::Timeout) => {
                crate::host::signal_process(pid, libc::SIGKILL);
                true
            }
            _ => false,
        });
        Self {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the clock; returns whether the process had been killed.
    pub fn disarm(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
        self.thread
            .take()
            .is_some_and(|t| t.join().unwrap_or(false))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One timed run of a process whose stdout is read through a pipe.
#[derive(Debug)]
pub struct Timed {
    /// From just before the spawn to the first byte read from the pipe.
    pub first_byte: Option<Duration>,
    /// From just before the spawn to the process's exit, as `waitpid` saw it.
    pub exit: Duration,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// How it ended.
    pub status: ExitStatus,
}

/// Runs `cmd` with stdin from /dev/null, stdout through a pipe and stderr into `stderr_log`,
/// reading the pipe on this thread; kills it after `limit`.
pub fn run_timed(cmd: &mut Command, stderr_log: &Path, limit: Duration) -> Result<Timed> {
    let err = fs::File::create(stderr_log).ctx(|| format!("creating {}", stderr_log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(cmd)))?;
    let watchdog = Watchdog::arm(child.id(), limit);
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut first_byte = None;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first_byte.get_or_insert_with(|| start.elapsed());
                text.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).ctx(|| "reading the VMM's stdout".into()),
        }
    }
    let status = child.wait().ctx(|| "waiting for the VMM".into())?;
    let exit = start.elapsed();
    if watchdog.disarm() {
        return Err(Error::Other(format!(
            "`{}` ran past {} s and was killed",
            host::describe(cmd),
            limit.as_secs()
        )));
    }
    Ok(Timed {
        first_byte,
        exit,
        stdout: String::from_utf8_lossy(&text).into_owned(),
        status,
    })
}

/// Collects a child's stdout on a thread, for a caller that polls something else meanwhile.
#[derive(Debug)]
pub struct OutputCollector {
    text: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl OutputCollector {
    /// Starts reading `out` until it ends.
    pub fn start(mut out: ChildStdout) -> Self {
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&text);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = sink.lock() {
                    t.extend_from_slice(&buf[..n]);
                }
            }
        });
        Self {
            text,
            thread: Some(thread),
        }
    }

    /// What was read so far.
    pub fn text(&self) -> String {
        self.text
            .lock()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the end of the output (the writer exited) and returns all of it.
    pub fn finish(mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.text()
    }
}

/// What polling a process's memory found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemWatch {
    /// The largest `VmRSS` seen, KiB.
    pub max_rss_kib: u64,
    /// The last `VmHWM` read, KiB.
    pub last_hwm_kib: u64,
    /// The last smaps split into guest RAM and the rest.
    pub last_split: Option<MemSplit>,
    /// How many polls read `/proc/PID/status`.
    pub samples: u64,
    /// Whether the process exited while it was watched.
    pub exited: bool,
}

impl MemWatch {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/smaps` once, keeping what it finds.
    pub fn sample(&mut self, pid: u32, guest_kib: u64) {
        if let Some(st) = procfs::read_status(pid) {
            self.max_rss_kib = self.max_rss_kib.max(st.vm_rss_kib);
            self.last_hwm_kib = st.vm_hwm_kib;
            self.samples += 1;
        }
        if let Some(split) = procfs::read_smaps(pid).and_then(|m| procfs::split(&m, guest_kib)) {
            self.last_split = Some(split);
        }
    }
}

/// Polls `child`'s memory every `every` until it exits or `stop` (given the time since the
/// watch began) says to; the process is left running in the second case. Fails after
/// `limit`, killing the process.
pub fn watch_memory(
    child: &mut Child,
    guest_kib: u64,
    every: Duration,
    limit: Duration,
    mut stop: impl FnMut(Duration) -> bool,
) -> Result<MemWatch> {
    let pid = child.id();
    let start = Instant::now();
    let mut watch = MemWatch::default();
    loop {
        watch.sample(pid, guest_kib);
        if child
            .try_wait()
            .ctx(|| "waiting for the VMM".into())?
            .is_some()
        {
            watch.exited = true;
            return Ok(watch);
        }
        if stop(start.elapsed()) {
            return Ok(watch);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Other(format!(
                "the VMM (pid {pid}) ran past {} s and was killed",
                limit.as_secs()
            )));
        }
        thread::sleep(every);
    }
}

/// Whether `status` is how Petrel ends on SIGTERM: it stops the guest, cleans up, and dies by
/// the signal (README, "Using it"), as Firecracker does.
pub fn ended_by_sigterm(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGTERM)
}

/// Sends SIGTERM to `child` and waits up to `limit` for it to exit (then SIGKILL).
pub fn terminate(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    crate::host::signal_process(child.id(), libc::SIGTERM);
    let watchdog = Watchdog::arm(child.id(), limit);
    let status = child.wait().ctx(|| "waiting for the VMM".into())?;
    if watchdog.disarm() {
        return Err(Error::Other(format!(
            "the VMM ignored SIGTERM for {} s and was killed",
            limit.as_secs()
        )));
    }
    Ok(status)
}

/// The last `n` lines of a file, joined with ` / ` (for one-line error messages).
pub fn tail_of(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = host::tail_lines(&text, n)
        .into_iter()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "(no output on stderr)".to_owned()
    } else {
        lines.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_run_sees_first_byte_and_exit() {
        let log = std::env::temp_dir().join(format!("xtask-bench-{}.err", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.05; printf hello; sleep 0.1; echo oops >&2"]);
        let t = run_timed(&mut cmd, &log, Duration::from_secs(10)).unwrap();
        let first = t.first_byte.unwrap();
        assert!(first >= Duration::from_millis(50), "{first:?}");
        assert!(t.exit >= first + Duration::from_millis(100), "{t:?}");
        assert_eq!(t.stdout, "hello");
        assert!(t.status.success());
        assert_eq!(tail_of(&log, 3), "oops");
        let _ = fs::remove_file(&log);
    }

    #[test]
    fn timed_run_is_killed_at_the_limit() {
        let log = std::env::temp_dir().join(format!("xtask-bench-{}.kill", std::process::id()));
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let start = Instant::now();
        let e = run_timed(&mut cmd, &log, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("was killed"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let _ = fs::remove_file(&log);
    }

    #[test]
    fn memory_watch_until_exit_and_until_told() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let w = watch_memory(
            &mut child,
            1 << 30,
            Duration::from_millis(5),
            Duration::from_secs(10),
            |_| false,
        )
        .unwrap();
        assert!(w.exited && w.samples > 0 && w.last_hwm_kib > 0);
        assert_eq!(w.last_split, None, "sleep has no 1 TiB mapping");

        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let w = watch_memory(
            &mut child,
            1 << 30,
            Duration::from_millis(5),
            Duration::from_secs(10),
            |t| t >= Duration::from_millis(50),
        )
        .unwrap();
        assert!(!w.exited && w.max_rss_kib > 0);
        let status = terminate(&mut child, Duration::from_secs(5)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
}

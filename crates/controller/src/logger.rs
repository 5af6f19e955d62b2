//! Firecracker's logger: human-readable lines to a file or a named pipe, in Firecracker's format
//! (`docs/logger.md`), so that tools which parse Firecracker's log keep working:
//!
//! ```text
//! 2026-11-26T14:39:32.163117219 [anonymous-instance:main] Running Petrel ...
//! 2026-11-26T14:39:32.163117219 [my-vm:fc_api:INFO:crates/controller/src/controller.rs:120] ...
//! ```
//!
//! The level and the origin (file:line) appear only when asked for (`show_level`,
//! `show_log_origin`). Writes never block the caller: a pipe is opened non-blocking, and a line
//! that does not fit is dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A message's level: Firecracker's levels, most severe first (`Off` logs nothing).
pub use petrel_api::model::LogLevel as Level;

/// How a level appears in a line (the `log` crate's spelling, which Firecracker's lines use).
fn tag(level: Level) -> &'static str {
    match level {
        Level::Off => "OFF",
        Level::Error => "ERROR",
        Level::Warning => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

/// How lines look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    /// The instance id, first in the brackets.
    pub instance_id: String,
    /// Log messages at this level and more severe ones.
    pub level: Level,
    /// Add the level to each line.
    pub show_level: bool,
    /// Add the file and line that logged each line.
    pub show_log_origin: bool,
}

/// Where lines go, once configured (`--log-path` or `PUT /logger`).
#[derive(Debug)]
pub struct Logger {
    format: LogFormat,
    out: Mutex<File>,
    dropped: AtomicU64,
}

impl Logger {
    /// Opens `path` (see [`open_destination`]).
    pub fn open(path: &Path, format: LogFormat) -> std::io::Result<Logger> {
        let out = open_destination(path)?;
        Ok(Logger {
            format,
            out: Mutex::new(out),
            dropped: AtomicU64::new(0),
        })
    }

    /// Lines that could not be written (a full pipe, a failing disk).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether a message at `level` would be written.
    pub fn enabled(&self, level: Level) -> bool {
        level != Level::Off && level <= self.format.level
    }

    /// Writes one message, with where it comes from (`file!()`, `line!()`).
    pub fn log(&self, level: Level, file: &str, line: u32, message: &str) {
        if !self.enabled(level) {
            return;
        }
        let text = format_line(&self.format, level, file, line, message, &timestamp());
        let mut out = petrel_util::lock_ignoring_poison(&self.out);
        if out.write_all(text.as_bytes()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens a log or metrics destination without ever blocking on it: a regular file is created
/// if missing and appended to; a named pipe is opened read-write (so the open does not wait
/// for a reader and a write never raises SIGPIPE while none is there) and non-blocking (a
/// line that does not fit in a full pipe is dropped and counted by the caller).
pub fn open_destination(path: &Path) -> std::io::Result<File> {
    let is_fifo = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
        .unwrap_or(false);
    let mut options = OpenOptions::new();
    if is_fifo {
        options.read(true).write(true);
    } else {
        options.create(true).append(true);
    }
    options
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// One line in Firecracker's format, ending in a newline.
fn format_line(
    f: &LogFormat,
    level: Level,
    file: &str,
    line: u32,
    message: &str,
    time: &str,
) -> String {
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let mut prefix = format!("{}:{thread}", f.instance_id);
    if f.show_level {
        prefix.push(':');
        prefix.push_str(tag(level));
    }
    if f.show_log_origin {
        prefix.push_str(&format!(":{file}:{line}"));
    }
    format!("{time} [{prefix}] {message}\n")
}

/// The local time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`, Firecracker's timestamp.
fn timestamp() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    // SAFETY: a zeroed tm is a valid out-parameter for localtime_r.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads the time_t and writes the tm, both ours.
    unsafe { libc::localtime_r(&ts.tv_sec, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ts.tv_nsec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(show_level: bool, show_log_origin: bool) -> LogFormat {
        LogFormat {
            instance_id: "vm1".into(),
            level: Level::Info,
            show_level,
            show_log_origin,
        }
    }

    #[test]
    fn lines_follow_firecrackers_format() {
        let t = "2026-11-26T14:39:32.163117219";
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let plain = format_line(&fmt(false, false), Level::Info, "a.rs", 7, "hello", t);
        assert_eq!(plain, format!("{t} [vm1:{thread}] hello\n"));
        let full = format_line(&fmt(true, true), Level::Warning, "a.rs", 7, "hello", t);
        assert_eq!(full, format!("{t} [vm1:{thread}:WARN:a.rs:7] hello\n"));
        let ts = timestamp();
        assert_eq!(ts.len(), t.len(), "{ts}");
        assert_eq!(&ts[10..11], "T");
    }

    #[test]
    fn levels_parse_and_filter() {
        assert_eq!(Level::parse("warning"), Some(Level::Warning));
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("loud"), None);
        let dir = std::env::temp_dir().join(format!("petrel-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let logger = Logger::open(&path, fmt(true, false)).unwrap();
        logger.log(Level::Info, "x.rs", 1, "kept");
        logger.log(Level::Debug, "x.rs", 2, "filtered out");
        logger.log(Level::Error, "x.rs", 3, "kept too");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(":INFO] kept\n") && text.contains(":ERROR] kept too\n"));
        // A named pipe with no reader: the open does not wait, and the line waits in the pipe.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let logger = Logger::open(&fifo, fmt(false, false)).unwrap();
        logger.log(Level::Info, "x.rs", 1, "into the pipe");
        assert_eq!(logger.dropped(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

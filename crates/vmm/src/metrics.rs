//! `--metrics PATH`: while the VM runs, the file is rewritten every [`METRICS_INTERVAL`] with the
//! boot timeline so far and KVM's counters; when the VM ends, the caller writes the final
//! document (with Petrel's exit statistics). Each write replaces the file atomically (a
//! temporary file renamed over it), so a reader never sees half a document.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use crate::kvm_view::KvmStatsReaders;
use crate::timeline::Timeline;

/// How often the metrics file is rewritten while the VM runs.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Writes `contents` to `path` through a temporary file renamed over it.
pub fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// The event-loop subscriber that rewrites the metrics file on a timer.
#[derive(Debug)]
pub struct PeriodicMetrics {
    path: PathBuf,
    timer: TimerFd,
    timeline: Timeline,
    kvm: Arc<Mutex<KvmStatsReaders>>,
    /// Writes that failed (the final write at exit reports its own error).
    pub failures: u64,
}

impl PeriodicMetrics {
    /// A subscriber writing to `path` every `interval`.
    pub fn new(
        path: PathBuf,
        interval: Duration,
        timeline: Timeline,
        kvm: Arc<Mutex<KvmStatsReaders>>,
    ) -> io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(interval, Some(interval))?;
        Ok(PeriodicMetrics {
            path,
            timer,
            timeline,
            kvm,
            failures: 0,
        })
    }

    /// The document written while the VM runs.
    pub fn snapshot(&self) -> String {
        let kvm = self.kvm.lock().ok().and_then(|mut k| k.read());
        let doc = serde_json::json!({
            "running": true,
            "timeline": self.timeline.events(),
            "kvm": kvm,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

impl MutEventSubscriber for PeriodicMetrics {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new_raw(self.timer.as_raw_fd(), EventSet::IN))
            .is_err()
        {
            self.failures += 1;
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        if write_atomically(&self.path, &self.snapshot()).is_err() {
            self.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file() {
        let p = std::env::temp_dir().join(format!("petrel-metrics-{}.json", std::process::id()));
        write_atomically(&p, "one").unwrap();
        write_atomically(&p, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let mut tmp = p.as_os_str().to_owned();
        tmp.push(".tmp");
        assert!(!PathBuf::from(tmp).exists());
        std::fs::remove_file(&p).unwrap();
    }
}

//! Firecracker's metrics: one JSON object per line, appended to `--metrics-path` (or the path
//! of `PUT /metrics`) every [`METRICS_PERIOD`], on the `FlushMetrics` action and when the VM
//! ends. The top-level groups are Firecracker's where Petrel has the figure (`api_server`,
//! `block`, `net`, `vcpu`, `vmm`, `latencies_us`, `vsock`, `entropy`, `uart`, `i8042`); the
//! counters inside are Petrel's own, cumulative since start (Firecracker's are mostly deltas
//! since the last flush), and the `petrel` group carries the whole exit statistics document.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_vmm::StatsDocument;
use serde_json::{json, Map, Value};
use vmm_sys_util::timerfd::TimerFd;

/// How often the metrics line is written while the VM runs (Firecracker's period).
pub const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// What the API thread and the controller counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiCounters {
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with an error.
    pub faults: u64,
    /// How long the last pause took, in microseconds.
    pub last_pause_us: Option<u64>,
    /// How long the last resume took, in microseconds.
    pub last_resume_us: Option<u64>,
    /// How long `InstanceStart` took (build and start), in microseconds.
    pub instance_start_us: Option<u64>,
    /// How long the last Full `PUT /snapshot/create` took, in microseconds.
    pub last_full_snapshot_us: Option<u64>,
    /// How long the last Diff `PUT /snapshot/create` took, in microseconds.
    pub last_diff_snapshot_us: Option<u64>,
    /// How long `PUT /snapshot/load` took (restore and start), in microseconds.
    pub last_load_snapshot_us: Option<u64>,
    /// Log lines that could not be written.
    pub missed_log_count: u64,
    /// Metrics lines that could not be written.
    pub missed_metrics_count: u64,
}

/// The metrics destination.
#[derive(Debug)]
pub struct MetricsSink {
    out: File,
    /// Lines that could not be written (a full pipe, a failing disk).
    pub failures: u64,
    /// Lines written.
    pub lines: u64,
}

impl MetricsSink {
    /// Opens `path` (a file or a named pipe; see [`crate::logger::open_destination`]).
    pub fn open(path: &Path) -> std::io::Result<MetricsSink> {
        let out = crate::logger::open_destination(path)?;
        Ok(MetricsSink {
            out,
            failures: 0,
            lines: 0,
        })
    }

    /// Appends one document as one line.
    pub fn write(&mut self, doc: &Value) {
        let mut line = doc.to_string();
        line.push('\n');
        if self.out.write_all(line.as_bytes()).is_ok() {
            self.lines += 1;
        } else {
            self.failures += 1;
        }
    }
}

/// Sums the counters of every device of one kind (`virtio-blk`, ...) into one group.
fn device_group(stats: &StatsDocument, name: &str) -> Value {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    let mut devices = 0u64;
    for d in stats.virtio.iter().filter(|d| d.name == name) {
        devices += 1;
        for (k, v) in &d.counters {
            *sums.entry(k.clone()).or_default() += v;
        }
    }
    let mut group: Map<String, Value> = sums.into_iter().map(|(k, v)| (k, json!(v))).collect();
    group.insert("devices".into(), json!(devices));
    Value::Object(group)
}

/// The exits of one reason, all vCPUs together.
fn exits(stats: &StatsDocument, reason: &str) -> u64 {
    stats
        .total
        .by_reason
        .iter()
        .find(|(r, _)| r == reason)
        .map_or(0, |(_, s)| s.count)
}

/// One metrics document, as Firecracker's groups with Petrel's figures; before the guest
/// starts (`stats` is `None`) only the API's groups.
pub fn document(
    stats: Option<&StatsDocument>,
    api: &ApiCounters,
    start_time_us: Option<u64>,
    start_time_cpu_us: Option<u64>,
) -> Value {
    let utc_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut doc = json!({
        "utc_timestamp_ms": utc_ms,
        "api_server": {
            "process_startup_time_us": start_time_us,
            "process_startup_time_cpu_us": start_time_cpu_us,
            "requests": api.requests,
            "faults": api.faults,
        },
        "logger": {
            "missed_log_count": api.missed_log_count,
            "missed_metrics_count": api.missed_metrics_count,
        },
        "latencies_us": {
            "instance_start": api.instance_start_us,
            "pause_vm": api.last_pause_us,
            "resume_vm": api.last_resume_us,
            "full_create_snapshot": api.last_full_snapshot_us,
            "diff_create_snapshot": api.last_diff_snapshot_us,
            "load_snapshot": api.last_load_snapshot_us,
        },
    });
    let Some(stats) = stats else { return doc };
    let vm = json!({
        "block": device_group(stats, "virtio-blk"),
        "net": device_group(stats, "virtio-net"),
        "vsock": device_group(stats, "virtio-vsock"),
        "entropy": device_group(stats, "virtio-rng"),
        "balloon": device_group(stats, "virtio-balloon"),
        "vcpu": {
            "exits": stats.total.total,
            "exit_io_in": exits(stats, "io-in"),
            "exit_io_out": exits(stats, "io-out"),
            "exit_mmio_read": exits(stats, "mmio-read"),
            "exit_mmio_write": exits(stats, "mmio-write"),
            "int3_injected": stats.int3_injected,
            "fwait_skipped": stats.fwait_skipped,
        },
        "vmm": {
            "unclaimed_port_reads": stats.unclaimed_port_reads,
            "unclaimed_port_writes": stats.unclaimed_port_writes,
            "unclaimed_mmio_reads": stats.unclaimed_mmio_reads,
            "unclaimed_mmio_writes": stats.unclaimed_mmio_writes,
        },
        "petrel": stats,
    });
    if let (Value::Object(d), Value::Object(v)) = (&mut doc, vm) {
        d.extend(v);
    }
    doc
}

/// Calls `tick` every [`METRICS_PERIOD`] on the VM's event loop.
pub struct MetricsTimer<F: FnMut() + Send> {
    timer: TimerFd,
    tick: F,
}

impl<F: FnMut() + Send> std::fmt::Debug for MetricsTimer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsTimer").finish_non_exhaustive()
    }
}

impl<F: FnMut() + Send> MetricsTimer<F> {
    /// A timer calling `tick` every `period`.
    pub fn new(period: Duration, tick: F) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(period, Some(period))?;
        Ok(MetricsTimer { timer, tick })
    }
}

impl<F: FnMut() + Send> MutEventSubscriber for MetricsTimer<F> {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.timer.as_raw_fd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Reading the expiration count clears the timer (it was created blocking, but it is
        // readable: epoll said so).
        if self.timer.wait().is_ok() {
            (self.tick)();
        }
    }
}

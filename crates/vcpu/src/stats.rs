//! Exit statistics: how many exits of each reason, port and MMIO address reached Petrel, and
//! how long Petrel spent handling them (from `KVM_RUN` returning to the next entry).
//!
//! Times go into log-linear histograms (8 buckets per power of two, so a quantile is within
//! 12.5% of the true value) with exact count, min and max. Memory is bounded: at most
//! [`MAX_KEYS`] distinct ports and MMIO addresses are tracked one by one; a guest that touches
//! more is counted under "other".

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Most distinct ports (and, separately, MMIO addresses) tracked individually.
pub const MAX_KEYS: usize = 256;
const SUB_BUCKETS: u32 = 8;
const EXACT: u64 = 16;
const BUCKETS: usize = (EXACT as usize) + (64 - 4) * SUB_BUCKETS as usize;

/// A histogram of durations in nanoseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Box<[u32]>,
    count: u64,
    min: u64,
    max: u64,
    sum: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS].into(),
            count: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < EXACT {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= 4
    let sub = (ns >> (exp - 3)) & u64::from(SUB_BUCKETS - 1);
    EXACT as usize + ((exp - 4) * SUB_BUCKETS) as usize + sub as usize
}

fn bucket_floor(idx: usize) -> u64 {
    if idx < EXACT as usize {
        return idx as u64;
    }
    let rel = (idx - EXACT as usize) as u32;
    let exp = rel / SUB_BUCKETS + 4;
    let sub = u64::from(rel % SUB_BUCKETS);
    (1u64 << exp) | (sub << (exp - 3))
}

impl Histogram {
    /// Adds one duration.
    pub fn record(&mut self, ns: u64) {
        let b = &mut self.buckets[bucket_of(ns)];
        *b = b.saturating_add(1);
        self.count += 1;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
        self.sum = self.sum.saturating_add(ns);
    }

    /// Adds all of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Number of durations recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0.0..=1.0), as the floor of its bucket, clamped to [min, max].
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return bucket_floor(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// The summary shown to users.
    pub fn summary(&self) -> TimeSummary {
        TimeSummary {
            count: self.count,
            min_ns: if self.count == 0 { 0 } else { self.min },
            median_ns: self.quantile(0.5),
            p99_ns: self.quantile(0.99),
            max_ns: self.max,
            total_ns: self.sum,
        }
    }
}

/// Count and handling-time summary of one group of exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeSummary {
    /// Number of exits.
    pub count: u64,
    /// Fastest handling, ns.
    pub min_ns: u64,
    /// Median handling, ns.
    pub median_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Slowest handling, ns.
    pub max_ns: u64,
    /// Sum of all handling times, ns.
    pub total_ns: u64,
}

/// Which port or MMIO address an exit went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKey {
    /// A port (`in` or `out`).
    Port(u16),
    /// An MMIO address.
    Mmio(u64),
}

/// Exit statistics of one vCPU (or, merged, of a VM).
#[derive(Debug, Clone, Default)]
pub struct ExitStats {
    by_reason: BTreeMap<&'static str, Histogram>,
    by_port: HashMap<u16, Histogram>,
    by_mmio: HashMap<u64, Histogram>,
    other_ports: Histogram,
    other_mmio: Histogram,
}

impl ExitStats {
    /// Records one exit of `reason`, to `key` if it was I/O, handled in `ns` nanoseconds.
    pub fn record(&mut self, reason: &'static str, key: Option<ExitKey>, ns: u64) {
        self.by_reason.entry(reason).or_default().record(ns);
        match key {
            Some(ExitKey::Port(p)) => {
                record_bounded(&mut self.by_port, p, &mut self.other_ports, ns)
            }
            Some(ExitKey::Mmio(a)) => {
                record_bounded(&mut self.by_mmio, a, &mut self.other_mmio, ns)
            }
            None => {}
        }
    }

    /// Adds all of `other` (another vCPU's statistics).
    pub fn merge(&mut self, other: &ExitStats) {
        for (k, h) in &other.by_reason {
            self.by_reason.entry(k).or_default().merge(h);
        }
        for (k, h) in &other.by_port {
            self.by_port.entry(*k).or_default().merge(h);
        }
        for (k, h) in &other.by_mmio {
            self.by_mmio.entry(*k).or_default().merge(h);
        }
        self.other_ports.merge(&other.other_ports);
        self.other_mmio.merge(&other.other_mmio);
    }

    /// Total exits that reached Petrel.
    pub fn total(&self) -> u64 {
        self.by_reason.values().map(Histogram::count).sum()
    }

    /// Exits of one reason.
    pub fn count_of(&self, reason: &str) -> u64 {
        self.by_reason.get(reason).map_or(0, Histogram::count)
    }

    /// Exits to one port.
    pub fn count_of_port(&self, port: u16) -> u64 {
        self.by_port.get(&port).map_or(0, Histogram::count)
    }

    /// A report: every reason, and the `top` busiest ports and MMIO addresses.
    pub fn report(&self, top: usize) -> ExitReport {
        let by_reason = self
            .by_reason
            .iter()
            .map(|(k, h)| ((*k).to_string(), h.summary()))
            .collect();
        let by_port = top_n(&self.by_port, top, &self.other_ports, |p| {
            format!("{p:#06x}")
        });
        let by_mmio = top_n(&self.by_mmio, top, &self.other_mmio, |a| format!("{a:#x}"));
        ExitReport {
            total: self.total(),
            by_reason,
            by_port,
            by_mmio,
        }
    }
}

fn record_bounded<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Histogram>,
    key: K,
    other: &mut Histogram,
    ns: u64,
) {
    if let Some(h) = map.get_mut(&key) {
        h.record(ns);
    } else if map.len() < MAX_KEYS {
        map.entry(key).or_default().record(ns);
    } else {
        other.record(ns);
    }
}

fn top_n<K: Copy + Ord>(
    map: &HashMap<K, Histogram>,
    n: usize,
    other: &Histogram,
    name: impl Fn(K) -> String,
) -> Vec<(String, TimeSummary)> {
    let mut v: Vec<(K, &Histogram)> = map.iter().map(|(k, h)| (*k, h)).collect();
    v.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(&b.0)));
    let mut out: Vec<(String, TimeSummary)> = v
        .into_iter()
        .take(n)
        .map(|(k, h)| (name(k), h.summary()))
        .collect();
    if other.count() > 0 {
        out.push(("other".to_string(), other.summary()));
    }
    out
}

/// Exit statistics ready to print or serialise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitReport {
    /// Exits that reached Petrel.
    pub total: u64,
    /// Per exit reason.
    pub by_reason: Vec<(String, TimeSummary)>,
    /// Busiest ports first.
    pub by_port: Vec<(String, TimeSummary)>,
    /// Busiest MMIO addresses first.
    pub by_mmio: Vec<(String, TimeSummary)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for ns in (0..100_000u64).step_by(7).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(b < BUCKETS);
            assert!(b >= last);
            last = b;
            assert!(bucket_floor(b) <= ns);
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record(ns * 100);
        }
        let s = h.summary();
        assert_eq!((s.count, s.min_ns, s.max_ns), (1000, 100, 100_000));
        let med = s.median_ns as f64;
        assert!((med - 50_000.0).abs() / 50_000.0 < 0.125, "{med}");
        let p99 = s.p99_ns as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.125, "{p99}");
    }

    #[test]
    fn ports_beyond_the_bound_go_to_other() {
        let mut st = ExitStats::default();
        for p in 0..(MAX_KEYS as u16 + 10) {
            st.record("io-out", Some(ExitKey::Port(p)), 5);
        }
        let r = st.report(3);
        assert_eq!(r.total, MAX_KEYS as u64 + 10);
        assert_eq!(r.by_port.len(), 4);
        assert_eq!(r.by_port[3].0, "other");
        assert_eq!(r.by_port[3].1.count, 10);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = ExitStats::default();
        let mut b = ExitStats::default();
        a.record("hlt", None, 10);
        b.record("hlt", None, 30);
        b.record("io-in", Some(ExitKey::Port(0x71)), 20);
        a.merge(&b);
        assert_eq!(a.count_of("hlt"), 2);
        assert_eq!(a.count_of_port(0x71), 1);
        let r = a.report(10);
        assert_eq!(r.by_reason[0].1.min_ns, 10);
        assert_eq!(r.by_reason[0].1.max_ns, 30);
    }
}

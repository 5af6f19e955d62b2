//! The boot timeline: monotonic timestamps of what happened when, from the moment `petrel`
//! started to the moment it ends, printed by `--boot-timer` and written by `--metrics`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Most events kept from the guest (boot-timer writes, POST codes): a guest can write these in
/// a loop, and the timeline must stay small.
pub const MAX_GUEST_EVENTS: usize = 64;

/// One event on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEvent {
    /// What happened.
    pub what: String,
    /// Microseconds since the process started.
    pub at_us: u64,
}

/// A shared, bounded list of timestamped events.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    events: Arc<Mutex<Vec<(String, Instant)>>>,
    guest_events: Arc<Mutex<usize>>,
}

impl Timeline {
    /// A timeline whose zero is `start` (the process's start, as early as `main` can take it).
    pub fn new(start: Instant) -> Self {
        Timeline {
            start,
            events: Arc::new(Mutex::new(vec![("process start".to_string(), start)])),
            guest_events: Arc::new(Mutex::new(0)),
        }
    }

    /// Records `what` now.
    pub fn mark(&self, what: &str) {
        self.mark_at(what, Instant::now());
    }

    /// Records `what` at `at`.
    pub fn mark_at(&self, what: &str, at: Instant) {
        if let Ok(mut e) = self.events.lock() {
            e.push((what.to_string(), at));
        }
    }

    /// Records an event the guest caused, dropping it once [`MAX_GUEST_EVENTS`] were kept.
    pub fn mark_guest(&self, what: String, at: Instant) {
        let Ok(mut n) = self.guest_events.lock() else {
            return;
        };
        if *n < MAX_GUEST_EVENTS {
            *n += 1;
            if let Ok(mut e) = self.events.lock() {
                e.push((what, at));
            }
        }
    }

    /// The events in time order, relative to the start.
    pub fn events(&self) -> Vec<TimelineEvent> {
        let mut v: Vec<(String, Instant)> =
            self.events.lock().map(|e| e.clone()).unwrap_or_default();
        v.sort_by_key(|(_, at)| *at);
        v.into_iter()
            .map(|(what, at)| TimelineEvent {
                what,
                at_us: at.saturating_duration_since(self.start).as_micros() as u64,
            })
            .collect()
    }

    /// The timeline as a table: time since start, time since the previous event, what.
    pub fn table(&self) -> String {
        let mut out = String::from("boot timeline (ms since process start, +ms since previous)\n");
        let mut prev = 0u64;
        for e in self.events() {
            out.push_str(&format!(
                "  {:>10.3}  +{:>9.3}  {}\n",
                e.at_us as f64 / 1000.0,
                e.at_us.saturating_sub(prev) as f64 / 1000.0,
                e.what
            ));
            prev = e.at_us;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_are_sorted_and_relative() {
        let start = Instant::now();
        let t = Timeline::new(start);
        t.mark_at("later", start + Duration::from_millis(5));
        t.mark_at("earlier", start + Duration::from_millis(2));
        let e = t.events();
        let names: Vec<&str> = e.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(names, ["process start", "earlier", "later"]);
        assert_eq!(e[1].at_us, 2000);
        assert!(t.table().contains("+    3.000  later"), "{}", t.table());
    }

    #[test]
    fn guest_events_are_bounded() {
        let t = Timeline::new(Instant::now());
        for i in 0..(MAX_GUEST_EVENTS + 10) {
            t.mark_guest(format!("post code {i}"), Instant::now());
        }
        assert_eq!(t.events().len(), 1 + MAX_GUEST_EVENTS);
    }
}

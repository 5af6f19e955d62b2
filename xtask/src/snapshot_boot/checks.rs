//! What a restore of `snapshot-linux-blk` must show: the guest's counts on its console and
//! disk, its clock and its new VM generation ID, the restored disk's writes, the working set
//! recorded or brought in, and the page-fault handler's end.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::counts::{check_sequence, console_counts, file_counts};
use super::{secs, Backend, COUNT_FILE, COUNT_TO, CRNG_READY, CRNG_VM_FORK, SNAPSHOT_AT};
use crate::error::Result;
use crate::scenario::Verdict;
use crate::uffd_handler::{self, Closing, CLOSING};
use crate::virtio_boot::{device_counter, read_metrics};

/// What petrel says once it saved the working set (`--working-set record`).
pub const WORKING_SET_SAVED: &str = "working set of ";

/// What petrel says once it prefetched the working set.
pub const WORKING_SET_PREFETCHED: &str = "prefetched the working set";

/// Checks the restore's output (`outputs`: petrel's, and the page-fault handler's) for its
/// working-set line: the recording restore must have saved the set, the prefetching one and
/// the handler must have brought it in (the guest's checks are the same every way).
pub fn check_working_set(backend: Backend, outputs: &str, v: &mut Verdict) {
    let wanted = match backend {
        Backend::File => WORKING_SET_SAVED,
        Backend::FilePrefetched => WORKING_SET_PREFETCHED,
        Backend::Uffd => uffd_handler::PREFETCHED,
    };
    match outputs.lines().find(|l| l.contains(wanted)) {
        Some(line) => v.notes.push(line.trim().to_owned()),
        None => v
            .failures
            .push(format!("petrel did not say `{wanted}` (--working-set)")),
    }
}

/// Judges how the page-fault handler ended, from [`Handler::finish`]: it must have exited 0
/// saying it served or prefetched pages ([`CLOSING`]). Returns how it ended, in a few words.
///
/// [`Handler::finish`]: crate::uffd_handler::Handler::finish
pub fn judge_handler(finished: Result<String>, v: &mut Verdict) -> String {
    let said = match finished {
        Ok(said) => said,
        Err(e) => {
            v.failures.push(e.to_string());
            return e.to_string();
        }
    };
    match Closing::parse(&said) {
        // A prefetch that covered everything the guest touched leaves no fault to serve: pages
        // put in place ahead of the guest count as well as pages served on a fault.
        Some(c) if c.pages + c.prefetched > 0 => {}
        Some(_) => v
            .failures
            .push("the page-fault handler served no page and prefetched none".into()),
        None => v.failures.push(format!(
            "the page-fault handler's closing line is not `...{CLOSING}N pages; M removals of B \
             bytes`: {said}"
        )),
    }
    v.notes
        .push(format!("the page-fault handler said `{said}`"));
    format!("exit 0: {said}")
}

/// The counts on the console (both logs, one after the other) and in the count file on the
/// disk: each 1..[`COUNT_TO`], once and in order.
pub fn check_counts(before: &str, after: &str, image: &Path, v: &mut Verdict) {
    let last_before = console_counts(before).last().map(|c| c.i);
    let first_after = console_counts(after).first().map(|c| c.i);
    let counts: Vec<u32> = console_counts(&format!("{before}{after}"))
        .iter()
        .map(|c| c.i)
        .collect();
    match check_sequence(&counts, COUNT_TO) {
        Ok(()) => v.notes.push(format!(
            "console: 1..{COUNT_TO} once each and in order, across the snapshot (last count \
             before it {last_before:?}, first after the restore {first_after:?})"
        )),
        Err(e) => v.failures.push(format!(
            "the console's counts are wrong: {e} (last count before the snapshot \
             {last_before:?}, first after the restore {first_after:?})"
        )),
    }
    match read_count_file(image).and_then(|t| file_counts(&t)) {
        Ok(counts) => match check_sequence(&counts, COUNT_TO) {
            Ok(()) => v.notes.push(format!(
                "the host read {COUNT_FILE} from the disk: 1..{COUNT_TO} once each and in order"
            )),
            Err(e) => v
                .failures
                .push(format!("{COUNT_FILE} on the disk is wrong: {e}")),
        },
        Err(e) => v.failures.push(format!("{COUNT_FILE} on the disk: {e}")),
    }
}

/// The VM generation ID: the first boot's random number generator was seeded before the
/// snapshot ([`CRNG_READY`] before [`SNAPSHOT_AT`]) and not reseeded for a fork, and the
/// restored guest noticed its new generation ID ([`CRNG_VM_FORK`]).
pub fn check_vm_generation(before: &str, after: &str, v: &mut Verdict) {
    let ready = before.find(CRNG_READY);
    let snapshot = before.find(SNAPSHOT_AT);
    match (ready, snapshot) {
        (Some(r), Some(s)) if r < s => {}
        _ => v.failures.push(format!(
            "the first boot did not print `{CRNG_READY}` before `{SNAPSHOT_AT}`: the VM \
             generation ID's reseed cannot show"
        )),
    }
    if before.contains(CRNG_VM_FORK) {
        v.failures.push(format!(
            "the first boot printed `{CRNG_VM_FORK}` before any snapshot"
        ));
    }
    match after.lines().find(|l| l.contains(CRNG_VM_FORK)) {
        Some(line) => v.notes.push(format!(
            "the restored guest noticed its new VM generation ID: {}",
            line.trim_end_matches('\r').trim()
        )),
        None => v.failures.push(format!(
            "the restored guest never printed `{CRNG_VM_FORK}`: no new VM generation ID, or \
             no notification"
        )),
    }
}

/// The times of the kernel's log lines (`[   12.345678] ...`), in order, in seconds.
pub fn printk_times(serial: &str) -> Vec<f64> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start_matches('\r').strip_prefix('[')?;
            rest.split_once(']')?.0.trim().parse().ok()
        })
        .collect()
}

/// When the event `what` of petrel's `--metrics` timeline happened, from the process's start.
pub fn timeline_at(metrics: &serde_json::Value, what: &str) -> Option<Duration> {
    metrics["timeline"]
        .as_array()?
        .iter()
        .find(|e| e["what"] == what)?["at_us"]
        .as_u64()
        .map(Duration::from_micros)
}

/// The most guest time, in seconds, between the last count before the snapshot and the first
/// after the restore: a count's pace is 0.1 s plus the guest's own work (0.2-1.5 s here), and
/// guest time stands still from the snapshot to the restore. A restored guest whose clock
/// followed the host's (its TSC clocksource read unoffset on an emulating host) leapt by the
/// whole wall time between them, 20-40 s in this scenario.
const MAX_CLOCK_LEAP_S: f64 = 5.0;

/// The guest's clock goes on from where it was: the uptimes of the counts never go back
/// (across the snapshot too), and the restored log's first kernel timestamp, if it has one,
/// is not older than the last one before the snapshot; nor does it leap ahead (more than
/// [`MAX_CLOCK_LEAP_S`]): guest time stands still from the snapshot to the restore. How far
/// the guest's clock moved across the snapshot is noted beside `wall_gap`, the wall time from
/// the snapshot's signal to the first count after the restore.
pub fn check_guest_clock(before: &str, after: &str, wall_gap: Option<Duration>, v: &mut Verdict) {
    let counts = console_counts(&format!("{before}{after}"));
    let back = counts.windows(2).find(|w| w[1].up < w[0].up);
    let (last, first) = (
        console_counts(before).last().copied(),
        console_counts(after).first().copied(),
    );
    match (back, last, first) {
        (Some(w), _, _) => v.failures.push(format!(
            "the guest's uptime went back: count {} at {:.2} s, then count {} at {:.2} s",
            w[0].i, w[0].up, w[1].i, w[1].up
        )),
        (None, Some(l), Some(f)) if f.up - l.up > MAX_CLOCK_LEAP_S => v.failures.push(format!(
            "the guest's clock leapt ahead across the snapshot: count {} at uptime {:.2} s \
             before it, count {} at {:.2} s after the restore ({:+.2} s, more than \
             {MAX_CLOCK_LEAP_S} s); guest time must resume where the snapshot stopped it",
            l.i,
            l.up,
            f.i,
            f.up,
            f.up - l.up
        )),
        (None, Some(l), Some(f)) => v.notes.push(format!(
            "guest clock: count {} at uptime {:.2} s before the snapshot, count {} at {:.2} s \
             after the restore: {:+.2} s of guest time{}",
            l.i,
            l.up,
            f.i,
            f.up,
            f.up - l.up,
            wall_gap.map_or(String::new(), |g| format!(
                " for {} of wall time from the snapshot's signal to that count",
                secs(Some(g))
            ))
        )),
        _ => {}
    }
    let (last, first) = (
        printk_times(before).last().copied(),
        printk_times(after).first().copied(),
    );
    match (last, first) {
        (Some(last), Some(first)) if first >= last => v.notes.push(format!(
            "guest clock: last kernel line before the snapshot at [{last:.6}], first after \
             the restore at [{first:.6}]"
        )),
        (Some(last), Some(first)) => v.failures.push(format!(
            "the guest's clock went back across the restore: [{last:.6}] before, [{first:.6}] \
             after"
        )),
        _ => {}
    }
}

/// The restored guest's counts reached the disk through the restored virtio-blk device.
pub fn check_restored_writes(metrics: &Path, v: &mut Verdict) {
    match read_metrics(metrics) {
        Ok(m) => match device_counter(&m, "virtio-blk", "writes") {
            Some(w) if w > 0 => v
                .notes
                .push(format!("the restored virtio-blk served {w} writes")),
            _ => v
                .failures
                .push("the restored virtio-blk served no write".into()),
        },
        Err(e) => v.failures.push(e),
    }
}

/// `/count` from the ext4 image, read with `debugfs -R "cat /count"`.
fn read_count_file(image: &Path) -> std::result::Result<String, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {COUNT_FILE}"))
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "debugfs -R 'cat {COUNT_FILE}' {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn each_file_restore_must_say_what_it_did_with_the_working_set() {
        let saved = "petrel: working set of 812 pages (3.2 MiB, 301 written) saved to /s/state.working-set\n";
        let prefetched =
            "petrel: prefetched the working set in /s/state.working-set: 511 pages read, \
                          301 written ahead of the guest, in 2.1 ms\n";
        for (backend, output, passes) in [
            (Backend::File, saved, true),
            (Backend::File, prefetched, false),
            (Backend::FilePrefetched, prefetched, true),
            (
                Backend::FilePrefetched,
                "petrel: ignored the working-set file\n",
                false,
            ),
            (Backend::Uffd, "uffd_handler: ...; served 90 pages; 0 removals of 0 bytes; prefetched 3401 pages\n", true),
            (Backend::Uffd, "uffd_handler: ...; served 1098 pages; 0 removals of 0 bytes\n", false),
        ] {
            let mut v = Verdict::default();
            check_working_set(backend, output, &mut v);
            assert_eq!(v.passed(), passes, "{backend:?} {output:?}: {v:?}");
        }
    }

    #[test]
    fn the_handler_must_serve_and_exit_0() {
        let said = "uffd_handler: the VMM closed the connection; served 5021 pages; \
                    0 removals of 0 bytes";
        let mut v = Verdict::default();
        let summary = judge_handler(Ok(said.to_owned()), &mut v);
        assert!(v.passed(), "{v:?}");
        assert_eq!(summary, format!("exit 0: {said}"));
        assert_eq!(v.notes, [format!("the page-fault handler said `{said}`")]);

        // What `Handler::finish` says of a handler that failed is the failure.
        let mut v = Verdict::default();
        let ended = "the page-fault handler ended with exit status: 1 after its petrel";
        let summary = judge_handler(Err(Error::Other(ended.into())), &mut v);
        assert_eq!(
            (summary.as_str(), v.failures.as_slice()),
            (ended, [ended.to_owned()].as_slice())
        );

        let mut v = Verdict::default();
        let none = "uffd_handler: the VMM closed the connection; served 0 pages; \
                    0 removals of 0 bytes";
        judge_handler(Ok(none.to_owned()), &mut v);
        assert_eq!(
            v.failures,
            ["the page-fault handler served no page and prefetched none"]
        );

        // Its prefetch covered every page the guest touched: no fault left to serve.
        let mut v = Verdict::default();
        let ahead = "uffd_handler: the VMM closed the connection; served 0 pages; \
                     0 removals of 0 bytes; prefetched 3490 pages";
        judge_handler(Ok(ahead.to_owned()), &mut v);
        assert!(v.passed(), "{v:?}");

        let mut v = Verdict::default();
        judge_handler(
            Ok("uffd_handler: the VMM closed the connection; served".into()),
            &mut v,
        );
        assert!(v.failures[0].contains("is not"), "{v:?}");
    }

    #[test]
    fn log_times_and_timeline() {
        let log = "[    0.000000] Linux\r\n[   93.027904] virtio_blk virtio0: [vda]\r\nno time\r\n";
        assert_eq!(printk_times(log), [0.0, 93.027904]);
        let mut v = Verdict::default();
        check_guest_clock(log, "[   97.649068] serio: i8042\r\n", None, &mut v);
        assert!(v.passed() && v.notes[0].contains("[97.649068]"), "{v:?}");
        check_guest_clock(log, "[    1.0] early\r\n", None, &mut v);
        assert!(v.failures[0].contains("went back"), "{v:?}");
        let m: serde_json::Value = serde_json::from_str(
            r#"{"timeline":[{"at_us":0,"what":"process start"},
                {"at_us":15529,"what":"first KVM_RUN"}]}"#,
        )
        .unwrap();
        assert_eq!(
            timeline_at(&m, "first KVM_RUN"),
            Some(Duration::from_micros(15529))
        );
        assert_eq!(timeline_at(&m, "guest stopped"), None);
    }

    #[test]
    fn the_restored_guest_must_see_a_new_generation() {
        let before = "[    8.9] random: crng init done\r\ncount 10 of 50 up 20.0\r\n";
        let after = "[   21.0] random: crng reseeded due to virtual machine fork\r\n";
        let mut v = Verdict::default();
        check_vm_generation(before, after, &mut v);
        assert!(v.passed(), "{v:?}");
        assert!(v.notes[0].ends_with("[   21.0] random: crng reseeded due to virtual machine fork"));

        let mut v = Verdict::default();
        check_vm_generation(before, "count 11 of 50\r\n", &mut v);
        assert_eq!(v.failures.len(), 1);
        assert!(v.failures[0].contains("never printed"), "{v:?}");

        // Seeded only after the snapshot: no reseed to expect.
        let late = "count 10 of 50 up 20.0\r\n[   20.1] random: crng init done\r\n";
        let mut v = Verdict::default();
        check_vm_generation(late, after, &mut v);
        assert!(v.failures[0].contains("before `count 10 of 50`"), "{v:?}");

        let early_fork = format!("{before}{after}");
        let mut v = Verdict::default();
        check_vm_generation(&early_fork, after, &mut v);
        assert!(v.failures[0].contains("before any snapshot"), "{v:?}");
    }

    #[test]
    fn the_uptime_must_not_go_back() {
        let before = "count 1 of 50 up 20.01\r\ncount 2 of 50 up 20.12\r\n";
        let mut v = Verdict::default();
        let wall = Some(Duration::from_millis(1500));
        check_guest_clock(before, "count 3 of 50 up 20.20\r\n", wall, &mut v);
        assert!(v.passed(), "{v:?}");
        assert_eq!(
            v.notes[0],
            "guest clock: count 2 at uptime 20.12 s before the snapshot, count 3 at 20.20 s after \
             the restore: +0.08 s of guest time for 1.500 s of wall time from the snapshot's \
             signal to that count"
        );
        check_guest_clock(before, "count 3 of 50 up 3.00\r\n", wall, &mut v);
        assert_eq!(
            v.failures,
            ["the guest's uptime went back: count 2 at 20.12 s, then count 3 at 3.00 s"]
        );
        let mut v = Verdict::default();
        check_guest_clock(before, "count 3 of 50 up 63.50\r\n", wall, &mut v);
        assert!(
            v.failures[0].starts_with("the guest's clock leapt ahead across the snapshot"),
            "{v:?}"
        );
    }
}

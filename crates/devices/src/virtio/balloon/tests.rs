//! The balloon driven through its transport as Linux's driver (and a hostile one) would.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::testutil::*;
use crate::virtio::{
    DeviceState, GuestMemoryMmap, VirtioDevice, VirtioMmio, INTERRUPT_CONFIG, INTERRUPT_VRING,
    MAX_CHAINS_PER_WAKEUP, STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1,
};

/// Where the tests put the buffers they hand the device.
const BUF: u64 = 0x8_0000;
/// 1 MiB, the test guest's RAM.
const MEM: u64 = 0x10_0000;

/// Records what it was asked to free; fails when told to.
#[derive(Debug, Default)]
struct Recorder {
    freed: Mutex<Vec<(u64, u64)>>,
    fail: bool,
}

impl PageDiscarder for Recorder {
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        assert_eq!(
            (gpa % PAGE_SIZE, len % PAGE_SIZE),
            (0, 0),
            "unaligned discard"
        );
        assert!(len > 0 && gpa + len <= MEM, "discard outside RAM");
        if self.fail {
            return Err(std::io::Error::other("refused"));
        }
        self.freed.lock().unwrap().push((gpa, len));
        Ok(())
    }
}

fn config(stats: u16, hinting: bool, reporting: bool) -> BalloonConfig {
    BalloonConfig {
        amount_mib: 1,
        deflate_on_oom: true,
        stats_polling_interval_s: stats,
        free_page_hinting: hinting,
        free_page_reporting: reporting,
    }
}

struct Rig {
    m: VirtioMmio<Balloon>,
    mem: GuestMemoryMmap,
    rec: Arc<Recorder>,
    qs: Vec<TestQueue>,
    /// Next free descriptor, per queue.
    next: Vec<u16>,
}

/// A balloon configured by `cfg`, brought up with the offered features masked by `mask`.
fn rig_with(cfg: BalloonConfig, mask: u64, rec: Recorder) -> Rig {
    let mem = guest_mem();
    let rec = Arc::new(rec);
    let dev = Balloon::new(cfg, MEM, rec.clone()).unwrap();
    let features = VirtioDevice::<GuestMemoryMmap>::features(&dev) & mask;
    let mut m = VirtioMmio::new(dev, mem.clone()).unwrap();
    let n = QueueRole::for_features(features).len();
    let qs: Vec<TestQueue> = (0..n)
        .map(|i| TestQueue::new(0x1_0000 * (i as u64 + 1), QUEUE_SIZE))
        .collect();
    bring_up(&mut m, features, &qs);
    run_rearmed(&mut m);
    Rig {
        m,
        mem,
        rec,
        qs,
        next: vec![0; n],
    }
}

fn rig(cfg: BalloonConfig) -> Rig {
    rig_with(cfg, u64::MAX, Recorder::default())
}

impl Rig {
    /// Publishes a chain on queue `q` and serves the queue.
    fn send(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let head = self.publish(q, bufs);
        self.m.process_queue_event(q);
        head
    }

    fn publish(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let head = self.qs[q].chain(&self.mem, self.next[q], bufs);
        self.next[q] = (self.next[q] + bufs.len() as u16) % QUEUE_SIZE;
        self.qs[q].publish(&self.mem, head);
        head
    }

    /// Writes `pfns` at `at` and sends them on queue `q` as one buffer.
    fn send_pfns(&mut self, q: usize, at: u64, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.send(q, &[(at, bytes.len() as u32, false)]);
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        (0..self.qs[q].used_idx(&self.mem))
            .map(|i| self.qs[q].used_elem(&self.mem, i))
            .collect()
    }

    fn freed(&self) -> Vec<(u64, u64)> {
        self.rec.freed.lock().unwrap().clone()
    }

    fn metrics(&self) -> BalloonMetrics {
        self.m.device().metrics()
    }

    fn config_u32(&mut self, offset: u64) -> u32 {
        let b = read_config(&mut self.m, offset, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// `count` statistics entries `(tag, value)`.
fn stat_entries(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect()
}

#[test]
fn offers_the_configured_features_and_queues() {
    let all =
        Balloon::<GuestMemoryMmap>::new(config(1, true, true), MEM, Arc::new(Recorder::default()))
            .unwrap();
    assert_eq!(
        VirtioDevice::<GuestMemoryMmap>::features(&all),
        1 << VIRTIO_F_VERSION_1
            | 1 << F_STATS_VQ
            | 1 << F_DEFLATE_ON_OOM
            | 1 << F_FREE_PAGE_HINT
            | 1 << F_REPORTING
    );
    assert_eq!(
        VirtioDevice::<GuestMemoryMmap>::queue_max_sizes(&all),
        &[256; 5]
    );
    let none = Balloon::<GuestMemoryMmap>::new(
        BalloonConfig::default(),
        MEM,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    assert_eq!(
        VirtioDevice::<GuestMemoryMmap>::features(&none),
        1 << VIRTIO_F_VERSION_1
    );
    assert_eq!(
        VirtioDevice::<GuestMemoryMmap>::queue_max_sizes(&none),
        &[256; 2]
    );
    assert_eq!(VirtioDevice::<GuestMemoryMmap>::device_type(&none), 5);
    // F_MUST_TELL_HOST and F_PAGE_POISON are never offered.
    assert_eq!(
        VirtioDevice::<GuestMemoryMmap>::features(&all)
            & (1 << F_MUST_TELL_HOST | 1 << F_PAGE_POISON),
        0
    );
}

#[test]
fn queue_indexes_follow_the_accepted_features() {
    use QueueRole::*;
    assert_eq!(QueueRole::for_features(0), [Inflate, Deflate]);
    assert_eq!(
        QueueRole::for_features(1 << F_STATS_VQ | 1 << F_REPORTING),
        [Inflate, Deflate, Stats, Reporting]
    );
    assert_eq!(
        QueueRole::for_features(1 << F_FREE_PAGE_HINT | 1 << F_REPORTING),
        [Inflate, Deflate, FreePageHint, Reporting]
    );
    // Statistics offered but not accepted by the driver: reporting is queue 2, and a range
    // sent there is freed, not read as statistics.
    let mut r = rig_with(
        config(5, false, true),
        !(1 << F_STATS_VQ),
        Recorder::default(),
    );
    assert_eq!(r.qs.len(), 3);
    r.send(2, &[(0x4_0000, 0x2000, true)]);
    assert_eq!(r.freed(), [(0x4_0000, 0x2000)]);
    assert_eq!(r.metrics().free_page_report_count, 1);
    assert_eq!(r.metrics().stats_updates_count, 0);
}

#[test]
fn config_space_target_and_the_drivers_fields() {
    let mut r = rig(config(0, false, false));
    assert_eq!(r.config_u32(0), 256);
    assert_eq!(r.config_u32(4), 0);
    // The driver writes `actual` and `poison_val`; `num_pages` and the hint id are the host's.
    wr_config(&mut r.m, 4, &100u32.to_le_bytes());
    wr_config(&mut r.m, 12, &0xaau32.to_le_bytes());
    wr_config(&mut r.m, 0, &7u32.to_le_bytes());
    wr_config(&mut r.m, 8, &7u32.to_le_bytes());
    wr_config(&mut r.m, 2, &7u32.to_le_bytes());
    assert_eq!(
        (
            r.config_u32(0),
            r.config_u32(4),
            r.config_u32(8),
            r.config_u32(12)
        ),
        (256, 100, 0, 0xaa)
    );
    assert_eq!(r.m.stats().ignored_writes, 3);
    // A new target; the guest learns of it through the transport.
    r.m.device_mut().set_target_mib(0).unwrap();
    assert!(r.m.notify_config_change());
    assert_eq!(r.config_u32(0), 0);
    assert_eq!(r.m.device().config().amount_mib, 0);
    assert_ne!(r.m.interrupt().status() & INTERRUPT_CONFIG, 0);
}

fn wr_config(m: &mut VirtioMmio<Balloon>, offset: u64, data: &[u8]) {
    use crate::BusDevice;
    m.write(crate::virtio::mmio::CONFIG_SPACE_OFFSET + offset, data);
}

#[test]
fn a_target_larger_than_the_guest_is_refused() {
    let rec: Arc<dyn PageDiscarder> = Arc::new(Recorder::default());
    let err = Balloon::<GuestMemoryMmap>::new(
        BalloonConfig {
            amount_mib: 2,
            ..BalloonConfig::default()
        },
        MEM,
        rec.clone(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("amount_mib 2") && err.to_string().contains("1 MiB"),
        "{err}"
    );
    let mut b = Balloon::<GuestMemoryMmap>::new(BalloonConfig::default(), 4 << 30, rec).unwrap();
    b.set_target_mib(4096).unwrap();
    assert_eq!(b.config().amount_mib, 4096);
    assert!(matches!(
        b.set_target_mib(4097),
        Err(BalloonError::AmountTooLarge {
            amount_mib: 4097,
            mem_mib: 4096
        })
    ));
    assert_eq!(b.config().amount_mib, 4096);
}

#[test]
fn inflate_frees_coalesced_runs_inside_ram_only() {
    let mut r = rig(config(0, false, false));
    // Out of order, a duplicate, a run of three, a lone page, pages past RAM (1 MiB = 256
    // pages) and the largest page number.
    r.send_pfns(
        0,
        BUF,
        &[0x42, 0x40, 0x41, 0x40, 0x50, 0x100, 0x1_0000, u32::MAX],
    );
    assert_eq!(r.freed(), [(0x40_000, 0x3000), (0x50_000, 0x1000)]);
    assert_eq!(r.used(0), [(0, 0)]);
    let m = r.metrics();
    assert_eq!(
        (m.inflate_count, m.inflated_pages, m.inflate_refused_pages),
        (1, 4, 3)
    );
    // The same pages again: harmless, freed again.
    r.send_pfns(0, BUF, &[0x40]);
    assert_eq!(r.freed().len(), 3);
    assert!(r.m.is_running());
}

#[test]
fn malformed_inflate_and_deflate_chains_are_returned_untouched() {
    let mut r = rig(config(0, false, false));
    r.mem
        .write_slice(&[0x40u8, 0, 0, 0, 0x41, 0, 0, 0], GuestAddress(BUF))
        .unwrap();
    // Device-writable; not whole page numbers; outside RAM; more than 256 page numbers;
    // readable and writable mixed.
    r.send(0, &[(BUF, 8, true)]);
    r.send(0, &[(BUF, 7, false)]);
    r.send(0, &[(MEM - 4, 8, false)]);
    r.send(0, &[(BUF, 4 * 257, false)]);
    r.send(0, &[(BUF, 4, false), (BUF + 4, 4, true)]);
    r.send(1, &[(BUF, 8, true)]);
    assert!(r.freed().is_empty());
    assert_eq!(r.used(0).len(), 5);
    assert_eq!(r.used(1).len(), 1);
    let m = r.metrics();
    assert_eq!(
        (m.bad_requests, m.inflate_count, m.deflate_count),
        (6, 0, 0)
    );
    // 256 page numbers in several buffers is fine.
    let pfns: Vec<u32> = (0..256).collect();
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    r.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    r.send(0, &[(BUF, 512, false), (BUF + 512, 512, false)]);
    assert_eq!(r.freed(), [(0, MEM)]);
    assert!(r.m.is_running());
}

#[test]
fn a_failing_discard_is_counted_and_the_chain_still_returned() {
    let mut r = rig_with(
        config(0, false, true),
        u64::MAX,
        Recorder {
            fail: true,
            ..Recorder::default()
        },
    );
    r.send_pfns(0, BUF, &[1, 3]);
    r.send(2, &[(0x4_0000, 0x1000, true)]);
    let m = r.metrics();
    assert_eq!((m.inflate_discard_fails, m.inflated_pages), (2, 0));
    assert_eq!(m.free_page_report_fails, 1);
    assert_eq!((r.used(0).len(), r.used(2).len()), (1, 1));
}

#[test]
fn deflate_is_counted_and_returned() {
    let mut r = rig(config(0, false, false));
    r.send_pfns(1, BUF, &[0x40, 0x41]);
    assert_eq!(r.used(1), [(0, 0)]);
    assert_eq!(r.metrics().deflate_count, 1);
    assert!(r.freed().is_empty());
    assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
}

#[test]
fn a_flood_of_one_page_chains_is_served_within_the_budget() {
    let mut r = rig(config(0, false, false));
    for i in 0..200u32 {
        let at = BUF + 4 * u64::from(i);
        r.mem.write_obj(i, GuestAddress(at)).unwrap();
        r.publish(0, &[(at, 4, false)]);
    }
    r.m.process_queue_event(0);
    assert_eq!(r.used(0).len(), MAX_CHAINS_PER_WAKEUP as usize);
    // The rest comes in later wake-ups that the device asked for.
    assert_eq!(run_rearmed(&mut r.m), 3);
    assert_eq!(r.used(0).len(), 200);
    assert_eq!(r.metrics().inflated_pages, 200);
    assert_eq!(r.metrics().inflate_count, 200);
}

#[test]
fn statistics_are_held_parsed_and_asked_for_on_the_timer() {
    let mut r = rig(config(1, false, false));
    assert!(r.m.device().stats().unwrap().free_memory.is_none());
    let mut entries = stat_entries(&[(4, 1 << 20), (5, 64 << 20), (15, 7)]);
    // A tag this device does not know is skipped and counted.
    entries.extend(stat_entries(&[(99, 1)]));
    r.mem.write_slice(&entries, GuestAddress(BUF)).unwrap();
    let head = r.send(2, &[(BUF, entries.len() as u32, false)]);
    // Held, not returned.
    assert!(r.used(2).is_empty());
    assert_eq!(r.m.device().held_stats(), Some(head));
    let s = r.m.device().stats().unwrap();
    assert_eq!(
        (s.free_memory, s.total_memory, s.direct_reclaim, s.swap_in),
        (Some(1 << 20), Some(64 << 20), Some(7), None)
    );
    assert_eq!((s.target_pages, s.target_mib, s.actual_pages), (256, 1, 0));
    let m = r.metrics();
    assert_eq!((m.stats_updates_count, m.stats_update_fails), (1, 1));
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["free_memory"], 1 << 20);
    assert!(json.get("swap_in").is_none());
    // The timer fires (here: the device's event): the buffer goes back to the driver.
    r.m.process_device_event(0);
    assert_eq!(r.used(2), [(u32::from(head), 0)]);
    assert_eq!(r.m.device().held_stats(), None);
    // Nothing held: another tick does nothing.
    r.m.process_device_event(0);
    assert_eq!(r.used(2).len(), 1);
}

#[test]
fn bad_statistics_buffers_are_held_but_not_read() {
    let mut r = rig(config(1, false, false));
    let good = stat_entries(&[(4, 5)]);
    r.mem.write_slice(&good, GuestAddress(BUF)).unwrap();
    // Short (not whole entries), empty, device-writable, outside RAM, too long.
    let bad: [&[Buf]; 5] = [
        &[(BUF, 9, false)],
        &[(BUF, 0, false)],
        &[(BUF, 10, true)],
        &[(MEM - 5, 10, false)],
        &[(BUF, 10 * 257, false)],
    ];
    for bufs in bad {
        r.send(2, bufs);
    }
    assert!(r.m.device().stats().unwrap().free_memory.is_none());
    let m = r.metrics();
    assert_eq!((m.stats_updates_count, m.stats_update_fails), (5, 5));
    // Each new buffer gave the one held before back: four returned, one held.
    assert_eq!(r.used(2).len(), 4);
    assert!(r.m.device().held_stats().is_some());
    assert!(r.m.is_running());
}

#[test]
fn the_statistics_interval_changes_but_does_not_turn_on_or_off() {
    let mut r = rig(config(60, false, false));
    let entries = stat_entries(&[(4, 5)]);
    r.mem.write_slice(&entries, GuestAddress(BUF)).unwrap();
    let head = r.send(2, &[(BUF, 10, false)]);
    assert!(matches!(
        r.m.device_mut().set_stats_interval(0),
        Err(BalloonError::StatsStateChange { from: 60, to: 0 })
    ));
    // A new interval asks for an update at once: the timer fires now.
    r.m.device_mut().set_stats_interval(2).unwrap();
    assert!(r.used(2).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(r.m.device_mut().stats_timer.wait().is_ok_and(|n| n >= 1));
    r.m.process_device_event(0);
    assert_eq!(r.used(2), [(u32::from(head), 0)]);
    assert_eq!(r.m.device().config().stats_polling_interval_s, 2);
    // Without statistics: nothing to read, nothing to turn on.
    let mut off = rig(config(0, false, false));
    assert!(matches!(
        off.m.device().stats(),
        Err(BalloonError::StatsDisabled)
    ));
    let err = off.m.device_mut().set_stats_interval(5).unwrap_err();
    assert!(
        err.to_string().contains("stats_polling_interval_s"),
        "{err}"
    );
}

#[test]
fn the_statistics_timer_fires_through_the_event_loop() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    let mut r = rig(config(1, false, false));
    r.mem
        .write_slice(&stat_entries(&[(4, 5)]), GuestAddress(BUF))
        .unwrap();
    r.send(2, &[(BUF, 10, false)]);
    let Rig { m, mem, qs, .. } = r;
    let dev = Arc::new(Mutex::new(m));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while qs[2].used_idx(&mem) == 0 && std::time::Instant::now() < deadline {
        em.run_with_timeout(100).unwrap();
    }
    assert_eq!(qs[2].used_idx(&mem), 1);
}

/// Sends the guest's hinting command `cmd` on the hinting queue (index `q`).
fn send_cmd(r: &mut Rig, q: usize, cmd: u32) {
    r.mem.write_obj(cmd, GuestAddress(BUF)).unwrap();
    r.send(q, &[(BUF, 4, false)]);
}

#[test]
fn free_page_hinting_runs_and_ends() {
    let mut r = rig(config(1, true, false));
    let q = 3;
    assert_eq!(
        r.m.device().hinting_status().unwrap(),
        HintingStatus {
            host_cmd: FREE_PAGE_HINT_STOP,
            guest_cmd: None
        }
    );
    // A hint before any run is not freed.
    r.send(q, &[(0x4_0000, 0x1000, true)]);
    assert!(r.freed().is_empty());
    r.m.interrupt().ack(u32::MAX);
    r.m.device_mut().start_hinting(true).unwrap();
    assert_eq!(r.config_u32(8), 2);
    assert_eq!(r.m.interrupt().status(), INTERRUPT_CONFIG);
    // A hint still of the old command is not freed either.
    r.send(q, &[(0x4_0000, 0x1000, true)]);
    assert!(r.freed().is_empty());
    send_cmd(&mut r, q, 2);
    r.send(q, &[(0x4_0000, 0x4000, true)]);
    // Outside RAM, and not a whole page: refused.
    r.send(q, &[(MEM - 0x1000, 0x2000, true)]);
    r.send(q, &[(0x5_0001, 0x1000, true)]);
    // A command that is not 4 bytes is counted.
    r.send(q, &[(BUF, 3, false)]);
    assert_eq!(r.freed(), [(0x4_0000, 0x4000)]);
    let m = r.metrics();
    assert_eq!(
        (
            m.free_page_hint_count,
            m.free_page_hint_freed,
            m.free_page_hint_fails
        ),
        (3, 0x4000, 3)
    );
    assert_eq!(r.m.device().hinting_status().unwrap().guest_cmd, Some(2));
    // The guest's STOP is acknowledged with DONE.
    r.m.interrupt().ack(u32::MAX);
    send_cmd(&mut r, q, FREE_PAGE_HINT_STOP);
    assert_eq!(r.config_u32(8), FREE_PAGE_HINT_DONE);
    assert_ne!(r.m.interrupt().status() & INTERRUPT_CONFIG, 0);
    // Late hints after DONE are the guest's pages again: never freed.
    r.send(q, &[(0x6_0000, 0x1000, true)]);
    assert_eq!(r.freed().len(), 1);
    // The next run takes the next id; without the acknowledgement STOP leaves it running
    // until the host stops it.
    r.m.device_mut().start_hinting(false).unwrap();
    assert_eq!(r.config_u32(8), 3);
    send_cmd(&mut r, q, 3);
    send_cmd(&mut r, q, FREE_PAGE_HINT_STOP);
    assert_eq!(r.config_u32(8), 3);
    r.m.device_mut().stop_hinting().unwrap();
    assert_eq!(
        r.m.device().hinting_status().unwrap(),
        HintingStatus {
            host_cmd: FREE_PAGE_HINT_DONE,
            guest_cmd: Some(FREE_PAGE_HINT_STOP)
        }
    );
}

#[test]
fn hinting_refusals_name_the_reason() {
    let mut off = rig(config(0, false, false));
    for err in [
        off.m.device_mut().start_hinting(true).unwrap_err(),
        off.m.device_mut().stop_hinting().unwrap_err(),
        off.m.device().hinting_status().unwrap_err(),
    ] {
        assert!(matches!(err, BalloonError::HintingDisabled));
        assert!(err.to_string().contains("free_page_hinting"), "{err}");
    }
    let mut idle =
        Balloon::<GuestMemoryMmap>::new(config(0, true, false), MEM, Arc::new(Recorder::default()))
            .unwrap();
    let err = idle.start_hinting(true).unwrap_err();
    assert!(err.to_string().contains("not active"), "{err}");
    assert_eq!(idle.hinting_status().unwrap().host_cmd, 0);
    // The driver did not accept hinting.
    let mut declined = rig_with(
        config(0, true, false),
        !(1 << F_FREE_PAGE_HINT),
        Recorder::default(),
    );
    assert!(matches!(
        declined.m.device_mut().start_hinting(true),
        Err(BalloonError::NotActive { .. })
    ));
}

#[test]
fn reporting_frees_the_reported_ranges() {
    let mut r = rig(config(0, false, true));
    // Two ranges in one chain (Linux sends a scatterlist), a misplaced device-readable buffer,
    // a range past RAM, and one trimmed to its whole pages.
    r.send(
        2,
        &[
            (0x4_0000, 0x2000, true),
            (0x6_0000, 0x1000, true),
            (0x7_0000, 0x1000, false),
            (MEM, 0x1000, true),
            (0x8_0800, 0x2000, true),
        ],
    );
    assert_eq!(
        r.freed(),
        [(0x4_0000, 0x2000), (0x6_0000, 0x1000), (0x8_1000, 0x1000)]
    );
    assert_eq!(r.used(2), [(0, 0)]);
    let m = r.metrics();
    assert_eq!(
        (
            m.free_page_report_count,
            m.free_page_report_freed,
            m.free_page_report_fails
        ),
        (4, 0x4000, 2)
    );
}

#[test]
fn a_broken_chain_needs_a_reset_and_is_counted() {
    let mut r = rig(config(0, false, false));
    r.qs[0].set_desc(&r.mem, 0, BUF, 4, F_NEXT, 0);
    r.qs[0].publish(&r.mem, 0);
    r.m.process_queue_event(0);
    assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.metrics().event_fails, 1);
    assert!(r.freed().is_empty());
}

#[test]
fn a_reset_forgets_the_drivers_state_but_not_the_target() {
    let mut r = rig(config(1, true, false));
    wr_config(&mut r.m, 4, &9u32.to_le_bytes());
    r.m.device_mut().start_hinting(true).unwrap();
    r.mem
        .write_slice(&stat_entries(&[(4, 5)]), GuestAddress(BUF))
        .unwrap();
    r.send(2, &[(BUF, 10, false)]);
    r.m.device_mut().set_target_mib(0).unwrap();
    wr(&mut r.m, 0x70, 0);
    let d = r.m.device();
    assert_eq!(d.held_stats(), None);
    assert_eq!(d.stats().unwrap().free_memory, None);
    assert_eq!(d.stats().unwrap().actual_pages, 0);
    assert_eq!(d.hinting_status().unwrap().host_cmd, 0);
    assert_eq!(d.config().amount_mib, 0);
}

#[test]
fn save_and_restore_keep_the_held_buffer_statistics_and_end_a_hinting_run() {
    let cfg = config(1, true, false);
    let mut r = rig(cfg);
    wr_config(&mut r.m, 4, &128u32.to_le_bytes());
    r.mem
        .write_slice(&stat_entries(&[(4, 5)]), GuestAddress(BUF))
        .unwrap();
    let head = r.send(2, &[(BUF, 10, false)]);
    r.m.device_mut().start_hinting(true).unwrap();
    r.m.device_mut().set_target_mib(0).unwrap();
    let state = r.m.save_state();
    let DeviceState::Balloon(saved) = &state.device else {
        panic!("{:?}", state.device);
    };
    assert_eq!(saved.stats_desc_index, Some(head));
    assert_eq!(
        (saved.num_pages, saved.actual_pages, saved.hint_host_cmd),
        (0, 128, 2)
    );
    // Through the snapshot's JSON and back.
    let state: crate::virtio::VirtioMmioState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

    let rec = Arc::new(Recorder::default());
    let fresh = Balloon::new(cfg, MEM, rec.clone()).unwrap();
    let mut m = VirtioMmio::new(fresh, r.mem.clone()).unwrap();
    m.restore_state(&state).unwrap();
    let d = m.device();
    assert_eq!(d.config().amount_mib, 0);
    assert_eq!(d.stats().unwrap().actual_pages, 128);
    assert_eq!(d.stats().unwrap().free_memory, Some(5));
    assert_eq!(d.held_stats(), Some(head));
    // The run was ended, and the driver told so.
    assert_eq!(d.hinting_status().unwrap().host_cmd, FREE_PAGE_HINT_DONE);
    assert_ne!(m.interrupt().status() & INTERRUPT_CONFIG, 0);
    // The timer runs again and gives the held buffer back.
    assert!(m.device().stats_timer_armed());
    m.process_device_event(0);
    r.m = m;
    assert_eq!(r.used(2), [(u32::from(head), 0)]);

    // A state from a balloon without statistics does not fit one with them.
    let other = rig(config(0, true, false)).m.save_state();
    let mut m = VirtioMmio::new(Balloon::new(cfg, MEM, rec).unwrap(), r.mem.clone()).unwrap();
    assert!(m.restore_state(&other).is_err());
    let mut wrong =
        Balloon::<GuestMemoryMmap>::new(cfg, MEM, Arc::new(Recorder::default())).unwrap();
    let mut bad = saved.clone();
    bad.stats_desc_index = Some(QUEUE_SIZE);
    assert!(wrong.restore_state(&DeviceState::Balloon(bad)).is_err());
    let mut big = saved.clone();
    big.num_pages = 257;
    assert!(wrong.restore_state(&DeviceState::Balloon(big)).is_err());
    assert!(matches!(
        wrong.restore_state(&DeviceState::Rng(crate::virtio::RngState {
            rate_limiter: Default::default()
        })),
        Err(crate::virtio::Error::DeviceStateMismatch { .. })
    ));
}

/// Frees pages of a real `GuestRam` the way the VMM does for anonymous memory.
#[derive(Debug)]
struct Madvise(Vec<petrel_guest_mem::RamRegion>);

impl PageDiscarder for Madvise {
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        let region = self
            .0
            .iter()
            .find(|r| gpa >= r.guest_addr && gpa + len <= r.guest_addr + r.size)
            .ok_or_else(|| std::io::Error::other("not in one region"))?;
        let host = region.host_addr + (gpa - region.guest_addr);
        // SAFETY: `[host, host + len)` lies in one region of the test's `GuestRam`, a private
        // anonymous mapping that lives as long as the test; MADV_DONTNEED only drops the
        // pages, which read as zeros afterwards.
        let rc =
            unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[test]
fn inflated_pages_of_real_guest_ram_read_zero() {
    let ram = petrel_guest_mem::GuestRam::new(4 << 20).unwrap();
    let mem = ram.memory().clone();
    let discarder = Arc::new(Madvise(ram.regions()));
    let dev = Balloon::new(config(0, false, false), ram.size(), discarder).unwrap();
    let mut m = VirtioMmio::new(dev, mem.clone()).unwrap();
    let qs = [
        TestQueue::new(0x1000, QUEUE_SIZE),
        TestQueue::new(0x9000, QUEUE_SIZE),
    ];
    bring_up(&mut m, 1 << VIRTIO_F_VERSION_1, &qs);
    run_rearmed(&mut m);
    let page = 0x20_0000u64;
    mem.write_slice(&[0x5a; 0x2000], GuestAddress(page))
        .unwrap();
    mem.write_slice(&[0x77; 16], GuestAddress(page + 0x2000))
        .unwrap();
    let pfns: Vec<u8> = [0x200u32, 0x201]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    mem.write_slice(&pfns, GuestAddress(0x3_0000)).unwrap();
    let head = qs[0].chain(&mem, 0, &[(0x3_0000, 8, false)]);
    qs[0].publish(&mem, head);
    m.process_queue_event(0);
    assert_eq!(qs[0].used_idx(&mem), 1);
    let mut back = vec![1u8; 0x2000];
    mem.read_slice(&mut back, GuestAddress(page)).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // The page after the balloon's is untouched.
    let mut next = [0u8; 16];
    mem.read_slice(&mut next, GuestAddress(page + 0x2000))
        .unwrap();
    assert_eq!(next, [0x77; 16]);
    assert_eq!(m.device().metrics().inflated_pages, 2);
}

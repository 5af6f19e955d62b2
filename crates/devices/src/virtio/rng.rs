//! virtio-rng, an entropy source (virtio v1.2, 5.4 Entropy Device).
//!
//! One request queue; each chain's device-writable buffers are filled from the host's
//! `getrandom(2)` (non-blocking: if the host pool is not ready the request waits). A token
//! bucket limits how fast a guest can drain host entropy: [`DEFAULT_RATE`] bytes per second with
//! a burst of [`DEFAULT_BURST`] unless configured otherwise. When the bucket is empty the device
//! stops taking requests and arms a timerfd, one of its [`event_sources`], and carries on when
//! it fires; [`Rng::next_refill`] says when that will be.
//!
//! A chain with a device-readable buffer (virtio v1.2, 5.4.6.1: the driver MUST NOT place
//! driver-readable buffers into the queue) or a buffer outside guest RAM is returned with
//! nothing written; a broken chain stops the device (DEVICE_NEEDS_RESET).
//!
//! [`event_sources`]: VirtioDevice::event_sources

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::timerfd::TimerFd;

use super::chain::{self, Budget, ChainBuffers, Step};
use super::{
    arm_timer, drain_timer, new_timer, EventSource, GuestFault, Interrupt, Processed, VirtioDevice,
    TYPE_RNG, VIRTIO_F_VERSION_1,
};
use crate::Error;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Default refill rate of the token bucket, in bytes per second.
pub const DEFAULT_RATE: u64 = 1 << 20;
/// Default size of the token bucket, in bytes: the most a guest gets at once.
pub const DEFAULT_BURST: u64 = 1 << 20;
/// The most bytes put into one chain, whatever its size (bounds the work per request).
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Shortest wait before looking again when throttled.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Wait before retrying when the host's `getrandom` cannot answer yet.
const ENTROPY_RETRY: Duration = Duration::from_millis(10);
/// The token of the refill timer among the device's event sources.
const TIMER_TOKEN: u32 = 0;

/// Counters of an [`Rng`] device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Chains returned to the guest.
    pub requests: u64,
    /// Random bytes given to the guest.
    pub bytes: u64,
    /// Chains returned empty: a device-readable buffer, or a buffer outside guest RAM.
    pub bad_requests: u64,
    /// Times the device stopped for an empty token bucket with requests waiting.
    pub throttled: u64,
    /// Times the host's `getrandom` failed (the request waits and is retried).
    pub entropy_errors: u64,
}

/// A token bucket: `rate` tokens (bytes) per second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Adds the tokens earned since the last refill; time not yet worth a whole token is kept.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let earned = elapsed.saturating_mul(u128::from(self.rate)) / 1_000_000_000;
        if earned == 0 {
            return;
        }
        let room = u128::from(self.burst - self.tokens);
        if earned >= room {
            self.tokens = self.burst;
            self.last = now;
        } else {
            // `earned < room <= u64::MAX`.
            self.tokens += earned as u64;
            let used_ns = earned * 1_000_000_000 / u128::from(self.rate);
            self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        }
    }

    /// How long until `want` tokens (at most `burst`) are available.
    fn time_until(&self, want: u64) -> Duration {
        let missing = want.min(self.burst).saturating_sub(self.tokens);
        let ns = u128::from(missing) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// What the device needs once activated.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// A virtio-rng device.
pub struct Rng {
    bucket: TokenBucket,
    /// Non-blocking, one-shot: wakes the device when the bucket has refilled.
    timer: TimerFd,
    /// When the armed timer fires, while throttled.
    wake_at: Option<Instant>,
    active: Option<Active>,
    bufs: ChainBuffers,
    scratch: Vec<u8>,
    stats: RngStats,
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng")
            .field("rate", &self.bucket.rate)
            .field("burst", &self.bucket.burst)
            .field("tokens", &self.bucket.tokens)
            .field("wake_at", &self.wake_at)
            .field("active", &self.active.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Rng {
    /// An entropy device limited to [`DEFAULT_RATE`] bytes per second, [`DEFAULT_BURST`] at
    /// once.
    pub fn new() -> Result<Rng, Error> {
        Self::with_rate_limit(DEFAULT_RATE, DEFAULT_BURST)
    }

    /// An entropy device limited to `bytes_per_sec`, with at most `burst` bytes at once (the
    /// bucket starts full). Both must be non-zero.
    pub fn with_rate_limit(bytes_per_sec: u64, burst: u64) -> Result<Rng, Error> {
        if bytes_per_sec == 0 || burst == 0 {
            return Err(Error::RngRateLimit {
                bytes_per_sec,
                burst,
            });
        }
        Ok(Rng {
            bucket: TokenBucket::new(bytes_per_sec, burst, Instant::now()),
            timer: new_timer().map_err(Error::CreateTimer)?,
            wake_at: None,
            active: None,
            bufs: ChainBuffers::default(),
            scratch: Vec::new(),
            stats: RngStats::default(),
        })
    }

    /// When the device is waiting for its token bucket (or for the host's entropy pool) with
    /// requests pending: how long until it looks again. `None` when it is not waiting.
    pub fn next_refill(&self) -> Option<Duration> {
        self.wake_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The device's counters.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// Serves requests within one wake-up's budget, stopping when the bucket is empty.
    fn process(&mut self, now: Instant) -> Result<Processed, Error> {
        let fault = |fault: GuestFault| Error::VirtioFault {
            device: "virtio-rng",
            queue: 0,
            fault,
        };
        let Rng {
            bucket,
            timer,
            wake_at,
            active,
            bufs,
            scratch,
            stats,
        } = self;
        let Some(Active { mem, queue }) = active.as_mut() else {
            return Ok(Processed::IDLE);
        };
        bucket.refill(now);
        // Sleeps on the timer for `after`; if arming fails the device waits for the guest's
        // next notification instead.
        let mut wait = |after: Duration| {
            let after = after.max(MIN_WAIT);
            if arm_timer(timer, after).is_ok() {
                *wake_at = Some(now + after);
            }
        };
        let mut budget = Budget::new();
        let batch = chain::process_chains(queue, mem, bufs, &mut budget, |bufs| {
            if bucket.tokens == 0 {
                // A request waits: look again when there is enough for a small one.
                stats.throttled += 1;
                wait(bucket.time_until(512));
                return Ok(Step::Wait);
            }
            if !bufs.readable.is_empty() || bufs.outside_ram {
                stats.bad_requests += 1;
                stats.requests += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            let n = bufs
                .writable_len()
                .min(bucket.tokens)
                .min(MAX_REQUEST_BYTES) as usize;
            scratch.resize(n, 0);
            if fill_random(scratch).is_err() {
                // Leave the chain in the ring and try again a little later.
                stats.entropy_errors += 1;
                wait(ENTROPY_RETRY);
                return Ok(Step::Wait);
            }
            // Every writable buffer is inside guest RAM (checked by `load`).
            if !chain::scatter(mem, &bufs.writable, 0, scratch) {
                stats.bad_requests += 1;
                stats.requests += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            bucket.tokens -= n as u64;
            stats.bytes += n as u64;
            stats.requests += 1;
            // `n <= MAX_REQUEST_BYTES`.
            Ok(Step::Done {
                len: n as u32,
                bytes: n as u64,
            })
        })
        .map_err(fault)?;
        let mut done = Processed::interrupt(batch.interrupt);
        if batch.more() {
            done.rearm_queue(0);
        }
        Ok(done)
    }
}

/// Fills `buf` from the host's entropy pool without blocking.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        // SAFETY: getrandom writes at most `rest.len()` bytes to `rest`, which is valid,
        // writable memory we hold exclusively.
        let r =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("requests", s.requests),
            ("bytes", s.bytes),
            ("bad_requests", s.bad_requests),
            ("throttled", s.throttled),
            ("entropy_errors", s.entropy_errors),
        ]
    }

    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio v1.2, 5.4.4: no configuration space.
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        _interrupt: Interrupt,
    ) -> Result<(), Error> {
        let queue = queues.drain(..).next().ok_or(Error::VirtioFault {
            device: self.name(),
            queue: 0,
            fault: GuestFault::QueueConfig {
                what: "the request queue is missing",
            },
        })?;
        self.active = Some(Active { mem, queue });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<Processed, Error> {
        if index != 0 {
            return Ok(Processed::IDLE);
        }
        let now = Instant::now();
        match self.wake_at {
            // Throttled: the timer brings us back; notifications meanwhile change nothing.
            Some(at) if now < at => return Ok(Processed::IDLE),
            // The time has come, whether or not anyone watched the timer.
            Some(_) => self.wake_at = None,
            None => {}
        }
        self.process(now)
    }

    fn event_sources(&self) -> Vec<EventSource> {
        vec![EventSource {
            fd: self.timer.as_raw_fd(),
            token: TIMER_TOKEN,
            edge_triggered: false,
        }]
    }

    fn process_event(&mut self, token: u32) -> Result<Processed, Error> {
        if token != TIMER_TOKEN {
            return Ok(Processed::IDLE);
        }
        drain_timer(&mut self.timer);
        self.wake_at = None;
        self.process(Instant::now())
    }

    fn reset(&mut self) {
        // The bucket is kept: a reset does not buy the guest a fresh burst.
        self.active = None;
        self.wake_at = None;
        let _ = self.timer.clear();
        drain_timer(&mut self.timer);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::testutil::*;
    use crate::virtio::{VirtioMmio, MAX_CHAINS_PER_WAKEUP, STATUS_DEVICE_NEEDS_RESET};

    const BUF: u64 = 0x2_0000;

    struct Rig {
        m: VirtioMmio<Rng>,
        mem: GuestMemoryMmap,
        q: TestQueue,
        next: u16,
    }

    fn rig(rng: Rng) -> Rig {
        let mem = guest_mem();
        let mut m = VirtioMmio::new(rng, mem.clone()).unwrap();
        let q = TestQueue::new(0x1000, QUEUE_SIZE);
        bring_up(&mut m, 1 << VIRTIO_F_VERSION_1, &[q]);
        m.process_queue_event(0);
        Rig { m, mem, q, next: 0 }
    }

    impl Rig {
        /// Publishes a chain; returns its head.
        fn publish(&mut self, bufs: &[Buf]) -> u16 {
            let head = self.q.chain(&self.mem, self.next, bufs);
            self.next += bufs.len() as u16;
            self.q.publish(&self.mem, head);
            head
        }

        fn used(&self) -> Vec<(u32, u32)> {
            (0..self.q.used_idx(&self.mem))
                .map(|i| self.q.used_elem(&self.mem, i))
                .collect()
        }
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let mut r = rig(Rng::new().unwrap());
        let h = r.publish(&[(BUF, 64, true), (BUF + 0x1000, 64, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used(), [(u32::from(h), 128)]);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        r.mem.read_slice(&mut a, GuestAddress(BUF)).unwrap();
        r.mem
            .read_slice(&mut b, GuestAddress(BUF + 0x1000))
            .unwrap();
        // 2^-512 odds of a false failure.
        assert_ne!(a, [0; 64]);
        assert_ne!(a, b);
        assert_eq!(r.m.interrupt().status(), crate::virtio::INTERRUPT_VRING);
        let s = r.m.device().stats();
        assert_eq!((s.requests, s.bytes, s.bad_requests), (1, 128, 0));
        assert_eq!(r.m.device().features(), 1 << 32);
        assert_eq!(rd(&mut r.m, 0x008), 4);
        assert_eq!(read_config(&mut r.m, 0, 4), [0; 4]);
    }

    #[test]
    fn a_large_buffer_gets_at_most_64_kib() {
        let mut r = rig(Rng::new().unwrap());
        let h = r.publish(&[(BUF, 0x2_0000, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used(), [(u32::from(h), 64 * 1024)]);
    }

    #[test]
    fn rate_limit_stops_and_resumes() {
        let mut r = rig(Rng::with_rate_limit(1000, 1000).unwrap());
        let start = Instant::now();
        // The full bucket gives 1000 bytes to the first request...
        r.publish(&[(BUF, 4096, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used()[0].1, 1000);
        assert_eq!(r.m.device().next_refill(), None);
        // ...and nothing to the next, which stays in the ring.
        r.publish(&[(BUF, 4096, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used().len(), 1);
        assert_eq!(r.m.device().stats().throttled, 1);
        let wait = r.m.device().next_refill().unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(513),
            "{wait:?}"
        );
        // More notifications while throttled change nothing.
        r.m.process_queue_event(0);
        assert_eq!(r.m.device().stats().throttled, 1);
        // Half a second later there are about 500 tokens.
        let rng = r.m.device_mut();
        rng.wake_at = None;
        assert!(
            rng.process(start + Duration::from_millis(500))
                .unwrap()
                .interrupt
        );
        let used = r.used();
        assert_eq!(used.len(), 2);
        assert!((400..=600).contains(&used[1].1), "{used:?}");
        assert_eq!(r.m.device().stats().bytes, 1000 + u64::from(used[1].1));
    }

    #[test]
    fn the_refill_timer_brings_the_device_back_through_the_event_loop() {
        let r = rig(Rng::with_rate_limit(100_000, 100).unwrap());
        let Rig { m, mem, q, .. } = r;
        let dev = Arc::new(Mutex::new(m));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let a = q.chain(&mem, 0, &[(BUF, 150, true)]);
        let b = q.chain(&mem, 1, &[(BUF + 0x1000, 150, true)]);
        q.publish(&mem, a);
        q.publish(&mem, b);
        dev.lock().unwrap().process_queue_event(0);
        assert_eq!(q.used_idx(&mem), 1);
        assert!(dev.lock().unwrap().device().next_refill().is_some());
        // 100 bytes take 1 ms at 100 kB/s; the timer fires and the loop finishes the job.
        let deadline = Instant::now() + Duration::from_secs(5);
        while q.used_idx(&mem) < 2 && Instant::now() < deadline {
            em.run_with_timeout(100).unwrap();
        }
        assert_eq!(q.used_elem(&mem, 0), (0, 100));
        assert_eq!(q.used_elem(&mem, 1), (1, 100));
        assert_eq!(dev.lock().unwrap().stats().event_registration_failures, 0);
    }

    #[test]
    fn a_flood_of_requests_is_served_64_per_round_beside_other_sources() {
        let r = rig(Rng::new().unwrap());
        let Rig { m, mem, q, .. } = r;
        for i in 0..200u16 {
            let head = q.chain(&mem, i, &[(BUF + 16 * u64::from(i), 16, true)]);
            q.publish(&mem, head);
        }
        m.queue_events()[0].write(1).unwrap();
        let dev = Arc::new(Mutex::new(m));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let probe_mem = mem.clone();
        let other = Arc::new(Mutex::new(Bystander::new(move || q.used_idx(&probe_mem))));
        em.add_subscriber(other.clone());
        other.lock().unwrap().evt.write(1).unwrap();
        let mut rounds = Vec::new();
        let mut used = 0;
        while used < 200 && rounds.len() < 100 {
            em.run_with_timeout(1000).unwrap();
            let now = q.used_idx(&mem);
            assert!(now >= used);
            rounds.push(now - used);
            used = now;
        }
        assert_eq!(rounds, [64, 64, 64, 8]);
        // Each chain came back once, filled.
        let mut heads: Vec<u32> = (0..200).map(|i| q.used_elem(&mem, i).0).collect();
        heads.sort_unstable();
        assert_eq!(heads, (0..200).collect::<Vec<u32>>());
        assert!((0..200).all(|i| q.used_elem(&mem, i).1 == 16));
        // The other source was served within the first round.
        let seen = other.lock().unwrap().seen.clone();
        assert_eq!(seen.len(), 1);
        assert!(u32::from(seen[0]) <= MAX_CHAINS_PER_WAKEUP, "{seen:?}");
        let m = dev.lock().unwrap();
        assert_eq!((m.device().stats().requests, m.stats().rearms), (200, 3));
    }

    #[test]
    fn reset_does_not_refill_the_bucket() {
        let mut r = rig(Rng::with_rate_limit(1, 100).unwrap());
        r.publish(&[(BUF, 4096, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used()[0].1, 100);
        wr(&mut r.m, 0x70, 0);
        assert_eq!(r.m.device().next_refill(), None);
        let mut r2 = Rig {
            q: TestQueue::new(0x8000, QUEUE_SIZE),
            next: 0,
            ..r
        };
        bring_up(&mut r2.m, 1 << VIRTIO_F_VERSION_1, &[r2.q]);
        r2.publish(&[(BUF, 4096, true)]);
        r2.m.process_queue_event(0);
        assert!(r2.used().is_empty());
    }

    #[test]
    fn bad_chains_are_returned_empty() {
        let mut r = rig(Rng::new().unwrap());
        r.mem.write_slice(&[7; 16], GuestAddress(BUF)).unwrap();
        // A device-readable buffer; a buffer outside guest RAM; no buffer at all.
        r.publish(&[(BUF, 16, false)]);
        r.publish(&[(BUF + 16, 16, true), (0x10_0000 - 8, 16, true)]);
        r.publish(&[(BUF, 0, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used(), [(0, 0), (1, 0), (3, 0)]);
        let mut back = [0u8; 32];
        r.mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
        assert_eq!(back, [[7; 16], [0; 16]].concat()[..]);
        assert_eq!(r.m.device().stats().bad_requests, 2);
        assert!(r.m.is_running());
    }

    #[test]
    fn broken_chain_needs_reset() {
        let mut r = rig(Rng::new().unwrap());
        r.q.set_desc(&r.mem, 0, BUF, 16, F_WRITE | F_NEXT, 0);
        r.q.publish(&r.mem, 0);
        r.m.process_queue_event(0);
        assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(r.used().is_empty());
    }

    #[test]
    fn zero_rate_is_refused() {
        assert!(matches!(
            Rng::with_rate_limit(0, 1),
            Err(Error::RngRateLimit { .. })
        ));
        assert!(Rng::with_rate_limit(1, 0).is_err());
    }

    #[test]
    fn token_bucket_keeps_fractions() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 10, t0);
        b.tokens = 0;
        // 3 tokens/s: after 0.5 s one token, and the remaining half-token of time is kept.
        b.refill(t0 + Duration::from_millis(500));
        assert_eq!(b.tokens, 1);
        b.refill(t0 + Duration::from_millis(1000));
        assert_eq!(b.tokens, 3);
        b.refill(t0 + Duration::from_secs(100));
        assert_eq!(b.tokens, 10);
        assert_eq!(b.time_until(5), Duration::ZERO);
        b.tokens = 0;
        assert_eq!(b.time_until(3), Duration::from_secs(1));
        assert_eq!(b.time_until(u64::MAX), Duration::from_nanos(3_333_333_333));
    }
}

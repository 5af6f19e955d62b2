//! virtio-rng, an entropy source (virtio v1.2, 5.4 Entropy Device).
//!
//! One request queue; each chain's device-writable buffers are filled from the host's
//! `getrandom(2)` (non-blocking: if the host pool is not ready the request waits), at most
//! 64 KiB per chain. A [`RateLimiter`](crate::RateLimiter) limits how fast a guest can drain
//! host entropy: each chain costs one operation and the bytes it is given. When the limiter
//! holds a chain back the device stops taking requests and arms a timerfd, one of its
//! [`event_sources`], and carries on when it fires; [`Rng::next_refill`] says when that will be.
//!
//! The default limit, [`DEFAULT_RATE_LIMIT`], is Petrel's: 1 MiB/s with a bucket of 1 MiB that
//! starts full. Firecracker's entropy device has no limit unless one is given; a VMM that wants
//! that builds the device with [`Rng::with_rate_limiter`] and an empty
//! [`RateLimiterConfig`].
//!
//! A chain with a device-readable buffer (virtio v1.2, 5.4.6.1: the driver MUST NOT place
//! driver-readable buffers into the queue) or a buffer outside guest RAM is returned with
//! nothing written, and costs no tokens; a broken chain stops the device (DEVICE_NEEDS_RESET).
//!
//! [`event_sources`]: VirtioDevice::event_sources

use std::any::Any;
use std::fmt;
use std::time::{Duration, Instant};

use crate::virtio::{GuestMemoryMmap, VirtioMemory};
use virtio_queue::Queue;
use vm_memory::GuestMemory;

use super::chain::{self, Budget, ChainBuffers, Step};
use super::state::{DeviceState, RngState};
use super::Error;
use super::{
    EventSource, GuestFault, Interrupt, Processed, Throttle, VirtioDevice, TYPE_RNG,
    VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The limit of [`Rng::new`]: 1 MiB of entropy per second, from a 1 MiB bucket that starts
/// full (so a guest may take 1 MiB at once), no limit on the number of requests.
pub const DEFAULT_RATE_LIMIT: RateLimiterConfig = RateLimiterConfig {
    bandwidth: Some(TokenBucketConfig {
        size: 1 << 20,
        one_time_burst: 0,
        refill_time_ms: 1000,
    }),
    ops: None,
};
/// The most bytes put into one chain, whatever its size (bounds the work per request).
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Wait before retrying when the host's `getrandom` cannot answer yet.
const ENTROPY_RETRY: Duration = Duration::from_millis(10);
/// The token of the rate-limiter timer among the device's event sources.
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
    /// Times the rate limiter held a request back (the device waits for its timer).
    pub throttled: u64,
    /// Times the host's `getrandom` failed (the request waits and is retried).
    pub entropy_errors: u64,
}

/// What the device needs once activated.
struct Active<M> {
    mem: M,
    queue: Queue,
}

/// A virtio-rng device.
pub struct Rng<M = GuestMemoryMmap> {
    /// The rate limiter and its timer (also used to retry when the host pool is not ready).
    throttle: Throttle,
    active: Option<Active<M>>,
    bufs: ChainBuffers,
    scratch: Vec<u8>,
    stats: RngStats,
}

impl<M> fmt::Debug for Rng<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng")
            .field("throttle", &self.throttle)
            .field("active", &self.active.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<M> Rng<M> {
    /// An entropy device with Petrel's default limit, [`DEFAULT_RATE_LIMIT`] (1 MiB/s).
    pub fn new() -> Result<Self, Error> {
        Self::with_rate_limiter(&DEFAULT_RATE_LIMIT)
    }

    /// An entropy device limited by `config`'s buckets (full at first); an empty config
    /// means no limit at all, as Firecracker's entropy device without a `rate_limiter`.
    pub fn with_rate_limiter(config: &RateLimiterConfig) -> Result<Self, Error> {
        Ok(Rng {
            throttle: Throttle::new(config)?,
            active: None,
            bufs: ChainBuffers::default(),
            scratch: Vec::new(),
            stats: RngStats::default(),
        })
    }

    /// Changes the limit at run time with Firecracker's PATCH semantics
    /// ([`RateLimiter::update`](crate::RateLimiter::update)): a bucket given is replaced by a
    /// new full one (removed if its size or refill time is 0), a bucket not given is kept. A
    /// device waiting for tokens tries again at once.
    pub fn set_rate_limiter(&mut self, patch: &RateLimiterConfig) {
        self.throttle.update(patch);
    }

    /// The limiter's current parameters (`None` for an absent bucket).
    pub fn rate_limiter(&self) -> RateLimiterConfig {
        self.throttle.config()
    }

    /// When the device is waiting for its rate limiter (or for the host's entropy pool) with
    /// requests pending: how long until it looks again. `None` when it is not waiting.
    pub fn next_refill(&self) -> Option<Duration> {
        self.throttle.next_wake()
    }

    /// The device's counters.
    pub fn stats(&self) -> RngStats {
        RngStats {
            throttled: self.throttle.throttled(),
            ..self.stats
        }
    }

    /// Serves requests within one wake-up's budget, stopping when the rate limiter holds one
    /// back.
    fn process(&mut self, now: Instant) -> Result<Processed, Error>
    where
        M: GuestMemory,
    {
        let fault = |fault: GuestFault| Error::VirtioFault {
            device: "virtio-rng",
            queue: 0,
            fault,
        };
        let Rng {
            throttle,
            active,
            bufs,
            scratch,
            stats,
        } = self;
        let Some(Active { mem, queue }) = active.as_mut() else {
            return Ok(Processed::IDLE);
        };
        let mut budget = Budget::new();
        let batch = chain::process_chains(queue, mem, bufs, &mut budget, |bufs| {
            if !bufs.readable.is_empty() || bufs.outside_ram {
                stats.bad_requests += 1;
                stats.requests += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            let n = bufs.writable_len().min(MAX_REQUEST_BYTES);
            if !throttle.admit(1, n, now) {
                // The chain waits in the ring; the timer brings the device back.
                return Ok(Step::Wait);
            }
            // `n <= MAX_REQUEST_BYTES`.
            scratch.resize(n as usize, 0);
            if petrel_util::fill_random(scratch).is_err() {
                // Leave the chain in the ring and try again a little later. The tokens it
                // took are not given back: a host that cannot answer is not a reason to let
                // the guest go faster afterwards.
                stats.entropy_errors += 1;
                throttle.sleep(ENTROPY_RETRY, now);
                return Ok(Step::Wait);
            }
            // Every writable buffer is inside guest RAM (checked by `load`).
            if !chain::scatter(mem, &bufs.writable, 0, scratch) {
                stats.bad_requests += 1;
                stats.requests += 1;
                return Ok(Step::Done { len: 0, bytes: 0 });
            }
            stats.bytes += n;
            stats.requests += 1;
            Ok(Step::Done {
                len: n as u32,
                bytes: n,
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

impl<M: VirtioMemory> VirtioDevice<M> for Rng<M> {
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
        mem: M,
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
        // Throttled: the timer brings the device back; notifications meanwhile change nothing.
        if self.throttle.waiting(now) {
            return Ok(Processed::IDLE);
        }
        self.process(now)
    }

    fn event_sources(&self) -> Vec<EventSource> {
        vec![self.throttle.event_source(TIMER_TOKEN)]
    }

    fn process_event(&mut self, token: u32) -> Result<Processed, Error> {
        if token != TIMER_TOKEN {
            return Ok(Processed::IDLE);
        }
        self.throttle.fired();
        self.process(Instant::now())
    }

    fn reset(&mut self) {
        // The limiter is kept: a reset does not buy the guest a fresh burst.
        self.active = None;
        self.throttle.reset();
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active.iter().map(|a| &a.queue).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Rng(RngState {
            rate_limiter: self.throttle.config(),
        })
    }

    /// Takes the rate limiter's parameters, with full buckets.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), Error> {
        let DeviceState::Rng(state) = state else {
            return Err(Error::DeviceStateMismatch {
                device: self.name(),
                saved: state.device_name(),
            });
        };
        self.throttle.restore(&state.rate_limiter);
        Ok(())
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

    /// Records the causes it was triggered for: a transport's interrupt that is no irqfd.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<crate::virtio::InterruptCause>>);

    impl crate::virtio::VirtioInterrupt for Arc<Recorder> {
        fn trigger(&self, cause: crate::virtio::InterruptCause) -> std::io::Result<()> {
            self.0.lock().unwrap().push(cause);
            Ok(())
        }
    }

    #[test]
    fn works_over_other_guest_memory_and_interrupts() {
        // vm-memory's mmap without a dirty bitmap, and interrupts recorded instead of written
        // to an irqfd: what a VMM with another memory type, an MSI-X or a test transport gives.
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let recorder = Arc::new(Recorder::default());
        let mut m = VirtioMmio::with_interrupt(
            Rng::new().unwrap(),
            mem.clone(),
            Box::new(recorder.clone()),
        )
        .unwrap();
        assert!(m.interrupt_evt().is_none());
        let q = TestQueue::new(0x1000, QUEUE_SIZE);
        bring_up(&mut m, 1 << VIRTIO_F_VERSION_1, &[q]);
        m.process_queue_event(0);
        let head = q.chain(&mem, 0, &[(BUF, 32, true)]);
        q.publish(&mem, head);
        m.process_queue_event(0);
        assert_eq!(q.used_idx(&mem), 1);
        assert_eq!(q.used_elem(&mem, 0), (u32::from(head), 32));
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [crate::virtio::InterruptCause::UsedBuffer]
        );
        assert_eq!(m.interrupt().status(), crate::virtio::INTERRUPT_VRING);
        let mut bytes = [0u8; 32];
        mem.read_slice(&mut bytes, GuestAddress(BUF)).unwrap();
        assert_ne!(bytes, [0; 32]);
    }

    #[test]
    fn a_large_buffer_gets_at_most_64_kib() {
        let mut r = rig(Rng::new().unwrap());
        let h = r.publish(&[(BUF, 0x2_0000, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used(), [(u32::from(h), 64 * 1024)]);
    }

    /// A limiter of `size` bytes per `refill_time_ms`, no burst, no limit on requests.
    fn bytes_per(size: u64, refill_time_ms: u64) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size,
                one_time_burst: 0,
                refill_time_ms,
            }),
            ops: None,
        }
    }

    #[test]
    fn rate_limit_stops_and_resumes() {
        let mut r = rig(Rng::with_rate_limiter(&bytes_per(1000, 1000)).unwrap());
        let start = Instant::now();
        // The full bucket pays for the first request...
        r.publish(&[(BUF, 600, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used()[0].1, 600);
        assert_eq!(r.m.device().next_refill(), None);
        // ...but not for the next, which stays in the ring, whole.
        r.publish(&[(BUF, 600, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used().len(), 1);
        assert_eq!(r.m.device().stats().throttled, 1);
        let wait = r.m.device().next_refill().unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // More notifications while throttled change nothing.
        r.m.process_queue_event(0);
        assert_eq!(r.m.device().stats().throttled, 1);
        // 300 ms later the 200 missing bytes have been earned (time injected, no sleep).
        let rng = r.m.device_mut();
        rng.throttle.fired();
        assert!(
            rng.process(start + Duration::from_millis(300))
                .unwrap()
                .interrupt
        );
        assert_eq!(r.used(), [(0, 600), (1, 600)]);
        let s = r.m.device().stats();
        assert_eq!((s.requests, s.bytes, s.throttled), (2, 1200, 1));
        assert_eq!(r.m.device().counters()[3], ("throttled", 1));
    }

    #[test]
    fn the_limit_can_be_changed_while_requests_wait() {
        let mut r = rig(Rng::new().unwrap());
        assert_eq!(r.m.device().rate_limiter(), DEFAULT_RATE_LIMIT);
        // One request per 100 s.
        let one_op = RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 100_000,
            }),
        };
        r.m.device_mut().set_rate_limiter(&one_op);
        // PATCH semantics: the default bandwidth bucket was not given, so it stays.
        assert_eq!(
            r.m.device().rate_limiter(),
            RateLimiterConfig {
                bandwidth: DEFAULT_RATE_LIMIT.bandwidth,
                ..one_op
            }
        );
        r.publish(&[(BUF, 16, true)]);
        r.publish(&[(BUF, 16, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used().len(), 1);
        assert!(r.m.device().next_refill().unwrap() > Duration::from_secs(99));
        // The host lifts both limits; the waiting device is woken through its timer at once.
        let none = TokenBucketConfig::default();
        r.m.device_mut().set_rate_limiter(&RateLimiterConfig {
            bandwidth: Some(none),
            ops: Some(none),
        });
        assert_eq!(r.m.device().rate_limiter(), RateLimiterConfig::default());
        assert!(r.m.device().next_refill().unwrap() < Duration::from_millis(1));
        r.m.process_device_event(TIMER_TOKEN);
        assert_eq!(r.used().len(), 2);
        assert_eq!(r.m.device().next_refill(), None);
    }

    #[test]
    fn without_a_limit_nothing_waits() {
        let mut r = rig(Rng::with_rate_limiter(&RateLimiterConfig::default()).unwrap());
        for _ in 0..32 {
            r.publish(&[(BUF, 0x1_0000, true)]);
        }
        r.m.process_queue_event(0);
        // 2 MiB, twice the default limit's bucket, and the per-wake-up byte budget: two rounds.
        r.m.process_queue_event(0);
        assert_eq!(r.used().len(), 32);
        assert_eq!(r.m.device().stats().throttled, 0);
        assert_eq!(r.m.device().stats().bytes, 2 << 20);
    }

    #[test]
    fn the_refill_timer_brings_the_device_back_through_the_event_loop() {
        // 100 bytes per millisecond.
        let r = rig(Rng::with_rate_limiter(&bytes_per(100, 1)).unwrap());
        let Rig { m, mem, q, .. } = r;
        let dev = Arc::new(Mutex::new(m));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let a = q.chain(&mem, 0, &[(BUF, 150, true)]);
        let b = q.chain(&mem, 1, &[(BUF + 0x1000, 150, true)]);
        q.publish(&mem, a);
        q.publish(&mem, b);
        dev.lock().unwrap().process_queue_event(0);
        // Larger than the bucket: the first goes through on the full bucket, leaving a debt.
        assert_eq!(q.used_idx(&mem), 1);
        assert!(dev.lock().unwrap().device().next_refill().is_some());
        // The debt and a full bucket take 2.5 ms; the timer fires and the loop finishes the
        // job.
        let deadline = Instant::now() + Duration::from_secs(5);
        while q.used_idx(&mem) < 2 && Instant::now() < deadline {
            em.run_with_timeout(100).unwrap();
        }
        assert_eq!(q.used_elem(&mem, 0), (0, 150));
        assert_eq!(q.used_elem(&mem, 1), (1, 150));
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
        let mut r = rig(Rng::with_rate_limiter(&bytes_per(100, 1_000_000)).unwrap());
        r.publish(&[(BUF, 100, true)]);
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
        r2.publish(&[(BUF, 100, true)]);
        r2.m.process_queue_event(0);
        assert!(r2.used().is_empty());
        assert_eq!(r2.m.device().stats().throttled, 1);
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
    fn a_restored_rng_keeps_its_limit_with_a_full_bucket_and_serves_the_next_request() {
        let mut r = rig(Rng::with_rate_limiter(&bytes_per(4096, 60_000)).unwrap());
        let h = r.publish(&[(BUF, 4096, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used(), [(u32::from(h), 4096)]);
        // The bucket is empty now: this one waits.
        let h2 = r.publish(&[(BUF, 1024, true)]);
        r.m.process_queue_event(0);
        assert_eq!(r.used().len(), 1);
        let state = r.m.save_state();
        assert_eq!(state.queues[0].next_avail, 1);

        let mut m = VirtioMmio::new(Rng::new().unwrap(), r.mem.clone()).unwrap();
        m.restore_state(&state).unwrap();
        assert_eq!(m.device().rate_limiter(), bytes_per(4096, 60_000));
        r.m = m;
        // A full bucket again: the waiting request is served at the activation kick.
        run_rearmed(&mut r.m);
        assert_eq!(r.used(), [(u32::from(h), 4096), (u32::from(h2), 1024)]);
    }
}

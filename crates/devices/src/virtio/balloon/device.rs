//! The balloon device: its host-side interface (what the VMM and the API call) and its
//! [`VirtioDevice`] implementation.

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::GuestMemory;
use vmm_sys_util::timerfd::TimerFd;

use super::hinting::{self, HintingState, HintingStatus, FREE_PAGE_HINT_DONE};
use super::queues;
use super::stats::{BalloonMetrics, BalloonStats};
use super::{
    BalloonConfig, QueueRole, CONFIG_SPACE_SIZE, F_DEFLATE_ON_OOM, F_FREE_PAGE_HINT, F_REPORTING,
    F_STATS_VQ, PAGES_PER_MIB, QUEUE_SIZE,
};
use crate::virtio::chain::{self, Budget, ChainBuffers};
use crate::virtio::state::{BalloonState, DeviceState};
use crate::virtio::{
    drain_timer, new_timer, read_config_bytes, Error, EventSource, GuestFault, GuestMemoryMmap,
    Interrupt, Processed, VirtioDevice, VirtioMemory, TYPE_BALLOON, VIRTIO_F_VERSION_1,
};

/// The device's name.
const NAME: &str = "virtio-balloon";
/// The token of the statistics timer among the device's event sources.
const STATS_TIMER_TOKEN: u32 = 0;

/// Frees the host memory behind guest pages (the VMM implements it per backing: anonymous,
/// memfd, privately mapped file, userfaultfd).
pub trait PageDiscarder: Send + Sync + fmt::Debug {
    /// Frees guest-physical `[gpa, gpa + len)`: page-aligned, already checked by the device to
    /// lie in guest RAM. The guest reads zeros there on its next access.
    fn discard(&self, gpa: u64, len: u64) -> io::Result<()>;
}

/// What the host asked of the balloon that it cannot do. Each message is a sentence for the
/// API's `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The target is larger than the guest's memory.
    #[error(
        "amount_mib {amount_mib} is larger than the guest's memory of {mem_mib} MiB; the \
         balloon cannot take more memory than the guest has."
    )]
    AmountTooLarge {
        /// The target asked for.
        amount_mib: u32,
        /// The guest's memory.
        mem_mib: u64,
    },
    /// Statistics were asked for, but the balloon was configured without them.
    #[error(
        "Statistics are not enabled on the balloon device: stats_polling_interval_s was 0 when \
         the balloon was configured."
    )]
    StatsDisabled,
    /// Statistics would be turned on or off after the guest started.
    #[error(
        "stats_polling_interval_s cannot change from {from} to {to} once the guest started: \
         statistics can be neither turned on nor off then, only their interval changed."
    )]
    StatsStateChange {
        /// The interval now.
        from: u16,
        /// The interval asked for.
        to: u16,
    },
    /// Hinting was asked for, but the balloon was configured without it.
    #[error(
        "Free page hinting is not enabled on the balloon device: free_page_hinting was false \
         when the balloon was configured."
    )]
    HintingDisabled,
    /// The guest's driver has not started the device (or did not accept the feature).
    #[error("The balloon device is not active in the guest yet, so {what} is not possible.")]
    NotActive {
        /// What was asked for.
        what: &'static str,
    },
    /// The statistics timer could not be created or armed.
    #[error("The balloon's statistics timer failed: {0}.")]
    Timer(io::Error),
}

/// What the device needs once activated.
struct Active<M> {
    mem: M,
    interrupt: Interrupt,
    /// The transport's queues, by index.
    queues: Vec<Queue>,
    /// What each queue is for, by the features the driver accepted.
    roles: Vec<QueueRole>,
}

impl<M> Active<M> {
    /// The index of the queue for `role`, if the driver set it up.
    fn index(&self, role: QueueRole) -> Option<usize> {
        self.roles.iter().position(|r| *r == role)
    }
}

/// A virtio-balloon device.
pub struct Balloon<M = GuestMemoryMmap> {
    /// As configured (the features offered come from it).
    config: BalloonConfig,
    mem_size: u64,
    discarder: Arc<dyn PageDiscarder>,
    queue_sizes: Vec<u16>,
    acked_features: u64,
    /// The target, in pages (`num_pages`).
    num_pages: u32,
    /// `actual`, as the driver wrote it.
    actual_pages: u32,
    /// `poison_val`, as the driver wrote it.
    poison_val: u32,
    stats_interval: u16,
    /// Non-blocking, periodic while statistics run.
    pub(super) stats_timer: TimerFd,
    /// The head of the statistics buffer the device holds.
    held_stats: Option<u16>,
    latest_stats: BalloonStats,
    hinting: HintingState,
    /// Set by a restore: tell the driver of the configuration change at activation.
    config_change_on_activate: bool,
    active: Option<Active<M>>,
    bufs: ChainBuffers,
    pfns: Vec<u32>,
    returned: Vec<u16>,
    metrics: BalloonMetrics,
}

impl<M> fmt::Debug for Balloon<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balloon")
            .field("config", &self.config())
            .field("actual_pages", &self.actual_pages)
            .field("held_stats", &self.held_stats)
            .field("hinting", &self.hinting)
            .field("active", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// `amount_mib` in balloon pages, if it is at most the guest's memory.
fn target_pages(amount_mib: u32, mem_size: u64) -> Result<u32, BalloonError> {
    let mem_mib = mem_size >> 20;
    if u64::from(amount_mib) > mem_mib {
        return Err(BalloonError::AmountTooLarge {
            amount_mib,
            mem_mib,
        });
    }
    amount_mib
        .checked_mul(PAGES_PER_MIB)
        .ok_or(BalloonError::AmountTooLarge {
            amount_mib,
            mem_mib: u64::from(u32::MAX / PAGES_PER_MIB),
        })
}

impl<M> Balloon<M> {
    /// A balloon set up by `config` for a guest of `mem_size` bytes, freeing memory through
    /// `discarder`. Checks the config against the guest RAM size (`amount_mib` at most the
    /// guest's MiB).
    pub fn new(
        config: BalloonConfig,
        mem_size: u64,
        discarder: Arc<dyn PageDiscarder>,
    ) -> Result<Self, BalloonError> {
        let num_pages = target_pages(config.amount_mib, mem_size)?;
        let mut balloon = Balloon {
            config,
            mem_size,
            discarder,
            queue_sizes: Vec::new(),
            acked_features: 0,
            num_pages,
            actual_pages: 0,
            poison_val: 0,
            stats_interval: config.stats_polling_interval_s,
            stats_timer: new_timer().map_err(BalloonError::Timer)?,
            held_stats: None,
            latest_stats: BalloonStats::default(),
            hinting: HintingState::default(),
            config_change_on_activate: false,
            active: None,
            bufs: ChainBuffers::default(),
            pfns: Vec::with_capacity(queues::MAX_PFNS_PER_CHAIN),
            returned: Vec::new(),
            metrics: BalloonMetrics::default(),
        };
        balloon.queue_sizes = vec![QUEUE_SIZE; QueueRole::for_features(balloon.offered()).len()];
        Ok(balloon)
    }

    /// The features the device offers.
    fn offered(&self) -> u64 {
        let mut features = 1 << VIRTIO_F_VERSION_1;
        for (on, bit) in [
            (self.config.stats_polling_interval_s > 0, F_STATS_VQ),
            (self.config.deflate_on_oom, F_DEFLATE_ON_OOM),
            (self.config.free_page_hinting, F_FREE_PAGE_HINT),
            (self.config.free_page_reporting, F_REPORTING),
        ] {
            if on {
                features |= 1 << bit;
            }
        }
        features
    }

    /// The config as it is now (`amount_mib` = the current target, the current polling
    /// interval).
    pub fn config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.num_pages / PAGES_PER_MIB,
            stats_polling_interval_s: self.stats_interval,
            ..self.config
        }
    }

    /// Firecracker's `BalloonStats`: the target and actual sizes, and the guest's statistics
    /// as it last reported them (each `None` until it did). [`BalloonError::StatsDisabled`]
    /// when the balloon was configured without statistics.
    pub fn stats(&self) -> Result<BalloonStats, BalloonError> {
        if self.stats_interval == 0 {
            return Err(BalloonError::StatsDisabled);
        }
        Ok(BalloonStats {
            target_pages: self.num_pages,
            actual_pages: self.actual_pages,
            target_mib: self.num_pages / PAGES_PER_MIB,
            actual_mib: self.actual_pages / PAGES_PER_MIB,
            ..self.latest_stats
        })
    }

    /// Where free page hinting stands: the host's last command and the guest's.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.config.free_page_hinting {
            return Err(BalloonError::HintingDisabled);
        }
        Ok(self.hinting.status())
    }

    /// Firecracker's `balloon` metrics group (and Petrel's additions), the same numbers as
    /// [`VirtioDevice::counters`].
    pub fn metrics(&self) -> BalloonMetrics {
        self.metrics
    }

    /// Arms the statistics timer to fire every `stats_interval` seconds, the first time
    /// after `first`.
    fn arm_stats_timer(&mut self, first: Duration) -> io::Result<()> {
        let every = Duration::from_secs(u64::from(self.stats_interval));
        self.stats_timer
            .reset(first.max(Duration::from_nanos(1)), Some(every))
            .map_err(io::Error::from)
    }

    /// Whether the driver set up the queue for `role`.
    fn has_queue(&self, role: QueueRole) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.index(role).is_some())
    }
}

impl<M: GuestMemory> Balloon<M> {
    /// Sets a new target. The caller then calls
    /// [`VirtioMmio::notify_config_change`](crate::virtio::VirtioMmio::notify_config_change)
    /// so that the guest sees it.
    pub fn set_target_mib(&mut self, amount_mib: u32) -> Result<(), BalloonError> {
        self.num_pages = target_pages(amount_mib, self.mem_size)?;
        Ok(())
    }

    /// `PATCH /balloon/statistics` after boot: a new non-zero interval. Turning statistics on
    /// or off after activation is refused, as Firecracker does. The first update is asked
    /// for at once: the statistics timer fires now (on the event loop, which does not serve
    /// a device the driver must reset), then at the new interval.
    pub fn set_stats_interval(&mut self, secs: u16) -> Result<(), BalloonError> {
        if secs == self.stats_interval {
            return Ok(());
        }
        if secs == 0 || self.stats_interval == 0 {
            return Err(BalloonError::StatsStateChange {
                from: self.stats_interval,
                to: secs,
            });
        }
        self.stats_interval = secs;
        if self.has_queue(QueueRole::Stats) {
            self.arm_stats_timer(Duration::ZERO)
                .map_err(BalloonError::Timer)?;
        }
        Ok(())
    }

    /// Starts a free page hinting run: a new command id in the configuration space, and a
    /// configuration change interrupt (raised here: the caller need not). With
    /// `acknowledge_on_stop` the guest's STOP is answered with DONE at once.
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        self.hinting_ready("starting free page hinting")?;
        self.hinting.start(acknowledge_on_stop);
        self.signal_config_change();
        Ok(())
    }

    /// Ends a free page hinting run (DONE): the guest may use the hinted pages again.
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        self.hinting_ready("stopping free page hinting")?;
        self.hinting.host_cmd = FREE_PAGE_HINT_DONE;
        self.signal_config_change();
        Ok(())
    }

    /// Whether hinting is configured, and the driver runs the device with it.
    fn hinting_ready(&self, what: &'static str) -> Result<(), BalloonError> {
        if !self.config.free_page_hinting {
            return Err(BalloonError::HintingDisabled);
        }
        if !self.has_queue(QueueRole::FreePageHint) {
            return Err(BalloonError::NotActive { what });
        }
        Ok(())
    }

    fn signal_config_change(&self) {
        if let Some(a) = &self.active {
            a.interrupt.signal_config_change();
        }
    }

    /// Gives the held statistics buffer back (the driver then sends fresh numbers); answers
    /// whether the driver wants an interrupt. A ring the device cannot write is left alone:
    /// the next queue notification finds the fault.
    fn ask_for_stats(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let Some(index) = a.index(QueueRole::Stats) else {
            return false;
        };
        let Some(head) = self.held_stats.take() else {
            return false;
        };
        chain::return_chain(&mut a.queues[index], &a.mem, head, 0).unwrap_or(false)
    }

    /// Serves queue `index` within one wake-up's budget.
    fn process(&mut self, index: usize) -> Result<Processed, GuestFault> {
        let Balloon {
            active,
            bufs,
            pfns,
            returned,
            metrics,
            discarder,
            latest_stats,
            held_stats,
            hinting,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(Processed::IDLE);
        };
        let (Some(&role), Some(queue)) = (a.roles.get(index), a.queues.get_mut(index)) else {
            return Ok(Processed::IDLE);
        };
        let mem = &a.mem;
        let discarder = &**discarder;
        let mut budget = Budget::new();
        let mut interrupt = false;
        let mut stopped = None;
        let batch = match role {
            QueueRole::Inflate => chain::process_chains(queue, mem, bufs, &mut budget, |b| {
                Ok(queues::inflate(b, mem, discarder, pfns, metrics))
            })?,
            QueueRole::Deflate => chain::process_chains(queue, mem, bufs, &mut budget, |b| {
                Ok(queues::deflate(b, metrics))
            })?,
            QueueRole::Stats => {
                returned.clear();
                let batch = chain::process_chains(queue, mem, bufs, &mut budget, |b| {
                    Ok(queues::stats(
                        b,
                        mem,
                        latest_stats,
                        held_stats,
                        returned,
                        metrics,
                    ))
                })?;
                for &head in returned.iter() {
                    interrupt |= chain::return_chain(queue, mem, head, 0)?;
                }
                batch
            }
            QueueRole::FreePageHint => chain::process_chains(queue, mem, bufs, &mut budget, |b| {
                let (step, stop) = hinting::hint(b, mem, discarder, hinting, metrics);
                stopped = stop.or(stopped);
                Ok(step)
            })?,
            QueueRole::Reporting => chain::process_chains(queue, mem, bufs, &mut budget, |b| {
                Ok(queues::report(b, mem, discarder, metrics))
            })?,
        };
        if stopped == Some(true) && hinting.acknowledge_on_stop && hinting.running() {
            hinting.host_cmd = FREE_PAGE_HINT_DONE;
            a.interrupt.signal_config_change();
        }
        let mut done = Processed::interrupt(batch.interrupt || interrupt);
        if batch.more() {
            done.rearm_queue(index);
        }
        Ok(done)
    }

    /// The configuration space as the driver reads it.
    fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut space = [0u8; CONFIG_SPACE_SIZE];
        for (i, v) in [
            self.num_pages,
            self.actual_pages,
            self.hinting.host_cmd,
            self.poison_val,
        ]
        .into_iter()
        .enumerate()
        {
            space[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        space
    }
}

impl<M: VirtioMemory> VirtioDevice<M> for Balloon<M> {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered()
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    /// The driver may write `actual` (bytes 4..8) and `poison_val` (12..16); a write that
    /// touches anything else is refused whole.
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
        else {
            return false;
        };
        let start = end - data.len();
        let field = match (start, end) {
            (s, e) if s >= 4 && e <= 8 => 1,
            (s, e) if s >= 12 && e <= 16 => 3,
            _ => return false,
        };
        let mut space = self.config_space();
        space[start..end].copy_from_slice(data);
        let value = u32::from_le_bytes([
            space[4 * field],
            space[4 * field + 1],
            space[4 * field + 2],
            space[4 * field + 3],
        ]);
        if field == 1 {
            self.actual_pages = value;
        } else {
            self.poison_val = value;
        }
        true
    }

    fn activate(&mut self, mem: M, queues: Vec<Queue>, interrupt: Interrupt) -> Result<(), Error> {
        let roles = QueueRole::for_features(self.acked_features);
        if roles.contains(&QueueRole::Stats) && self.stats_interval > 0 {
            let every = Duration::from_secs(u64::from(self.stats_interval));
            if let Err(e) = self.arm_stats_timer(every) {
                self.metrics.activate_fails += 1;
                return Err(Error::CreateTimer(e));
            }
        }
        if std::mem::take(&mut self.config_change_on_activate) {
            interrupt.signal_config_change();
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            roles,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<Processed, Error> {
        self.process(index).map_err(|fault| {
            self.metrics.event_fails += 1;
            Error::VirtioFault {
                device: NAME,
                queue: index,
                fault,
            }
        })
    }

    fn event_sources(&self) -> Vec<EventSource> {
        vec![EventSource {
            fd: self.stats_timer.as_raw_fd(),
            token: STATS_TIMER_TOKEN,
            edge_triggered: false,
        }]
    }

    fn process_event(&mut self, token: u32) -> Result<Processed, Error> {
        if token != STATS_TIMER_TOKEN {
            return Ok(Processed::IDLE);
        }
        drain_timer(&mut self.stats_timer);
        Ok(Processed::interrupt(self.ask_for_stats()))
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.actual_pages = 0;
        self.poison_val = 0;
        self.held_stats = None;
        self.latest_stats = BalloonStats::default();
        self.hinting = HintingState::default();
        self.config_change_on_activate = false;
        let _ = self.stats_timer.clear();
        drain_timer(&mut self.stats_timer);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.metrics.counters()
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active.iter().flat_map(|a| a.queues.iter()).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Balloon(BalloonState {
            num_pages: self.num_pages,
            actual_pages: self.actual_pages,
            poison_val: self.poison_val,
            stats_polling_interval_s: self.stats_interval,
            stats_desc_index: self.held_stats,
            latest_stats: self.latest_stats.guest_part(),
            hint_host_cmd: self.hinting.host_cmd,
            hint_last_cmd_id: self.hinting.last_cmd_id,
            hint_guest_cmd: self.hinting.guest_cmd,
            hint_acknowledge_on_stop: self.hinting.acknowledge_on_stop,
        })
    }

    /// Takes the target, the driver's fields, the statistics interval, the held statistics
    /// buffer, the latest statistics and the hinting state. A hinting run that was going on
    /// is ended (DONE, told to the driver at activation), as Firecracker does: the guest gets
    /// its hinted pages back.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), Error> {
        let DeviceState::Balloon(s) = state else {
            return Err(Error::DeviceStateMismatch {
                device: NAME,
                saved: state.device_name(),
            });
        };
        let invalid = |why: String| Error::InvalidState { device: NAME, why };
        if (s.stats_polling_interval_s == 0) != (self.config.stats_polling_interval_s == 0) {
            return Err(invalid(format!(
                "the saved stats_polling_interval_s {} and the configured {} do not agree on \
                 whether statistics are on",
                s.stats_polling_interval_s, self.config.stats_polling_interval_s
            )));
        }
        if u64::from(s.num_pages) > (self.mem_size >> 20) * u64::from(PAGES_PER_MIB) {
            return Err(invalid(format!(
                "the saved target of {} pages is larger than the guest's memory",
                s.num_pages
            )));
        }
        if s.stats_desc_index.is_some_and(|h| h >= QUEUE_SIZE) {
            return Err(invalid(format!(
                "the held statistics buffer {:?} is past the queue size {QUEUE_SIZE}",
                s.stats_desc_index
            )));
        }
        if !self.config.free_page_hinting && s.hint_host_cmd != 0 {
            return Err(invalid(
                "a hinting command was saved, but hinting is not configured".into(),
            ));
        }
        self.num_pages = s.num_pages;
        self.actual_pages = s.actual_pages;
        self.poison_val = s.poison_val;
        self.stats_interval = s.stats_polling_interval_s;
        self.held_stats = s.stats_desc_index;
        self.latest_stats = s.latest_stats.guest_part();
        self.hinting = HintingState {
            host_cmd: s.hint_host_cmd,
            last_cmd_id: s.hint_last_cmd_id,
            guest_cmd: s.hint_guest_cmd,
            acknowledge_on_stop: s.hint_acknowledge_on_stop,
        };
        if self.hinting.running() {
            self.hinting.host_cmd = FREE_PAGE_HINT_DONE;
            self.config_change_on_activate = true;
        }
        Ok(())
    }
}

#[cfg(test)]
impl<M> Balloon<M> {
    /// The head of the statistics buffer the device holds.
    pub(crate) fn held_stats(&self) -> Option<u16> {
        self.held_stats
    }

    /// Whether the statistics timer is armed.
    pub(crate) fn stats_timer_armed(&self) -> bool {
        self.stats_timer.is_armed().unwrap_or(false)
    }
}

//! Free page hinting (virtio v1.2, 5.5.6.4 Free Page Hinting): the host starts a run by
//! writing a new command id into `free_page_hint_cmd_id`; the driver answers with that id (a
//! device-readable `le32`), then hands over free pages (device-writable buffers) that it will
//! not touch until the host says DONE, and ends with STOP. The host frees the hinted pages,
//! and says DONE (by itself on the guest's STOP, or when asked) so the guest may use them
//! again.

use serde::Serialize;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::queues::free_range;
use super::stats::BalloonMetrics;
use super::PageDiscarder;
use crate::virtio::chain::{ChainBuffers, Step};

/// `free_page_hint_cmd_id` STOP: no run (the host's value at first), or from the guest, its
/// run is over.
pub const FREE_PAGE_HINT_STOP: u32 = 0;
/// `free_page_hint_cmd_id` DONE: the host is done with the hinted pages; the guest may use
/// them again.
pub const FREE_PAGE_HINT_DONE: u32 = 1;

/// Where a free page hinting run stands, as `GET /balloon/hinting/status` answers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HintingStatus {
    /// The command the host last gave: [`FREE_PAGE_HINT_STOP`], [`FREE_PAGE_HINT_DONE`], or
    /// the id of a run (2 and up).
    pub host_cmd: u32,
    /// The command the guest last sent, if any.
    pub guest_cmd: Option<u32>,
}

/// The host's side of hinting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct HintingState {
    /// The command in the configuration space.
    pub host_cmd: u32,
    /// The id of the last run started (the next one takes the id after it).
    pub last_cmd_id: u32,
    /// The command the guest last sent.
    pub guest_cmd: Option<u32>,
    /// Whether the guest's STOP is answered with DONE at once.
    pub acknowledge_on_stop: bool,
}

impl HintingState {
    /// Whether a run is going on (the host's command is a run id).
    pub fn running(&self) -> bool {
        self.host_cmd > FREE_PAGE_HINT_DONE
    }

    /// Starts the next run and returns its id (never STOP or DONE).
    pub fn start(&mut self, acknowledge_on_stop: bool) -> u32 {
        let mut id = self.last_cmd_id.wrapping_add(1);
        if id <= FREE_PAGE_HINT_DONE {
            id = FREE_PAGE_HINT_DONE + 1;
        }
        self.last_cmd_id = id;
        self.host_cmd = id;
        self.acknowledge_on_stop = acknowledge_on_stop;
        id
    }

    /// The status as the API shows it.
    pub fn status(&self) -> HintingStatus {
        HintingStatus {
            host_cmd: self.host_cmd,
            guest_cmd: self.guest_cmd,
        }
    }
}

/// One chain of the hinting queue. A device-readable buffer of 4 bytes is a command from the
/// guest; a device-writable buffer is a free range, freed only while the host's run is going
/// on and the guest has answered with that run's id (a range from an earlier run, or one
/// arriving after DONE, may already be in use again). Answers whether the guest ended its run
/// (STOP; DONE from the guest is taken as STOP) with this chain's last command.
pub(super) fn hint<M: GuestMemory>(
    bufs: &ChainBuffers,
    mem: &M,
    discarder: &dyn PageDiscarder,
    state: &mut HintingState,
    metrics: &mut BalloonMetrics,
) -> (Step, Option<bool>) {
    let mut stopped = None;
    for seg in &bufs.readable {
        let cmd = (seg.len == 4)
            .then(|| mem.read_obj::<u32>(GuestAddress(seg.addr)).ok())
            .flatten();
        match cmd {
            Some(cmd) => {
                state.guest_cmd = Some(cmd);
                stopped = Some(cmd <= FREE_PAGE_HINT_DONE);
            }
            None => metrics.free_page_hint_fails += 1,
        }
    }
    for seg in &bufs.writable {
        if !state.running() || state.guest_cmd != Some(state.host_cmd) {
            // A stale hint: not the host's to free any more.
            continue;
        }
        metrics.free_page_hint_count += 1;
        match free_range(mem, discarder, seg.addr, u64::from(seg.len)) {
            Some(freed) => metrics.free_page_hint_freed += freed,
            None => metrics.free_page_hint_fails += 1,
        }
    }
    (Step::Done { len: 0, bytes: 0 }, stopped)
}

//! virtio-blk over a raw disk image (virtio v1.2, 5.2 Block Device).
//!
//! One request queue of [`QUEUE_SIZE`] entries. Requests: IN (read), OUT (write), FLUSH
//! (`fdatasync` before completing) and GET_ID; anything else is answered
//! `VIRTIO_BLK_S_UNSUPP`. A request is parsed without assuming how the driver split it into
//! descriptors (virtio v1.2, 2.7.4 Message Framing): the 16-byte header is the first bytes of
//! the device-readable part, the status byte the last byte of the device-writable part, and the
//! data whatever lies between.
//!
//! Every request the device can answer gets a status: a short header, buffers in the wrong
//! direction or order, a buffer outside guest RAM, more than [`SEG_MAX`] data segments or one
//! larger than [`SIZE_MAX`], a length that is not a whole number of sectors, a sector range past
//! the end of the disk, a write to a read-only disk, or a host I/O error all complete with
//! `VIRTIO_BLK_S_IOERR` and touch neither the disk nor guest memory beyond the status byte. Only
//! a request with no status byte to write, or a broken chain, stops the device
//! (DEVICE_NEEDS_RESET).
//!
//! The disk's size is taken at [`Block::new`]: capacity is the size in 512-byte sectors,
//! rounded down; the bytes of a last partial sector can be neither read nor written
//! ([`Block::ignored_tail_bytes`]). The host may put another image behind a running device
//! ([`Block::replace_backing_file`], Firecracker's `PATCH /drives/{id}` with a new
//! `path_on_host`); the capacity follows the new file, and the transport tells the driver
//! ([`VirtioMmio::notify_config_change`](super::VirtioMmio::notify_config_change)).
//!
//! A [`RateLimiter`](crate::RateLimiter) (none unless [`Block::set_rate_limiter`] sets one)
//! limits the requests: each costs one operation, and IN and OUT requests their data bytes.
//! A request the limiter holds back stays in the ring, whole; the device takes no more until its
//! timer (one of its [`event_sources`](VirtioDevice::event_sources)) fires.

use std::any::Any;
use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::virtio::{GuestMemoryMmap, VirtioMemory};
use virtio_queue::Queue;
use vm_memory::GuestMemory;
use vm_memory::{Address, Bytes, GuestAddress};

use super::chain::{self, gather, pieces, Budget, ChainBuffers, Step};
use super::state::{BlockState, DeviceState};
use super::{
    read_config_bytes, EventSource, GuestFault, Interrupt, Processed, Throttle, VirtioDevice,
    TYPE_BLOCK, VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::RateLimiterConfig;
use crate::virtio::Error as VirtioError;

/// Errors from the virtio-blk device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A virtio-blk device ID longer than 20 bytes or not ASCII.
    #[error("block device ID {id:?} must be at most 20 ASCII characters")]
    BlockId {
        /// The ID given.
        id: String,
    },
    /// The size of a virtio-blk disk image could not be read.
    #[error("cannot read the size of the disk image")]
    BlockFileSize(#[source] std::io::Error),
    /// A virtio-blk disk being restored is not the disk the guest knew.
    #[error("cannot restore the virtio-blk disk {path}: its {what} is {current}, the saved disk's was {saved}")]
    BlockMismatch {
        /// The disk's path (or `(unknown path)` when the VMM did not give it).
        path: String,
        /// What differs (`"size in bytes"`, `"read-only flag"`, `"ID"`, `"features"`).
        what: &'static str,
        /// The saved value.
        saved: String,
        /// This disk's value.
        current: String,
    },
    /// A virtio transport or queue failure while setting the device up (an eventfd, a timer).
    #[error(transparent)]
    Virtio(#[from] crate::virtio::Error),
}

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes in a sector: `capacity` and `sector` count these whatever the disk's real block size
/// (virtio v1.2, 5.2.4 Device configuration layout, "capacity ... in 512-byte sectors").
pub const SECTOR_SIZE: u64 = 512;
/// Most data segments in one request: the queue size less the header and status descriptors
/// (what QEMU offers; a driver without indirect descriptors can use no more anyway).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment. Bounds one request to `SEG_MAX * SIZE_MAX` (about 16 MiB), so the
/// event loop is never held long by a single request.
pub const SIZE_MAX: u32 = 64 * 1024;
/// Bytes of the device ID string answered to GET_ID (virtio v1.2, 5.2.6, VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

/// Feature: `size_max` holds the largest segment (virtio v1.2, 5.2.3 Feature bits).
const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature: `seg_max` holds the most segments in a request (virtio v1.2, 5.2.3).
const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the device is read-only (virtio v1.2, 5.2.3).
const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: the FLUSH command is supported (virtio v1.2, 5.2.3).
const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Request types (virtio v1.2, 5.2.6 Device Operation).
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request status values (virtio v1.2, 5.2.6).
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Size of the request header: type (le32), reserved (le32), sector (le64) (virtio v1.2, 5.2.6,
/// struct virtio_blk_req).
const REQUEST_HEADER_LEN: usize = 16;
/// The configuration space offered: capacity (le64), size_max (le32), seg_max (le32)
/// (virtio v1.2, 5.2.4 struct virtio_blk_config); later fields read 0.
const CONFIG_LEN: usize = 16;
/// The token of the rate-limiter timer among the device's event sources.
const TIMER_TOKEN: u32 = 0;

/// Counters of a [`Block`] device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Read requests completed OK.
    pub reads: u64,
    /// Write requests completed OK.
    pub writes: u64,
    /// Flush requests completed OK.
    pub flushes: u64,
    /// GET_ID requests completed OK.
    pub get_ids: u64,
    /// Bytes read from the disk into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest to the disk.
    pub write_bytes: u64,
    /// Malformed requests answered IOERR (layout, lengths, segments, range, guest RAM).
    pub bad_requests: u64,
    /// Writes refused because the disk is read-only.
    pub read_only_writes: u64,
    /// Requests of a type the device does not support (answered UNSUPP).
    pub unsupported: u64,
    /// Host I/O errors (answered IOERR).
    pub io_errors: u64,
    /// Times the rate limiter held a request back (the device waits for its timer).
    pub throttled: u64,
    /// Times the host put another image behind the device.
    pub backing_file_swaps: u64,
}

/// What the device needs once activated.
struct Active<M> {
    mem: M,
    queue: Queue,
}

/// The disk and what a request needs of the device.
struct Disk {
    file: File,
    read_only: bool,
    /// Bytes usable: `capacity * SECTOR_SIZE`.
    size: u64,
    id: [u8; ID_BYTES],
    stats: BlockStats,
}

/// A virtio-blk device over a raw image file (or a host block device).
pub struct Block<M = GuestMemoryMmap> {
    disk: Disk,
    /// Where the image is, if the VMM said ([`Block::set_path`]).
    path: Option<PathBuf>,
    /// The features the driver accepted (0 until FEATURES_OK).
    acked_features: u64,
    ignored_tail: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active<M>>,
    bufs: ChainBuffers,
    throttle: Throttle,
}

impl<M> fmt::Debug for Block<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity())
            .field("read_only", &self.disk.read_only)
            .field("id", &String::from_utf8_lossy(&self.disk.id))
            .field("active", &self.active.is_some())
            .field("throttle", &self.throttle)
            .field("stats", &self.disk.stats)
            .finish()
    }
}

impl<M> Block<M> {
    /// A device over `file`, which must be open for reading, and for writing unless
    /// `read_only`. `id` (at most [`ID_BYTES`] bytes of ASCII) is what GET_ID answers.
    ///
    /// The capacity is the file's size in 512-byte sectors, rounded down: a size that is not
    /// a multiple of 512 leaves its last partial sector out of reach. No rate limit.
    pub fn new(mut file: File, read_only: bool, id: String) -> Result<Self, Error> {
        if id.len() > ID_BYTES || !id.is_ascii() {
            return Err(Error::BlockId { id });
        }
        let len = file_len(&mut file)?;
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let mut config = [0u8; CONFIG_LEN];
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let mut block = Block {
            disk: Disk {
                file,
                read_only,
                size: 0,
                id: id_bytes,
                stats: BlockStats::default(),
            },
            path: None,
            acked_features: 0,
            ignored_tail: 0,
            config,
            active: None,
            bufs: ChainBuffers::default(),
            throttle: Throttle::new(&RateLimiterConfig::default())?,
        };
        block.set_len(len);
        Ok(block)
    }

    /// Sets the size and capacity from a file of `len` bytes.
    fn set_len(&mut self, len: u64) {
        let capacity = len / SECTOR_SIZE;
        self.disk.size = capacity * SECTOR_SIZE;
        self.ignored_tail = len % SECTOR_SIZE;
        self.config[0..8].copy_from_slice(&capacity.to_le_bytes());
    }

    /// Puts `file` behind the device in place of the current image (which is closed), and
    /// returns the new capacity in sectors. For Firecracker's `PATCH /drives/{id}` with a new
    /// `path_on_host`.
    ///
    /// The device stays read-only or writable as it was (VIRTIO_BLK_F_RO was negotiated and
    /// cannot change under the driver): open `file` for writing unless
    /// [`read_only`](Self::read_only). The ID and counters stay; requests are served
    /// synchronously, so none is in flight on the old file, and those waiting in the ring (or
    /// for the rate limiter) go to the new one.
    ///
    /// The capacity in the configuration space changes at once; the caller then tells the
    /// driver with [`VirtioMmio::notify_config_change`](super::VirtioMmio::notify_config_change)
    /// (ConfigGeneration moves on, and a configuration-change interrupt is raised), after which
    /// Linux's virtio_blk re-reads the capacity and resizes the disk. If the size cannot be
    /// read, nothing changes.
    pub fn replace_backing_file(&mut self, mut file: File) -> Result<u64, Error> {
        let len = file_len(&mut file)?;
        self.disk.file = file;
        self.set_len(len);
        self.disk.stats.backing_file_swaps += 1;
        Ok(self.capacity())
    }

    /// Records where the image lives, for the device's state and its errors (a restore into a
    /// disk of another size names it). Set it again after
    /// [`replace_backing_file`](Self::replace_backing_file) with a file from elsewhere.
    pub fn set_path(&mut self, path: impl Into<PathBuf>) {
        self.path = Some(path.into());
    }

    /// Where the image lives, if [`set_path`](Self::set_path) said.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The image's size in bytes, the last partial sector included.
    fn size_bytes(&self) -> u64 {
        self.disk.size + self.ignored_tail
    }

    /// Changes the rate limit with Firecracker's PATCH semantics
    /// ([`RateLimiter::update`](crate::RateLimiter::update)): a bucket given is replaced by a
    /// new full one (removed if its size or refill time is 0), a bucket not given is kept. On a
    /// new device (no limit) this sets the limiter of Firecracker's `PUT /drives`. A device
    /// waiting for tokens tries again at once.
    pub fn set_rate_limiter(&mut self, patch: &RateLimiterConfig) {
        self.throttle.update(patch);
    }

    /// The limiter's current parameters (`None` for an absent bucket).
    pub fn rate_limiter(&self) -> RateLimiterConfig {
        self.throttle.config()
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }

    /// Bytes at the end of the file past the last whole sector, which the guest cannot reach.
    pub fn ignored_tail_bytes(&self) -> u64 {
        self.ignored_tail
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The device's counters.
    pub fn stats(&self) -> BlockStats {
        BlockStats {
            throttled: self.throttle.throttled(),
            ..self.disk.stats
        }
    }

    /// Serves requests within one wake-up's budget, stopping when the rate limiter holds one
    /// back.
    fn process(&mut self, now: Instant) -> Result<Processed, VirtioError>
    where
        M: GuestMemory,
    {
        let fault = |fault| VirtioError::VirtioFault {
            device: "virtio-blk",
            queue: 0,
            fault,
        };
        let Block {
            disk,
            active,
            bufs,
            throttle,
            ..
        } = self;
        let Some(Active { mem, queue }) = active.as_mut() else {
            return Ok(Processed::IDLE);
        };
        let mut budget = Budget::new();
        let batch = chain::process_chains(queue, mem, bufs, &mut budget, |bufs| {
            if !throttle.admit(1, data_bytes(mem, bufs), now) {
                return Ok(Step::Wait);
            }
            let before = disk.stats.read_bytes + disk.stats.write_bytes;
            let len = disk.execute(mem, bufs)?;
            let bytes = disk.stats.read_bytes + disk.stats.write_bytes - before;
            Ok(Step::Done { len, bytes })
        })
        .map_err(fault)?;
        let mut done = Processed::interrupt(batch.interrupt);
        if batch.more() {
            done.rearm_queue(0);
        }
        Ok(done)
    }
}

/// The size of `file`, in bytes.
fn file_len(file: &mut File) -> Result<u64, Error> {
    file.seek(SeekFrom::End(0)).map_err(Error::BlockFileSize)
}

/// The data bytes a request moves, as the rate limiter counts them: the data part of an IN or
/// OUT request as the driver laid it out (checked only later), 0 for the other types and for
/// a request whose type cannot be read.
fn data_bytes<G: GuestMemory>(mem: &G, bufs: &ChainBuffers) -> u64 {
    let mut request_type = [0u8; 4];
    if !gather(mem, &bufs.readable, 0, &mut request_type) {
        return 0;
    }
    match u32::from_le_bytes(request_type) {
        VIRTIO_BLK_T_IN => bufs.writable_len().saturating_sub(1),
        VIRTIO_BLK_T_OUT => bufs
            .readable_len()
            .saturating_sub(REQUEST_HEADER_LEN as u64),
        _ => 0,
    }
}

impl<M: VirtioMemory> VirtioDevice<M> for Block<M> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("reads", s.reads),
            ("writes", s.writes),
            ("flushes", s.flushes),
            ("get_ids", s.get_ids),
            ("read_bytes", s.read_bytes),
            ("write_bytes", s.write_bytes),
            ("bad_requests", s.bad_requests),
            ("read_only_writes", s.read_only_writes),
            ("unsupported", s.unsupported),
            ("io_errors", s.io_errors),
            ("throttled", s.throttled),
            ("backing_file_swaps", s.backing_file_swaps),
        ]
    }

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: M,
        mut queues: Vec<Queue>,
        _interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        let queue = queues.drain(..).next().ok_or(VirtioError::VirtioFault {
            device: self.name(),
            queue: 0,
            fault: GuestFault::QueueConfig {
                what: "the request queue is missing",
            },
        })?;
        self.active = Some(Active { mem, queue });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<Processed, VirtioError> {
        let now = Instant::now();
        // Throttled: the timer brings the device back; notifications meanwhile change nothing.
        if index != 0 || self.throttle.waiting(now) {
            return Ok(Processed::IDLE);
        }
        self.process(now)
    }

    fn event_sources(&self) -> Vec<EventSource> {
        vec![self.throttle.event_source(TIMER_TOKEN)]
    }

    fn process_event(&mut self, token: u32) -> Result<Processed, VirtioError> {
        if token != TIMER_TOKEN {
            return Ok(Processed::IDLE);
        }
        self.throttle.fired();
        self.process(Instant::now())
    }

    fn reset(&mut self) {
        // The limiter is kept: a reset does not buy the guest a fresh budget.
        self.active = None;
        self.acked_features = 0;
        self.throttle.reset();
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active.iter().map(|a| &a.queue).collect()
    }

    fn save_state(&self) -> DeviceState {
        let id_len = self
            .disk
            .id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ID_BYTES);
        DeviceState::Block(BlockState {
            path: self.path.clone(),
            size_bytes: self.size_bytes(),
            read_only: self.disk.read_only,
            id: String::from_utf8_lossy(&self.disk.id[..id_len]).into_owned(),
            acked_features: self.acked_features,
            rate_limiter: self.throttle.config(),
        })
    }

    /// Checks that this is the disk the guest knew: the same size in bytes, read-only flag and
    /// ID, and features the driver accepted that this disk offers; each difference is an
    /// [`Error::BlockMismatch`] (in a [`VirtioError::Device`]) naming the disk's path and both values. Then takes the accepted
    /// features and the rate limiter's parameters (with full buckets).
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        let DeviceState::Block(state) = state else {
            return Err(VirtioError::DeviceStateMismatch {
                device: self.name(),
                saved: state.device_name(),
            });
        };
        let path = self
            .path
            .as_ref()
            .or(state.path.as_ref())
            .map_or_else(|| "(unknown path)".to_string(), |p| p.display().to_string());
        let mismatch = |what, saved: String, current: String| {
            VirtioError::Device(Box::new(Error::BlockMismatch {
                path: path.clone(),
                what,
                saved,
                current,
            }))
        };
        if state.size_bytes != self.size_bytes() {
            return Err(mismatch(
                "size in bytes",
                state.size_bytes.to_string(),
                self.size_bytes().to_string(),
            ));
        }
        if state.read_only != self.disk.read_only {
            return Err(mismatch(
                "read-only flag",
                state.read_only.to_string(),
                self.disk.read_only.to_string(),
            ));
        }
        if let DeviceState::Block(current) = self.save_state() {
            if current.id != state.id {
                return Err(mismatch(
                    "ID",
                    format!("{:?}", state.id),
                    format!("{:?}", current.id),
                ));
            }
        }
        if state.acked_features & !self.features() != 0 {
            return Err(mismatch(
                "features",
                format!("{:#x} (accepted by the driver)", state.acked_features),
                format!("{:#x} (offered)", self.features()),
            ));
        }
        self.acked_features = state.acked_features;
        self.throttle.restore(&state.rate_limiter);
        Ok(())
    }
}

/// Where a request's status byte goes, and how the request went.
struct Outcome {
    status: u8,
    /// Bytes written into the guest's buffers before the status byte.
    data_written: u32,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome {
            status,
            data_written: 0,
        }
    }
}

impl Disk {
    /// Carries out one request and writes its status; returns the bytes written into the
    /// chain (for the used ring). Fails only when there is no status byte to write.
    fn execute<G: GuestMemory>(&mut self, mem: &G, bufs: &ChainBuffers) -> Result<u32, GuestFault> {
        let head = bufs.head;
        let writable = bufs.writable_len();
        // The status byte is the last device-writable byte (virtio v1.2, 5.2.6 struct
        // virtio_blk_req: `u8 status` follows the data).
        let status_at = writable
            .checked_sub(1)
            .and_then(|last| pieces(&bufs.writable, last, 1).next())
            .map(|(addr, _)| addr)
            .filter(|&addr| chain::in_ram(mem, addr, 1))
            .ok_or(GuestFault::NoStatusByte { head })?;
        let outcome = self.request(mem, bufs, writable - 1);
        mem.write_obj(outcome.status, GuestAddress(status_at))
            .map_err(|_| GuestFault::NoStatusByte { head })?;
        Ok(outcome.data_written.saturating_add(1))
    }

    fn bad(&mut self) -> Outcome {
        self.stats.bad_requests += 1;
        Outcome::status(VIRTIO_BLK_S_IOERR)
    }

    /// Parses and runs a request whose device-writable part holds `data_in_len` bytes before
    /// the status byte.
    fn request<G: GuestMemory>(
        &mut self,
        mem: &G,
        bufs: &ChainBuffers,
        data_in_len: u64,
    ) -> Outcome {
        if bufs.misordered {
            return self.bad();
        }
        let mut header = [0u8; REQUEST_HEADER_LEN];
        if !gather(mem, &bufs.readable, 0, &mut header) {
            // Too short, or outside guest RAM.
            return self.bad();
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let data_out_len = bufs.readable_len() - REQUEST_HEADER_LEN as u64;
        match request_type {
            VIRTIO_BLK_T_IN => {
                if data_out_len != 0 {
                    return self.bad();
                }
                self.transfer(mem, &bufs.writable, 0, data_in_len, sector, Direction::Read)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    // virtio v1.2, 5.2.6.2: IOERR for a write to a VIRTIO_BLK_F_RO device, and
                    // no data written.
                    self.stats.read_only_writes += 1;
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                }
                if data_in_len != 0 {
                    return self.bad();
                }
                let start = REQUEST_HEADER_LEN as u64;
                self.transfer(
                    mem,
                    &bufs.readable,
                    start,
                    data_out_len,
                    sector,
                    Direction::Write,
                )
            }
            VIRTIO_BLK_T_FLUSH => {
                if data_in_len != 0 || data_out_len != 0 {
                    return self.bad();
                }
                match self.file.sync_data() {
                    Ok(()) => {
                        self.stats.flushes += 1;
                        Outcome::status(VIRTIO_BLK_S_OK)
                    }
                    Err(_) => {
                        self.stats.io_errors += 1;
                        Outcome::status(VIRTIO_BLK_S_IOERR)
                    }
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                if data_in_len == 0 || data_out_len != 0 {
                    return self.bad();
                }
                // As much of the (NUL-padded) ID as the buffer holds; 20 bytes normally.
                let n = data_in_len.min(ID_BYTES as u64) as usize;
                if !chain::scatter(mem, &bufs.writable, 0, &self.id[..n]) {
                    return self.bad();
                }
                self.stats.get_ids += 1;
                Outcome {
                    status: VIRTIO_BLK_S_OK,
                    data_written: n as u32,
                }
            }
            _ => {
                self.stats.unsupported += 1;
                Outcome::status(VIRTIO_BLK_S_UNSUPP)
            }
        }
    }

    /// Moves `len` bytes between the disk at `sector` and bytes `[start, start + len)` of
    /// `segs`, after checking everything that can be checked before touching either.
    fn transfer<G: GuestMemory>(
        &mut self,
        mem: &G,
        segs: &[chain::Segment],
        start: u64,
        len: u64,
        sector: u64,
        dir: Direction,
    ) -> Outcome {
        let mut count = 0u32;
        for (addr, piece) in pieces(segs, start, len) {
            count += 1;
            if count > SEG_MAX || piece > SIZE_MAX || !chain::in_ram(mem, addr, u64::from(piece)) {
                return self.bad();
            }
        }
        // A whole number of sectors (virtio v1.2, 5.2.6.1: "The length of data MUST be a
        // multiple of 512 bytes for VIRTIO_BLK_T_IN and VIRTIO_BLK_T_OUT"), inside the disk.
        let offset = sector.checked_mul(SECTOR_SIZE);
        let in_disk = offset
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.size);
        let Some(offset) = offset.filter(|_| in_disk && len % SECTOR_SIZE == 0) else {
            return self.bad();
        };
        let result = self.file.seek(SeekFrom::Start(offset)).and_then(|_| {
            for (addr, piece) in pieces(segs, start, len) {
                let addr = GuestAddress(addr);
                let piece = piece as usize;
                match dir {
                    Direction::Read => read_exact_into(mem, addr, &mut self.file, piece)?,
                    Direction::Write => mem
                        .write_all_volatile_to(addr, &mut self.file, piece)
                        .map_err(io::Error::other)?,
                }
            }
            Ok(())
        });
        if result.is_err() {
            self.stats.io_errors += 1;
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        match dir {
            Direction::Read => {
                self.stats.reads += 1;
                self.stats.read_bytes += len;
                Outcome {
                    status: VIRTIO_BLK_S_OK,
                    // At most SEG_MAX * SIZE_MAX bytes, checked above.
                    data_written: u32::try_from(len).unwrap_or(u32::MAX),
                }
            }
            Direction::Write => {
                self.stats.writes += 1;
                self.stats.write_bytes += len;
                Outcome::status(VIRTIO_BLK_S_OK)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    /// Disk to guest (IN).
    Read,
    /// Guest to disk (OUT).
    Write,
}

/// Fills `len` bytes of guest memory at `addr` from `file`, retrying short reads; end of file
/// before `len` bytes (the image shrank under us) is an error.
fn read_exact_into<G: GuestMemory>(
    mem: &G,
    addr: GuestAddress,
    file: &mut File,
    len: usize,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let at = addr
            .checked_add(done as u64)
            .ok_or_else(|| io::Error::other("address overflow"))?;
        match mem.read_volatile_from(at, file, len - done) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::rate_limiter::TokenBucketConfig;
    use crate::virtio::testutil::*;
    use crate::virtio::{
        Rng, VirtioMmio, VirtioMmioState, INTERRUPT_CONFIG, INTERRUPT_VRING, MAX_BYTES_PER_WAKEUP,
        MAX_CHAINS_PER_WAKEUP, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK,
    };

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    /// Room for 256 sectors of data.
    const BIG_DATA: u64 = 0x8_0000;
    /// Past the end of the 1 MiB of guest RAM.
    const OUTSIDE: u64 = 0x10_0000;

    struct Rig {
        m: VirtioMmio<Block>,
        mem: GuestMemoryMmap,
        q: TestQueue,
        image: TempFile,
        /// Next free descriptor index.
        next: u16,
    }

    fn rig_with(len: u64, read_only: bool) -> Rig {
        let image = TempFile::new().unwrap();
        image.as_file().set_len(len).unwrap();
        let file = image.as_file().try_clone().unwrap();
        let blk = Block::new(file, read_only, "petrel-disk-0".into()).unwrap();
        let mem = guest_mem();
        let mut m = VirtioMmio::new(blk, mem.clone()).unwrap();
        let q = TestQueue::new(0x1000, QUEUE_SIZE);
        let features = m.device().features();
        bring_up(&mut m, features, &[q]);
        m.process_queue_event(0); // the activation kick
        Rig {
            m,
            mem,
            q,
            image,
            next: 0,
        }
    }

    fn rig() -> Rig {
        rig_with(64 * 1024, false)
    }

    impl Rig {
        fn header(&self, request_type: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&request_type.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        }

        /// Publishes the chain `bufs`, runs the queue, returns (status byte, used length).
        fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u8, u32) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let head = self.q.chain(&self.mem, self.next, bufs);
            self.next = self.next.wrapping_add(bufs.len() as u16) % QUEUE_SIZE;
            self.q.publish(&self.mem, head);
            let before = self.q.used_idx(&self.mem);
            self.m.process_queue_event(0);
            assert_eq!(
                self.q.used_idx(&self.mem),
                before.wrapping_add(1),
                "not completed"
            );
            let (id, len) = self.q.used_elem(&self.mem, before);
            assert_eq!(id, u32::from(head));
            (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
        }

        /// A request with the usual layout: header, data buffers, status.
        fn request(&mut self, t: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
            self.header(t, sector);
            let mut bufs = vec![(HDR, 16, false)];
            bufs.extend_from_slice(data);
            bufs.push((STATUS, 1, true));
            self.submit(&bufs)
        }

        fn expect_needs_reset(&mut self) {
            assert_ne!(self.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
            assert!(!self.m.is_running());
            assert!(self.m.last_fault().is_some());
        }

        fn disk(&self) -> Vec<u8> {
            let mut v = Vec::new();
            let mut f = self.image.as_file().try_clone().unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut v).unwrap();
            v
        }
    }

    const IN: u32 = VIRTIO_BLK_T_IN;
    const OUT: u32 = VIRTIO_BLK_T_OUT;

    /// Publishes a request with its own header and status byte (`slot` picks them), without
    /// running the queue; returns its head.
    fn publish_request(r: &mut Rig, slot: u64, t: u32, sector: u64, data: &[Buf]) -> u16 {
        let hdr = HDR + slot * 0x100;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        r.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        r.mem
            .write_obj(0xffu8, GuestAddress(STATUS + slot))
            .unwrap();
        let mut bufs = vec![(hdr, 16, false)];
        bufs.extend_from_slice(data);
        bufs.push((STATUS + slot, 1, true));
        let head = r.q.chain(&r.mem, r.next, &bufs);
        r.next += bufs.len() as u16;
        r.q.publish(&r.mem, head);
        head
    }

    fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        })
    }

    #[test]
    fn rate_limited_requests_wait_whole_and_go_on_later() {
        let mut r = rig();
        assert_eq!(r.m.device().rate_limiter(), RateLimiterConfig::default());
        let limits = RateLimiterConfig {
            bandwidth: bucket(1024, 0, 1000),
            ops: bucket(2, 1, 1000),
        };
        r.m.device_as_mut::<Block>()
            .unwrap()
            .set_rate_limiter(&limits);
        assert_eq!(r.m.device().rate_limiter(), limits);
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 3) as u8).collect();
        r.mem.write_slice(&pattern, GuestAddress(BIG_DATA)).unwrap();
        // A read of one sector, a flush, a write of two sectors, a read of one sector.
        let a = publish_request(&mut r, 0, IN, 0, &[(DATA, 512, true)]);
        let b = publish_request(&mut r, 1, VIRTIO_BLK_T_FLUSH, 0, &[]);
        let c = publish_request(&mut r, 2, OUT, 4, &[(BIG_DATA, 1024, false)]);
        let d = publish_request(&mut r, 3, IN, 0, &[(DATA, 512, true)]);
        let start = Instant::now();
        r.m.process_queue_event(0);
        // The write needs 1024 bytes and 512 are left: it waits, and so does the read after it.
        assert_eq!(r.q.used_idx(&r.mem), 2);
        assert_eq!(r.m.device().stats().throttled, 1);
        let wait = r.m.device().throttle.next_wake().unwrap();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        // A notification while waiting changes nothing.
        r.m.process_queue_event(0);
        assert_eq!(r.q.used_idx(&r.mem), 2);
        assert!(r.disk().iter().all(|&b| b == 0));
        // 600 ms later (injected) the write goes through; the read finds the bucket empty.
        let blk = r.m.device_mut();
        blk.throttle.fired();
        assert!(
            blk.process(start + Duration::from_millis(600))
                .unwrap()
                .interrupt
        );
        assert_eq!(r.q.used_idx(&r.mem), 3);
        assert_eq!(&r.disk()[4 * 512..6 * 512], &pattern[..]);
        assert_eq!(r.m.device().stats().throttled, 2);
        // The host lifts the bandwidth limit (PATCH with size 0); ops stay limited. The device
        // was waiting, so its timer fires at once and the read completes.
        r.m.device_as_mut::<Block>()
            .unwrap()
            .set_rate_limiter(&RateLimiterConfig {
                bandwidth: bucket(0, 0, 0),
                ops: None,
            });
        assert_eq!(
            r.m.device().rate_limiter(),
            RateLimiterConfig {
                bandwidth: None,
                ops: limits.ops,
            }
        );
        r.m.process_device_event(TIMER_TOKEN);
        assert_eq!(r.q.used_idx(&r.mem), 4);
        let heads: Vec<u32> = (0..4).map(|i| r.q.used_elem(&r.mem, i).0).collect();
        assert_eq!(heads, [a, b, c, d].map(u32::from));
        for slot in 0..4 {
            let status: u8 = r.mem.read_obj(GuestAddress(STATUS + slot)).unwrap();
            assert_eq!(status, VIRTIO_BLK_S_OK, "request {slot}");
        }
        let s = r.m.device().stats();
        assert_eq!((s.reads, s.writes, s.flushes, s.throttled), (2, 1, 1, 2));
        assert!(r.m.device().counters().contains(&("throttled", 2)));
    }

    #[test]
    fn the_limiter_timer_brings_the_device_back_through_the_event_loop() {
        let mut r = rig();
        // One request per 20 ms.
        r.m.device_mut().set_rate_limiter(&RateLimiterConfig {
            bandwidth: None,
            ops: bucket(1, 0, 20),
        });
        for slot in 0..3 {
            publish_request(&mut r, slot, IN, slot, &[(DATA, 512, true)]);
        }
        let Rig { m, mem, q, .. } = r;
        let dev = Arc::new(Mutex::new(m));
        let mut em: Em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        dev.lock().unwrap().queue_events()[0].write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while q.used_idx(&mem) < 3 && Instant::now() < deadline {
            em.run_with_timeout(100).unwrap();
        }
        assert_eq!(q.used_idx(&mem), 3);
        let m = dev.lock().unwrap();
        assert_eq!(m.device().stats().throttled, 2);
        assert_eq!(m.stats().event_registration_failures, 0);
    }

    #[test]
    fn a_new_backing_file_changes_the_capacity_and_interrupts_the_driver() {
        let mut r = rig_with(4 * 512, false);
        let irq = r.m.interrupt_evt().unwrap().try_clone().unwrap();
        let _ = irq.read();
        let pending = rd(&mut r.m, 0x60);
        wr(&mut r.m, 0x64, pending);
        let gen = rd(&mut r.m, 0xfc);
        assert_eq!(read_config(&mut r.m, 0, 8), 4u64.to_le_bytes());
        let bigger = TempFile::new().unwrap();
        bigger.as_file().set_len(16 * 512 + 7).unwrap();
        bigger
            .as_file()
            .write_all_at(&[0x5a; 512], 10 * 512)
            .unwrap();
        let file = bigger.as_file().try_clone().unwrap();
        let blk = r.m.device_as_mut::<Block>().unwrap();
        assert_eq!(blk.replace_backing_file(file).unwrap(), 16);
        assert_eq!(blk.ignored_tail_bytes(), 7);
        // The configuration space has the new capacity at once...
        assert_eq!(read_config(&mut r.m, 0, 8), 16u64.to_le_bytes());
        // ...and the transport tells the driver: generation, InterruptStatus bit 1, the irqfd.
        assert!(r.m.notify_config_change());
        assert_eq!(rd(&mut r.m, 0xfc), gen.wrapping_add(1));
        assert_eq!(rd(&mut r.m, 0x60), INTERRUPT_CONFIG);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(r.m.stats().config_changes, 1);
        // Requests now reach the new image, up to its new end.
        r.mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            r.request(IN, 10, &[(DATA, 512, true)]),
            (VIRTIO_BLK_S_OK, 513)
        );
        let mut back = [0u8; 512];
        r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, [0x5a; 512]);
        assert_eq!(r.request(IN, 15, &[(DATA, 512, true)]).0, VIRTIO_BLK_S_OK);
        assert_eq!(
            r.request(IN, 16, &[(DATA, 512, true)]).0,
            VIRTIO_BLK_S_IOERR
        );
        // The old image is untouched by later writes.
        assert_eq!(r.request(OUT, 0, &[(DATA, 512, false)]).0, VIRTIO_BLK_S_OK);
        assert!(r.disk().iter().all(|&b| b == 0));
        assert_eq!(r.m.device().stats().backing_file_swaps, 1);
    }

    #[test]
    fn a_swap_before_driver_ok_moves_the_generation_without_an_interrupt() {
        let image = TempFile::new().unwrap();
        image.as_file().set_len(512).unwrap();
        let blk = Block::new(image.as_file().try_clone().unwrap(), true, "d".into()).unwrap();
        // As a VMM holds it: behind a `Box<dyn VirtioDevice>`.
        let boxed: Box<dyn VirtioDevice> = Box::new(blk);
        let mut m = VirtioMmio::new(boxed, guest_mem()).unwrap();
        assert!(m.device_as_mut::<Rng>().is_none());
        let other = TempFile::new().unwrap();
        other.as_file().set_len(3 * 512).unwrap();
        let blk = m.device_as_mut::<Block>().unwrap();
        assert_eq!(blk.replace_backing_file(other.into_file()).unwrap(), 3);
        assert!(blk.read_only());
        assert!(!m.notify_config_change());
        assert_eq!(rd(&mut m, 0xfc), 1);
        assert_eq!(rd(&mut m, 0x60), 0);
        assert!(m.interrupt_evt().unwrap().read().is_err());
        assert_eq!(read_config(&mut m, 0, 8), 3u64.to_le_bytes());
    }

    #[test]
    fn config_and_features() {
        let mut r = rig_with(8 * 512 + 100, false);
        assert_eq!(r.m.device().capacity(), 8);
        assert_eq!(r.m.device().ignored_tail_bytes(), 100);
        assert_eq!(read_config(&mut r.m, 0, 8), 8u64.to_le_bytes());
        assert_eq!(read_config(&mut r.m, 8, 4), SIZE_MAX.to_le_bytes());
        assert_eq!(read_config(&mut r.m, 12, 4), SEG_MAX.to_le_bytes());
        assert_eq!(read_config(&mut r.m, 16, 4), [0; 4]);
        let f = r.m.device().features();
        assert_eq!(f, VERSION_1 | 1 << 9 | 1 << 2 | 1 << 1);
        let ro = rig_with(512, true);
        assert_eq!(ro.m.device().features(), f | 1 << 5);
        assert!(ro.m.device().read_only());
        assert_eq!(rd(&mut r.m, 0x008), 2);
        assert_eq!(rd(&mut r.m, 0x034), 256);
    }

    #[test]
    fn id_must_fit_in_20_ascii_bytes() {
        let f = || TempFile::new().unwrap().into_file();
        assert!(Block::<GuestMemoryMmap>::new(f(), false, "a".repeat(20)).is_ok());
        assert!(matches!(
            Block::<GuestMemoryMmap>::new(f(), false, "a".repeat(21)),
            Err(Error::BlockId { .. })
        ));
        assert!(Block::<GuestMemoryMmap>::new(f(), false, "dïsk".into()).is_err());
    }

    #[test]
    fn write_read_flush_get_id() {
        let mut r = rig();
        let intr = r.m.interrupt_evt().unwrap().try_clone().unwrap();
        let _ = intr.read();
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        // Write two sectors at sector 3 from two buffers.
        let (st, len) = r.request(OUT, 3, &[(DATA, 512, false), (DATA + 512, 512, false)]);
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(&r.disk()[3 * 512..5 * 512], &pattern[..]);
        assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
        assert_eq!(intr.read().unwrap(), 1);

        // Read them back into one buffer.
        let back = DATA + 0x1000;
        let (st, len) = r.request(IN, 3, &[(back, 1024, true)]);
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, 1025));
        let mut got = vec![0u8; 1024];
        r.mem.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert_eq!(got, pattern);

        assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (VIRTIO_BLK_S_OK, 1));

        let (st, len) = r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0xffu8; 20];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..13], b"petrel-disk-0");
        assert_eq!(&id[13..], &[0; 7]);

        let s = r.m.device().stats();
        assert_eq!((s.writes, s.reads, s.flushes, s.get_ids), (1, 1, 1, 1));
        assert_eq!((s.write_bytes, s.read_bytes), (1024, 1024));
        assert_eq!(s.bad_requests + s.io_errors + s.unsupported, 0);
        assert!(r.m.is_running());
    }

    #[test]
    fn any_descriptor_layout_is_accepted() {
        // virtio v1.2, 2.7.4: header and data in one descriptor, data and status in another.
        let mut r = rig();
        r.mem
            .write_slice(&[0x5a; 512], GuestAddress(HDR + 16))
            .unwrap();
        r.header(OUT, 1);
        let (st, _) = r.submit(&[(HDR, 16 + 512, false), (STATUS, 1, true)]);
        assert_eq!(st, VIRTIO_BLK_S_OK);
        assert_eq!(&r.disk()[512..1024], &[0x5a; 512][..]);
        // A header split over two descriptors; data and status in one writable buffer.
        r.header(IN, 1);
        let data_and_status = STATUS - 512;
        let (st, len) = r.submit(&[
            (HDR, 5, false),
            (HDR + 5, 11, false),
            (data_and_status, 513, true),
        ]);
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, 513));
        let mut got = [0u8; 512];
        r.mem
            .read_slice(&mut got, GuestAddress(data_and_status))
            .unwrap();
        assert_eq!(got, [0x5a; 512]);
    }

    #[test]
    fn write_to_read_only_disk_is_an_io_error() {
        let mut r = rig_with(4096, true);
        r.mem.write_slice(&[1; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            r.request(OUT, 0, &[(DATA, 512, false)]),
            (VIRTIO_BLK_S_IOERR, 1)
        );
        assert_eq!(r.disk(), vec![0; 4096]);
        assert_eq!(r.m.device().stats().read_only_writes, 1);
        // Reads and flushes still work.
        assert_eq!(r.request(IN, 0, &[(DATA, 512, true)]).0, VIRTIO_BLK_S_OK);
        assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let mut r = rig();
        for t in [2, 11, 13, 0xffff_ffff] {
            assert_eq!(r.request(t, 0, &[]), (VIRTIO_BLK_S_UNSUPP, 1), "type {t}");
        }
        assert_eq!(r.m.device().stats().unsupported, 4);
        assert!(r.m.is_running());
    }

    #[test]
    fn sector_range_is_checked_against_capacity() {
        let mut r = rig_with(16 * 512, false);
        // The last sector is fine; one sector past, or a range running past the end, is not.
        assert_eq!(r.request(IN, 15, &[(DATA, 512, true)]).0, VIRTIO_BLK_S_OK);
        assert_eq!(
            r.request(IN, 16, &[(DATA, 512, true)]).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            r.request(OUT, 15, &[(DATA, 1024, false)]).0,
            VIRTIO_BLK_S_IOERR
        );
        // Sector numbers whose byte offset overflows.
        for sector in [u64::MAX, u64::MAX / 512, u64::MAX / 512 + 1] {
            assert_eq!(
                r.request(IN, sector, &[(DATA, 512, true)]).0,
                VIRTIO_BLK_S_IOERR
            );
        }
        assert_eq!(r.m.device().stats().bad_requests, 5);
        assert_eq!(r.disk(), vec![0; 16 * 512]);
    }

    #[test]
    fn bad_lengths_and_directions_are_io_errors() {
        let mut r = rig();
        let cases: &[(&str, u32, &[Buf])] = &[
            ("not a whole sector", IN, &[(DATA, 100, true)]),
            ("not a whole sector", OUT, &[(DATA, 513, false)]),
            // IN with a device-readable data buffer: data in the wrong direction.
            ("read-only data for IN", IN, &[(DATA, 512, false)]),
            // OUT with a device-writable data buffer.
            ("writable data for OUT", OUT, &[(DATA, 512, true)]),
            ("data for FLUSH", VIRTIO_BLK_T_FLUSH, &[(DATA, 512, false)]),
            ("no buffer for GET_ID", VIRTIO_BLK_T_GET_ID, &[]),
            ("data outside guest RAM", IN, &[(OUTSIDE - 512, 1024, true)]),
            ("data outside guest RAM", OUT, &[(OUTSIDE, 512, false)]),
            (
                "data wrapping the address space",
                OUT,
                &[(u64::MAX - 255, 512, false)],
            ),
            ("segment over SIZE_MAX", IN, &[(DATA, SIZE_MAX + 512, true)]),
        ];
        for (i, (why, t, data)) in cases.iter().enumerate() {
            assert_eq!(r.request(*t, 0, data), (VIRTIO_BLK_S_IOERR, 1), "{why}");
            assert_eq!(r.m.device().stats().bad_requests, i as u64 + 1, "{why}");
        }
        // A header shorter than 16 bytes.
        r.header(IN, 0);
        assert_eq!(
            r.submit(&[(HDR, 15, false), (STATUS, 1, true)]),
            (VIRTIO_BLK_S_IOERR, 1)
        );
        // A header outside guest RAM.
        assert_eq!(
            r.submit(&[(OUTSIDE, 16, false), (STATUS, 1, true)]).0,
            VIRTIO_BLK_S_IOERR
        );
        // A device-readable buffer after a device-writable one (2.7.4.2).
        assert_eq!(
            r.submit(&[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA, 512, false),
                (STATUS, 1, true)
            ])
            .0,
            VIRTIO_BLK_S_IOERR
        );
        // A status descriptor longer than one byte: the status is its last byte, and the
        // byte before it is data, which IN needs as whole sectors.
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            r.submit(&[(HDR, 16, false), (STATUS - 1, 2, true)]).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(r.m.device().stats().bad_requests, 14);
        assert!(r.m.is_running());
        assert_eq!(r.disk(), vec![0; 64 * 1024]);
    }

    #[test]
    fn more_than_seg_max_segments_is_an_io_error() {
        // 255 data segments need an indirect table (a direct chain cannot exceed the queue
        // size). Not negotiated, but followed safely; the segment count is still enforced.
        let mut r = rig_with(512 * 512, false);
        let tq = TestQueue {
            desc: 0x4_0000,
            ..r.q
        };
        let run = |r: &mut Rig, segments: u64| {
            let mut bufs = vec![(HDR, 16, false)];
            bufs.extend((0..segments).map(|i| (BIG_DATA + 512 * i, 512, false)));
            bufs.push((STATUS, 1, true));
            tq.chain(&r.mem, 0, &bufs);
            r.q.set_desc(&r.mem, 0, tq.desc, 16 * bufs.len() as u32, F_INDIRECT, 0);
            r.q.publish(&r.mem, 0);
            r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            r.m.process_queue_event(0);
            r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap()
        };
        r.header(OUT, 0);
        assert_eq!(run(&mut r, u64::from(SEG_MAX) + 1), VIRTIO_BLK_S_IOERR);
        assert_eq!(r.m.device().stats().bad_requests, 1);
        assert_eq!(r.m.device().stats().write_bytes, 0);
        assert!(r.m.is_running());
        // With SEG_MAX segments it goes through.
        assert_eq!(run(&mut r, u64::from(SEG_MAX)), VIRTIO_BLK_S_OK);
        assert_eq!(r.m.device().stats().write_bytes, u64::from(SEG_MAX) * 512);
    }

    #[test]
    fn no_writable_status_byte_needs_reset() {
        // Status descriptor device-readable: nothing writable in the chain.
        let mut r = rig();
        r.header(IN, 0);
        let head =
            r.q.chain(&r.mem, 0, &[(HDR, 16, false), (STATUS, 1, false)]);
        r.q.publish(&r.mem, head);
        r.m.process_queue_event(0);
        r.expect_needs_reset();
        assert_eq!(r.q.used_idx(&r.mem), 0);
        assert!(r.m.last_fault().unwrap().to_string().contains("status"));
        // Status byte outside guest RAM.
        let mut r = rig();
        let head =
            r.q.chain(&r.mem, 0, &[(HDR, 16, false), (OUTSIDE, 1, true)]);
        r.q.publish(&r.mem, head);
        r.m.process_queue_event(0);
        r.expect_needs_reset();
        // A zero-length writable descriptor holds no status byte either.
        let mut r = rig();
        let head = r.q.chain(&r.mem, 0, &[(HDR, 16, false), (STATUS, 0, true)]);
        r.q.publish(&r.mem, head);
        r.m.process_queue_event(0);
        r.expect_needs_reset();
    }

    #[test]
    fn broken_chains_need_reset() {
        type Build = fn(&Rig);
        let cases: [(&str, Build); 5] = [
            ("a loop", |r| {
                r.q.set_desc(&r.mem, 0, HDR, 16, F_NEXT, 1);
                r.q.set_desc(&r.mem, 1, STATUS, 1, F_NEXT | F_WRITE, 0);
                r.q.publish(&r.mem, 0);
            }),
            ("a next index past the table", |r| {
                r.q.set_desc(&r.mem, 0, HDR, 16, F_NEXT, QUEUE_SIZE);
                r.q.publish(&r.mem, 0);
            }),
            ("a head index past the table", |r| {
                r.q.publish(&r.mem, QUEUE_SIZE + 3);
            }),
            ("an available index far ahead", |r| {
                r.q.set_avail_idx(&r.mem, QUEUE_SIZE + 1);
            }),
            ("an indirect table with a bad length", |r| {
                r.q.set_desc(&r.mem, 0, 0x4_0000, 17, F_INDIRECT, 0);
                r.q.publish(&r.mem, 0);
            }),
        ];
        for (why, build) in cases {
            let mut r = rig();
            r.header(IN, 0);
            build(&r);
            r.m.process_queue_event(0);
            r.expect_needs_reset();
            assert_eq!(r.q.used_idx(&r.mem), 0, "{why}");
            assert_eq!(r.m.stats().needs_reset, 1, "{why}");
            // The device stays stopped until reset, then works again.
            wr(&mut r.m, 0x70, 0);
            r.mem.write_obj(0u16, GuestAddress(r.q.avail + 2)).unwrap();
            r.mem.write_obj(0u16, GuestAddress(r.q.used + 2)).unwrap();
            bring_up(&mut r.m, VERSION_1, &[r.q]);
            assert_eq!(
                r.request(IN, 0, &[(DATA, 512, true)]).0,
                VIRTIO_BLK_S_OK,
                "{why}"
            );
        }
    }

    #[test]
    fn a_longest_direct_chain_is_fine() {
        // Exactly queue-size descriptors: header, 254 data segments, status.
        let mut r = rig_with(512 * 512, false);
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend((0..u64::from(SEG_MAX)).map(|i| (BIG_DATA + 512 * i, 512, true)));
        bufs.push((STATUS, 1, true));
        r.header(IN, 0);
        let (st, len) = r.submit(&bufs);
        assert_eq!((st, len), (VIRTIO_BLK_S_OK, SEG_MAX * 512 + 1));
    }

    #[test]
    fn many_requests_in_one_notification() {
        let mut r = rig();
        for i in 0..10u16 {
            let hdr = HDR + 16 * u64::from(i);
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&OUT.to_le_bytes());
            h[8..16].copy_from_slice(&u64::from(i).to_le_bytes());
            r.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            r.mem
                .write_slice(&[i as u8; 512], GuestAddress(DATA + 512 * u64::from(i)))
                .unwrap();
            let head = r.q.chain(
                &r.mem,
                3 * i,
                &[
                    (hdr, 16, false),
                    (DATA + 512 * u64::from(i), 512, false),
                    (STATUS + u64::from(i), 1, true),
                ],
            );
            r.q.publish(&r.mem, head);
        }
        r.m.process_queue_event(0);
        assert_eq!(r.q.used_idx(&r.mem), 10);
        for i in 0..10u16 {
            assert_eq!(r.q.used_elem(&r.mem, i), (u32::from(3 * i), 1));
            assert_eq!(r.disk()[usize::from(i) * 512], i as u8);
        }
    }

    /// Publishes `n` requests reading `len` bytes at sector 0 into one buffer, each an
    /// indirect chain (header, data, its own status byte) with head `i`, and notifies once.
    /// Returns the device behind an event manager, and the manager.
    fn flood(r: Rig, n: u16, len: u32) -> (Arc<Mutex<VirtioMmio<Block>>>, Em) {
        r.header(IN, 0);
        for i in 0..n {
            let table = 0x4_0000 + 48 * u64::from(i);
            let bufs = [
                (HDR, 16, false),
                (BIG_DATA, len, true),
                (STATUS + u64::from(i), 1, true),
            ];
            let head = r.q.indirect(&r.mem, i, table, &bufs);
            r.q.publish(&r.mem, head);
        }
        r.m.queue_events()[0].write(1).unwrap();
        let dev = Arc::new(Mutex::new(r.m));
        let mut em = Em::new().unwrap();
        em.add_subscriber(dev.clone());
        (dev, em)
    }

    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber>>>;

    /// Runs the event loop round by round until `n` requests were completed, checking that no
    /// round completes more than `per_round` and that the used index only moves forward;
    /// returns the requests completed in each round.
    fn drain(
        em: &mut Em,
        mem: &GuestMemoryMmap,
        q: &TestQueue,
        n: u16,
        per_round: u16,
    ) -> Vec<u16> {
        let mut rounds = Vec::new();
        let mut used = q.used_idx(mem);
        while used < n {
            assert!(rounds.len() < 100, "stuck at {used} after {rounds:?}");
            em.run_with_timeout(1000).unwrap();
            let now = q.used_idx(mem);
            assert!(now >= used, "the used index went back from {used} to {now}");
            assert!(now - used <= per_round, "{} in one round", now - used);
            rounds.push(now - used);
            used = now;
        }
        // Every request completed exactly once, with its status.
        let mut heads: Vec<u32> = (0..n).map(|i| q.used_elem(mem, i).0).collect();
        heads.sort_unstable();
        assert_eq!(heads, (0..u32::from(n)).collect::<Vec<_>>());
        for i in 0..n {
            let status: u8 = mem.read_obj(GuestAddress(STATUS + u64::from(i))).unwrap();
            assert_eq!(status, VIRTIO_BLK_S_OK, "request {i}");
        }
        rounds
    }

    #[test]
    fn a_flood_of_small_requests_is_served_64_per_round() {
        let r = rig_with(1 << 20, false);
        let (mem, q) = (r.mem.clone(), r.q);
        let (dev, mut em) = flood(r, 250, 512);
        let rounds = drain(&mut em, &mem, &q, 250, 64);
        assert_eq!(rounds, [64, 64, 64, 58]);
        // Nothing is left to wake the loop.
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
        let m = dev.lock().unwrap();
        assert_eq!(m.stats().rearms, 3);
        assert_eq!(m.device().stats().reads, 250);
        assert!(m.is_running());
    }

    #[test]
    fn a_flood_of_large_requests_is_served_1_mib_per_round() {
        let r = rig_with(1 << 20, false);
        let (mem, q) = (r.mem.clone(), r.q);
        // 64 KiB each: 16 make the 1 MiB of a wake-up.
        let (dev, mut em) = flood(r, 40, SIZE_MAX);
        let per_round = (MAX_BYTES_PER_WAKEUP / u64::from(SIZE_MAX)) as u16;
        assert_eq!(per_round, 16);
        assert_eq!(drain(&mut em, &mem, &q, 40, per_round), [16, 16, 8]);
        assert_eq!(dev.lock().unwrap().device().stats().read_bytes, 40 << 16);
    }

    #[test]
    fn another_event_source_is_served_within_one_batch_of_a_flood() {
        let r = rig_with(1 << 20, false);
        let (mem, q) = (r.mem.clone(), r.q);
        let (_dev, mut em) = flood(r, 250, 512);
        let probe_mem = mem.clone();
        let other = Arc::new(Mutex::new(Bystander::new(move || q.used_idx(&probe_mem))));
        em.add_subscriber(other.clone());
        // Ready at the same time as the flooded queue (standing in for a SIGTERM).
        other.lock().unwrap().evt.write(1).unwrap();
        drain(&mut em, &mem, &q, 250, 64);
        // It ran once, before the device had done more than one batch (in the same round,
        // before or after it).
        let seen = other.lock().unwrap().seen.clone();
        assert_eq!(seen.len(), 1);
        assert!(u32::from(seen[0]) <= MAX_CHAINS_PER_WAKEUP, "{seen:?}");
    }

    #[test]
    fn a_request_laid_out_by_mock_split_queue() {
        let mem = guest_mem();
        let image = TempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        image.as_file().write_all_at(b"hello", 512).unwrap();
        let blk = Block::new(image.as_file().try_clone().unwrap(), false, String::new()).unwrap();
        let mut m = VirtioMmio::new(blk, mem.clone()).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE_SIZE);
        let q = TestQueue {
            size: QUEUE_SIZE,
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
        };
        bring_up(&mut m, VERSION_1, &[q]);
        let mut h = [0u8; 16];
        h[8] = 1;
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_NEXT | F_WRITE, 2)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        m.process_queue_event(0);
        assert_eq!(vq.used().idx().load(), 1);
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_OK
        );
    }

    #[test]
    fn host_io_error_is_reported_as_ioerr() {
        // A disk opened read-only on the host but offered writable: the write fails on the host.
        let image = TempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let file = File::open(image.as_path()).unwrap();
        let mem = guest_mem();
        let mut m =
            VirtioMmio::new(Block::new(file, false, String::new()).unwrap(), mem.clone()).unwrap();
        let q = TestQueue::new(0x1000, QUEUE_SIZE);
        bring_up(&mut m, VERSION_1, &[q]);
        let mut h = [0u8; 16];
        h[0] = OUT as u8;
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let head = q.chain(
            &mem,
            0,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        q.publish(&mem, head);
        m.process_queue_event(0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(m.device().stats().io_errors, 1);
        assert!(m.is_running());
    }

    /// A Rig's disk reopened as a new process would: the same image, a fresh device and
    /// transport over the same guest memory.
    fn reopened(r: &Rig, read_only: bool) -> VirtioMmio<Block> {
        let file = r.image.as_file().try_clone().unwrap();
        let mut blk = Block::new(file, read_only, "petrel-disk-0".into()).unwrap();
        blk.set_path("/images/disk0.img");
        VirtioMmio::new(blk, r.mem.clone()).unwrap()
    }

    #[test]
    fn a_restored_disk_completes_the_next_request_at_the_next_used_index() {
        let mut r = rig();
        r.m.device_mut().set_path("/images/disk0.img");
        let limits = RateLimiterConfig {
            bandwidth: bucket(1 << 20, 0, 1000),
            ops: None,
        };
        r.m.device_mut().set_rate_limiter(&limits);
        r.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            r.request(OUT, 1, &[(DATA, 512, false)]),
            (VIRTIO_BLK_S_OK, 1)
        );
        assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (VIRTIO_BLK_S_OK, 1));
        // The guest has not acknowledged the interrupt yet.
        assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
        let state = r.m.save_state();
        assert_eq!(
            (state.queues[0].next_avail, state.queues[0].next_used),
            (2, 2)
        );
        let DeviceState::Block(disk) = &state.device else {
            panic!("{:?}", state.device)
        };
        assert_eq!(disk.size_bytes, 64 * 1024);
        assert_eq!(disk.id, "petrel-disk-0");
        assert_eq!(disk.acked_features, r.m.driver_features());
        // The snapshot file holds JSON; it comes back unchanged.
        let json = serde_json::to_string_pretty(&state).unwrap();
        let back: VirtioMmioState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);

        let mut m = reopened(&r, false);
        m.restore_state(&back).unwrap();
        assert!(m.is_running());
        assert_eq!(m.save_state(), state);
        assert_eq!(m.device().rate_limiter(), limits);
        // The pending interrupt is raised once, without the guest doing anything.
        assert_eq!(m.interrupt_evt().unwrap().read().unwrap(), 1);
        assert_eq!(m.interrupt().status(), INTERRUPT_VRING);
        r.m = m;
        // The activation kick finds nothing new.
        run_rearmed(&mut r.m);
        assert_eq!(r.q.used_idx(&r.mem), 2);
        // The next request completes at used index 2 and reads what was written before.
        assert_eq!(
            r.request(IN, 1, &[(BIG_DATA, 512, true)]),
            (VIRTIO_BLK_S_OK, 513)
        );
        let mut back = [0u8; 512];
        r.mem.read_slice(&mut back, GuestAddress(BIG_DATA)).unwrap();
        assert_eq!(back, [0x5a; 512]);
        assert_eq!(r.m.device().stats().reads, 1);
    }

    #[test]
    fn requests_made_available_before_the_snapshot_are_served_after_restore() {
        let mut r = rig();
        let head = publish_request(&mut r, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
        // Saved before the event loop got to the notification.
        let state = r.m.save_state();
        let mut m = reopened(&r, false);
        m.restore_state(&state).unwrap();
        // No interrupt was pending.
        assert!(m.interrupt_evt().unwrap().read().is_err());
        run_rearmed(&mut m);
        assert_eq!(r.q.used_idx(&r.mem), 1);
        assert_eq!(r.q.used_elem(&r.mem, 0), (u32::from(head), 1));
        assert_eq!(m.interrupt_evt().unwrap().read().unwrap(), 1);
    }

    /// The block error inside a restore error, if that is what it carries.
    fn mismatch(err: &VirtioError) -> Option<&Error> {
        match err {
            VirtioError::Device(e) => e.downcast_ref::<Error>(),
            _ => None,
        }
    }

    #[test]
    fn a_disk_of_another_size_or_mode_is_refused_naming_the_path_and_both_values() {
        let r = rig();
        let state = r.m.save_state();
        r.image.as_file().set_len(128 * 1024).unwrap();
        let mut m = reopened(&r, false);
        let err = m.restore_state(&state).unwrap_err();
        assert!(
            matches!(
                mismatch(&err),
                Some(Error::BlockMismatch {
                    what: "size in bytes",
                    ..
                })
            ),
            "{err}"
        );
        let msg = err.to_string();
        for part in ["/images/disk0.img", "65536", "131072"] {
            assert!(msg.contains(part), "{msg}");
        }
        // Nothing raised, nothing running: as after a reset.
        assert!(!m.is_running());
        assert_eq!(m.status(), 0);
        assert!(m.interrupt_evt().unwrap().read().is_err());

        r.image.as_file().set_len(64 * 1024).unwrap();
        let mut m = reopened(&r, true);
        let err = m.restore_state(&state).unwrap_err();
        assert!(
            matches!(
                mismatch(&err),
                Some(Error::BlockMismatch {
                    what: "read-only flag",
                    ..
                })
            ),
            "{err}"
        );
        // The right disk restores fine.
        let mut m = reopened(&r, false);
        m.restore_state(&state).unwrap();
        assert!(m.is_running());
        // A state of another device type is refused by the device, naming both.
        let err = m
            .device_mut()
            .restore_state(&DeviceState::Rng(crate::virtio::RngState {
                rate_limiter: RateLimiterConfig::default(),
            }))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot restore virtio-blk from the saved state of a virtio-rng device"
        );
    }

    #[test]
    fn bad_queue_configurations_in_a_state_are_errors_not_panics() {
        let r = rig();
        let good = r.m.save_state();
        let mut cases = Vec::new();
        let mut s = good.clone();
        s.queues[0].used_ring = 0x10_0000 - 8; // runs past guest RAM
        cases.push(s);
        let mut s = good.clone();
        s.queues[0].desc_table += 8; // misaligned
        cases.push(s);
        let mut s = good.clone();
        s.queues[0].size = 100; // not a power of two
        cases.push(s);
        let mut s = good.clone();
        s.queues[0].max_size = 1024;
        cases.push(s);
        let mut s = good.clone();
        s.queues.push(s.queues[0]);
        cases.push(s);
        let mut s = good.clone();
        s.status = STATUS_DRIVER_OK; // without the steps before it
        cases.push(s);
        let mut s = good.clone();
        s.driver_features |= 1 << 40; // not offered
        cases.push(s);
        let mut s = good.clone();
        s.device_type = crate::virtio::TYPE_RNG;
        cases.push(s);
        for state in cases {
            let mut m = reopened(&r, false);
            let err = m.restore_state(&state).unwrap_err();
            assert!(
                matches!(
                    err,
                    VirtioError::InvalidState {
                        device: "virtio-blk",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(!m.is_running());
            assert_eq!(m.status(), 0);
            assert!(m.interrupt_evt().unwrap().read().is_err());
        }
    }
}

//! Snapshots: what a paused VM is made of, saved to a state file and a memory file, and the
//! description a restore builds the same VM from again (in this process or another).
//!
//! The state file (framed and checked by `petrel-snapshot`) holds a [`SnapshotState`]: the
//! machine ([`SavedMachine`]: memory size, vCPUs, the devices and the files and taps behind
//! them), the VM's in-kernel irqchip, PIT and clock, every vCPU, and every device. The memory
//! file holds guest RAM, region after region; a Diff memory file holds only the pages written
//! since the previous snapshot and holes elsewhere (see `docs/snapshots.md`).
//!
//! [`VmmHandle::snapshot`](crate::VmmHandle::snapshot) writes both;
//! [`Vmm::restore`](crate::Vmm::restore) reads them.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use petrel_devices::acpi::VmGenIdState;
use petrel_devices::i8042::I8042State;
use petrel_devices::rtc::RtcState;
use petrel_devices::serial::SerialState;
use petrel_devices::virtio::VirtioMmioState;
use petrel_hv_sys::{VcpuState as KvmVcpuState, VmState as KvmVmState};
use serde::{Deserialize, Serialize};

use crate::config::{
    BalloonConfig, DiskConfig, MmdsConfig, NetConfig, RateLimiterConfig, SerialConfig, VmConfig,
    VsockConfig,
};

/// Which memory a snapshot writes (Firecracker's `snapshot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// All of guest RAM (pages of zeros as holes).
    Full,
    /// Only the pages written since the last snapshot (or since the restore), as a sparse file
    /// of the size of guest RAM that applies on top of the previous memory file.
    Diff,
}

/// What [`VmmHandle::snapshot`](crate::VmmHandle::snapshot) writes, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Full or Diff.
    pub kind: SnapshotKind,
    /// The state file (replaced atomically).
    pub state_path: PathBuf,
    /// The memory file (written under a temporary name, then renamed over this one, so a file
    /// already there, which a running VM may map, is never written into).
    pub mem_path: PathBuf,
}

/// A memory file being written: a new file under a temporary name beside `path` (`path` with
/// `.tmp` added), renamed over `path` by [`commit`](Self::commit) and removed if dropped before.
/// The file `path` names, if any, is never opened: a VM restored from it maps it, and reads
/// the pages its guest has not touched yet from it for as long as it runs (the rename leaves
/// that file alone while anything maps it).
#[derive(Debug)]
pub(crate) struct StagedFile {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl StagedFile {
    /// Creates the temporary file (after removing one of its name, which could otherwise be a
    /// link to a file in use).
    pub(crate) fn create(path: &Path) -> io::Result<StagedFile> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&tmp)?;
        Ok(StagedFile {
            path: path.to_path_buf(),
            tmp,
            file,
            committed: false,
        })
    }

    /// The file to write.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the file and renames it over its final name.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Bytes of guest memory written to the memory file (holes not counted).
    pub mem_bytes: u64,
    /// How long it took, from the request to both files written.
    pub took: Duration,
}

/// A network interface of the snapshot to put on another tap (Firecracker's
/// `network_overrides` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOverride {
    /// The interface's `iface_id` when it was configured.
    pub iface_id: String,
    /// The tap to use instead.
    pub tap: String,
}

/// How to restore: the two files and what the restoring process chooses itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file (mapped privately: never written), or with
    /// [`MemBackend::Uffd`] the Unix socket of the page-fault handler that serves it.
    pub mem_path: PathBuf,
    /// What serves guest memory: the file at `mem_path` (the default) or a page-fault handler
    /// listening there (see [`crate::uffd`]).
    pub mem_backend: MemBackend,
    /// Log dirty pages from the start, so that Diff snapshots of the restored VM can be taken.
    pub track_dirty_pages: bool,
    /// Huge pages for the restored guest's RAM; `None`: as the snapshot's guest had
    /// (Firecracker's `huge_pages: Snapshot`). `2M` cannot be restored from a memory file.
    pub huge_pages: Option<crate::config::HugePages>,
    /// Interfaces to put on other taps.
    pub net_overrides: Vec<NetOverride>,
    /// Another Unix socket path for the vsock device.
    pub vsock_uds: Option<PathBuf>,
    /// Where the serial console goes in this process.
    pub serial: SerialConfig,
    /// Stop after this many exits (per vCPU).
    pub max_exits: Option<u64>,
    /// Write metrics here every second.
    pub metrics: Option<PathBuf>,
    /// The MMDS service for the restored VM (a snapshot keeps its configuration, not its data
    /// store, as in Firecracker); `None`: a service of its own with an empty store.
    pub mmds_service: Option<crate::config::SharedMmds>,
    /// What to do about the snapshot's working set (see [`crate::working_set`]): prefetch it
    /// when a valid file exists (the default), record it, or neither.
    pub working_set: crate::working_set::WorkingSetMode,
}

impl RestoreConfig {
    /// A restore of `state_path` and `mem_path` with this process's defaults (serial on the
    /// terminal, no overrides, no dirty tracking).
    pub fn new(state_path: impl Into<PathBuf>, mem_path: impl Into<PathBuf>) -> Self {
        RestoreConfig {
            state_path: state_path.into(),
            mem_path: mem_path.into(),
            mem_backend: MemBackend::File,
            track_dirty_pages: false,
            huge_pages: None,
            net_overrides: Vec::new(),
            vsock_uds: None,
            serial: SerialConfig::Stdio,
            max_exits: None,
            metrics: None,
            mmds_service: None,
            working_set: Default::default(),
        }
    }
}

/// What serves a restored guest's memory (Firecracker's `mem_backend.backend_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemBackend {
    /// The memory file, mapped privately: pages are read from it on first touch.
    #[default]
    File,
    /// A page-fault handler listening on a Unix socket gets a userfaultfd and fills each page
    /// on first touch ([`crate::uffd`]).
    Uffd,
}

/// The machine a snapshot was taken of: what a restore builds again before it puts the saved
/// state into it. The files and taps are the user's: a restore opens them again by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMachine {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Huge pages behind it (`None` in older snapshots).
    #[serde(default, with = "crate::snapshot_huge_pages")]
    pub huge_pages: crate::config::HugePages,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// A Linux guest (in-kernel irqchip and PIT, i8042, RTC) rather than a raw payload.
    pub linux: bool,
    /// Whether the emulated-host workarounds were on (they are in the guest's command line).
    pub host_compat: bool,
    /// Disks, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces.
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// Its rate limit.
    pub rng_rate_limit: Option<RateLimiterConfig>,
    /// A vsock device.
    pub vsock: Option<VsockConfig>,
    /// The MMDS's configuration (not its data store); absent in older snapshots.
    #[serde(default)]
    pub mmds: Option<MmdsConfig>,
    /// The balloon, with its target and statistics interval as they were when the snapshot
    /// was taken; absent in older snapshots.
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
}

impl SavedMachine {
    /// The machine `config` describes.
    pub fn of(config: &VmConfig, linux: bool) -> Self {
        SavedMachine {
            mem_size: config.mem_size,
            huge_pages: config.huge_pages,
            vcpus: config.vcpus,
            linux,
            host_compat: config.host_compat,
            disks: config.disks.clone(),
            nets: config.nets.clone(),
            rng: config.rng,
            rng_rate_limit: config.rng_rate_limit,
            vsock: config.vsock.clone(),
            mmds: config.mmds,
            balloon: config.balloon,
        }
    }
}

/// One virtio device: where it was and its transport's and device's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedVirtio {
    /// Its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// The transport and the device behind it.
    pub state: VirtioMmioState,
}

/// Every device's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedDevices {
    /// The 16550 UART.
    pub serial: SerialState,
    /// The i8042 (Linux guests).
    pub i8042: Option<I8042State>,
    /// The CMOS RTC (Linux guests).
    pub rtc: Option<RtcState>,
    /// The virtio devices, in window order.
    pub virtio: Vec<SavedVirtio>,
    /// The VM generation ID (Linux guests; absent in snapshots of VMs without one, which are
    /// restored without one).
    #[serde(default)]
    pub vmgenid: Option<SavedVmGenId>,
}

/// The VM generation ID device: its interrupt line (which the guest's DSDT names) and its
/// address and ID. A restored VM gets a new ID, and the guest is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedVmGenId {
    /// The GSI the Generic Event Device listens on.
    pub gsi: u32,
    /// Where the ID lives and the ID the saved guest last saw.
    pub state: VmGenIdState,
}

/// The body of a state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The Petrel that wrote it (informational: compatibility is the container's format
    /// version).
    pub petrel_version: String,
    /// The machine.
    pub machine: SavedMachine,
    /// The in-kernel irqchip, PIT and clock (Linux guests).
    pub vm: Option<KvmVmState>,
    /// Every vCPU, by index.
    pub vcpus: Vec<KvmVcpuState>,
    /// Every device.
    pub devices: SavedDevices,
}

impl SnapshotState {
    /// Checks that the parts agree with each other (a file edited by hand, or assembled from
    /// two snapshots, fails here rather than as a confused guest).
    pub fn check(&self) -> std::result::Result<(), String> {
        let m = &self.machine;
        if self.vcpus.len() != usize::from(m.vcpus) {
            return Err(format!(
                "the machine has {} vCPUs but the file holds the state of {}",
                m.vcpus,
                self.vcpus.len()
            ));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.id != i as u64 {
                return Err(format!("vCPU state {i} is for vCPU {}", v.id));
            }
        }
        if m.linux != self.vm.is_some() || m.linux != self.devices.i8042.is_some() {
            return Err("the irqchip and PC devices do not match the machine's kind".into());
        }
        let expected = m.disks.len()
            + m.nets.len()
            + usize::from(m.rng)
            + m.vsock.iter().count()
            + m.balloon.iter().count();
        if self.devices.virtio.len() != expected {
            return Err(format!(
                "the machine has {expected} virtio devices but the file holds {}",
                self.devices.virtio.len()
            ));
        }
        Ok(())
    }
}

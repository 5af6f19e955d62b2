//! The snapshot bodies: `PUT /snapshot/create` and `PUT /snapshot/load`.

use serde::{Deserialize, Serialize};

use super::{
    quoted, validate_id, validate_non_empty, HugePages, ValidationError, MAX_HOST_DEV_NAME_LEN,
    MAX_QUOTED_LEN,
};

/// The kinds of snapshot `PUT /snapshot/create` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum SnapshotType {
    /// All of guest memory (the default).
    #[default]
    Full,
    /// Only the pages dirtied since the previous snapshot, to apply on top of it.
    Diff,
}

impl TryFrom<String> for SnapshotType {
    type Error = String;

    /// Parses the swagger's spelling (case-sensitive, as Firecracker does); the error names
    /// the field.
    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "Full" => Ok(SnapshotType::Full),
            "Diff" => Ok(SnapshotType::Diff),
            _ => Err(format!(
                "snapshot_type `{}` is not one of Full, Diff",
                quoted(&text, MAX_QUOTED_LEN)
            )),
        }
    }
}

/// `PUT /snapshot/create`: write the paused VM's state and its memory to two files.
///
/// The swagger of [`FIRECRACKER_API_VERSION`](super::FIRECRACKER_API_VERSION) has no
/// `version` field (older Firecracker releases took one): it is refused as an unknown field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// File that will hold the VM's state (required).
    pub snapshot_path: String,
    /// File that will hold guest memory (required).
    pub mem_file_path: String,
    /// Full or Diff. `None`: `Full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

impl SnapshotCreateParams {
    /// Checks that both paths are set.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_non_empty("snapshot_path", &self.snapshot_path)?;
        validate_non_empty("mem_file_path", &self.mem_file_path)
    }

    /// The snapshot type asked for, `Full` when none was sent.
    pub fn snapshot_type(&self) -> SnapshotType {
        self.snapshot_type.unwrap_or_default()
    }
}

/// What serves guest memory after `PUT /snapshot/load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum MemoryBackendType {
    /// `backend_path` is the memory file, mapped into the guest.
    File,
    /// `backend_path` is a Unix socket where another process, the page-fault handler, takes
    /// a userfaultfd and the memory layout, and serves each page on first touch.
    Uffd,
}

impl TryFrom<String> for MemoryBackendType {
    type Error = String;

    /// Parses the swagger's spelling (case-sensitive); the error names the field.
    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "File" => Ok(MemoryBackendType::File),
            "Uffd" => Ok(MemoryBackendType::Uffd),
            _ => Err(format!(
                "mem_backend.backend_type `{}` is not one of File, Uffd",
                quoted(&text, MAX_QUOTED_LEN)
            )),
        }
    }
}

/// The `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// What serves memory (required).
    pub backend_type: MemoryBackendType,
    /// The memory file (`File`) or the page-fault handler's socket (`Uffd`) (required).
    pub backend_path: String,
}

/// One entry of `network_overrides`: a restored network interface gets another host TAP
/// device than the one it was snapshotted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface, as it was configured before the snapshot (required).
    pub iface_id: String,
    /// Its new host TAP device (required).
    pub host_dev_name: String,
}

/// The `vsock_override` of `PUT /snapshot/load`: the restored vsock device listens on
/// another host socket than the one it was snapshotted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new host Unix socket path (required).
    pub uds_path: String,
}

/// `PUT /snapshot/load`: restore a VM from a state file and a memory file, in a process that
/// has configured nothing else yet. Exactly one of `mem_backend` and the deprecated
/// `mem_file_path` names the memory; [`SnapshotLoadParams::mem_file`],
/// [`SnapshotLoadParams::track_dirty_pages`] and [`SnapshotLoadParams::resume_vm`] give the
/// normalized view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM's state file (required).
    pub snapshot_path: String,
    /// What serves guest memory. Either this or `mem_file_path`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated: the memory file, as `mem_backend` `{"backend_type": "File"}` would name it.
    /// Either this or `mem_backend`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Deprecated spelling of `track_dirty_pages`. `None`: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages after the restore, so that a Diff snapshot can follow. `None`:
    /// `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded. `None`: `false` (the VM stays paused until `PATCH /vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// New host TAP devices for restored interfaces, at most one per `iface_id`. Empty when
    /// not sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// A new host socket for the restored vsock device. `None`: the snapshotted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// x86_64: advance kvmclock by the wall-clock time elapsed since the snapshot
    /// (`KVM_CLOCK_REALTIME`). `None`: `false` (kvmclock resumes where it stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    /// Huge pages for the restored guest. `None`: `Snapshot` (the snapshot's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<SnapshotLoadHugePages>,
}

impl SnapshotLoadParams {
    /// Checks the paths, that exactly one of `mem_backend` and `mem_file_path` is given, the
    /// overrides' ids and TAP names (no `iface_id` twice) and the vsock override's path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_non_empty("snapshot_path", &self.snapshot_path)?;
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(backend), None) => {
                validate_non_empty("mem_backend.backend_path", &backend.backend_path)?
            }
            (None, Some(path)) => validate_non_empty("mem_file_path", path)?,
            (Some(_), Some(_)) => return Err(ValidationError::SnapshotMemoryBoth),
            (None, None) => return Err(ValidationError::SnapshotMemoryMissing),
        }
        for (index, entry) in self.network_overrides.iter().enumerate() {
            validate_id("network_overrides.iface_id", &entry.iface_id)?;
            validate_non_empty("network_overrides.host_dev_name", &entry.host_dev_name)?;
            if entry.host_dev_name.len() > MAX_HOST_DEV_NAME_LEN {
                return Err(ValidationError::HostDevName(quoted(
                    &entry.host_dev_name,
                    MAX_QUOTED_LEN,
                )));
            }
            if self.network_overrides[..index]
                .iter()
                .any(|earlier| earlier.iface_id == entry.iface_id)
            {
                return Err(ValidationError::DuplicateNetworkOverride(
                    entry.iface_id.clone(),
                ));
            }
        }
        if let Some(vsock) = &self.vsock_override {
            validate_non_empty("vsock_override.uds_path", &vsock.uds_path)?;
        }
        Ok(())
    }

    /// The memory's path: `mem_backend.backend_path`, or the deprecated `mem_file_path`
    /// (empty if neither was sent, which [`SnapshotLoadParams::validate`] refuses).
    pub fn mem_file(&self) -> &str {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(backend), _) => &backend.backend_path,
            (None, Some(path)) => path,
            (None, None) => "",
        }
    }

    /// The memory backend's type: `mem_backend.backend_type`, `File` for `mem_file_path`.
    pub fn mem_backend_type(&self) -> MemoryBackendType {
        self.mem_backend
            .as_ref()
            .map_or(MemoryBackendType::File, |backend| backend.backend_type)
    }

    /// Whether to track dirty pages: `track_dirty_pages` or its deprecated spelling
    /// `enable_diff_snapshots` set to `true`.
    pub fn track_dirty_pages(&self) -> bool {
        self.track_dirty_pages == Some(true) || self.enable_diff_snapshots == Some(true)
    }

    /// Whether to resume the VM once loaded (`false` when not sent).
    pub fn resume_vm(&self) -> bool {
        self.resume_vm.unwrap_or(false)
    }
}

/// The `huge_pages` of `PUT /snapshot/load`: the snapshot's own setting (the default) or
/// another for the restored guest (Firecracker's `SnapshotLoadHugePageConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotLoadHugePages {
    /// As the snapshot's guest had.
    #[default]
    Snapshot,
    /// Regular 4 KiB pages.
    None,
    /// Transparent huge pages.
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages (Firecracker: only with a `Uffd` memory backend).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl SnapshotLoadHugePages {
    /// The setting asked for; `None` for `Snapshot` (keep the snapshot's).
    pub fn as_override(self) -> Option<HugePages> {
        match self {
            SnapshotLoadHugePages::Snapshot => None,
            SnapshotLoadHugePages::None => Some(HugePages::None),
            SnapshotLoadHugePages::Transparent => Some(HugePages::Transparent),
            SnapshotLoadHugePages::Hugetlbfs2M => Some(HugePages::Hugetlbfs2M),
        }
    }
}

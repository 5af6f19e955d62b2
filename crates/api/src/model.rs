//! The request and response bodies of Firecracker's API (and the sections of its config file),
//! written from the definitions of Firecracker's OpenAPI description
//! (`src/firecracker/swagger/firecracker.yaml`, version [`FIRECRACKER_API_VERSION`]).
//!
//! Every type refuses unknown fields. Optional fields are `Option`s: `None` means "not sent",
//! and the default Firecracker applies then is written on the field. The `validate` methods
//! check what the input alone can tell (ranges, formats, ids); whether Petrel supports a
//! feature a valid body asks for (a CPU template, huge pages, ...) is the VMM's decision.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::balloon::{Balloon, BalloonStartCmd, BalloonStatsUpdate, BalloonUpdate};
pub use crate::mmds::{MmdsConfig, MmdsVersion};
pub use devices::*;
pub use snapshot::*;

mod devices;
mod snapshot;

/// The version of Firecracker's API description these types implement.
pub const FIRECRACKER_API_VERSION: &str = "1.17.0-dev";

/// The longest id (`drive_id`, `iface_id`) accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The smallest vCPU count.
pub const MIN_VCPU_COUNT: u64 = 1;

/// The largest vCPU count (the swagger's maximum).
pub const MAX_VCPU_COUNT: u64 = 32;

/// The smallest guest vsock CID (0, 1 and 2 are reserved for the hypervisor, the loopback and
/// the host).
pub const MIN_GUEST_CID: u64 = 3;

/// The largest guest vsock CID (`u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// The smallest MTU a network interface may advertise (the swagger's minimum).
pub const MIN_MTU: u64 = 68;

/// The largest MTU a network interface may advertise (the swagger's maximum).
pub const MAX_MTU: u64 = 65535;

/// The longest host TAP device name, in bytes (Linux's `IFNAMSIZ` less the NUL).
pub const MAX_HOST_DEV_NAME_LEN: usize = 15;

/// The longest token-bucket `refill_time` in milliseconds: the refill time is kept in
/// nanoseconds, so it must fit a `u64` once multiplied by 1 000 000.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// Why a body that parsed is still refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// An id is empty.
    #[error("{field} cannot be empty")]
    EmptyId {
        /// The field (`drive_id`, `iface_id`).
        field: &'static str,
    },
    /// An id is longer than [`MAX_ID_LEN`].
    #[error("{field} is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    IdTooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// An id holds a character other than an ASCII letter, digit or `_`.
    #[error("{field} `{value}` may only contain ASCII letters, digits and '_'")]
    IdCharacters {
        /// The field.
        field: &'static str,
        /// The id as sent, control characters escaped (see [`quoted`]).
        value: String,
    },
    /// `vcpu_count` is out of range.
    #[error("vcpu_count must be between {MIN_VCPU_COUNT} and {MAX_VCPU_COUNT}, got {0}")]
    VcpuCount(u64),
    /// `vcpu_count` is odd and above 1 while `smt` is enabled.
    #[error("vcpu_count must be 1 or an even number when smt is enabled, got {0}")]
    VcpuCountWithSmt(u64),
    /// `mem_size_mib` is zero.
    #[error("mem_size_mib must be greater than 0")]
    MemSize,
    /// `mem_size_mib` is odd while `huge_pages` is `Transparent` or `2M`.
    #[error("mem_size_mib must be a multiple of 2 when huge_pages is Transparent or 2M, got {0}")]
    MemSizeHugePages(u64),
    /// A required string (a path, a device name) is empty.
    #[error("{field} cannot be empty")]
    EmptyField {
        /// The field.
        field: String,
    },
    /// `guest_mac` is not six `:`-separated pairs of hex digits.
    #[error("guest_mac `{0}` is not a MAC address (expected six pairs of hex digits separated by ':', e.g. 06:00:AC:10:00:02)")]
    Mac(String),
    /// `guest_cid` is out of range.
    #[error("guest_cid must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}, got {0}")]
    GuestCid(u64),
    /// `host_dev_name` is longer than a Linux interface name can be.
    #[error("host_dev_name `{0}` is longer than {MAX_HOST_DEV_NAME_LEN} bytes")]
    HostDevName(String),
    /// `mtu` is out of range.
    #[error("mtu must be between {MIN_MTU} and {MAX_MTU}, got {0}")]
    Mtu(u64),
    /// A token bucket's `refill_time` would overflow once in nanoseconds.
    #[error("{field}.refill_time must be at most {MAX_REFILL_TIME_MS} ms, got {value}")]
    RefillTime {
        /// The bucket's path (e.g. `rx_rate_limiter.bandwidth`).
        field: String,
        /// The value sent.
        value: u64,
    },
    /// A token bucket sets `one_time_burst` but is disabled by a zero `size` or `refill_time`.
    #[error("{field}.one_time_burst is set but the bucket is disabled (size and refill_time must both be non-zero for a bucket to limit anything)")]
    BurstOnDisabledBucket {
        /// The bucket's path.
        field: String,
    },
    /// A drive names neither or both of `path_on_host` (virtio-block) and `socket`
    /// (vhost-user-block).
    #[error("drive `{0}` must set exactly one of path_on_host (virtio-block) and socket (vhost-user-block)")]
    DriveBackend(String),
    /// A vhost-user-block drive sets a field that only virtio-block takes.
    #[error("drive `{drive_id}` uses socket (vhost-user-block), which takes no {field}")]
    VhostUserField {
        /// The drive.
        drive_id: String,
        /// The virtio-block-only field that was sent.
        field: &'static str,
    },
    /// A `PATCH` body changes nothing.
    #[error("the PATCH body of {0} sets no field to update")]
    EmptyPatch(&'static str),
    /// A snapshot load names its memory twice.
    #[error("mem_backend and mem_file_path cannot both be given: mem_file_path is the deprecated spelling of a File mem_backend")]
    SnapshotMemoryBoth,
    /// A snapshot load names no memory.
    #[error("one of mem_backend and mem_file_path (deprecated) is required")]
    SnapshotMemoryMissing,
    /// `network_overrides` names an interface more than once.
    #[error("network_overrides names iface_id `{0}` more than once")]
    DuplicateNetworkOverride(String),
    /// `mmds-config` names no interface (Firecracker's wording after the field).
    #[error("network_interfaces: The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    MmdsNoInterfaces,
    /// `mmds-config` names an interface that is not configured (Firecracker's wording after
    /// the field and the id).
    #[error("network_interfaces `{0}`: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")]
    MmdsUnknownInterface(String),
    /// The MMDS address is not link-local (Firecracker's wording after the field).
    #[error("ipv4_address `{0}`: The MMDS IPv4 address is not link local.")]
    MmdsIpv4(std::net::Ipv4Addr),
    /// The balloon's target is larger than the guest's memory.
    #[error("amount_mib {amount_mib} is larger than the guest memory (mem_size_mib {mem_size_mib}): the balloon cannot take more memory than the guest has")]
    BalloonTooLarge {
        /// The balloon's target size in MiB.
        amount_mib: u32,
        /// The guest memory in MiB.
        mem_size_mib: u64,
    },
}

/// Checks an API resource id: not empty, at most [`MAX_ID_LEN`] bytes, only ASCII letters,
/// digits and `_`. `field` names it in the error (`drive_id`, `iface_id`).
///
/// Firecracker accepts any Unicode alphanumeric character; Petrel keeps ids ASCII so that they
/// can name files, threads and log lines without escaping.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::EmptyId { field });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidationError::IdTooLong {
            field,
            len: id.len(),
        });
    }
    if !id.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric()) {
        return Err(ValidationError::IdCharacters {
            field,
            value: quoted(id, MAX_ID_LEN),
        });
    }
    Ok(())
}

/// The most bytes of a client's text quoted back in a message.
pub const MAX_QUOTED_LEN: usize = 128;

/// `text` as a message quotes a client's text: control characters escaped as Rust writes them
/// (`\n`, `\u{1b}`), so that a message stays one line and shows what was sent, and cut to at
/// most `max` bytes (whole characters and escapes), with `...` when cut, so that an answer
/// cannot be inflated.
pub fn quoted(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str("...");
            break;
        }
    }
    out
}

/// Checks that a required string field is not empty.
fn validate_non_empty(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::EmptyField {
            field: field.to_owned(),
        });
    }
    Ok(())
}

/// Parses a MAC address written as six `:`-separated pairs of hex digits (either case).
pub fn parse_mac(text: &str) -> Result<[u8; 6], ValidationError> {
    let bad = || ValidationError::Mac(quoted(text, MAX_QUOTED_LEN));
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// `PUT /boot-source`: the kernel, its command line and an optional initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image (required).
    pub kernel_image_path: String,
    /// Kernel command line. `None`: Firecracker's default command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd. `None`: no initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

impl BootSource {
    /// Checks that the paths are not empty.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_non_empty("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            validate_non_empty("initrd_path", initrd)?;
        }
        Ok(())
    }
}

/// Firecracker's static CPU templates (deprecated in the swagger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Intel C3.
    C3,
    /// Intel T2.
    T2,
    /// Intel T2S.
    T2S,
    /// Intel T2CL.
    T2CL,
    /// AMD T2A.
    T2A,
    /// ARM V1N1.
    V1N1,
    /// No template (the default).
    None,
}

/// How guest memory is backed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages (the default).
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config` and the body of `GET /machine-config`, with Firecracker's field order
/// and defaults (`MachineConfig` in its `vmm_config/machine_config.rs`): every field is written
/// back with its value, except `cpu_template`, which Firecracker leaves out when there is none
/// (a `"None"` sent in a `PUT` or `PATCH` clears it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Number of vCPUs, 1 to 32 (required; Firecracker's default before any PUT is 1).
    pub vcpu_count: u64,
    /// Guest memory in MiB, above 0 (required; Firecracker's default before any PUT is 128).
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (default `false`).
    #[serde(default)]
    pub smt: bool,
    /// Static CPU template (deprecated). `None` or `Some(CpuTemplate::None)`: no template.
    #[serde(default, skip_serializing_if = "no_cpu_template")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking, for Diff snapshots (default `false`).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages backing guest memory (default `"None"`).
    #[serde(default)]
    pub huge_pages: HugePages,
}

/// Whether a `cpu_template` is absent from Firecracker's answers: none, or `"None"`.
fn no_cpu_template(template: &Option<CpuTemplate>) -> bool {
    matches!(template, None | Some(CpuTemplate::None))
}

impl Default for MachineConfiguration {
    /// Firecracker's configuration before any `PUT /machine-config`: 1 vCPU, 128 MiB, the rest
    /// off.
    fn default() -> Self {
        MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfiguration {
    /// Checks the vCPU count (1..=32, and 1 or even with SMT) and the memory size (above 0,
    /// even with huge pages of either kind, as in Firecracker).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(MIN_VCPU_COUNT..=MAX_VCPU_COUNT).contains(&self.vcpu_count) {
            return Err(ValidationError::VcpuCount(self.vcpu_count));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 != 0 {
            return Err(ValidationError::VcpuCountWithSmt(self.vcpu_count));
        }
        if self.mem_size_mib == 0 {
            return Err(ValidationError::MemSize);
        }
        if self.huge_pages != HugePages::None && self.mem_size_mib % 2 != 0 {
            return Err(ValidationError::MemSizeHugePages(self.mem_size_mib));
        }
        Ok(())
    }

    /// This configuration with the fields an update sets replaced (not validated: validate
    /// the result). A `cpu_template` of `"None"` clears the template, as in Firecracker.
    pub fn apply(&self, update: &MachineConfigurationUpdate) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template: match update.cpu_template {
                None => self.cpu_template,
                Some(CpuTemplate::None) => None,
                Some(other) => Some(other),
            },
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        }
    }
}

/// `PATCH /machine-config`: the fields to change, the others kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigurationUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u64>,
    /// New memory size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New dirty page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// New huge pages setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigurationUpdate {
    /// Checks that the update sets a field and that the fields it sets are in range on their
    /// own (the combination is checked on the applied result).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if *self == MachineConfigurationUpdate::default() {
            return Err(ValidationError::EmptyPatch("/machine-config"));
        }
        if let Some(count) = self.vcpu_count {
            if !(MIN_VCPU_COUNT..=MAX_VCPU_COUNT).contains(&count) {
                return Err(ValidationError::VcpuCount(count));
            }
        }
        if self.mem_size_mib == Some(0) {
            return Err(ValidationError::MemSize);
        }
        Ok(())
    }
}

/// A log level. Parsed case-insensitively, as Firecracker does; written in the swagger's
/// spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing is logged.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warning,
    /// Up to informational messages (the default).
    Info,
    /// Up to debug messages.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The swagger's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "Off",
            LogLevel::Error => "Error",
            LogLevel::Warning => "Warning",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
        }
    }

    /// Parses a level in any case (`info`, `INFO`, `Info`).
    pub fn parse(text: &str) -> Option<LogLevel> {
        [
            LogLevel::Off,
            LogLevel::Error,
            LogLevel::Warning,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]
        .into_iter()
        .find(|level| level.as_str().eq_ignore_ascii_case(text))
        // `warn` is the `log` crate's spelling, which Firecracker's parser takes too.
        .or_else(|| {
            text.eq_ignore_ascii_case("warn")
                .then_some(LogLevel::Warning)
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        LogLevel::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "level `{}` is not one of Error, Warning, Info, Debug, Trace, Off \
                 (case-insensitive)",
                quoted(&text, MAX_QUOTED_LEN)
            ))
        })
    }
}

/// `PUT /logger`: where and what to log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Named pipe or file for the log. `None`: the log goes where it already goes (stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Level. `None`: `Info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Whether each line shows its level. `None`: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether each line shows its file and line. `None`: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log messages from this module path (e.g. `api_server::request`). `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Logger {
    /// Checks that the paths it names are not empty.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(path) = &self.log_path {
            validate_non_empty("log_path", path)?;
        }
        if let Some(module) = &self.module {
            validate_non_empty("module", module)?;
        }
        Ok(())
    }
}

/// `PUT /metrics`: where metrics are flushed as JSON lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Named pipe or file for the metrics (required).
    pub metrics_path: String,
}

impl Metrics {
    /// Checks that the path is not empty.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_non_empty("metrics_path", &self.metrics_path)
    }
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Send Ctrl+Alt+Del to the guest (x86 i8042).
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action (required).
    pub action_type: ActionType,
}

/// The states `PATCH /vm` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state asked for (required).
    pub state: VmState,
}

/// The instance's state as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Not booted yet.
    #[serde(rename = "Not started")]
    NotStarted,
    /// Booted and running.
    Running,
    /// Booted and paused.
    Paused,
}

/// The body of `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The application's name (Petrel answers `petrel`).
    pub app_name: String,
    /// The instance's id (`--id`).
    pub id: String,
    /// The instance's state.
    pub state: InstanceState,
    /// The VMM's build version.
    pub vmm_version: String,
}

/// The body of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerVersion {
    /// The build version.
    pub firecracker_version: String,
}

/// Every configured resource as it was configured, in the shape of the config file
/// (`--config-file`): what a VMM keeps of the `PUT`s. `GET /vm/config` answers it as
/// Firecracker writes it ([`crate::reply::VmConfigReply`]), which also reads back as a config
/// file. Serialized on its own, sections not configured are left out (lists are always
/// written, maybe empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfiguration {
    /// The boot source, once set.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// All drives, in the order they were added.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// The machine configuration.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfiguration>,
    /// All network interfaces, in the order they were added.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// The logger, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// The metrics, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// The entropy device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    /// The MMDS configuration, once set (`PUT /mmds/config`).
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
    /// The balloon device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_letters_digits_underscore_only() {
        assert_eq!(validate_id("drive_id", "rootfs"), Ok(()));
        assert_eq!(validate_id("iface_id", "eth_0"), Ok(()));
        assert_eq!(validate_id("drive_id", &"a".repeat(MAX_ID_LEN)), Ok(()));
        assert_eq!(
            validate_id("drive_id", ""),
            Err(ValidationError::EmptyId { field: "drive_id" })
        );
        let long = validate_id("drive_id", &"a".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert!(
            long.to_string().starts_with("drive_id is 65 bytes long"),
            "{long}"
        );
        for bad in ["a-b", "a b", "a/b", "..", "é", "a%2F"] {
            let err = validate_id("iface_id", bad).unwrap_err();
            assert!(err.to_string().starts_with("iface_id `"), "{bad}: {err}");
        }
    }

    #[test]
    fn quoted_text_is_bounded() {
        assert_eq!(quoted("short", 8), "short");
        assert_eq!(quoted("abcdefghij", 4), "abcd...");
        // 'é' is two bytes: the cut falls back to a character boundary.
        assert_eq!(quoted("aéé", 2), "a...");
        let err = parse_mac(&"0".repeat(100_000)).unwrap_err();
        assert!(err.to_string().len() < 300);
    }

    #[test]
    fn quoted_text_is_one_line() {
        assert_eq!(quoted("a\nb\t\u{1b}[2J", 64), "a\\nb\\t\\u{1b}[2J");
        // An escape is never cut in half.
        assert_eq!(quoted("ab\u{1b}", 5), "ab...");
        let err = validate_id("drive_id", "root\nfs").unwrap_err();
        assert_eq!(
            err.to_string(),
            "drive_id `root\\nfs` may only contain ASCII letters, digits and '_'"
        );
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac("06:00:AC:10:00:02"),
            Ok([0x06, 0x00, 0xac, 0x10, 0x00, 0x02])
        );
        assert_eq!(
            parse_mac("aa:bb:cc:dd:ee:ff"),
            Ok([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        for bad in [
            "",
            "06:00:AC:10:00",
            "06:00:AC:10:00:02:03",
            "06-00-AC-10-00-02",
            "6:00:AC:10:00:02",
            "06:00:AC:10:00:0g",
            "+6:00:AC:10:00:02",
            "06:00:AC:10:00:02:",
        ] {
            let err = parse_mac(bad).unwrap_err();
            assert!(err.to_string().starts_with("guest_mac `"), "{bad}: {err}");
        }
    }

    #[test]
    fn machine_configuration_ranges() {
        let mut config = MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 1024,
            ..MachineConfiguration::default()
        };
        assert_eq!(config.validate(), Ok(()));
        config.vcpu_count = 0;
        assert_eq!(config.validate(), Err(ValidationError::VcpuCount(0)));
        config.vcpu_count = 33;
        let err = config.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "vcpu_count must be between 1 and 32, got 33"
        );
        config.vcpu_count = 3;
        assert_eq!(config.validate(), Ok(()));
        config.smt = true;
        assert_eq!(config.validate(), Err(ValidationError::VcpuCountWithSmt(3)));
        config.vcpu_count = 1;
        assert_eq!(config.validate(), Ok(()));
        config.mem_size_mib = 0;
        assert_eq!(config.validate(), Err(ValidationError::MemSize));
        config.mem_size_mib = 129;
        config.huge_pages = HugePages::Hugetlbfs2M;
        assert_eq!(
            config.validate(),
            Err(ValidationError::MemSizeHugePages(129))
        );
        // Firecracker's rule holds for transparent huge pages too; 4 KiB pages take any size.
        config.huge_pages = HugePages::Transparent;
        assert_eq!(
            config.validate(),
            Err(ValidationError::MemSizeHugePages(129))
        );
        config.huge_pages = HugePages::None;
        assert_eq!(config.validate(), Ok(()));
        config.mem_size_mib = 130;
        for h in [HugePages::Transparent, HugePages::Hugetlbfs2M] {
            config.huge_pages = h;
            assert_eq!(config.validate(), Ok(()));
        }
    }

    #[test]
    fn machine_configuration_update_applies_only_set_fields() {
        let base = MachineConfiguration::default();
        let update = MachineConfigurationUpdate {
            mem_size_mib: Some(256),
            ..MachineConfigurationUpdate::default()
        };
        assert_eq!(update.validate(), Ok(()));
        let applied = base.apply(&update);
        assert_eq!(applied.vcpu_count, 1);
        assert_eq!(applied.mem_size_mib, 256);
        assert_eq!(
            MachineConfigurationUpdate::default().validate(),
            Err(ValidationError::EmptyPatch("/machine-config"))
        );
        let zero = MachineConfigurationUpdate {
            vcpu_count: Some(0),
            ..MachineConfigurationUpdate::default()
        };
        assert_eq!(zero.validate(), Err(ValidationError::VcpuCount(0)));
    }

    #[test]
    fn machine_configuration_answers_every_field_as_firecracker() {
        // Firecracker's GET /machine-config before any PUT.
        assert_eq!(
            serde_json::to_string(&MachineConfiguration::default()).unwrap(),
            r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
        );
        // A PUT of the two required fields: the others take their defaults.
        let put: MachineConfiguration =
            serde_json::from_str(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&put).unwrap(),
            r#"{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
        );
        // A template is written in Firecracker's place for it; "None" is no template.
        let t2s: MachineConfiguration = serde_json::from_str(
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "T2S",
                "track_dirty_pages": true, "huge_pages": "2M", "smt": true}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&t2s).unwrap(),
            r#"{"vcpu_count":2,"mem_size_mib":256,"smt":true,"cpu_template":"T2S","track_dirty_pages":true,"huge_pages":"2M"}"#
        );
        let none: MachineConfiguration = serde_json::from_str(
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            serde_json::to_string(&MachineConfiguration::default()).unwrap()
        );
        let cleared = t2s.apply(&MachineConfigurationUpdate {
            cpu_template: Some(CpuTemplate::None),
            ..MachineConfigurationUpdate::default()
        });
        assert_eq!(cleared.cpu_template, None);
        assert_eq!((cleared.smt, cleared.track_dirty_pages), (true, true));
    }

    #[test]
    fn machine_configuration_wire_names() {
        let config: MachineConfiguration = serde_json::from_str(
            r#"{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                "track_dirty_pages": false, "cpu_template": "T2S", "huge_pages": "2M"}"#,
        )
        .unwrap();
        assert_eq!(config.cpu_template, Some(CpuTemplate::T2S));
        assert_eq!(config.huge_pages, HugePages::Hugetlbfs2M);
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains(r#""huge_pages":"2M""#), "{json}");
        let err = serde_json::from_str::<MachineConfiguration>(
            r#"{"vcpu_count": 2, "mem_size_mib": 1024, "ht_enabled": false}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `ht_enabled`"),
            "{err}"
        );
    }

    #[test]
    fn token_buckets() {
        let bucket = TokenBucket {
            size: 100,
            one_time_burst: None,
            refill_time: 100,
        };
        assert!(bucket.is_enabled());
        assert_eq!(bucket.validate("rate_limiter.ops"), Ok(()));
        let disabled = TokenBucket {
            size: 0,
            one_time_burst: None,
            refill_time: 100,
        };
        assert!(!disabled.is_enabled());
        assert_eq!(disabled.validate("rate_limiter.ops"), Ok(()));
        let burst_on_disabled = TokenBucket {
            one_time_burst: Some(10),
            ..disabled
        };
        let err = burst_on_disabled.validate("rate_limiter.ops").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rate_limiter.ops.one_time_burst"),
            "{err}"
        );
        let huge = TokenBucket {
            refill_time: MAX_REFILL_TIME_MS + 1,
            ..bucket
        };
        let limiter = RateLimiter {
            bandwidth: Some(huge),
            ops: None,
        };
        let err = limiter.validate("rx_rate_limiter").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rx_rate_limiter.bandwidth.refill_time must be at most"),
            "{err}"
        );
    }

    #[test]
    fn drive_backends() {
        let mut drive: Drive = serde_json::from_str(
            r#"{"drive_id": "rootfs", "path_on_host": "/tmp/rootfs.ext4",
                "is_root_device": true, "is_read_only": false}"#,
        )
        .unwrap();
        assert_eq!(drive.validate(), Ok(()));
        drive.socket = Some("/tmp/vhost.sock".into());
        assert_eq!(
            drive.validate(),
            Err(ValidationError::DriveBackend("rootfs".into()))
        );
        drive.path_on_host = None;
        let err = drive.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "drive `rootfs` uses socket (vhost-user-block), which takes no is_read_only"
        );
        drive.is_read_only = None;
        assert_eq!(drive.validate(), Ok(()));
        drive.socket = None;
        assert_eq!(
            drive.validate(),
            Err(ValidationError::DriveBackend("rootfs".into()))
        );
    }

    #[test]
    fn network_interface_checks() {
        let mut iface = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:AC:10:00:02".into()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert_eq!(iface.validate(), Ok(()));
        iface.mtu = Some(67);
        assert_eq!(iface.validate(), Err(ValidationError::Mtu(67)));
        iface.mtu = Some(9000);
        iface.host_dev_name = "a_very_long_tap_name".into();
        assert!(matches!(
            iface.validate(),
            Err(ValidationError::HostDevName(_))
        ));
        iface.host_dev_name = "tap0".into();
        iface.guest_mac = Some("06:00:AC:10:00".into());
        assert!(matches!(iface.validate(), Err(ValidationError::Mac(_))));
    }

    #[test]
    fn vsock_cid() {
        let mut vsock = Vsock {
            guest_cid: 3,
            uds_path: "./v.sock".into(),
            vsock_id: Some("vsock0".into()),
        };
        assert_eq!(vsock.validate(), Ok(()));
        vsock.guest_cid = 2;
        assert_eq!(
            vsock.validate().unwrap_err().to_string(),
            "guest_cid must be between 3 and 4294967294, got 2"
        );
        vsock.guest_cid = u64::from(u32::MAX);
        assert_eq!(
            vsock.validate(),
            Err(ValidationError::GuestCid(u64::from(u32::MAX)))
        );
    }

    #[test]
    fn log_level_any_case() {
        let logger: Logger =
            serde_json::from_str(r#"{"log_path": "/tmp/log", "level": "warning"}"#).unwrap();
        assert_eq!(logger.level, Some(LogLevel::Warning));
        assert_eq!(LogLevel::parse("TRACE"), Some(LogLevel::Trace));
        assert_eq!(LogLevel::parse("off"), Some(LogLevel::Off));
        assert_eq!(
            serde_json::to_string(&logger).unwrap(),
            r#"{"log_path":"/tmp/log","level":"Warning"}"#
        );
        let err = serde_json::from_str::<Logger>(r#"{"level": "verbose"}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("level `verbose` is not one of"),
            "{err}"
        );
    }

    #[test]
    fn instance_info_state_spelling() {
        let info = InstanceInfo {
            app_name: "petrel".into(),
            id: "anonymous-instance".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains(r#""state":"Not started""#), "{json}");
        assert_eq!(serde_json::from_str::<InstanceInfo>(&json).unwrap(), info);
    }

    #[test]
    fn snapshot_params_round_trip_in_swagger_spelling() {
        let create = SnapshotCreateParams {
            snapshot_path: "s".into(),
            mem_file_path: "m".into(),
            snapshot_type: Some(SnapshotType::Diff),
        };
        let json = serde_json::to_string(&create).unwrap();
        assert_eq!(
            json,
            r#"{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Diff"}"#
        );
        assert_eq!(
            serde_json::from_str::<SnapshotCreateParams>(&json).unwrap(),
            create
        );
        let load: SnapshotLoadParams = serde_json::from_str(
            r#"{"snapshot_path": "s", "resume_vm": true,
                "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
        )
        .unwrap();
        let json = serde_json::to_string(&load).unwrap();
        assert_eq!(
            json,
            r#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"resume_vm":true}"#
        );
        assert_eq!(
            serde_json::from_str::<SnapshotLoadParams>(&json).unwrap(),
            load
        );
    }

    #[test]
    fn snapshot_load_normalized_view() {
        let mut load = SnapshotLoadParams {
            snapshot_path: "s".into(),
            mem_backend: None,
            mem_file_path: Some("old.mem".into()),
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            resume_vm: None,
            network_overrides: Vec::new(),
            vsock_override: None,
            clock_realtime: None,
            huge_pages: None,
        };
        assert_eq!(load.validate(), Ok(()));
        assert_eq!(load.mem_file(), "old.mem");
        assert_eq!(load.mem_backend_type(), MemoryBackendType::File);
        for (deprecated, current, tracked) in [
            (None, None, false),
            (Some(true), None, true),
            (None, Some(true), true),
            (Some(false), Some(true), true),
            (Some(true), Some(false), true),
            (Some(false), Some(false), false),
        ] {
            load.enable_diff_snapshots = deprecated;
            load.track_dirty_pages = current;
            assert_eq!(
                load.track_dirty_pages(),
                tracked,
                "{deprecated:?} {current:?}"
            );
        }
        load.mem_file_path = None;
        assert_eq!(load.mem_file(), "");
        assert_eq!(load.validate(), Err(ValidationError::SnapshotMemoryMissing));
        load.mem_backend = Some(MemoryBackend {
            backend_type: MemoryBackendType::Uffd,
            backend_path: "uffd.sock".into(),
        });
        assert_eq!(load.validate(), Ok(()));
        assert_eq!(load.mem_backend_type(), MemoryBackendType::Uffd);
        load.mem_file_path = Some("old.mem".into());
        assert_eq!(load.validate(), Err(ValidationError::SnapshotMemoryBoth));
    }

    #[test]
    fn full_vm_configuration_leaves_out_unset_sections() {
        let json = serde_json::to_string(&FullVmConfiguration::default()).unwrap();
        assert_eq!(json, r#"{"drives":[],"network-interfaces":[]}"#);
    }
}

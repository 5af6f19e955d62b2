//! What to build: a plain configuration struct, and parsers for the values users type.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Rate limits, as the config's disks, interfaces and entropy device take them. Re-exported from
/// `petrel-devices`, whose rate limiter they configure, so that a config can be written with
/// this crate alone.
pub use petrel_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// The balloon device's configuration, re-exported from `petrel-devices`, whose device it sets
/// up.
pub use petrel_devices::virtio::balloon::BalloonConfig;
/// Huge pages behind guest RAM (Firecracker's `huge_pages`).
pub use petrel_guest_mem::HugePages;

/// Default guest memory: 256 MiB.
pub const DEFAULT_MEM_SIZE: u64 = 256 << 20;
/// Default load address of a raw real-mode payload (0x1000: clear of the real-mode IVT and BDA).
pub const DEFAULT_RAW_LOAD_ADDR: u64 = 0x1000;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// The terminal: output to stdout, stdin to the guest.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

/// A register a raw payload starts with, e.g. `rax=2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegAssignment {
    /// The register.
    pub reg: Reg,
    /// Its value.
    pub value: u64,
}

/// The general-purpose registers a user may preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Reg {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rsp,
    Rbp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Reg {
    /// Every register by its lower-case name, as users type it (`rax=2`).
    pub const NAMES: [(&'static str, Reg); 16] = [
        ("rax", Reg::Rax),
        ("rbx", Reg::Rbx),
        ("rcx", Reg::Rcx),
        ("rdx", Reg::Rdx),
        ("rsi", Reg::Rsi),
        ("rdi", Reg::Rdi),
        ("rsp", Reg::Rsp),
        ("rbp", Reg::Rbp),
        ("r8", Reg::R8),
        ("r9", Reg::R9),
        ("r10", Reg::R10),
        ("r11", Reg::R11),
        ("r12", Reg::R12),
        ("r13", Reg::R13),
        ("r14", Reg::R14),
        ("r15", Reg::R15),
    ];
}

/// A flat binary started in 16-bit real mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPayload {
    /// The binary.
    pub path: PathBuf,
    /// Guest-physical load address.
    pub load_addr: u64,
    /// Entry point (default: the load address).
    pub entry: Option<u64>,
    /// Registers preset before the first instruction.
    pub regs: Vec<RegAssignment>,
}

/// Where a kernel image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelImage {
    /// A file (ELF vmlinux or bzImage).
    File(PathBuf),
    /// An image built into Petrel (the demo guest), with a name for messages.
    Builtin {
        /// Shown where a path would be.
        name: &'static str,
        /// The ELF bytes.
        bytes: Vec<u8>,
    },
}

/// The guest command line Petrel uses unless `--cmdline` replaces it: the console on COM1,
/// reboot through the i8042 (which ends Petrel), reboot 1 s after a panic, no PCI probing.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

// Defined in the loader, which builds the command line; re-exported under its old path.
pub use petrel_loader::cmdline::EMULATED_HOST_CMDLINE;

/// A Linux kernel (ELF vmlinux or bzImage) and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxPayload {
    /// The kernel image.
    pub kernel: KernelImage,
    /// An initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// The command line, replacing Petrel's default when given.
    pub cmdline: Option<String>,
}

/// How a Linux kernel is started (`VmConfig::boot_protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the kernel is an ELF with a PVH entry point (a `XEN_ELFNOTE_PHYS32_ENTRY`
    /// note, as `CONFIG_PVH` vmlinux files have), the Linux 64-bit boot protocol otherwise,
    /// as Firecracker does. On hosts that emulate guest kernel code (with `host_compat` on),
    /// the 64-bit protocol: there the page tables a PVH entry builds run in KVM's instruction
    /// emulator (about 10 ms for the demo guest), while Petrel builds them for the 64-bit
    /// protocol.
    #[default]
    Auto,
    /// PVH (Xen's `docs/misc/pvh.pandoc`): 32-bit protected mode without paging, EBX pointing
    /// at `hvm_start_info`. Building the VM fails, naming the kernel, when it has no PVH entry
    /// point (a bzImage never has one).
    Pvh,
    /// The Linux 64-bit boot protocol (`Documentation/arch/x86/boot.rst`): long mode, RSI
    /// pointing at the zero page.
    Linux64,
}

impl BootProtocol {
    /// Every value by the name users type (`--boot-protocol NAME`).
    pub const NAMES: [(&'static str, BootProtocol); 3] = [
        ("auto", BootProtocol::Auto),
        ("pvh", BootProtocol::Pvh),
        ("linux64", BootProtocol::Linux64),
    ];

    /// What the protocol is called in messages and on the timeline: `"PVH"`,
    /// `"Linux 64-bit boot protocol"` (and `"auto"` before a kernel was chosen).
    pub fn describe(self) -> &'static str {
        match self {
            BootProtocol::Auto => "auto",
            BootProtocol::Pvh => "PVH",
            BootProtocol::Linux64 => "Linux 64-bit boot protocol",
        }
    }
}

impl std::str::FromStr for BootProtocol {
    type Err = crate::Error;

    /// Parses one of [`BootProtocol::NAMES`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, p)| *p)
            .ok_or_else(|| crate::Error::InvalidConfig {
                field: "boot_protocol".into(),
                value: s.to_string(),
                why: "expected auto, pvh or linux64".into(),
            })
    }
}

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A raw real-mode binary.
    Raw(RawPayload),
    /// A Linux kernel.
    Linux(LinuxPayload),
}

/// A virtio-blk disk (`--disk PATH[,ro][,id=NAME]`). Saved in snapshots, so the field names
/// are part of the state-file format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The raw image file.
    pub path: PathBuf,
    /// Offer the disk read-only (VIRTIO_BLK_F_RO); the file is then opened read-only.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); default `vdN`.
    pub id: Option<String>,
    /// Limits on the guest's requests and bytes.
    pub rate_limit: RateLimiterConfig,
}

/// A virtio-net interface over an existing tap (`--net tap=NAME[,mac=MAC]`). Saved in
/// snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The interface's name for the user (Firecracker's `iface_id`), which a restore's
    /// network overrides refer to; `None` from the command line.
    #[serde(default)]
    pub id: Option<String>,
    /// The tap's name.
    pub tap: String,
    /// The guest's MAC address; default a locally administered one.
    pub mac: [u8; 6],
    /// Limits on what the guest receives.
    pub rx_rate_limit: RateLimiterConfig,
    /// Limits on what the guest sends.
    pub tx_rate_limit: RateLimiterConfig,
    /// Whether the guest's frames to the MMDS address ([`VmConfig::mmds`]) on this interface
    /// go to the MMDS instead of the tap (Firecracker's `mmds-config.network_interfaces`).
    #[serde(default)]
    pub mmds: bool,
}

/// The MMDS version a guest speaks: plain `GET`s (`V1`) or sessions with a token (`V2`).
/// Saved in snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET`s (Firecracker's default).
    #[default]
    V1,
    /// `PUT /latest/api/token` first, then `GET`s with the token.
    V2,
}

/// The microVM metadata service as the guest reaches it, on the interfaces whose
/// [`NetConfig::mmds`] is set. Saved in snapshots; the data store is not (Firecracker's rule:
/// a restored VM, maybe one of many clones, gets its data anew).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsConfig {
    /// How the guest must ask.
    pub version: MmdsVersion,
    /// The MMDS's IPv4 address (link-local; Firecracker's default 169.254.169.254).
    pub ipv4_address: std::net::Ipv4Addr,
    /// Answer in the IMDS text format even when the guest asks for JSON.
    pub imds_compat: bool,
}

/// A virtio-vsock device (`--vsock cid=N,uds=PATH`), with host connections through a Unix
/// socket in Firecracker's convention. Saved in snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 and up).
    pub cid: u64,
    /// The Unix socket host processes connect to (`CONNECT <port>\n`); guest-initiated
    /// connections to port P go to `PATH_P`.
    pub uds: PathBuf,
}

/// The MAC Petrel gives a guest when none is set: locally administered, unicast (IEEE 802,
/// bit 1 of the first octet set, bit 0 clear).
pub const DEFAULT_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

/// Everything needed to build a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Huge pages behind guest RAM (with huge pages, `mem_size` is a multiple of 2 MiB).
    pub huge_pages: HugePages,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The guest.
    pub payload: Payload,
    /// How a Linux kernel is started (ignored for raw payloads).
    pub boot_protocol: BootProtocol,
    /// Serial console.
    pub serial: SerialConfig,
    /// Stop after this many exits reached Petrel (per vCPU).
    pub max_exits: Option<u64>,
    /// Add the guest workarounds for hosts that emulate guest kernel code.
    pub host_compat: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, in the order the guest sees them (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// Limits on the entropy the guest takes; `None` keeps the device's default (1 MiB/s).
    pub rng_rate_limit: Option<RateLimiterConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// A virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
    /// Rewrite this file with the timeline and KVM's counters every second while the VM runs.
    pub metrics: Option<PathBuf>,
    /// Log the pages the guest and the devices write, so that Diff snapshots can be taken.
    pub track_dirty_pages: bool,
    /// The MMDS, for the interfaces whose [`NetConfig::mmds`] is set; `None`: no MMDS.
    pub mmds: Option<MmdsConfig>,
    /// The metadata service the guest's MMDS requests are answered by, shared with whoever
    /// changes its data store while the guest runs (the API's `PUT`/`PATCH /mmds`) and reads
    /// its metrics; `None`: a service of its own with an empty store of Firecracker's default
    /// size. Its version and `imds_compat` are set from [`VmConfig::mmds`].
    pub mmds_service: Option<SharedMmds>,
}

/// An MMDS service shared between the host side and the VM that answers the guest with it.
/// Two handles are equal when they share one service.
#[derive(Debug, Clone)]
pub struct SharedMmds(pub std::sync::Arc<std::sync::Mutex<petrel_mmds::Mmds>>);

impl PartialEq for SharedMmds {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedMmds {}

impl VmConfig {
    /// A config for a raw payload with defaults for the rest.
    pub fn raw(payload: RawPayload) -> Self {
        Self::with_payload(Payload::Raw(payload))
    }

    /// A config for a Linux kernel with defaults for the rest.
    pub fn linux(payload: LinuxPayload) -> Self {
        Self::with_payload(Payload::Linux(payload))
    }

    /// A config booting a kernel image held in memory (an ELF or bzImage built into the
    /// embedder, such as Petrel's demo guest); `name` is shown where a path would be.
    pub fn builtin_kernel(name: &'static str, bytes: Vec<u8>) -> Self {
        Self::linux(LinuxPayload {
            kernel: KernelImage::Builtin { name, bytes },
            initrd: None,
            cmdline: None,
        })
    }

    fn with_payload(payload: Payload) -> Self {
        VmConfig {
            mem_size: DEFAULT_MEM_SIZE,
            huge_pages: HugePages::None,
            vcpus: 1,
            payload,
            boot_protocol: BootProtocol::Auto,
            serial: SerialConfig::Stdio,
            max_exits: None,
            host_compat: true,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            rng_rate_limit: None,
            vsock: None,
            balloon: None,
            metrics: None,
            track_dirty_pages: false,
            mmds: None,
            mmds_service: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_protocol_names_parse_and_others_are_refused() {
        for (name, p) in BootProtocol::NAMES {
            assert_eq!(name.parse::<BootProtocol>().unwrap(), p);
        }
        let err = "PVH".parse::<BootProtocol>().unwrap_err();
        assert!(
            matches!(&err, crate::Error::InvalidConfig { field, value, .. }
                if field == "boot_protocol" && value == "PVH"),
            "{err}"
        );
        assert_eq!(BootProtocol::default(), BootProtocol::Auto);
        assert_eq!(BootProtocol::Pvh.describe(), "PVH");
    }
}

//! What to build: a plain configuration struct, and parsers for the values users type.

use std::path::PathBuf;

use crate::{Error, Result};

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
    const NAMES: [(&'static str, Reg); 16] = [
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

    /// Sets this register in `regs`.
    pub fn set(self, regs: &mut kvm_bindings::kvm_regs, value: u64) {
        let slot = match self {
            Reg::Rax => &mut regs.rax,
            Reg::Rbx => &mut regs.rbx,
            Reg::Rcx => &mut regs.rcx,
            Reg::Rdx => &mut regs.rdx,
            Reg::Rsi => &mut regs.rsi,
            Reg::Rdi => &mut regs.rdi,
            Reg::Rsp => &mut regs.rsp,
            Reg::Rbp => &mut regs.rbp,
            Reg::R8 => &mut regs.r8,
            Reg::R9 => &mut regs.r9,
            Reg::R10 => &mut regs.r10,
            Reg::R11 => &mut regs.r11,
            Reg::R12 => &mut regs.r12,
            Reg::R13 => &mut regs.r13,
            Reg::R14 => &mut regs.r14,
            Reg::R15 => &mut regs.r15,
        };
        *slot = value;
    }
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

/// What Petrel adds to the command line on hosts whose KVM runs guest kernel code in its
/// instruction emulator (see `../shared/HOST-KVM.md`): keep Linux away from instructions that
/// emulator cannot run.
pub const EMULATED_HOST_CMDLINE: &str = "noxsave nosmap nosmep nofsgsbase \
    clearcpuid=popcnt,cx16,smap,smep,fsgsbase,pcid,invpcid,rdrand,rdseed,rdpid,movbe,erms,fsrm,\
    umip,avx,avx2,avx512f,xsave";

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

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A raw real-mode binary.
    Raw(RawPayload),
    /// A Linux kernel.
    Linux(LinuxPayload),
}

/// A virtio-blk disk (`--disk PATH[,ro][,id=NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image file.
    pub path: PathBuf,
    /// Offer the disk read-only (VIRTIO_BLK_F_RO); the file is then opened read-only.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); default `vdN`.
    pub id: Option<String>,
}

/// A virtio-net interface over an existing tap (`--net tap=NAME[,mac=MAC]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name.
    pub tap: String,
    /// The guest's MAC address; default a locally administered one.
    pub mac: [u8; 6],
}

/// A virtio-vsock device (`--vsock cid=N,uds=PATH`), with host connections through a Unix
/// socket in Firecracker's convention.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The guest.
    pub payload: Payload,
    /// Serial console.
    pub serial: SerialConfig,
    /// Stop after this many exits reached Petrel (per vCPU).
    pub max_exits: Option<u64>,
    /// Add the guest workarounds for hosts that emulate guest kernel code.
    pub host_compat: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// A virtio-net interface.
    pub net: Option<NetConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// Rewrite this file with the timeline and KVM's counters every second while the VM runs.
    pub metrics: Option<PathBuf>,
}

impl VmConfig {
    /// A config for a raw payload with defaults for the rest.
    pub fn raw(payload: RawPayload) -> Self {
        Self::with_payload(Payload::Raw(payload))
    }

    /// A config for a Linux kernel with defaults for the rest.
    pub fn linux(payload: LinuxPayload) -> Self {
        Self::with_payload(Payload::Linux(payload))
    }

    /// A config for the demo guest built into Petrel.
    pub fn demo() -> Self {
        Self::linux(LinuxPayload {
            kernel: KernelImage::Builtin {
                name: "the built-in demo guest",
                bytes: crate::demo_guest::demo_kernel_elf(),
            },
            initrd: None,
            cmdline: None,
        })
    }

    fn with_payload(payload: Payload) -> Self {
        VmConfig {
            mem_size: DEFAULT_MEM_SIZE,
            vcpus: 1,
            payload,
            serial: SerialConfig::Stdio,
            max_exits: None,
            host_compat: true,
            disks: Vec::new(),
            net: None,
            rng: false,
            vsock: None,
            metrics: None,
        }
    }
}

/// Parses a size: a number with an optional K, M or G suffix (powers of 1024), or hex.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| Error::InvalidArgument {
        what: "memory size",
        value: s.to_string(),
        why: why.to_string(),
    };
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n =
        parse_u64(num).map_err(|_| bad("expected a number with an optional K, M or G suffix"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))
}

/// Parses an address or count: decimal, or hex with a `0x` prefix.
pub fn parse_u64(s: &str) -> std::result::Result<u64, std::num::ParseIntError> {
    let t = s.trim().replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
}

/// Parses `name=value` for `--reg`, e.g. `rax=2` or `rbx=0x10`.
pub fn parse_reg_assignment(s: &str) -> Result<RegAssignment> {
    let bad = |why: String| Error::InvalidArgument {
        what: "--reg",
        value: s.to_string(),
        why,
    };
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| bad("expected REGISTER=VALUE, e.g. rax=2".into()))?;
    let name = name.trim().to_ascii_lowercase();
    let reg = Reg::NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .ok_or_else(|| {
            let known: Vec<&str> = Reg::NAMES.iter().map(|(n, _)| *n).collect();
            bad(format!(
                "unknown register `{name}` (known: {})",
                known.join(", ")
            ))
        })?;
    let value = parse_u64(value).map_err(|_| {
        bad(format!(
            "`{value}` is not a number (decimal, or hex with 0x)"
        ))
    })?;
    Ok(RegAssignment { reg, value })
}

/// Parses `--disk PATH[,ro][,id=NAME]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig> {
    let bad = |why: String| Error::InvalidArgument {
        what: "--disk",
        value: s.to_string(),
        why,
    };
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("expected PATH[,ro][,id=NAME]".into()))?;
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
        id: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            Some(("id", id)) if !id.is_empty() && id.len() <= 20 => disk.id = Some(id.to_string()),
            Some(("id", _)) => {
                return Err(bad("id must be 1 to 20 bytes (virtio-blk GET_ID)".into()))
            }
            _ => return Err(bad(format!("unknown option `{opt}` (known: ro, id=NAME)"))),
        }
    }
    Ok(disk)
}

/// Parses a MAC address written as six hex octets separated by colons.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for octet in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *octet = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses `--net tap=NAME[,mac=MAC]`.
pub fn parse_net(s: &str) -> Result<NetConfig> {
    let bad = |why: String| Error::InvalidArgument {
        what: "--net",
        value: s.to_string(),
        why,
    };
    let mut tap = None;
    let mut mac = DEFAULT_MAC;
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("tap", name)) if !name.is_empty() && name.len() < 16 => tap = Some(name),
            Some(("tap", _)) => return Err(bad("a tap name is 1 to 15 characters".into())),
            Some(("mac", m)) => {
                mac = parse_mac(m).ok_or_else(|| {
                    bad(format!(
                        "`{m}` is not a MAC address (six hex octets, e.g. 06:00:ac:10:00:02)"
                    ))
                })?;
                if mac[0] & 1 != 0 {
                    return Err(bad(format!(
                        "`{m}` is a multicast address; a NIC needs a unicast one"
                    )));
                }
            }
            _ => {
                return Err(bad(format!(
                    "unknown option `{opt}` (known: tap=NAME, mac=MAC)"
                )))
            }
        }
    }
    let tap = tap.ok_or_else(|| bad("expected tap=NAME".into()))?;
    Ok(NetConfig {
        tap: tap.to_string(),
        mac,
    })
}

/// Parses `--vsock cid=N,uds=PATH`.
pub fn parse_vsock(s: &str) -> Result<VsockConfig> {
    let bad = |why: String| Error::InvalidArgument {
        what: "--vsock",
        value: s.to_string(),
        why,
    };
    let (mut cid, mut uds) = (None, None);
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("cid", n)) => {
                let v = parse_u64(n).map_err(|_| bad(format!("cid `{n}` is not a number")))?;
                // 0-2 are reserved (hypervisor, local, host): virtio v1.2, 5.10.4.
                if v < 3 || v >= u64::from(u32::MAX) {
                    return Err(bad(format!(
                        "cid {v} is reserved; use 3 to {}",
                        u32::MAX - 1
                    )));
                }
                cid = Some(v);
            }
            Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
            _ => {
                return Err(bad(format!(
                    "unknown option `{opt}` (known: cid=N, uds=PATH)"
                )))
            }
        }
    }
    match (cid, uds) {
        (Some(cid), Some(uds)) => Ok(VsockConfig { cid, uds }),
        _ => Err(bad("expected cid=N,uds=PATH".into())),
    }
}

/// Parses `--serial stdio|file:PATH|none`.
pub fn parse_serial(s: &str) -> Result<SerialConfig> {
    match s {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" => Ok(SerialConfig::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialConfig::File(PathBuf::from(p))),
            _ => Err(Error::InvalidArgument {
                what: "--serial",
                value: s.to_string(),
                why: "expected stdio, file:PATH or none".into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn reg_assignments() {
        assert_eq!(parse_reg_assignment("rax=2").unwrap().value, 2);
        assert_eq!(parse_reg_assignment("RBX=0x10").unwrap().reg, Reg::Rbx);
        let e = parse_reg_assignment("rax").unwrap_err().to_string();
        assert!(e.contains("REGISTER=VALUE"), "{e}");
        let e = parse_reg_assignment("foo=1").unwrap_err().to_string();
        assert!(e.contains("unknown register `foo`"), "{e}");
        let e = parse_reg_assignment("rax=two").unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn disks() {
        let d = parse_disk("/img,ro,id=root").unwrap();
        assert_eq!(
            (d.path.to_str(), d.read_only, d.id.as_deref()),
            (Some("/img"), true, Some("root"))
        );
        assert!(!parse_disk("/img").unwrap().read_only);
        assert!(parse_disk("").is_err());
        assert!(parse_disk("/img,rw")
            .unwrap_err()
            .to_string()
            .contains("unknown option `rw`"));
        assert!(parse_disk("/img,id=123456789012345678901").is_err());
    }

    #[test]
    fn nets_and_macs() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tap0", [2, 0, 0, 0, 0, 1]));
        assert_eq!(parse_net("tap=tap0").unwrap().mac, DEFAULT_MAC);
        assert!(parse_net("mac=02:00:00:00:00:01")
            .unwrap_err()
            .to_string()
            .contains("tap=NAME"));
        let e = parse_net("tap=t,mac=02:00:00:00:00")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a MAC address"), "{e}");
        assert!(parse_net("tap=t,mac=01:00:00:00:00:01")
            .unwrap_err()
            .to_string()
            .contains("multicast"));
        assert!(parse_mac("zz:00:00:00:00:00").is_none());
        assert!(parse_mac("02:00:00:00:00:01:07").is_none());
    }

    #[test]
    fn vsocks() {
        let v = parse_vsock("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.uds.to_str()), (3, Some("/tmp/v.sock")));
        assert!(parse_vsock("cid=2,uds=/x")
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        assert!(parse_vsock("cid=3")
            .unwrap_err()
            .to_string()
            .contains("cid=N,uds=PATH"));
        assert!(parse_vsock("cid=x,uds=/x").is_err());
        assert!(parse_vsock("port=3").is_err());
    }

    #[test]
    fn serial_choices() {
        assert_eq!(parse_serial("stdio").unwrap(), SerialConfig::Stdio);
        assert_eq!(
            parse_serial("file:/tmp/x").unwrap(),
            SerialConfig::File("/tmp/x".into())
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp").is_err());
    }

    #[test]
    fn emulated_host_cmdline_is_one_line_of_words() {
        assert!(!EMULATED_HOST_CMDLINE.contains('\n'));
        assert!(EMULATED_HOST_CMDLINE.contains("clearcpuid=popcnt,cx16,"));
        assert!(EMULATED_HOST_CMDLINE.ends_with("avx512f,xsave"));
        assert!(!EMULATED_HOST_CMDLINE.contains("  "));
    }

    #[test]
    fn reg_set_writes_the_right_field() {
        let mut r = kvm_bindings::kvm_regs::default();
        Reg::R12.set(&mut r, 7);
        Reg::Rax.set(&mut r, 2);
        assert_eq!((r.r12, r.rax), (7, 2));
    }
}

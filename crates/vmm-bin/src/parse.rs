//! Parsers for the values users type on the command line, into the library's config types.
//! Their errors name the flag.

use std::path::PathBuf;

use petrel_vmm::config::{
    DiskConfig, NetConfig, Reg, RegAssignment, SerialConfig, VsockConfig, DEFAULT_MAC,
};

use crate::error::CliError;
use petrel_vmm::working_set::WorkingSetMode;

type Result<T> = std::result::Result<T, CliError>;

/// Parses a size: a number with an optional K, M or G suffix (powers of 1024), or hex.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| CliError::InvalidFlag {
        flag: "--mem",
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
    let bad = |why: String| CliError::InvalidFlag {
        flag: "--reg",
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
    let bad = |why: String| CliError::InvalidFlag {
        flag: "--disk",
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
        rate_limit: Default::default(),
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
    let bad = |why: String| CliError::InvalidFlag {
        flag: "--net",
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
        // Petrel's command line has one interface; restore's --net-override calls it eth0.
        id: Some("eth0".into()),
        tap: tap.to_string(),
        mac,
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
        mmds: false,
    })
}

/// Parses `--vsock cid=N,uds=PATH`.
pub fn parse_vsock(s: &str) -> Result<VsockConfig> {
    let bad = |why: String| CliError::InvalidFlag {
        flag: "--vsock",
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
            _ => Err(CliError::InvalidFlag {
                flag: "--serial",
                value: s.to_string(),
                why: "expected stdio, file:PATH or none".into(),
            }),
        },
    }
}

/// Parses `--working-set`: `prefetch`, `record` or `off`.
pub fn parse_working_set(s: &str) -> std::result::Result<WorkingSetMode, String> {
    WorkingSetMode::from_name(s)
        .ok_or_else(|| format!("{s:?} is not a working-set mode: use prefetch, record or off"))
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
}

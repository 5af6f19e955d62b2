//! The host side of [`Net`](super::Net): finding and attaching to an existing tap device.
//!
//! `TUNSETIFF` on a name that no interface has would create a new tap (for a process with
//! `CAP_NET_ADMIN`), which is not what the user asked for: Petrel only uses taps that exist.
//! Whether one exists is asked of the kernel with `SIOCGIFINDEX` on a socket made here, which
//! answers for the process's own network namespace: right inside a namespace entered with
//! `setns(2)` (where `/sys` still shows the namespace that mounted it, so `/sys/class/net` is
//! the wrong place to look) and inside a jail without `/sys` alike. A tap removed between
//! that question and `TUNSETIFF` would be created afresh; such a tap is not persistent (`ip
//! tuntap add` makes persistent ones, and a non-persistent tap that exists is attached to its
//! creator's descriptor, so `TUNSETIFF` on it fails with `EBUSY`), so `TUNGETIFF` after the
//! attach tells it apart, and the new tap goes with the descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{Error, NET_HDR_LEN};

/// `TUNSETIFF` = `_IOW('T', 202, int)` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNGETIFF` = `_IOR('T', 210, unsigned int)` (linux/if_tun.h).
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)` (linux/if_tun.h).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ` = `_IOW('T', 216, int)` (linux/if_tun.h).
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `SIOCGIFINDEX`: an interface's index from its name (linux/sockios.h).
const SIOCGIFINDEX: libc::c_ulong = 0x8933;
/// A tap (Ethernet) device, not a tun (linux/if_tun.h `IFF_TAP`).
const IFF_TAP: libc::c_short = 0x0002;
/// The tap outlives its last descriptor (linux/if_tun.h `IFF_PERSIST`).
const IFF_PERSIST: libc::c_short = 0x0800;
/// No packet-information prefix (linux/if_tun.h `IFF_NO_PI`).
const IFF_NO_PI: libc::c_short = 0x1000;
/// Frames carry a virtio-net header (linux/if_tun.h `IFF_VNET_HDR`).
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Size of an interface name, NUL included (linux/if.h `IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// `struct ifreq` (linux/if.h): the name, then a 24-byte union of which these ioctls use the
/// first member only (`ifr_flags`, a short, or `ifr_ifindex`, an int), read in native order.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    union: [u8; 24],
}

impl IfReq {
    /// A request for `name` (at most `IFNAMSIZ - 1` bytes, checked by the caller).
    fn new(name: &str) -> Self {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            union: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn flags(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.union[0], self.union[1]])
    }

    fn set_flags(&mut self, flags: libc::c_short) {
        self.union[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    fn index(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.union[0], self.union[1], self.union[2], self.union[3]])
    }
}

/// Whether `name` is a valid interface name: 1 to 15 bytes, no `/` or NUL, not `.` or `..`
/// (the kernel's `dev_valid_name`).
pub fn valid_name(name: &str) -> bool {
    !(name.is_empty()
        || name.len() >= IFNAMSIZ
        || name.contains(['/', '\0'])
        || name == "."
        || name == "..")
}

/// The index of the network interface `name` in the calling process's network namespace, or
/// `None` when it has none of that name. `name` must be [`valid_name`].
pub fn interface_index(name: &str) -> io::Result<Option<u32>> {
    // Any socket answers interface ioctls for the namespace it was made in; an AF_UNIX one
    // needs no network protocol, privilege or address.
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFINDEX reads the name and writes the index in a `struct ifreq`, which
    // `req` is (40 bytes) and which lives across the call. The descriptor is ours.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFINDEX as _, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(u32::try_from(req.index()).ok())
}

/// Opens `/dev/net/tun` on the existing tap `name` (checked with [`valid_name`]) with the
/// 12-byte virtio-net header and no offloads; non-blocking, close-on-exec.
pub fn open(name: &str) -> Result<File, Error> {
    let not_found = || Error::TapNotFound { name: name.into() };
    match interface_index(name) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(not_found()),
        Err(source) => {
            return Err(Error::OpenTap {
                name: name.into(),
                source,
            })
        }
    }
    let tap = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| Error::OpenTap {
            name: name.into(),
            source,
        })?;
    let ioctl_err = |ioctl: &'static str| Error::TapIoctl {
        name: name.into(),
        ioctl,
        source: io::Error::last_os_error(),
    };
    let mut req = IfReq::new(name);
    req.set_flags(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    // SAFETY: TUNSETIFF reads and may update a `struct ifreq`; `req` has its layout and size
    // (40 bytes) and lives across the call. The fd is ours.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        // The kernel's tun_set_iff: an existing interface that is not a tap (or is a
        // multi-queue one) is EINVAL; a tap gone meanwhile cannot be created without
        // CAP_NET_ADMIN (EPERM), so ask again which it is.
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => Error::NotATap { name: name.into() },
            Some(libc::EPERM) if matches!(interface_index(name), Ok(None)) => not_found(),
            _ => Error::TapIoctl {
                name: name.into(),
                ioctl: "TUNSETIFF",
                source: e,
            },
        });
    }
    let mut got = IfReq::new("");
    // SAFETY: TUNGETIFF writes the name and flags into a `struct ifreq`, which `got` is.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETIFF as _, &mut got) } < 0 {
        return Err(ioctl_err("TUNGETIFF"));
    }
    if got.flags() & IFF_PERSIST == 0 {
        // TUNSETIFF made this tap (the one named was removed after the lookup above); it
        // goes away with `tap`, dropped here.
        return Err(not_found());
    }
    let hdr_len = NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
        return Err(ioctl_err("TUNSETVNETHDRSZ"));
    }
    // No offloads: the guest negotiated none, so the tap must hand us plain frames.
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD as _, 0 as libc::c_ulong) } < 0 {
        return Err(ioctl_err("TUNSETOFFLOAD"));
    }
    Ok(tap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // _IOC(dir, 'T', nr, sizeof(int)) from asm-generic/ioctl.h.
        let ioc = |dir: libc::c_ulong, nr: libc::c_ulong| {
            (dir << 30) | (4 << 16) | (libc::c_ulong::from(b'T') << 8) | nr
        };
        assert_eq!(TUNSETIFF, ioc(1, 202));
        assert_eq!(TUNGETIFF, ioc(2, 210));
        assert_eq!(TUNSETOFFLOAD, ioc(1, 208));
        assert_eq!(TUNSETVNETHDRSZ, ioc(1, 216));
        assert_eq!(SIOCGIFINDEX, libc::SIOCGIFINDEX as libc::c_ulong);
        assert_eq!(
            std::mem::size_of::<IfReq>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }

    #[test]
    fn the_loopback_interface_is_found_and_a_missing_one_is_not() {
        // Every network namespace has `lo`, with index 1.
        assert_eq!(interface_index("lo").unwrap(), Some(1));
        assert_eq!(interface_index("petrel-nope0").unwrap(), None);
    }

    #[test]
    fn an_interface_that_is_not_a_tap_is_refused_as_such() {
        // `lo` exists in every namespace and is no tap: TUNSETIFF refuses it (EINVAL) and
        // creates nothing. Without /dev/net/tun the open fails first.
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: no /dev/net/tun");
            return;
        }
        match open("lo") {
            Err(Error::NotATap { name }) => assert_eq!(name, "lo"),
            Err(Error::OpenTap { .. }) => eprintln!("skipped: /dev/net/tun cannot be opened"),
            other => panic!("lo opened as a tap: {other:?}"),
        }
    }
}

//! The devices' bodies: drives, network interfaces, vsock, the entropy device, and the
//! rate limiters they share.

use serde::{Deserialize, Serialize};

use super::{
    parse_mac, quoted, validate_id, validate_non_empty, ValidationError, MAX_GUEST_CID,
    MAX_HOST_DEV_NAME_LEN, MAX_MTU, MAX_QUOTED_LEN, MAX_REFILL_TIME_MS, MIN_GUEST_CID, MIN_MTU,
};

/// A token bucket: `size` tokens, refilled completely every `refill_time` ms, with an extra
/// `one_time_burst` spent first. A bucket with a zero `size` or `refill_time` limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens the bucket holds (bytes or operations; required).
    pub size: u64,
    /// Tokens available once at start, before the refill begins. `None`: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket (required).
    pub refill_time: u64,
}

impl TokenBucket {
    /// Whether the bucket limits anything (non-zero `size` and `refill_time`).
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }

    /// Checks that `refill_time` fits in nanoseconds and that a burst is not set on a disabled
    /// bucket. `field` is the bucket's path for the message.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.refill_time > MAX_REFILL_TIME_MS {
            return Err(ValidationError::RefillTime {
                field: field.to_owned(),
                value: self.refill_time,
            });
        }
        if !self.is_enabled() && self.one_time_burst.is_some_and(|b| b != 0) {
            return Err(ValidationError::BurstOnDisabledBucket {
                field: field.to_owned(),
            });
        }
        Ok(())
    }
}

/// A rate limiter: a bandwidth bucket (bytes) and an operations bucket, both optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bucket of bytes. `None`: bandwidth unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket of operations. `None`: operations unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Checks both buckets; `field` is the limiter's path for the message.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if let Some(bucket) = &self.bandwidth {
            bucket.validate(&format!("{field}.bandwidth"))?;
        }
        if let Some(bucket) = &self.ops {
            bucket.validate(&format!("{field}.ops"))?;
        }
        Ok(())
    }
}

/// Validates an optional rate limiter.
fn validate_limiter(field: &str, limiter: &Option<RateLimiter>) -> Result<(), ValidationError> {
    match limiter {
        Some(limiter) => limiter.validate(field),
        None => Ok(()),
    }
}

/// A block device's caching strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are ignored (the default).
    Unsafe,
    /// Flushes reach the host file (`VIRTIO_BLK_F_FLUSH` advertised).
    Writeback,
}

/// A block device's I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the device thread (the default).
    Sync,
    /// io_uring (host kernels newer than 5.10.51).
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-block drive backed by a host file (`path_on_host`) or a
/// vhost-user-block drive backed by a socket (`socket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (required; must equal the id in the path).
    pub drive_id: String,
    /// Host path of the backing file (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Whether the guest boots from this drive (required).
    pub is_root_device: bool,
    /// Unique id of the boot partition, used only with `is_root_device`. `None`: the root is
    /// `/dev/vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Read-only drive (virtio-block). `None`: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Caching strategy. `None`: `Unsafe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine (virtio-block). `None`: `Sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Rate limiter (virtio-block). `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// Socket of a vhost-user-block backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl Drive {
    /// Checks the id, that exactly one backend is named, that a vhost-user drive sets no
    /// virtio-block field, and the rate limiter.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_id("drive_id", &self.drive_id)?;
        match (&self.path_on_host, &self.socket) {
            (Some(path), None) => validate_non_empty("path_on_host", path)?,
            (None, Some(socket)) => {
                validate_non_empty("socket", socket)?;
                let virtio_only = [
                    ("is_read_only", self.is_read_only.is_some()),
                    ("io_engine", self.io_engine.is_some()),
                    ("rate_limiter", self.rate_limiter.is_some()),
                ];
                if let Some((field, _)) = virtio_only.iter().find(|(_, set)| *set) {
                    return Err(ValidationError::VhostUserField {
                        drive_id: self.drive_id.clone(),
                        field,
                    });
                }
            }
            _ => return Err(ValidationError::DriveBackend(self.drive_id.clone())),
        }
        if let Some(partuuid) = &self.partuuid {
            validate_non_empty("partuuid", partuuid)?;
        }
        validate_limiter("rate_limiter", &self.rate_limiter)
    }
}

/// `PATCH /drives/{drive_id}`: a new backing file and/or rate limiter for a drive (after boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's id (required; must equal the id in the path).
    pub drive_id: String,
    /// New host path of the backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// New rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl PartialDrive {
    /// Checks the id, the path and the rate limiter.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_id("drive_id", &self.drive_id)?;
        if let Some(path) = &self.path_on_host {
            validate_non_empty("path_on_host", path)?;
        }
        validate_limiter("rate_limiter", &self.rate_limiter)
    }
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device backed by a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id (required; must equal the id in the path).
    pub iface_id: String,
    /// Name of the host TAP device (required).
    pub host_dev_name: String,
    /// The guest's MAC address, e.g. `06:00:AC:10:00:02`. `None`: no MAC is advertised and
    /// the guest picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised with `VIRTIO_NET_F_MTU`, 68 to 65535. `None`: not advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u64>,
    /// Rate limiter of the receive queue. `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Rate limiter of the transmit queue. `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// Checks the id, the TAP name, the MAC, the MTU and both rate limiters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_id("iface_id", &self.iface_id)?;
        validate_non_empty("host_dev_name", &self.host_dev_name)?;
        if self.host_dev_name.len() > MAX_HOST_DEV_NAME_LEN {
            return Err(ValidationError::HostDevName(quoted(
                &self.host_dev_name,
                MAX_QUOTED_LEN,
            )));
        }
        if let Some(mac) = &self.guest_mac {
            parse_mac(mac)?;
        }
        if let Some(mtu) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(ValidationError::Mtu(mtu));
            }
        }
        validate_limiter("rx_rate_limiter", &self.rx_rate_limiter)?;
        validate_limiter("tx_rate_limiter", &self.tx_rate_limiter)
    }
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters for an interface (after boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's id (required; must equal the id in the path).
    pub iface_id: String,
    /// New receive rate limiter. `None`: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter. `None`: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl PartialNetworkInterface {
    /// Checks the id and both rate limiters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_id("iface_id", &self.iface_id)?;
        validate_limiter("rx_rate_limiter", &self.rx_rate_limiter)?;
        validate_limiter("tx_rate_limiter", &self.tx_rate_limiter)
    }
}

/// `PUT /vsock`: a virtio-vsock device proxied to Unix sockets on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id, at least 3 (required).
    pub guest_cid: u64,
    /// Host Unix socket for host-initiated connections; guest-initiated ones go to
    /// `<uds_path>_<port>` (required).
    pub uds_path: String,
    /// Deprecated id, accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl Vsock {
    /// Checks the CID and the socket path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.guest_cid) {
            return Err(ValidationError::GuestCid(self.guest_cid));
        }
        validate_non_empty("uds_path", &self.uds_path)
    }
}

/// `PUT /entropy`: a virtio-rng device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Rate limiter of the bytes handed to the guest. `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl EntropyDevice {
    /// Checks the rate limiter.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_limiter("rate_limiter", &self.rate_limiter)
    }
}

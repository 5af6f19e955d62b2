//! The body of `GET /vm/config` as Firecracker writes it: [`VmConfigReply`], made from the
//! [`FullVmConfiguration`] a VMM keeps.
//!
//! Firecracker answers with its `VmmConfig` (`src/vmm/src/resources.rs`), built from the
//! devices it configured, and serializes every field: a section it does not have is `null` (a
//! list `[]`), an unset optional field is `null`, and defaults are written out (a drive's
//! `cache_type` `"Unsafe"`, `is_read_only` `false` and `io_engine` `"Sync"`). Some fields are
//! always empty there, whatever was configured: `logger`, `metrics` and `cpu-config` are
//! `null`, a vsock's `vsock_id` is left out, and a rate limiter whose buckets are all disabled
//! (a `size` or `refill_time` of 0) is `null`, as is a bucket's `one_time_burst` of 0. The
//! types here write the same fields in the same order. `balloon` is `null` without one, else
//! every field of Firecracker's `Balloon` (`stats_polling_interval_s` `0`, `free_page_hinting`
//! and `free_page_reporting` `false` when not sent). The sections Petrel does not implement
//! (`pmem`, `memory-hotplug`) are always empty. `mmds-config` is written once set,
//! its defaults filled in (`version` `"V1"`, `ipv4_address` `"169.254.169.254"`, `imds_compat`
//! `false`), as Firecracker rebuilds it from its MMDS and network devices.

use serde::Serialize;

use crate::model::{
    parse_mac, Balloon, BootSource, CacheType, Drive, EntropyDevice, FullVmConfiguration, IoEngine,
    MachineConfiguration, MmdsConfig, MmdsVersion, NetworkInterface, RateLimiter, TokenBucket,
    Vsock,
};

/// The body of `GET /vm/config`, field for field Firecracker's `VmmConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmConfigReply {
    /// The balloon device (as configured before the start, its current target after), or
    /// `null` when there is none.
    pub balloon: Option<Balloon>,
    /// Every drive, in the order they were added.
    pub drives: Vec<DriveReply>,
    /// The boot source (an empty `kernel_image_path` before one is set, as in Firecracker).
    #[serde(rename = "boot-source")]
    pub boot_source: BootSourceReply,
    /// Always `null`, as in Firecracker.
    #[serde(rename = "cpu-config")]
    pub cpu_config: (),
    /// Always `null`, as in Firecracker (which never reports its logger here).
    pub logger: (),
    /// The machine configuration (Firecracker's defaults before any `PUT`).
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfiguration,
    /// Always `null`, as in Firecracker (which never reports its metrics here).
    pub metrics: (),
    /// The MMDS configuration, or `null` when none was set.
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfigReply>,
    /// Every network interface, in the order they were added.
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterfaceReply>,
    /// The vsock device, if any.
    pub vsock: Option<VsockReply>,
    /// The entropy device, if any.
    pub entropy: Option<EntropyReply>,
    /// Always empty: Petrel has no virtio-pmem device.
    pub pmem: Vec<()>,
    /// Always `null`: Petrel has no memory hot-plug.
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: (),
}

/// `mmds-config` of [`VmConfigReply`] (Firecracker's `MmdsConfig`), defaults written out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmdsConfigReply {
    /// `V1` or `V2`.
    pub version: MmdsVersion,
    /// The interfaces that reach the MMDS.
    pub network_interfaces: Vec<String>,
    /// The MMDS's address.
    pub ipv4_address: std::net::Ipv4Addr,
    /// Whether IMDS answers are forced.
    pub imds_compat: bool,
}

impl From<&MmdsConfig> for MmdsConfigReply {
    fn from(c: &MmdsConfig) -> Self {
        MmdsConfigReply {
            version: c.version(),
            network_interfaces: c.network_interfaces.clone(),
            ipv4_address: c.ipv4_address(),
            imds_compat: c.imds_compat(),
        }
    }
}

/// `boot-source` of [`VmConfigReply`] (Firecracker's `BootSourceConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSourceReply {
    /// The kernel (empty before a boot source is set).
    pub kernel_image_path: String,
    /// The initrd, or `null`.
    pub initrd_path: Option<String>,
    /// The kernel command line, or `null` (the default).
    pub boot_args: Option<String>,
}

/// A drive of [`VmConfigReply`] (Firecracker's `BlockDeviceConfig`, as a virtio-blk device
/// reports it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveReply {
    /// The drive's id.
    pub drive_id: String,
    /// The root partition's UUID, or `null`.
    pub partuuid: Option<String>,
    /// Whether it is the root device.
    pub is_root_device: bool,
    /// The cache type (`"Unsafe"` unless set).
    pub cache_type: CacheType,
    /// Whether it is read-only (`false` unless set).
    pub is_read_only: bool,
    /// The backing file.
    pub path_on_host: Option<String>,
    /// The rate limiter, or `null` when it limits nothing.
    pub rate_limiter: Option<RateLimiterReply>,
    /// The I/O engine (`"Sync"` unless set).
    pub io_engine: IoEngine,
    /// Always `null`: Petrel has no vhost-user drives.
    pub socket: Option<String>,
}

/// A network interface of [`VmConfigReply`] (Firecracker's `NetworkInterfaceConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterfaceReply {
    /// The interface's id.
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// The guest MAC address as set (lower-case, as Firecracker writes it), or `null`.
    pub guest_mac: Option<String>,
    /// The MTU, or `null` (Petrel refuses one).
    pub mtu: Option<u64>,
    /// The receive rate limiter, or `null` when it limits nothing.
    pub rx_rate_limiter: Option<RateLimiterReply>,
    /// The transmit rate limiter, or `null` when it limits nothing.
    pub tx_rate_limiter: Option<RateLimiterReply>,
}

/// `vsock` of [`VmConfigReply`] (Firecracker's `VsockDeviceConfig`, whose `vsock_id` it
/// leaves out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockReply {
    /// The guest's context id.
    pub guest_cid: u64,
    /// The host's Unix socket.
    pub uds_path: String,
}

/// `entropy` of [`VmConfigReply`] (Firecracker's `EntropyDeviceConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntropyReply {
    /// The rate limiter, or `null` when it limits nothing.
    pub rate_limiter: Option<RateLimiterReply>,
}

/// A rate limiter as Firecracker reports it (`RateLimiterConfig`): a disabled bucket is
/// `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimiterReply {
    /// The bandwidth bucket, or `null`.
    pub bandwidth: Option<TokenBucketReply>,
    /// The operations bucket, or `null`.
    pub ops: Option<TokenBucketReply>,
}

/// A token bucket as Firecracker reports it (`TokenBucketConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenBucketReply {
    /// Tokens the bucket holds.
    pub size: u64,
    /// The one-time burst, or `null` when 0.
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket.
    pub refill_time: u64,
}

impl From<&FullVmConfiguration> for VmConfigReply {
    fn from(c: &FullVmConfiguration) -> Self {
        VmConfigReply {
            balloon: c.balloon,
            drives: c.drives.iter().map(DriveReply::from).collect(),
            boot_source: c
                .boot_source
                .as_ref()
                .map_or_else(BootSourceReply::unset, BootSourceReply::from),
            cpu_config: (),
            logger: (),
            machine_config: c.machine_config.clone().unwrap_or_default(),
            metrics: (),
            mmds_config: c.mmds_config.as_ref().map(MmdsConfigReply::from),
            network_interfaces: c
                .network_interfaces
                .iter()
                .map(NetworkInterfaceReply::from)
                .collect(),
            vsock: c.vsock.as_ref().map(VsockReply::from),
            entropy: c.entropy.as_ref().map(EntropyReply::from),
            pmem: Vec::new(),
            memory_hotplug: (),
        }
    }
}

impl BootSourceReply {
    /// Firecracker's boot source before any `PUT /boot-source`.
    fn unset() -> Self {
        BootSourceReply {
            kernel_image_path: String::new(),
            initrd_path: None,
            boot_args: None,
        }
    }
}

impl From<&BootSource> for BootSourceReply {
    fn from(b: &BootSource) -> Self {
        BootSourceReply {
            kernel_image_path: b.kernel_image_path.clone(),
            initrd_path: b.initrd_path.clone(),
            boot_args: b.boot_args.clone(),
        }
    }
}

impl From<&Drive> for DriveReply {
    fn from(d: &Drive) -> Self {
        DriveReply {
            drive_id: d.drive_id.clone(),
            partuuid: d.partuuid.clone(),
            is_root_device: d.is_root_device,
            cache_type: d.cache_type.unwrap_or(CacheType::Unsafe),
            is_read_only: d.is_read_only.unwrap_or(false),
            path_on_host: d.path_on_host.clone(),
            rate_limiter: RateLimiterReply::of(&d.rate_limiter),
            io_engine: d.io_engine.unwrap_or(IoEngine::Sync),
            socket: d.socket.clone(),
        }
    }
}

impl From<&NetworkInterface> for NetworkInterfaceReply {
    fn from(n: &NetworkInterface) -> Self {
        NetworkInterfaceReply {
            iface_id: n.iface_id.clone(),
            host_dev_name: n.host_dev_name.clone(),
            // A MAC that was accepted parses; Firecracker writes its bytes in lower case.
            guest_mac: n.guest_mac.as_ref().map(|text| match parse_mac(text) {
                Ok(b) => format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    b[0], b[1], b[2], b[3], b[4], b[5]
                ),
                Err(_) => text.clone(),
            }),
            mtu: n.mtu,
            rx_rate_limiter: RateLimiterReply::of(&n.rx_rate_limiter),
            tx_rate_limiter: RateLimiterReply::of(&n.tx_rate_limiter),
        }
    }
}

impl From<&Vsock> for VsockReply {
    fn from(v: &Vsock) -> Self {
        VsockReply {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        }
    }
}

impl From<&EntropyDevice> for EntropyReply {
    fn from(e: &EntropyDevice) -> Self {
        EntropyReply {
            rate_limiter: RateLimiterReply::of(&e.rate_limiter),
        }
    }
}

impl RateLimiterReply {
    /// A limiter as Firecracker reports it: `None` when no bucket of it is enabled.
    pub fn of(limiter: &Option<RateLimiter>) -> Option<RateLimiterReply> {
        let limiter = limiter.as_ref()?;
        let reply = RateLimiterReply {
            bandwidth: limiter.bandwidth.as_ref().and_then(TokenBucketReply::of),
            ops: limiter.ops.as_ref().and_then(TokenBucketReply::of),
        };
        (reply.bandwidth.is_some() || reply.ops.is_some()).then_some(reply)
    }
}

impl TokenBucketReply {
    /// A bucket as Firecracker reports it: `None` when disabled, no burst when it is 0.
    pub fn of(bucket: &TokenBucket) -> Option<TokenBucketReply> {
        bucket.is_enabled().then_some(TokenBucketReply {
            size: bucket.size,
            one_time_burst: bucket.one_time_burst.filter(|&b| b != 0),
            refill_time: bucket.refill_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HugePages;

    #[test]
    fn a_fresh_instance_answers_firecrackers_defaults() {
        let reply = VmConfigReply::from(&FullVmConfiguration::default());
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            concat!(
                r#"{"balloon":null,"drives":[],"#,
                r#""boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"#,
                r#""cpu-config":null,"logger":null,"#,
                r#""machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"#,
                r#""track_dirty_pages":false,"huge_pages":"None"},"#,
                r#""metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"#,
                r#""entropy":null,"pmem":[],"memory-hotplug":null}"#
            )
        );
    }

    #[test]
    fn every_section_is_written_as_firecracker_writes_it() {
        let bucket = |size, one_time_burst, refill_time| TokenBucket {
            size,
            one_time_burst,
            refill_time,
        };
        let config = FullVmConfiguration {
            boot_source: Some(BootSource {
                kernel_image_path: "/k".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None,
            }),
            drives: vec![
                Drive {
                    drive_id: "rootfs".into(),
                    path_on_host: Some("/r".into()),
                    is_root_device: true,
                    partuuid: None,
                    is_read_only: None,
                    cache_type: None,
                    io_engine: None,
                    rate_limiter: None,
                    socket: None,
                },
                Drive {
                    drive_id: "data".into(),
                    path_on_host: Some("/d".into()),
                    is_root_device: false,
                    partuuid: Some("abc".into()),
                    is_read_only: Some(true),
                    cache_type: Some(CacheType::Writeback),
                    io_engine: Some(IoEngine::Sync),
                    rate_limiter: Some(RateLimiter {
                        bandwidth: Some(bucket(1000, Some(0), 100)),
                        ops: Some(bucket(0, None, 100)),
                    }),
                    socket: None,
                },
            ],
            machine_config: Some(MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                track_dirty_pages: true,
                ..MachineConfiguration::default()
            }),
            network_interfaces: vec![NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:AC:10:00:02".into()),
                mtu: None,
                // Buckets that limit nothing: the limiter is null.
                rx_rate_limiter: Some(RateLimiter {
                    bandwidth: Some(bucket(0, None, 0)),
                    ops: None,
                }),
                tx_rate_limiter: Some(RateLimiter {
                    bandwidth: None,
                    ops: Some(bucket(10, Some(5), 1000)),
                }),
            }],
            vsock: Some(Vsock {
                guest_cid: 3,
                uds_path: "/v.sock".into(),
                vsock_id: Some("vsock0".into()),
            }),
            logger: Some(crate::model::Logger {
                log_path: Some("/log".into()),
                level: None,
                show_level: None,
                show_log_origin: None,
                module: None,
            }),
            metrics: Some(crate::model::Metrics {
                metrics_path: "/metrics".into(),
            }),
            entropy: Some(EntropyDevice { rate_limiter: None }),
            mmds_config: Some(MmdsConfig {
                version: None,
                network_interfaces: vec!["eth0".into()],
                ipv4_address: None,
                imds_compat: None,
            }),
            // Sent without its optional fields: they are written out.
            balloon: Some(Balloon {
                amount_mib: 64,
                deflate_on_oom: true,
                ..Balloon::default()
            }),
        };
        let got: serde_json::Value = serde_json::to_value(VmConfigReply::from(&config)).unwrap();
        let want = serde_json::json!({
            "balloon": {"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 0,
                        "free_page_hinting": false, "free_page_reporting": false},
            "drives": [
                {"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                 "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/r",
                 "rate_limiter": null, "io_engine": "Sync", "socket": null},
                {"drive_id": "data", "partuuid": "abc", "is_root_device": false,
                 "cache_type": "Writeback", "is_read_only": true, "path_on_host": "/d",
                 "rate_limiter": {
                     "bandwidth": {"size": 1000, "one_time_burst": null, "refill_time": 100},
                     "ops": null},
                 "io_engine": "Sync", "socket": null}
            ],
            "boot-source": {"kernel_image_path": "/k", "initrd_path": null,
                            "boot_args": "console=ttyS0"},
            "cpu-config": null,
            "logger": null,
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                               "track_dirty_pages": true, "huge_pages": "None"},
            "metrics": null,
            "mmds-config": {"version": "V1", "network_interfaces": ["eth0"],
                            "ipv4_address": "169.254.169.254", "imds_compat": false},
            "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                 "mtu": null, "rx_rate_limiter": null,
                 "tx_rate_limiter": {
                     "bandwidth": null,
                     "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}}
            ],
            "vsock": {"guest_cid": 3, "uds_path": "/v.sock"},
            "entropy": {"rate_limiter": null},
            "pmem": [],
            "memory-hotplug": null
        });
        assert_eq!(got, want);
        // The machine configuration's fields in Firecracker's order.
        let text = serde_json::to_string(&VmConfigReply::from(&config)).unwrap();
        assert!(
            text.contains(
                r#""machine-config":{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}"#
            ),
            "{text}"
        );
        // The balloon's too.
        assert!(
            text.starts_with(
                r#"{"balloon":{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false},"#
            ),
            "{text}"
        );
        assert_eq!(HugePages::default(), HugePages::None);
    }
}

//! Firecracker's configuration as Petrel's: a [`FullVmConfiguration`] (what the API and the
//! config file collect before `InstanceStart`) becomes the [`VmConfig`] that
//! [`petrel_vmm::Vmm::build`] takes, with Firecracker's conventions: the root drive is the
//! guest's first disk (`/dev/vda`, or its PARTUUID) and named on the kernel command line, a
//! drive's id is its virtio-blk serial (cut to 20 bytes), a disabled token bucket limits
//! nothing.

use std::path::PathBuf;

use petrel_api::model::{
    BootSource, Drive, EntropyDevice, FullVmConfiguration, HugePages as ApiHugePages,
    MmdsVersion as ApiMmdsVersion, RateLimiter, TokenBucket, Vsock,
};
use petrel_vmm::config::{
    BalloonConfig, DiskConfig, HugePages, KernelImage, LinuxPayload, MmdsConfig, MmdsVersion,
    NetConfig, RateLimiterConfig, SerialConfig, TokenBucketConfig, VmConfig, VsockConfig,
    DEFAULT_CMDLINE, DEFAULT_MAC,
};

/// The longest virtio-blk serial (GET_ID) a drive id can become (virtio v1.2, 5.2.6:
/// VIRTIO_BLK_ID_BYTES).
const BLK_ID_BYTES: usize = 20;

fn bucket(b: &Option<TokenBucket>) -> Option<TokenBucketConfig> {
    b.filter(TokenBucket::is_enabled)
        .map(|b| TokenBucketConfig {
            size: b.size,
            one_time_burst: b.one_time_burst.unwrap_or(0),
            refill_time_ms: b.refill_time,
        })
}

/// Firecracker's rate limiter as Petrel's.
pub fn rate_limit(limiter: &Option<RateLimiter>) -> RateLimiterConfig {
    match limiter {
        None => RateLimiterConfig::default(),
        Some(l) => RateLimiterConfig {
            bandwidth: bucket(&l.bandwidth),
            ops: bucket(&l.ops),
        },
    }
}

/// Firecracker's `huge_pages` as Petrel's.
pub fn huge_pages(h: ApiHugePages) -> HugePages {
    match h {
        ApiHugePages::None => HugePages::None,
        ApiHugePages::Transparent => HugePages::Transparent,
        ApiHugePages::Hugetlbfs2M => HugePages::Hugetlbfs2M,
    }
}

/// The drives in the order the guest sees them: the root device first (`/dev/vda`), the others
/// in the order they were added.
fn root_first(drives: &[Drive]) -> impl Iterator<Item = &Drive> {
    let root = drives.iter().filter(|d| d.is_root_device);
    root.chain(drives.iter().filter(|d| !d.is_root_device))
}

/// The VM configuration `c` describes, as Petrel's, with its serial port on stdio
/// (Firecracker's console). The error says what is missing or too large in the API's words.
pub fn vm_config(c: &FullVmConfiguration) -> Result<VmConfig, String> {
    let boot: &BootSource = c
        .boot_source
        .as_ref()
        .ok_or("no boot source: PUT /boot-source first")?;
    let m = c.machine_config.clone().unwrap_or_default();
    let mut cmdline = boot
        .boot_args
        .clone()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    if let Some(root) = c.drives.iter().find(|d| d.is_root_device) {
        // Firecracker's convention: the root drive is /dev/vda (or a PARTUUID), read-only
        // unless said otherwise.
        let dev = match &root.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".to_string(),
        };
        let mode = if root.is_read_only.unwrap_or(false) {
            "ro"
        } else {
            "rw"
        };
        cmdline.push_str(&format!(" root={dev} {mode}"));
    }
    let mut config = VmConfig::linux(LinuxPayload {
        kernel: KernelImage::File(PathBuf::from(&boot.kernel_image_path)),
        initrd: boot.initrd_path.as_ref().map(PathBuf::from),
        cmdline: Some(cmdline),
    });
    config.vcpus = u8::try_from(m.vcpu_count).map_err(|_| "vcpu_count is too large")?;
    config.mem_size = m
        .mem_size_mib
        .checked_mul(1 << 20)
        .ok_or("mem_size_mib is too large")?;
    config.serial = SerialConfig::Stdio;
    config.track_dirty_pages = m.track_dirty_pages;
    config.huge_pages = huge_pages(m.huge_pages);
    for d in root_first(&c.drives) {
        let path = d
            .path_on_host
            .as_ref()
            .ok_or_else(|| format!("drive `{}` has no path_on_host", d.drive_id))?;
        let id: String = d.drive_id.chars().take(BLK_ID_BYTES).collect();
        config.disks.push(DiskConfig {
            path: PathBuf::from(path),
            read_only: d.is_read_only.unwrap_or(false),
            id: Some(id),
            rate_limit: rate_limit(&d.rate_limiter),
        });
    }
    for n in &c.network_interfaces {
        let mac = match &n.guest_mac {
            Some(text) => petrel_api::model::parse_mac(text).map_err(|e| e.to_string())?,
            None => DEFAULT_MAC,
        };
        config.nets.push(NetConfig {
            id: Some(n.iface_id.clone()),
            tap: n.host_dev_name.clone(),
            mac,
            rx_rate_limit: rate_limit(&n.rx_rate_limiter),
            tx_rate_limit: rate_limit(&n.tx_rate_limiter),
            mmds: c
                .mmds_config
                .as_ref()
                .is_some_and(|m| m.network_interfaces.contains(&n.iface_id)),
        });
    }
    if let Some(Vsock {
        guest_cid,
        uds_path,
        ..
    }) = &c.vsock
    {
        config.vsock = Some(VsockConfig {
            cid: *guest_cid,
            uds: PathBuf::from(uds_path),
        });
    }
    config.mmds = c.mmds_config.as_ref().map(|m| MmdsConfig {
        version: match m.version() {
            ApiMmdsVersion::V1 => MmdsVersion::V1,
            ApiMmdsVersion::V2 => MmdsVersion::V2,
        },
        ipv4_address: m.ipv4_address(),
        imds_compat: m.imds_compat(),
    });
    if let Some(EntropyDevice { rate_limiter }) = &c.entropy {
        config.rng = true;
        config.rng_rate_limit = Some(rate_limit(rate_limiter));
    }
    if let Some(b) = &c.balloon {
        // Checked at PUT /balloon, and again here: the memory size may have changed since.
        b.check_memory(m.mem_size_mib)
            .map_err(|e| format!("balloon: {e}"))?;
        config.balloon = Some(BalloonConfig {
            amount_mib: b.amount_mib,
            deflate_on_oom: b.deflate_on_oom,
            stats_polling_interval_s: b.stats_polling_interval_s,
            free_page_hinting: b.free_page_hinting,
            free_page_reporting: b.free_page_reporting,
        });
    }
    Ok(config)
}

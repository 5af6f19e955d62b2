//! Firecracker's JSON config file (`--config-file`): one object whose kebab-case sections
//! hold the bodies of the API's `PUT` requests, e.g.
//!
//! ```json
//! {
//!   "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
//!   "drives": [{"drive_id": "rootfs", "path_on_host": "rootfs.ext4",
//!               "is_root_device": true, "is_read_only": false}],
//!   "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024}
//! }
//! ```
//!
//! `boot-source` and `drives` are required (as in Firecracker); the other sections are
//! optional, and `null` stands for an absent section, as `GET /vm/config` of Firecracker
//! writes it. Sections Petrel does not implement yet are refused when they hold a value (an
//! empty list is no value); any
//! other unknown section is refused. Every section is validated with the same checks as the
//! API, and the messages name the section (and the list index) at fault.
//!
//! The body of `GET /vm/config` ([`crate::reply::VmConfigReply`], made from a
//! [`FullVmConfiguration`]) has this shape, so a document Petrel exports can be fed back with
//! `--config-file` once it has a boot source.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    quoted, Balloon, BootSource, Drive, EntropyDevice, FullVmConfiguration, Logger,
    MachineConfiguration, Metrics, MmdsConfig, NetworkInterface, ValidationError, Vsock,
    MAX_QUOTED_LEN,
};

/// The largest config file accepted, in bytes.
pub const MAX_CONFIG_FILE_LEN: usize = 1 << 20;

/// The most bytes of a parser's message quoted back.
const MAX_PARSER_MESSAGE_LEN: usize = 512;

/// The sections Petrel reads.
pub const SUPPORTED_SECTIONS: [&str; 10] = [
    "boot-source",
    "drives",
    "machine-config",
    "network-interfaces",
    "vsock",
    "logger",
    "metrics",
    "entropy",
    "mmds-config",
    "balloon",
];

/// The sections of Firecracker's config file Petrel does not implement yet (accepted only
/// when empty: `null`, or an empty list).
pub const UNSUPPORTED_SECTIONS: [&str; 4] = ["cpu-config", "pmem", "memory-hotplug", "serial"];

/// A config file, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmConfigFile {
    /// `boot-source` (required).
    pub boot_source: BootSource,
    /// `drives` (required, maybe empty; at most one root device, ids unique).
    pub drives: Vec<Drive>,
    /// `machine-config`. `None`: Firecracker's defaults (1 vCPU, 128 MiB).
    pub machine_config: Option<MachineConfiguration>,
    /// `network-interfaces` (ids unique).
    pub network_interfaces: Vec<NetworkInterface>,
    /// `vsock`.
    pub vsock: Option<Vsock>,
    /// `logger`.
    pub logger: Option<Logger>,
    /// `metrics`.
    pub metrics: Option<Metrics>,
    /// `entropy`.
    pub entropy: Option<EntropyDevice>,
    /// `mmds-config` (its interfaces among `network-interfaces`).
    pub mmds_config: Option<MmdsConfig>,
    /// `balloon` (its `amount_mib` at most `machine-config`'s `mem_size_mib`).
    pub balloon: Option<Balloon>,
}

impl From<VmmConfigFile> for FullVmConfiguration {
    fn from(file: VmmConfigFile) -> Self {
        FullVmConfiguration {
            boot_source: Some(file.boot_source),
            drives: file.drives,
            machine_config: file.machine_config,
            network_interfaces: file.network_interfaces,
            vsock: file.vsock,
            logger: file.logger,
            metrics: file.metrics,
            entropy: file.entropy,
            mmds_config: file.mmds_config,
            balloon: file.balloon,
        }
    }
}

/// Why a config file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigFileError {
    /// The file is larger than [`MAX_CONFIG_FILE_LEN`].
    #[error("the config file is {0} bytes long; at most {MAX_CONFIG_FILE_LEN} are accepted")]
    TooLarge(usize),
    /// The file is not JSON.
    #[error("the config file is not valid JSON: {0}")]
    Json(String),
    /// The file is JSON but not an object.
    #[error("the config file must be a JSON object of sections")]
    NotAnObject,
    /// A section Firecracker does not have either.
    #[error("unknown section `{0}` in the config file (known: boot-source, drives, machine-config, network-interfaces, vsock, logger, metrics, entropy, mmds-config, balloon)")]
    UnknownSection(String),
    /// A section Petrel does not implement yet.
    #[error("section `{0}` of the config file is not supported by Petrel yet")]
    NotSupported(String),
    /// A required section is missing (or `null`).
    #[error("the config file has no `{0}` section, which is required")]
    MissingSection(&'static str),
    /// A section does not have the expected shape (serde's message, naming unknown or missing
    /// fields).
    #[error("section `{section}` of the config file: {message}")]
    Section {
        /// The section, with the index for lists (`drives[1]`).
        section: String,
        /// What the parser said.
        message: String,
    },
    /// A section parsed but a value is refused.
    #[error("section `{section}` of the config file: {source}")]
    Invalid {
        /// The section, with the index for lists.
        section: String,
        /// The refused value.
        source: ValidationError,
    },
    /// Two items of a list have the same id.
    #[error("section `{section}` of the config file: {field} `{id}` appears more than once")]
    DuplicateId {
        /// `drives` or `network-interfaces`.
        section: &'static str,
        /// `drive_id` or `iface_id`.
        field: &'static str,
        /// The repeated id.
        id: String,
    },
    /// More than one drive has `is_root_device`.
    #[error("section `drives` of the config file: drives `{first}` and `{second}` are both root devices; at most one may be")]
    TwoRootDevices {
        /// The first root drive.
        first: String,
        /// The second.
        second: String,
    },
}

/// Deserializes one section (or list item); `section` names it in the error.
fn section<T: DeserializeOwned>(section: &str, value: Value) -> Result<T, ConfigFileError> {
    serde_json::from_value(value).map_err(|err| ConfigFileError::Section {
        section: section.to_owned(),
        message: quoted(&err.to_string(), MAX_PARSER_MESSAGE_LEN),
    })
}

/// Deserializes a list section item by item (`null` is an empty list).
fn list<T: DeserializeOwned>(name: &str, value: Value) -> Result<Vec<T>, ConfigFileError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| section(&format!("{name}[{i}]"), item))
            .collect(),
        _ => Err(ConfigFileError::Section {
            section: name.to_owned(),
            message: "expected a list".to_owned(),
        }),
    }
}

/// Deserializes an optional section (`null` is absent).
fn optional<T: DeserializeOwned>(name: &str, value: Value) -> Result<Option<T>, ConfigFileError> {
    match value {
        Value::Null => Ok(None),
        value => section(name, value).map(Some),
    }
}

/// Maps a validation error to the section it belongs to.
fn invalid(section: impl Into<String>) -> impl FnOnce(ValidationError) -> ConfigFileError {
    let section = section.into();
    move |source| ConfigFileError::Invalid { section, source }
}

/// Parses and validates a config file.
pub fn parse_config_file(text: &str) -> Result<VmmConfigFile, ConfigFileError> {
    if text.len() > MAX_CONFIG_FILE_LEN {
        return Err(ConfigFileError::TooLarge(text.len()));
    }
    let root: Value = serde_json::from_str(text)
        .map_err(|err| ConfigFileError::Json(quoted(&err.to_string(), MAX_PARSER_MESSAGE_LEN)))?;
    let Value::Object(sections) = root else {
        return Err(ConfigFileError::NotAnObject);
    };

    let mut boot_source = None;
    let mut drives = None;
    let mut machine_config = None;
    let mut network_interfaces = Vec::new();
    let mut vsock = None;
    let mut logger = None;
    let mut metrics = None;
    let mut entropy = None;
    let mut mmds_config = None;
    let mut balloon = None;
    for (name, value) in sections {
        match name.as_str() {
            "boot-source" => boot_source = optional::<BootSource>(&name, value)?,
            "drives" if !value.is_null() => drives = Some(list::<Drive>(&name, value)?),
            "drives" => {}
            "machine-config" => machine_config = optional(&name, value)?,
            "network-interfaces" => network_interfaces = list(&name, value)?,
            "vsock" => vsock = optional(&name, value)?,
            "logger" => logger = optional(&name, value)?,
            "metrics" => metrics = optional(&name, value)?,
            "entropy" => entropy = optional(&name, value)?,
            "mmds-config" => mmds_config = optional(&name, value)?,
            "balloon" => balloon = optional(&name, value)?,
            other if UNSUPPORTED_SECTIONS.contains(&other) => {
                // Empty: `null`, or `[]` for a list (as GET /vm/config writes `pmem`).
                let empty = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
                if !empty {
                    return Err(ConfigFileError::NotSupported(name));
                }
            }
            _ => {
                return Err(ConfigFileError::UnknownSection(quoted(
                    &name,
                    MAX_QUOTED_LEN,
                )))
            }
        }
    }
    let file = VmmConfigFile {
        boot_source: boot_source.ok_or(ConfigFileError::MissingSection("boot-source"))?,
        drives: drives.ok_or(ConfigFileError::MissingSection("drives"))?,
        machine_config,
        network_interfaces,
        vsock,
        logger,
        metrics,
        entropy,
        mmds_config,
        balloon,
    };
    validate(&file)?;
    Ok(file)
}

/// Applies the API's checks to every section, then the checks across items.
fn validate(file: &VmmConfigFile) -> Result<(), ConfigFileError> {
    file.boot_source
        .validate()
        .map_err(invalid("boot-source"))?;
    if let Some(config) = &file.machine_config {
        config.validate().map_err(invalid("machine-config"))?;
    }
    let mut root: Option<&str> = None;
    for (i, drive) in file.drives.iter().enumerate() {
        drive.validate().map_err(invalid(format!("drives[{i}]")))?;
        if file.drives[..i]
            .iter()
            .any(|d| d.drive_id == drive.drive_id)
        {
            return Err(ConfigFileError::DuplicateId {
                section: "drives",
                field: "drive_id",
                id: drive.drive_id.clone(),
            });
        }
        if drive.is_root_device {
            if let Some(first) = root {
                return Err(ConfigFileError::TwoRootDevices {
                    first: first.to_owned(),
                    second: drive.drive_id.clone(),
                });
            }
            root = Some(&drive.drive_id);
        }
    }
    for (i, iface) in file.network_interfaces.iter().enumerate() {
        iface
            .validate()
            .map_err(invalid(format!("network-interfaces[{i}]")))?;
        if file.network_interfaces[..i]
            .iter()
            .any(|n| n.iface_id == iface.iface_id)
        {
            return Err(ConfigFileError::DuplicateId {
                section: "network-interfaces",
                field: "iface_id",
                id: iface.iface_id.clone(),
            });
        }
    }
    if let Some(vsock) = &file.vsock {
        vsock.validate().map_err(invalid("vsock"))?;
    }
    if let Some(logger) = &file.logger {
        logger.validate().map_err(invalid("logger"))?;
    }
    if let Some(metrics) = &file.metrics {
        metrics.validate().map_err(invalid("metrics"))?;
    }
    if let Some(entropy) = &file.entropy {
        entropy.validate().map_err(invalid("entropy"))?;
    }
    if let Some(mmds) = &file.mmds_config {
        mmds.validate().map_err(invalid("mmds-config"))?;
        let ifaces = file.network_interfaces.iter().map(|n| n.iface_id.as_str());
        mmds.check_interfaces(ifaces)
            .map_err(invalid("mmds-config"))?;
    }
    if let Some(balloon) = &file.balloon {
        let machine = file.machine_config.clone().unwrap_or_default();
        balloon
            .check_memory(machine.mem_size_mib)
            .map_err(invalid("balloon"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CacheType, HugePages, IoEngine, LogLevel, RateLimiter, TokenBucket};

    /// The shape of Firecracker's `tests/framework/vm_config.json`: absent sections written
    /// as `null`.
    const FRAMEWORK_STYLE: &str = r#"{
      "boot-source": {
        "kernel_image_path": "vmlinux.bin",
        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
        "initrd_path": null
      },
      "drives": [
        {
          "drive_id": "rootfs",
          "path_on_host": "bionic.rootfs.ext4",
          "is_root_device": true,
          "partuuid": null,
          "is_read_only": false,
          "cache_type": "Unsafe",
          "io_engine": "Sync",
          "rate_limiter": null
        }
      ],
      "machine-config": {
        "vcpu_count": 2,
        "mem_size_mib": 1024,
        "smt": false,
        "track_dirty_pages": false
      },
      "balloon": null,
      "network-interfaces": [],
      "vsock": null,
      "logger": null,
      "metrics": null,
      "mmds-config": null
    }"#;

    #[test]
    fn framework_style_file() {
        let file = parse_config_file(FRAMEWORK_STYLE).unwrap();
        assert_eq!(file.boot_source.kernel_image_path, "vmlinux.bin");
        assert_eq!(file.boot_source.initrd_path, None);
        assert_eq!(file.drives.len(), 1);
        assert_eq!(file.drives[0].cache_type, Some(CacheType::Unsafe));
        assert_eq!(file.machine_config.as_ref().map(|m| m.vcpu_count), Some(2));
        assert!(file.network_interfaces.is_empty());
        assert_eq!((file.vsock, file.logger, file.metrics), (None, None, None));
    }

    #[test]
    fn minimal_file() {
        let file =
            parse_config_file(r#"{"boot-source": {"kernel_image_path": "vmlinux"}, "drives": []}"#)
                .unwrap();
        assert_eq!(file.machine_config, None);
        assert!(file.drives.is_empty());
    }

    #[test]
    fn required_sections() {
        assert_eq!(
            parse_config_file(r#"{"drives": []}"#),
            Err(ConfigFileError::MissingSection("boot-source"))
        );
        assert_eq!(
            parse_config_file(r#"{"boot-source": {"kernel_image_path": "k"}}"#),
            Err(ConfigFileError::MissingSection("drives"))
        );
        assert_eq!(
            parse_config_file(r#"{"boot-source": null, "drives": []}"#),
            Err(ConfigFileError::MissingSection("boot-source"))
        );
    }

    #[test]
    fn unsupported_and_unknown_sections() {
        let base = r#""boot-source": {"kernel_image_path": "k"}, "drives": []"#;
        for name in UNSUPPORTED_SECTIONS {
            let text = format!(r#"{{{base}, "{name}": {{}}}}"#);
            assert_eq!(
                parse_config_file(&text),
                Err(ConfigFileError::NotSupported(name.to_owned()))
            );
        }
        let unknown = format!(r#"{{{base}, "mmds-version": "V1"}}"#);
        assert_eq!(
            parse_config_file(&unknown),
            Err(ConfigFileError::UnknownSection("mmds-version".into()))
        );
        let long = format!(r#"{{{base}, "{}": 1}}"#, "s".repeat(1000));
        assert!(parse_config_file(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn mmds_config_section() {
        // Firecracker's tests/framework/vm_config_with_mmdsv2.json, shortened.
        let with = |mmds: &str| {
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": [],
                    "network-interfaces": [{{"iface_id": "1", "host_dev_name": "tap0"}}],
                    "mmds-config": {mmds}}}"#
            )
        };
        let file = parse_config_file(&with(
            r#"{"version": "V2", "ipv4_address": "169.254.169.250", "network_interfaces": ["1"]}"#,
        ))
        .unwrap();
        let mmds = file.mmds_config.unwrap();
        assert_eq!(mmds.version(), crate::model::MmdsVersion::V2);
        assert_eq!(mmds.ipv4_address().to_string(), "169.254.169.250");
        assert_eq!(
            parse_config_file(&with(r#"{"network_interfaces": ["2"]}"#))
                .unwrap_err()
                .to_string(),
            "section `mmds-config` of the config file: network_interfaces `2`: The list of \
             network interface IDs provided contains at least one ID that does not correspond \
             to any existing network interface."
        );
        assert_eq!(
            parse_config_file(&with(r#"{"network_interfaces": []}"#))
                .unwrap_err()
                .to_string(),
            "section `mmds-config` of the config file: network_interfaces: The list of network \
             interface IDs that allow forwarding MMDS requests is empty."
        );
        let message = parse_config_file(&with(r#"{"network_interfaces": ["1"], "version": 2}"#))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("section `mmds-config` of the config file: invalid type"),
            "{message}"
        );
        assert_eq!(parse_config_file(&with("null")).unwrap().mmds_config, None);
    }

    #[test]
    fn balloon_section() {
        let with = |machine: &str, balloon: &str| {
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": [],
                    "machine-config": {machine}, "balloon": {balloon}}}"#
            )
        };
        let file = parse_config_file(&with(
            "null",
            r#"{"amount_mib": 100, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
        ))
        .unwrap();
        assert_eq!(
            file.balloon,
            Some(Balloon {
                amount_mib: 100,
                deflate_on_oom: true,
                stats_polling_interval_s: 1,
                free_page_hinting: false,
                free_page_reporting: false,
            })
        );
        assert_eq!(
            parse_config_file(&with("null", "null")).unwrap().balloon,
            None
        );
        // The target is checked against the file's memory size, Firecracker's 128 MiB without
        // a machine-config.
        let big = r#"{"amount_mib": 129, "deflate_on_oom": false}"#;
        assert_eq!(
            parse_config_file(&with("null", big))
                .unwrap_err()
                .to_string(),
            "section `balloon` of the config file: amount_mib 129 is larger than the guest \
             memory (mem_size_mib 128): the balloon cannot take more memory than the guest has"
        );
        let machine = r#"{"vcpu_count": 1, "mem_size_mib": 256}"#;
        assert!(parse_config_file(&with(machine, big)).is_ok());
        // Required fields and unknown ones.
        let message = parse_config_file(&with("null", r#"{"amount_mib": 1}"#))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("missing field `deflate_on_oom`"),
            "{message}"
        );
        let message = parse_config_file(&with(
            "null",
            r#"{"amount_mib": 1, "deflate_on_oom": false, "must_tell_host": true}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            message.starts_with(
                "section `balloon` of the config file: unknown field `must_tell_host`"
            ),
            "{message}"
        );
    }

    #[test]
    fn malformed_files() {
        assert!(matches!(
            parse_config_file("{"),
            Err(ConfigFileError::Json(_))
        ));
        assert_eq!(parse_config_file("[]"), Err(ConfigFileError::NotAnObject));
        let big = " ".repeat(MAX_CONFIG_FILE_LEN + 1);
        assert_eq!(
            parse_config_file(&big),
            Err(ConfigFileError::TooLarge(MAX_CONFIG_FILE_LEN + 1))
        );
        let not_list = r#"{"boot-source": {"kernel_image_path": "k"}, "drives": {}}"#;
        assert_eq!(
            parse_config_file(not_list).unwrap_err().to_string(),
            "section `drives` of the config file: expected a list"
        );
    }

    #[test]
    fn messages_name_section_and_field() {
        let old = FRAMEWORK_STYLE.replace("\"smt\"", "\"ht_enabled\"");
        let message = parse_config_file(&old).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "section `machine-config` of the config file: unknown field `ht_enabled`"
            ),
            "{message}"
        );
        let bad_id = FRAMEWORK_STYLE.replace("\"rootfs\"", "\"root-fs\"");
        assert_eq!(
            parse_config_file(&bad_id).unwrap_err().to_string(),
            "section `drives[0]` of the config file: drive_id `root-fs` may only contain ASCII letters, digits and '_'"
        );
        let vcpus = FRAMEWORK_STYLE.replace("\"vcpu_count\": 2", "\"vcpu_count\": 0");
        assert_eq!(
            parse_config_file(&vcpus).unwrap_err().to_string(),
            "section `machine-config` of the config file: vcpu_count must be between 1 and 32, got 0"
        );
        let second = r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [],
            "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0"},
                {"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "zz"}]}"#;
        let message = parse_config_file(second).unwrap_err().to_string();
        assert!(
            message
                .starts_with("section `network-interfaces[1]` of the config file: guest_mac `zz`"),
            "{message}"
        );
        let missing = r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [{"drive_id": "a", "path_on_host": "a"}]}"#;
        let message = parse_config_file(missing).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "section `drives[0]` of the config file: missing field `is_root_device`"
            ),
            "{message}"
        );
    }

    #[test]
    fn huge_pages_in_the_machine_config_section() {
        let with = |huge: &str, mib: u64| {
            FRAMEWORK_STYLE
                .replace(
                    "\"mem_size_mib\": 1024",
                    &format!("\"mem_size_mib\": {mib}"),
                )
                .replace(
                    "\"smt\": false",
                    &format!("\"smt\": false, \"huge_pages\": \"{huge}\""),
                )
        };
        for (name, want) in [
            ("None", HugePages::None),
            ("Transparent", HugePages::Transparent),
            ("2M", HugePages::Hugetlbfs2M),
        ] {
            let file = parse_config_file(&with(name, 1024)).unwrap();
            assert_eq!(file.machine_config.unwrap().huge_pages, want);
        }
        for name in ["Transparent", "2M"] {
            assert_eq!(
                parse_config_file(&with(name, 1023))
                    .unwrap_err()
                    .to_string(),
                "section `machine-config` of the config file: mem_size_mib must be a multiple \
                 of 2 when huge_pages is Transparent or 2M, got 1023"
            );
        }
        parse_config_file(&with("None", 1023)).unwrap();
        let message = parse_config_file(&with("1G", 1024))
            .unwrap_err()
            .to_string();
        assert!(message.contains("unknown variant `1G`"), "{message}");
    }

    #[test]
    fn cross_item_checks() {
        let drive = |id: &str, root: bool| {
            format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{id}.ext4", "is_root_device": {root}}}"#
            )
        };
        let text = |drives: &[String]| {
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": [{}]}}"#,
                drives.join(",")
            )
        };
        assert_eq!(
            parse_config_file(&text(&[drive("a", true), drive("b", true)])),
            Err(ConfigFileError::TwoRootDevices {
                first: "a".into(),
                second: "b".into()
            })
        );
        assert_eq!(
            parse_config_file(&text(&[drive("a", true), drive("a", false)])),
            Err(ConfigFileError::DuplicateId {
                section: "drives",
                field: "drive_id",
                id: "a".into()
            })
        );
        assert!(parse_config_file(&text(&[drive("a", true), drive("b", false)])).is_ok());
        let ifaces = r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"},
                                   {"iface_id": "eth0", "host_dev_name": "tap1"}]}"#;
        assert_eq!(
            parse_config_file(ifaces).unwrap_err().to_string(),
            "section `network-interfaces` of the config file: iface_id `eth0` appears more than once"
        );
    }

    /// A configuration using every supported section and most optional fields.
    fn everything() -> FullVmConfiguration {
        let bucket = TokenBucket {
            size: 1_048_576,
            one_time_burst: Some(4096),
            refill_time: 1000,
        };
        let limiter = RateLimiter {
            bandwidth: Some(bucket),
            ops: None,
        };
        FullVmConfiguration {
            boot_source: Some(BootSource {
                kernel_image_path: "/srv/vmlinux".into(),
                boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off".into()),
                initrd_path: Some("/srv/initrd.img".into()),
            }),
            drives: vec![
                Drive {
                    drive_id: "rootfs".into(),
                    path_on_host: Some("/srv/rootfs.ext4".into()),
                    is_root_device: true,
                    partuuid: None,
                    is_read_only: Some(true),
                    cache_type: Some(CacheType::Unsafe),
                    io_engine: Some(IoEngine::Sync),
                    rate_limiter: None,
                    socket: None,
                },
                Drive {
                    drive_id: "scratch".into(),
                    path_on_host: Some("/srv/scratch.ext4".into()),
                    is_root_device: false,
                    partuuid: None,
                    is_read_only: Some(false),
                    cache_type: Some(CacheType::Writeback),
                    io_engine: None,
                    rate_limiter: Some(limiter),
                    socket: None,
                },
            ],
            machine_config: Some(MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 1024,
                smt: false,
                track_dirty_pages: false,
                cpu_template: None,
                huge_pages: HugePages::None,
            }),
            network_interfaces: vec![NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:AC:10:00:02".into()),
                mtu: Some(1500),
                rx_rate_limiter: Some(limiter),
                tx_rate_limiter: None,
            }],
            vsock: Some(Vsock {
                guest_cid: 3,
                uds_path: "/srv/v.sock".into(),
                vsock_id: None,
            }),
            logger: Some(Logger {
                log_path: Some("/srv/log.fifo".into()),
                level: Some(LogLevel::Debug),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: None,
            }),
            metrics: Some(Metrics {
                metrics_path: "/srv/metrics.fifo".into(),
            }),
            entropy: Some(EntropyDevice {
                rate_limiter: Some(limiter),
            }),
            mmds_config: Some(MmdsConfig {
                version: Some(crate::model::MmdsVersion::V2),
                network_interfaces: vec!["eth0".into()],
                ipv4_address: Some(std::net::Ipv4Addr::new(169, 254, 170, 2)),
                imds_compat: Some(true),
            }),
            balloon: Some(Balloon {
                amount_mib: 256,
                deflate_on_oom: true,
                stats_polling_interval_s: 5,
                free_page_hinting: true,
                free_page_reporting: false,
            }),
        }
    }

    #[test]
    fn vm_config_document_feeds_back_as_config_file() {
        let config = everything();
        let exported = serde_json::to_string_pretty(&config).unwrap();
        assert!(exported.contains("\"boot-source\""), "{exported}");
        assert!(exported.contains("\"network-interfaces\""), "{exported}");
        let file = parse_config_file(&exported).unwrap();
        assert_eq!(FullVmConfiguration::from(file), config);
    }

    #[test]
    fn config_file_exports_as_the_same_document() {
        let file = parse_config_file(FRAMEWORK_STYLE).unwrap();
        let exported = serde_json::to_string(&FullVmConfiguration::from(file.clone())).unwrap();
        assert_eq!(parse_config_file(&exported), Ok(file));
    }

    #[test]
    fn get_vm_config_answer_feeds_back_as_config_file() {
        // What GET /vm/config writes (every section, nulls, defaults filled in) reads back as
        // the same configuration, but for what Firecracker leaves out of it (the logger, the
        // metrics, the vsock id) and the defaults it writes out.
        let config = everything();
        let answer = serde_json::to_string(&crate::reply::VmConfigReply::from(&config)).unwrap();
        assert!(answer.contains(r#""pmem":[]"#), "{answer}");
        let back = FullVmConfiguration::from(parse_config_file(&answer).unwrap());
        assert_eq!(back.logger, None);
        assert_eq!(back.metrics, None);
        assert_eq!(back.vsock.as_ref().map(|v| v.vsock_id.clone()), Some(None));
        assert_eq!(back.drives[1].io_engine, Some(IoEngine::Sync));
        assert_eq!(
            (
                back.boot_source,
                back.machine_config,
                back.network_interfaces.len()
            ),
            (config.boot_source, config.machine_config, 1)
        );
        assert_eq!(back.balloon, config.balloon);
        let pmem = r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [], "pmem": [{}]}"#;
        assert_eq!(
            parse_config_file(pmem),
            Err(ConfigFileError::NotSupported("pmem".into()))
        );
    }

    #[test]
    fn vm_config_without_boot_source_is_not_a_config_file() {
        let exported = serde_json::to_string(&FullVmConfiguration::default()).unwrap();
        assert_eq!(
            parse_config_file(&exported),
            Err(ConfigFileError::MissingSection("boot-source"))
        );
        // GET /vm/config of a fresh instance: Firecracker's empty kernel path, refused by name.
        let answer = serde_json::to_string(&crate::reply::VmConfigReply::from(
            &FullVmConfiguration::default(),
        ))
        .unwrap();
        let err = parse_config_file(&answer).unwrap_err().to_string();
        assert!(
            err.contains("boot-source") && err.contains("kernel_image_path"),
            "{err}"
        );
    }
}

//! The MMDS's part of the API: the body of `PUT /mmds/config` (also the config file's
//! `mmds-config` section) and the checks Firecracker makes of it.
//!
//! `PUT`, `PATCH` and `GET /mmds` carry the data store itself, any JSON document; what it may
//! hold (an object, at most `--mmds-size-limit` bytes) is the data store's business, not this
//! crate's.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{validate_id, ValidationError};

/// Firecracker's default MMDS address, used when `ipv4_address` is not sent.
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The MMDS version: how the guest must ask (Firecracker's `MmdsConfig.version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET`s, no session (the default; deprecated by Firecracker).
    #[default]
    V1,
    /// Session-oriented: `PUT /latest/api/token` first, then `GET`s with the token.
    V2,
}

/// `PUT /mmds/config` and the config file's `mmds-config`: which interfaces reach the MMDS,
/// at which address, and how it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// The MMDS version. `None`: `V1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<MmdsVersion>,
    /// The `iface_id`s of the network interfaces whose frames to the MMDS address are
    /// answered by the MMDS (required, at least one; each must name an interface configured
    /// before).
    pub network_interfaces: Vec<String>,
    /// The MMDS's IPv4 address, link-local (169.254.1.0 to 169.254.254.255). `None`:
    /// [`DEFAULT_MMDS_IPV4`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer in the IMDS text format even when the guest asks for JSON, as EC2's IMDS does.
    /// `None`: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_compat: Option<bool>,
}

/// Whether `addr` is an address Firecracker takes for the MMDS: link-local (169.254.0.0/16)
/// but not in the first or last /24, which RFC 3927 reserves.
pub fn is_mmds_ipv4(addr: Ipv4Addr) -> bool {
    matches!(addr.octets(), [169, 254, third, _] if third != 0 && third != 255)
}

impl MmdsConfig {
    /// The version asked for (`V1` when none was sent).
    pub fn version(&self) -> MmdsVersion {
        self.version.unwrap_or_default()
    }

    /// The address asked for ([`DEFAULT_MMDS_IPV4`] when none was sent).
    pub fn ipv4_address(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4)
    }

    /// Whether IMDS answers are forced (`false` when not sent).
    pub fn imds_compat(&self) -> bool {
        self.imds_compat.unwrap_or(false)
    }

    /// Checks what the body alone can tell, in Firecracker's words: at least one interface,
    /// ids that can name one, and a link-local address. Whether the interfaces exist is
    /// [`MmdsConfig::check_interfaces`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.network_interfaces.is_empty() {
            return Err(ValidationError::MmdsNoInterfaces);
        }
        for id in &self.network_interfaces {
            validate_id("network_interfaces", id)?;
        }
        if let Some(addr) = self.ipv4_address {
            if !is_mmds_ipv4(addr) {
                return Err(ValidationError::MmdsIpv4(addr));
            }
        }
        Ok(())
    }

    /// Checks that every interface named is one of `existing` (the configured `iface_id`s).
    pub fn check_interfaces<'a>(
        &self,
        existing: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), ValidationError> {
        match self
            .network_interfaces
            .iter()
            .find(|id| !existing.clone().any(|e| e == id.as_str()))
        {
            Some(missing) => Err(ValidationError::MmdsUnknownInterface(missing.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(body: &str) -> Result<MmdsConfig, String> {
        let c: MmdsConfig = serde_json::from_str(body).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn firecracker_bodies_and_defaults() {
        // docs/mmds/mmds-user-guide.md
        let c = config(
            r#"{"version": "V2", "ipv4_address": "169.254.170.2",
                "network_interfaces": ["eth0"], "imds_compat": true}"#,
        )
        .unwrap();
        assert_eq!(c.version(), MmdsVersion::V2);
        assert_eq!(c.ipv4_address(), Ipv4Addr::new(169, 254, 170, 2));
        assert!(c.imds_compat());
        let c = config(r#"{"network_interfaces": ["eth0", "eth1"]}"#).unwrap();
        assert_eq!(c.version(), MmdsVersion::V1);
        assert_eq!(c.ipv4_address(), DEFAULT_MMDS_IPV4);
        assert!(!c.imds_compat());
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"network_interfaces":["eth0","eth1"]}"#
        );
    }

    #[test]
    fn refusals_in_firecrackers_words() {
        assert_eq!(
            config(r#"{"network_interfaces": []}"#).unwrap_err(),
            "network_interfaces: The list of network interface IDs that allow forwarding MMDS \
             requests is empty."
        );
        for addr in ["169.254.0.5", "169.254.255.1", "10.0.0.1", "0.0.0.0"] {
            let body = format!(r#"{{"network_interfaces": ["eth0"], "ipv4_address": "{addr}"}}"#);
            assert_eq!(
                config(&body).unwrap_err(),
                format!("ipv4_address `{addr}`: The MMDS IPv4 address is not link local.")
            );
        }
        for addr in ["169.254.1.0", "169.254.254.255", "169.254.169.254"] {
            let body = format!(r#"{{"network_interfaces": ["eth0"], "ipv4_address": "{addr}"}}"#);
            config(&body).unwrap();
        }
        let e =
            config(r#"{"network_interfaces": ["eth0"], "ipv4_address": "169.254.1"}"#).unwrap_err();
        assert!(e.contains("invalid IPv4 address syntax"), "{e}");
        let e = config(r#"{"version": "foo", "network_interfaces": ["eth0"]}"#).unwrap_err();
        assert!(
            e.contains("unknown variant `foo`, expected `V1` or `V2`"),
            "{e}"
        );
        let e = config(r#"{"version": "V2"}"#).unwrap_err();
        assert!(e.contains("missing field `network_interfaces`"), "{e}");
        let e = config(r#"{"network_interfaces": ["eth0"], "tcp_port": 80}"#).unwrap_err();
        assert!(e.contains("unknown field `tcp_port`"), "{e}");
        let e = config(r#"{"network_interfaces": ["eth 0"]}"#).unwrap_err();
        assert!(e.starts_with("network_interfaces `eth 0`"), "{e}");
    }

    #[test]
    fn interfaces_must_exist() {
        let c = config(r#"{"network_interfaces": ["eth0", "foo"]}"#).unwrap();
        assert_eq!(
            c.check_interfaces(["eth0"].into_iter())
                .unwrap_err()
                .to_string(),
            "network_interfaces `foo`: The list of network interface IDs provided contains at \
             least one ID that does not correspond to any existing network interface."
        );
        c.check_interfaces(["foo", "eth0", "eth1"].into_iter())
            .unwrap();
    }
}

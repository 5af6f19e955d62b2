//! The balloon's part of the API: the bodies of `PUT` and `PATCH /balloon`,
//! `PATCH /balloon/statistics` and `PATCH /balloon/hinting/start` (Firecracker's `Balloon`,
//! `BalloonUpdate`, `BalloonStatsUpdate` and `BalloonStartCmd`), and the one check Firecracker
//! makes of them against the machine: the target may not exceed the guest's memory.
//!
//! The answers of `GET /balloon/statistics` and `GET /balloon/hinting/status` are the device's
//! (`BalloonStats`, `HintingStatus` in `petrel-devices`); this crate only routes to them.

use serde::{Deserialize, Serialize};

use crate::model::ValidationError;

/// `PUT /balloon`, the config file's `balloon` section, the body of `GET /balloon` and the
/// `balloon` of `GET /vm/config`: Firecracker's `Balloon`, its fields in its order. The
/// optional fields are not `Option`s: as in Firecracker, they are written back with their
/// values (`0`, `false`) when they were not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// The target size in MiB: how much memory the guest is asked to give back (required; at
    /// most the guest's `mem_size_mib`).
    pub amount_mib: u32,
    /// Whether the guest may take pages back from the balloon when it runs short of memory
    /// (required).
    pub deflate_on_oom: bool,
    /// Seconds between two statistics updates; a non-zero value enables the statistics
    /// (default `0`: none).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Whether free page hinting is enabled (default `false`).
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Whether free page reporting is enabled (default `false`).
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl Balloon {
    /// Checks the target against the guest's memory: `amount_mib` may not exceed
    /// `mem_size_mib` (Firecracker's check at `PUT /balloon` and `PATCH /machine-config`).
    pub fn check_memory(&self, mem_size_mib: u64) -> Result<(), ValidationError> {
        if u64::from(self.amount_mib) > mem_size_mib {
            return Err(ValidationError::BalloonTooLarge {
                amount_mib: self.amount_mib,
                mem_size_mib,
            });
        }
        Ok(())
    }

    /// Whether the statistics are enabled (a non-zero `stats_polling_interval_s`).
    pub fn stats_enabled(&self) -> bool {
        self.stats_polling_interval_s != 0
    }
}

/// `PATCH /balloon`: a new target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// The new target size in MiB (required; at most the guest's `mem_size_mib`).
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`: a new statistics polling interval. After the start it may
/// change the interval but not turn the statistics on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between two statistics updates (required).
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start`: how a free page hinting run ends. The body is optional: an
/// empty one is `{}`, as in Firecracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    /// Whether the VMM acknowledges the guest's "done" by itself, ending the run without a
    /// `PATCH /balloon/hinting/stop`. `None`: `true` (Firecracker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_on_stop: Option<bool>,
}

impl BalloonStartCmd {
    /// Whether the guest's "done" is acknowledged by itself (`true` unless sent `false`).
    pub fn acknowledge_on_stop(&self) -> bool {
        self.acknowledge_on_stop.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests;

//! Firecracker's command-line flags (`firecracker --help`), accepted by `petrel` and by the
//! `firecracker` name, so that tools which start Firecracker start Petrel unchanged.

use std::path::PathBuf;

use clap::{Args, Parser};

/// Where Firecracker puts its API socket when `--api-sock` is not given.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Firecracker's instance id when `--id` is not given.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";
/// The longest instance id Firecracker takes.
pub const MAX_INSTANCE_ID_LEN: usize = 64;

/// The flags of Firecracker's binary that Petrel takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct FirecrackerFlags {
    /// Serve Firecracker's REST API on this Unix socket and wait for configuration.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// The instance id (letters, digits and `-`, at most 64), shown in logs and `GET /`
    /// (taken with `demo` and `run` too, which a jailer passes it to).
    #[arg(long, value_name = "ID", global = true)]
    pub id: Option<String>,
    /// Configure from Firecracker's JSON config file and boot at once.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// With --config-file: serve no API.
    #[arg(long)]
    pub no_api: bool,
    /// Write Firecracker-format log lines to this file or named pipe.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log level: Error, Warning, Info (default), Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Log the level of each line.
    #[arg(long)]
    pub show_level: bool,
    /// Log the file and line each line comes from.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Write Firecracker-format metrics (one JSON object per line) to this file or named pipe.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// The MMDS data store's size limit in bytes (Firecracker's default: 51200).
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,
    /// What `PUT /snapshot/load` does about the snapshot's working set (the pages its guest
    /// touched, in `<snapshot_path>.working-set`): `prefetch` them before the guest runs when
    /// the file is valid (the default), `record` them (saved on `PUT /snapshot/working-set`, or
    /// when the VM ends), or `off`.
    #[arg(long, value_name = "MODE", value_parser = crate::parse::parse_working_set)]
    pub working_set: Option<petrel_vmm::working_set::WorkingSetMode>,
    /// Fill the MMDS data store from this JSON file at start, as a `PUT /mmds` would.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Install no seccomp filters (by default each thread gets Petrel's built-in filter).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Compile the threads' seccomp filters from FILE (seccompiler's JSON format, with the
    /// filters `vmm`, `api`, `vcpu` and optionally `console`) instead of the built-in ones.
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
    /// When the process that started Petrel began, in microseconds (CLOCK_MONOTONIC).
    #[arg(long, value_name = "US", global = true)]
    pub start_time_us: Option<u64>,
    /// The starting process's CPU time at that moment, in microseconds.
    #[arg(long, value_name = "US", global = true)]
    pub start_time_cpu_us: Option<u64>,
    /// The parent's CPU time, in microseconds (the jailer passes it).
    #[arg(long, value_name = "US", global = true)]
    pub parent_cpu_time_us: Option<u64>,
}

impl FirecrackerFlags {
    /// Whether these flags ask for Firecracker's way of running (an API socket, a config
    /// file, or no API) rather than Petrel's own command line.
    pub fn wanted(&self) -> bool {
        self.api_sock.is_some() || self.config_file.is_some() || self.no_api
    }
}

/// The command line of the binary when it is called `firecracker`.
#[derive(Debug, Parser)]
#[command(
    name = "firecracker",
    about = "Petrel, running as a Firecracker-compatible VMM",
    disable_version_flag = true
)]
pub struct FirecrackerCli {
    /// Firecracker's flags.
    #[command(flatten)]
    pub flags: FirecrackerFlags,
    /// Print the boot timeline when the VM ends (Firecracker: enable the boot timer device,
    /// which Petrel always has).
    #[arg(long)]
    pub boot_timer: bool,
    /// Print the version: `Firecracker v<API version>`, then Petrel's own.
    #[arg(long)]
    pub version: bool,
}

/// Whether the program was started under the name `firecracker` (a link or a copy).
pub fn called_firecracker(argv0: &str) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "firecracker")
}

/// `--version` as the `firecracker` name prints it: the first line is what tools parse (Kata
/// reads its second word as a semantic version).
pub fn version_text(api_version: &str) -> String {
    format!(
        "Firecracker v{api_version}\nPetrel v{} (a Firecracker-compatible VMM; API {api_version})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Checks an instance id the way Firecracker does: 1 to 64 letters, digits or `-`.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "must be 1 to {MAX_INSTANCE_ID_LEN} characters long"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!("`{c}` is not allowed: use letters, digits and `-`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_name_and_version() {
        assert!(called_firecracker("/usr/local/bin/firecracker"));
        assert!(called_firecracker("firecracker"));
        assert!(!called_firecracker("/usr/bin/petrel"));
        assert!(!called_firecracker("firecracker-v1"));
        let v = version_text("1.17.0-dev");
        let first = v.lines().next().unwrap();
        assert_eq!(first, "Firecracker v1.17.0-dev");
        assert!(v.contains("Petrel v"));
    }

    #[test]
    fn instance_ids() {
        assert!(check_instance_id("my-vm-01").is_ok());
        assert!(check_instance_id("").is_err());
        assert!(check_instance_id(&"a".repeat(65)).is_err());
        assert!(check_instance_id("vm_1").unwrap_err().contains("`_`"));
        assert!(check_instance_id("a/b").is_err());
    }

    #[test]
    fn the_firecracker_command_line() {
        let cli = FirecrackerCli::try_parse_from([
            "firecracker",
            "--api-sock",
            "/tmp/fc.sock",
            "--id",
            "vm1",
            "--level",
            "Debug",
            "--show-level",
            "--start-time-us",
            "123",
            "--no-seccomp",
            "--mmds-size-limit",
            "1024",
            "--metadata",
            "/tmp/md.json",
            "--working-set",
            "record",
        ])
        .unwrap();
        assert_eq!(
            cli.flags.working_set,
            Some(petrel_vmm::working_set::WorkingSetMode::Record)
        );
        assert!(FirecrackerCli::try_parse_from(["firecracker", "--working-set", "on"]).is_err());
        assert_eq!(cli.flags.mmds_size_limit, Some(1024));
        assert_eq!(cli.flags.metadata.as_deref(), Some("/tmp/md.json".as_ref()));
        assert!(
            FirecrackerCli::try_parse_from(["firecracker", "--mmds-size-limit", "-1"]).is_err()
        );
        assert_eq!(cli.flags.api_sock.as_deref(), Some("/tmp/fc.sock".as_ref()));
        assert_eq!(cli.flags.start_time_us, Some(123));
        assert!(cli.flags.wanted() && cli.flags.no_seccomp && !cli.version);
        assert!(
            FirecrackerCli::try_parse_from(["firecracker", "--version"])
                .unwrap()
                .version
        );
    }
}

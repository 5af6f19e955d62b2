//! The command line, parsed into a [`VmConfig`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use petrel_vmm::config::{parse_reg_assignment, parse_size, parse_u64, RawPayload};
use petrel_vmm::{Error, StatsFormat, VmConfig};

/// Petrel: a virtual machine monitor for Linux KVM on x86_64.
#[derive(Debug, Parser)]
#[command(name = "petrel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a raw payload (a flat binary).
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The flat binary to load.
    #[arg(long, value_name = "FILE")]
    raw: PathBuf,
    /// Start the payload in 16-bit real mode (the only mode for raw payloads so far).
    #[arg(long)]
    real_mode: bool,
    /// Guest-physical address to load the binary at (decimal or 0x hex).
    #[arg(long, value_name = "ADDR", default_value = "0x1000")]
    load_addr: String,
    /// Guest-physical entry point (default: the load address).
    #[arg(long, value_name = "ADDR")]
    entry: Option<String>,
    /// Preset a register, e.g. --reg rax=2 (repeatable).
    #[arg(long = "reg", value_name = "REG=VALUE")]
    regs: Vec<String>,
    /// Stop after N exits reached Petrel.
    #[arg(long, value_name = "N")]
    max_exits: Option<String>,
    /// Print exit statistics when the VM ends: a table (on stderr) or JSON (on stdout).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true,
          default_missing_value = "table", value_parser = ["table", "json"])]
    exit_stats: Option<String>,
    /// Guest memory size (e.g. 256M, 1G).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    mem: String,
}

fn number(what: &'static str, s: &str) -> Result<u64, Error> {
    parse_u64(s).map_err(|_| Error::InvalidArgument {
        what,
        value: s.to_string(),
        why: "expected a number (decimal, or hex with 0x)".into(),
    })
}

impl Cli {
    /// The VM configuration and the requested statistics format.
    pub fn into_config(self) -> Result<(VmConfig, Option<StatsFormat>), Error> {
        match self.command {
            Command::Run(a) => {
                if !a.real_mode {
                    return Err(Error::InvalidArgument {
                        what: "--raw",
                        value: a.raw.display().to_string(),
                        why: "raw payloads start in real mode: add --real-mode".into(),
                    });
                }
                let regs = a
                    .regs
                    .iter()
                    .map(|r| parse_reg_assignment(r))
                    .collect::<Result<Vec<_>, _>>()?;
                let entry = a
                    .entry
                    .as_deref()
                    .map(|e| number("--entry", e))
                    .transpose()?;
                let mut config = VmConfig::raw(RawPayload {
                    path: a.raw,
                    load_addr: number("--load-addr", &a.load_addr)?,
                    entry,
                    regs,
                });
                config.mem_size = parse_size(&a.mem)?;
                config.max_exits = a
                    .max_exits
                    .as_deref()
                    .map(|n| number("--max-exits", n))
                    .transpose()?;
                let stats = a.exit_stats.as_deref().map(|f| match f {
                    "json" => StatsFormat::Json,
                    _ => StatsFormat::Table,
                });
                Ok((config, stats))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_vmm::config::Payload;

    fn parse(args: &[&str]) -> Result<(VmConfig, Option<StatsFormat>), Error> {
        Cli::try_parse_from(args)
            .expect("clap accepts it")
            .into_config()
    }

    #[test]
    fn raw_run_with_registers_and_stats() {
        let (c, s) = parse(&[
            "petrel",
            "run",
            "--raw",
            "x.bin",
            "--real-mode",
            "--reg",
            "rax=2",
            "--reg",
            "rbx=0x2",
            "--exit-stats=json",
            "--load-addr",
            "0x7c00",
        ])
        .unwrap();
        let Payload::Raw(raw) = &c.payload else {
            panic!("not raw")
        };
        assert_eq!(raw.load_addr, 0x7c00);
        assert_eq!(raw.regs.len(), 2);
        assert_eq!(s, Some(StatsFormat::Json));
    }

    #[test]
    fn bare_exit_stats_means_table() {
        let (_, s) =
            parse(&["petrel", "run", "--raw", "x", "--real-mode", "--exit-stats"]).unwrap();
        assert_eq!(s, Some(StatsFormat::Table));
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&[
            "petrel",
            "run",
            "--raw",
            "x",
            "--real-mode",
            "--reg",
            "rax:2",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--reg"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = parse(&[
            "petrel",
            "run",
            "--raw",
            "x",
            "--real-mode",
            "--load-addr",
            "zz",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--load-addr"), "{e}");
        let e = parse(&["petrel", "run", "--raw", "x"]).unwrap_err();
        assert!(e.to_string().contains("--real-mode"), "{e}");
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let e = Cli::try_parse_from(["petrel", "run", "--raw", "x", "--bogus"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}

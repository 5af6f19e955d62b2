//! The command line, parsed into a [`VmConfig`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use petrel_vmm::config::SerialConfig;
use petrel_vmm::config::{KernelImage, LinuxPayload, RawPayload, DEFAULT_RAW_LOAD_ADDR};
use petrel_vmm::snapshot::{MemBackend, NetOverride, RestoreConfig};
use petrel_vmm::working_set::WorkingSetMode;
use petrel_vmm::{StatsFormat, VmConfig};

use crate::watch::SnapshotOnSignal;

use crate::error::CliError as Error;
use crate::fc::flags::FirecrackerFlags;
use crate::parse::{
    parse_disk, parse_net, parse_reg_assignment, parse_serial, parse_size, parse_u64, parse_vsock,
    parse_working_set,
};

/// Petrel: a virtual machine monitor for Linux KVM on x86_64.
///
/// Boot a kernel:   petrel --kernel vmlinux [--initrd FILE] [--cmdline STR] [--mem 256M]
///                  [--vcpus N] [--serial stdio|file:PATH|none]
/// Built-in guest:  petrel demo
/// Raw payload:     petrel run --raw FILE --real-mode [--reg rax=2 ...]
/// Snapshots:       petrel ... --snapshot-on-signal DIR   (then `kill -USR1 <pid>`)
///                  petrel restore DIR
#[derive(Debug, Parser)]
#[command(
    name = "petrel",
    version,
    about,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    boot: BootArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot the small guest built into Petrel: it prints what it found (CPU vendor, memory,
    /// time) and resets.
    Demo(DemoArgs),
    /// Run a raw payload (a flat binary).
    Run(RunArgs),
    /// Restore a snapshot (written by `--snapshot-on-signal DIR` or the API's
    /// `/snapshot/create`) and run it: the guest goes on where it was paused.
    Restore(RestoreArgs),
    /// Apply a Diff snapshot's memory file onto the memory file it was taken on top of, in
    /// place (Firecracker's rebase-snap tool).
    RebaseSnap(RebaseSnapArgs),
}

/// Snapshots of a running VM from the command line.
#[derive(Debug, Args)]
struct SnapshotArgs {
    /// On SIGUSR1 (`kill -USR1 <pid>`): pause the VM, write a Full snapshot to DIR/state and
    /// DIR/mem, and stop; `petrel restore DIR` brings it back.
    #[arg(long, value_name = "DIR")]
    snapshot_on_signal: Option<PathBuf>,
    /// After the snapshot, resume the VM instead of stopping it.
    #[arg(long, requires = "snapshot_on_signal")]
    snapshot_keep_running: bool,
}

impl SnapshotArgs {
    fn choice(self) -> Option<SnapshotOnSignal> {
        self.snapshot_on_signal.map(|dir| SnapshotOnSignal {
            dir,
            keep_running: self.snapshot_keep_running,
        })
    }
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The snapshot directory: DIR/state and DIR/mem (as `--snapshot-on-signal` writes them).
    #[arg(value_name = "DIR", required_unless_present = "state_file")]
    dir: Option<PathBuf>,
    /// The state file, if not DIR/state.
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// The memory file, if not DIR/mem (mapped privately: never written, shareable).
    #[arg(long, value_name = "PATH")]
    mem_file: Option<PathBuf>,
    /// Guest memory is served by a page-fault handler listening on this Unix socket, which
    /// gets a userfaultfd and the memory layout (Firecracker's Uffd backend), instead of the
    /// memory file.
    #[arg(long, value_name = "SOCKET", conflicts_with = "mem_file")]
    uffd_socket: Option<PathBuf>,
    /// Put the network interface IFACE (its id: `eth0` for `--net`) on another tap:
    /// IFACE=TAP (repeatable).
    #[arg(long = "net-override", value_name = "IFACE=TAP")]
    net_overrides: Vec<String>,
    /// Another Unix socket path for the vsock device.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The snapshot's working set (the pages its guest touched, in
    /// `<state file>.working-set`): `prefetch` them before the guest runs when the file is
    /// valid, `record` them when the VM ends, or `off`.
    #[arg(long, value_name = "MODE", default_value = "prefetch", value_parser = parse_working_set)]
    working_set: WorkingSetMode,
    #[command(flatten)]
    outputs: OutputArgs,
    #[command(flatten)]
    snapshot: SnapshotArgs,
    #[command(flatten)]
    seccomp: SeccompArgs,
}

#[derive(Debug, Args)]
struct RebaseSnapArgs {
    /// The memory file of the snapshot the Diff was taken on top of; changed in place.
    #[arg(long, value_name = "PATH")]
    base_file: PathBuf,
    /// The Diff snapshot's memory file.
    #[arg(long, value_name = "PATH")]
    diff_file: PathBuf,
}

/// Options every kind of VM takes.
#[derive(Debug, Args)]
struct MachineArgs {
    /// Guest memory size (e.g. 256M, 1G).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    mem: String,
    #[command(flatten)]
    outputs: OutputArgs,
    #[command(flatten)]
    snapshot: SnapshotArgs,
}

/// Where a VM's console and reports go (a restored VM's too).
#[derive(Debug, Args)]
struct OutputArgs {
    /// Where the serial console goes: stdio, file:PATH or none.
    #[arg(long, value_name = "WHERE", default_value = "stdio")]
    serial: String,
    /// Stop after N exits reached Petrel (per vCPU).
    #[arg(long, value_name = "N")]
    max_exits: Option<String>,
    /// Print exit statistics when the VM ends: a table (on stderr) or JSON (on stdout).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true,
          default_missing_value = "table", value_parser = ["table", "json"])]
    exit_stats: Option<String>,
    /// Print the boot timeline (process start to end, with the guest's boot-timer write and
    /// POST codes) when the VM ends, on stderr.
    #[arg(long)]
    boot_timer: bool,
    /// Write the boot timeline and exit statistics as JSON to PATH when the VM ends.
    #[arg(long, value_name = "PATH")]
    metrics: Option<PathBuf>,
}

/// What to report when the VM ends, and how its threads are confined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outputs {
    /// `--no-seccomp` / `--seccomp-filter FILE`.
    pub seccomp: crate::seccomp::Choice,
    /// `--exit-stats`.
    pub stats: Option<StatsFormat>,
    /// `--boot-timer`.
    pub boot_timer: bool,
    /// `--metrics PATH`.
    pub metrics: Option<PathBuf>,
    /// `--snapshot-on-signal DIR`.
    pub snapshot: Option<SnapshotOnSignal>,
}

#[derive(Debug, Args)]
struct BootArgs {
    /// The kernel: an ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// An initial ramdisk.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line (replaces "console=ttyS0 reboot=k panic=1 pci=off").
    #[arg(long, value_name = "STR", requires = "kernel")]
    cmdline: Option<String>,
    /// A virtio-blk disk over a raw image: PATH[,ro][,id=NAME] (repeatable; the guest sees
    /// /dev/vda, /dev/vdb, ... in this order).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=NAME]", requires = "kernel")]
    disks: Vec<String>,
    /// A virtio-net interface over an existing tap device: tap=NAME[,mac=MAC].
    #[arg(long, value_name = "tap=NAME[,mac=MAC]", requires = "kernel")]
    net: Option<String>,
    /// A virtio-rng device fed from the host's getrandom (rate-limited).
    #[arg(long, requires = "kernel")]
    rng: bool,
    /// A virtio-vsock device: cid=N,uds=PATH. Host processes connect to PATH and send
    /// `CONNECT <port>`; guest connections to host port P go to PATH_P.
    #[arg(long, value_name = "cid=N,uds=PATH", requires = "kernel")]
    vsock: Option<String>,
    #[command(flatten)]
    linux: LinuxArgs,
    #[command(flatten)]
    machine: MachineArgs,
    /// Firecracker's flags: `--api-sock` or `--config-file` run Petrel as Firecracker runs.
    #[command(flatten)]
    firecracker: FirecrackerFlags,
}

/// Flags a launcher puts before everything else (Firecracker's jailer runs
/// `VMM --id ID ARGS...`, and may add the start times) that Petrel's subcommands take too.
const LEADING_GLOBAL_FLAGS: [&str; 4] = [
    "--id",
    "--start-time-us",
    "--start-time-cpu-us",
    "--parent-cpu-time-us",
];

/// Moves [`LEADING_GLOBAL_FLAGS`] (with their values) that stand before a subcommand (`demo`,
/// `run`) to just after it, where clap takes them: `petrel --id vm1 demo` runs the demo with
/// that id. Anything else is left as it is.
pub fn hoist_global_flags<S: AsRef<std::ffi::OsStr> + Clone>(args: Vec<S>) -> Vec<S> {
    let text = |a: &S| a.as_ref().to_str().map(str::to_owned);
    let mut leading = Vec::new();
    let mut i = 1;
    while i + 1 < args.len()
        && text(&args[i]).is_some_and(|a| LEADING_GLOBAL_FLAGS.contains(&a.as_str()))
    {
        leading.extend_from_slice(&args[i..i + 2]);
        i += 2;
    }
    match args.get(i).and_then(text).as_deref() {
        Some("demo" | "run") if !leading.is_empty() => {
            let mut out = vec![args[0].clone(), args[i].clone()];
            out.extend(leading);
            out.extend_from_slice(&args[i + 1..]);
            out
        }
        _ => args,
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Launch {
    /// A VM described by Petrel's own flags, and what to report when it ends.
    Direct(Box<VmConfig>, Outputs),
    /// A VM restored from a snapshot, and what to report when it ends.
    Restore(Box<RestoreConfig>, Outputs),
    /// `petrel rebase-snap`: no VM.
    RebaseSnap {
        /// The base memory file.
        base: PathBuf,
        /// The Diff memory file.
        diff: PathBuf,
    },
    /// Firecracker's way: configured through its API or config file.
    Firecracker {
        /// Firecracker's flags.
        flags: FirecrackerFlags,
        /// `--boot-timer`: print the timeline at the end.
        boot_timer: bool,
    },
}

/// Options of Linux guests (the kernel and the demo).
#[derive(Debug, Args)]
struct LinuxArgs {
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value = "1")]
    vcpus: String,
    /// On hosts that run guest kernel code in KVM's emulator, add the guest command-line
    /// workarounds it needs (on) or leave the command line alone (off).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    host_compat: String,
    /// How to start the kernel: auto (PVH when the kernel has a PVH entry, as Firecracker
    /// does, except on hosts that emulate guest kernel code, where Petrel's page tables make
    /// the 64-bit protocol faster; else the Linux 64-bit boot protocol), pvh, or linux64.
    #[arg(long, value_name = "auto|pvh|linux64", default_value = "auto",
          value_parser = ["auto", "pvh", "linux64"])]
    boot_protocol: String,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    linux: LinuxArgs,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    seccomp: SeccompArgs,
}

/// The seccomp flags of `demo` and `run` (the kernel command line has them among
/// Firecracker's flags).
#[derive(Debug, Args)]
struct SeccompArgs {
    /// Install no seccomp filters (by default each thread gets Petrel's built-in filter).
    #[arg(long)]
    no_seccomp: bool,
    /// Compile the threads' seccomp filters from FILE (seccompiler's JSON format).
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
}

impl SeccompArgs {
    fn choice(self) -> Result<crate::seccomp::Choice, Error> {
        crate::seccomp::Choice::from_flags(self.no_seccomp, self.seccomp_filter)
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The flat binary to load.
    #[arg(long, value_name = "FILE")]
    raw: PathBuf,
    /// Start the payload in 16-bit real mode (the only mode for raw payloads so far).
    #[arg(long)]
    real_mode: bool,
    /// Guest-physical address to load the binary at (decimal or 0x hex; default 0x1000).
    #[arg(long, value_name = "ADDR")]
    load_addr: Option<String>,
    /// Guest-physical entry point (default: the load address).
    #[arg(long, value_name = "ADDR")]
    entry: Option<String>,
    /// Preset a register, e.g. --reg rax=2 (repeatable).
    #[arg(long = "reg", value_name = "REG=VALUE")]
    regs: Vec<String>,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    seccomp: SeccompArgs,
}

fn number(what: &'static str, s: &str) -> Result<u64, Error> {
    parse_u64(s).map_err(|_| Error::InvalidFlag {
        flag: what,
        value: s.to_string(),
        why: "expected a number (decimal, or hex with 0x)".into(),
    })
}

impl MachineArgs {
    fn apply(self, config: &mut VmConfig) -> Result<Outputs, Error> {
        config.mem_size = parse_size(&self.mem)?;
        let (serial, max_exits, mut outputs) = self.outputs.parse()?;
        config.serial = serial;
        config.max_exits = max_exits;
        config.metrics = outputs.metrics.clone();
        outputs.snapshot = self.snapshot.choice();
        Ok(outputs)
    }
}

impl OutputArgs {
    /// The serial console, the exit limit, and the reports.
    fn parse(&self) -> Result<(SerialConfig, Option<u64>, Outputs), Error> {
        let serial = parse_serial(&self.serial)?;
        let max_exits = self
            .max_exits
            .as_deref()
            .map(|n| number("--max-exits", n))
            .transpose()?;
        let outputs = Outputs {
            stats: self.exit_stats.as_deref().map(|f| match f {
                "json" => StatsFormat::Json,
                _ => StatsFormat::Table,
            }),
            boot_timer: self.boot_timer,
            metrics: self.metrics.clone(),
            seccomp: Default::default(),
            snapshot: None,
        };
        Ok((serial, max_exits, outputs))
    }
}

impl RestoreArgs {
    fn into_restore(self) -> Result<(RestoreConfig, Outputs), Error> {
        let in_dir = |name: &str, flag: &'static str| -> Result<PathBuf, Error> {
            self.dir
                .as_ref()
                .map(|d| d.join(name))
                .ok_or_else(|| Error::InvalidFlag {
                    flag,
                    value: String::new(),
                    why: "give the snapshot directory or this flag".into(),
                })
        };
        let state_path = match &self.state_file {
            Some(p) => p.clone(),
            None => in_dir("state", "--state-file")?,
        };
        let mem_path = match (&self.mem_file, &self.uffd_socket) {
            (_, Some(socket)) => socket.clone(),
            (Some(p), None) => p.clone(),
            (None, None) => in_dir("mem", "--mem-file")?,
        };
        let mut config = RestoreConfig::new(state_path, mem_path);
        if self.uffd_socket.is_some() {
            config.mem_backend = MemBackend::Uffd;
        }
        for o in &self.net_overrides {
            let (iface_id, tap) = o
                .split_once('=')
                .filter(|(i, t)| !i.is_empty() && !t.is_empty())
                .ok_or_else(|| Error::InvalidFlag {
                    flag: "--net-override",
                    value: o.clone(),
                    why: "expected IFACE=TAP".into(),
                })?;
            config.net_overrides.push(NetOverride {
                iface_id: iface_id.into(),
                tap: tap.into(),
            });
        }
        config.vsock_uds = self.vsock_uds;
        config.working_set = self.working_set;
        let (serial, max_exits, mut outputs) = self.outputs.parse()?;
        config.serial = serial;
        config.max_exits = max_exits;
        config.metrics = outputs.metrics.clone();
        outputs.snapshot = self.snapshot.choice();
        outputs.seccomp = self.seccomp.choice()?;
        Ok((config, outputs))
    }
}

impl LinuxArgs {
    fn apply(&self, config: &mut VmConfig) -> Result<(), Error> {
        let n = number("--vcpus", &self.vcpus)?;
        config.vcpus = u8::try_from(n).map_err(|_| Error::InvalidFlag {
            flag: "--vcpus",
            value: self.vcpus.clone(),
            why: "at most 255".into(),
        })?;
        config.host_compat = self.host_compat == "on";
        config.boot_protocol = self.boot_protocol.parse()?;
        Ok(())
    }
}

impl Cli {
    /// What to run: Petrel's own VM, or Firecracker's way when its flags ask for it.
    pub fn into_launch(self) -> Result<Launch, Error> {
        if self.command.is_none() && self.boot.firecracker.wanted() {
            if let Some(kernel) = &self.boot.kernel {
                return Err(Error::InvalidFlag {
                    flag: "--kernel",
                    value: kernel.display().to_string(),
                    why: "give either --kernel (Petrel's command line) or --api-sock / \
                          --config-file (Firecracker's), not both"
                        .into(),
                });
            }
            return Ok(Launch::Firecracker {
                boot_timer: self.boot.machine.outputs.boot_timer,
                flags: self.boot.firecracker,
            });
        }
        match self.command {
            Some(Command::Restore(a)) => {
                let (config, outputs) = a.into_restore()?;
                return Ok(Launch::Restore(Box::new(config), outputs));
            }
            Some(Command::RebaseSnap(a)) => {
                return Ok(Launch::RebaseSnap {
                    base: a.base_file,
                    diff: a.diff_file,
                })
            }
            _ => {}
        }
        let (config, outputs) = self.into_config()?;
        Ok(Launch::Direct(Box::new(config), outputs))
    }

    /// The VM configuration and what to report when it ends.
    pub fn into_config(self) -> Result<(VmConfig, Outputs), Error> {
        match self.command {
            Some(Command::Restore(_) | Command::RebaseSnap(_)) => Err(Error::InvalidFlag {
                flag: "command line",
                value: String::new(),
                why: "restore and rebase-snap describe no new VM".into(),
            }),
            Some(Command::Demo(a)) => {
                let mut config = VmConfig::builtin_kernel(
                    petrel_demo_guest::NAME,
                    petrel_demo_guest::demo_kernel_elf(),
                );
                a.linux.apply(&mut config)?;
                let mut outputs = a.machine.apply(&mut config)?;
                outputs.seccomp = a.seccomp.choice()?;
                Ok((config, outputs))
            }
            Some(Command::Run(a)) => {
                if !a.real_mode {
                    return Err(Error::InvalidFlag {
                        flag: "--raw",
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
                    load_addr: match &a.load_addr {
                        Some(addr) => number("--load-addr", addr)?,
                        None => DEFAULT_RAW_LOAD_ADDR,
                    },
                    entry,
                    regs,
                });
                let mut outputs = a.machine.apply(&mut config)?;
                outputs.seccomp = a.seccomp.choice()?;
                Ok((config, outputs))
            }
            None => {
                let b = self.boot;
                let kernel = b.kernel.ok_or_else(|| Error::InvalidFlag {
                    flag: "command line",
                    value: String::new(),
                    why: "nothing to run: give --kernel PATH, or try `petrel demo` \
                          (see `petrel --help`)"
                        .into(),
                })?;
                let mut config = VmConfig::linux(LinuxPayload {
                    kernel: KernelImage::File(kernel),
                    initrd: b.initrd,
                    cmdline: b.cmdline,
                });
                config.disks = b
                    .disks
                    .iter()
                    .map(|d| parse_disk(d))
                    .collect::<Result<_, _>>()?;
                config.nets = b
                    .net
                    .as_deref()
                    .map(parse_net)
                    .transpose()?
                    .into_iter()
                    .collect();
                config.rng = b.rng;
                config.vsock = b.vsock.as_deref().map(parse_vsock).transpose()?;
                b.linux.apply(&mut config)?;
                let mut outputs = b.machine.apply(&mut config)?;
                outputs.seccomp = crate::seccomp::Choice::from_flags(
                    b.firecracker.no_seccomp,
                    b.firecracker.seccomp_filter,
                )?;
                Ok((config, outputs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_vmm::config::{Payload, SerialConfig};

    fn parse(args: &[&str]) -> Result<(VmConfig, Option<StatsFormat>), Error> {
        let cli = Cli::try_parse_from(args).expect("clap accepts it");
        cli.into_config().map(|(c, o)| (c, o.stats))
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
    fn kernel_boot_options() {
        let (c, _) = parse(&[
            "petrel",
            "--kernel",
            "vmlinux",
            "--initrd",
            "i.cpio",
            "--cmdline",
            "console=ttyS0",
            "--mem",
            "512M",
            "--vcpus",
            "2",
            "--serial",
            "file:/tmp/log",
            "--host-compat",
            "off",
        ])
        .unwrap();
        let Payload::Linux(l) = &c.payload else {
            panic!("not linux")
        };
        assert_eq!(l.kernel, KernelImage::File("vmlinux".into()));
        assert_eq!(l.initrd.as_deref(), Some(std::path::Path::new("i.cpio")));
        assert_eq!(l.cmdline.as_deref(), Some("console=ttyS0"));
        assert_eq!((c.mem_size, c.vcpus, c.host_compat), (512 << 20, 2, false));
        assert_eq!(c.serial, SerialConfig::File("/tmp/log".into()));
    }

    #[test]
    fn demo_takes_machine_options() {
        let (c, s) = parse(&["petrel", "demo", "--vcpus", "2", "--exit-stats"]).unwrap();
        assert!(matches!(c.payload, Payload::Linux(_)));
        assert_eq!(c.vcpus, 2);
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
        let e = parse(&["petrel", "--kernel", "k", "--vcpus", "300"]).unwrap_err();
        assert!(e.to_string().contains("--vcpus"), "{e}");
        let e = parse(&["petrel", "--kernel", "k", "--serial", "tcp:1"]).unwrap_err();
        assert!(e.to_string().contains("--serial"), "{e}");
        let e = parse(&["petrel"]).unwrap_err();
        assert!(e.to_string().contains("petrel demo"), "{e}");
    }

    #[test]
    fn boot_timer_and_metrics() {
        let args = ["petrel", "demo", "--boot-timer", "--metrics", "/tmp/m.json"];
        let (_, o) = Cli::try_parse_from(args).unwrap().into_config().unwrap();
        assert!(o.boot_timer);
        assert_eq!(
            o.metrics.as_deref(),
            Some(std::path::Path::new("/tmp/m.json"))
        );
    }

    #[test]
    fn a_launchers_leading_id_reaches_the_subcommand() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            hoist_global_flags(args(&["petrel", "--id", "vm1", "demo", "--vcpus", "2"])),
            args(&["petrel", "demo", "--id", "vm1", "--vcpus", "2"])
        );
        let kernel = args(&["petrel", "--id", "vm1", "--kernel", "k"]);
        assert_eq!(hoist_global_flags(kernel.clone()), kernel);
        let plain = args(&["petrel", "demo"]);
        assert_eq!(hoist_global_flags(plain.clone()), plain);
        let cli = Cli::try_parse_from(hoist_global_flags(args(&[
            "petrel",
            "--id",
            "vm1",
            "--start-time-us",
            "5",
            "run",
            "--raw",
            "x",
            "--real-mode",
        ])))
        .expect("clap takes the hoisted flags");
        assert!(matches!(cli.into_launch(), Ok(Launch::Direct(..))));
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let e = Cli::try_parse_from(["petrel", "run", "--raw", "x", "--bogus"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}

//! Restoring a VM from a snapshot ([`Vmm::restore`]): read and check the state file, rebuild
//! the machine it describes with the restoring process's overrides, map the memory file, and
//! give the VM, every vCPU and every device its saved state, in the order KVM needs.

use std::time::Instant;

use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{host_emulates_guest_kernel, Hypervisor};
use petrel_util::lock_ignoring_poison as lock;
use petrel_vcpu::{RunOptions, VcpuRunner};

use super::build::new_vm;
use super::devices::{build_devices, open_console_destination, ConsoleOutput, GenerationId};
use super::{Assembly, Notice, Vmm};
use crate::config::{RawPayload, VmConfig};
use crate::kvm_view::KvmStatsReaders;
use crate::snapshot::{MemBackend, RestoreConfig, SavedMachine, SnapshotState};
use crate::timeline::Timeline;
use crate::virtio;
use crate::working_set::{Recorder, SnapshotId, WorkingSetMode};
use crate::{Error, Result};

impl Vmm {
    /// Builds the VM a snapshot describes, from its state file and memory file, with the
    /// restoring process's choices in `config` (serial, overrides, dirty tracking), recording
    /// on a timeline that starts now. The disks, taps and vsock socket are opened again by the
    /// paths and names saved (or overridden); the memory file is mapped privately (pages load on
    /// first touch, the file is never written), or with [`MemBackend::Uffd`] the page-fault
    /// handler listening at `mem_path` gets the memory (see [`crate::uffd`]). Nothing runs until [`start`](Self::start) (or
    /// [`start_paused`](Self::start_paused)). A damaged or mismatched snapshot is
    /// [`Error::BadSnapshot`] (exit code 2) and leaves nothing behind.
    pub fn restore(config: &RestoreConfig) -> Result<Vmm> {
        Self::restore_with_timeline(config, Timeline::new(Instant::now()))
    }

    /// [`restore`](Self::restore) recording on the caller's timeline.
    pub fn restore_with_timeline(config: &RestoreConfig, timeline: Timeline) -> Result<Vmm> {
        let bad = |path: &std::path::Path, why: String| Error::BadSnapshot {
            path: path.to_path_buf(),
            why,
        };
        let state_path = &config.state_path;
        let state_bytes = std::fs::read(state_path).map_err(|e| bad(state_path, e.to_string()))?;
        let state: SnapshotState = petrel_snapshot::decode(&state_bytes).map_err(|e| {
            let why = match e {
                petrel_snapshot::Error::Invalid(problem) => problem.to_string(),
                other => other.to_string(),
            };
            bad(state_path, why)
        })?;
        state.check().map_err(|why| bad(state_path, why))?;
        let snapshot_id = SnapshotId {
            mem_size: state.machine.mem_size,
            state_crc: petrel_snapshot::read_header(&state_bytes)
                .map_err(|p| bad(state_path, p.to_string()))?
                .crc,
        };
        timeline.mark("snapshot state read");

        // The machine again, with this process's overrides.
        let m = &state.machine;
        let vm_config = machine_config(m, config)?;
        let mem_path = &config.mem_path;
        let (ram, page_faults) = match config.mem_backend {
            MemBackend::File => {
                let mem_file =
                    std::fs::File::open(mem_path).map_err(|e| bad(mem_path, e.to_string()))?;
                let ram = GuestRam::from_file_with_huge_pages(
                    m.mem_size,
                    &mem_file,
                    vm_config.huge_pages,
                )
                .map_err(|e| bad(mem_path, crate::error_chain(&e)))?;
                timeline.mark("guest memory mapped from the memory file");
                (ram, None)
            }
            MemBackend::Uffd => {
                // Anonymous memory, sent to the handler before anything touches it.
                let ram = GuestRam::with_huge_pages(m.mem_size, vm_config.huge_pages)
                    .map_err(Error::Memory)?;
                let backend = crate::uffd::serve_from_handler(&ram, mem_path)?;
                timeline.mark("guest memory handed to the page-fault handler");
                (ram, Some(backend))
            }
        };
        let mut notices = Vec::new();
        let working_set = working_set(config, snapshot_id, &ram, &timeline, &mut notices)?;
        let plan = virtio::plan(&vm_config, &ram)?;
        check_windows(
            plan.windows(),
            state.devices.virtio.iter().map(|d| (d.base, d.gsi)),
        )
        .map_err(|why| bad(state_path, why))?;
        let console_dest = open_console_destination(&config.serial)?;

        // KVM: the VM, the vCPUs and the devices, each given its saved state.
        let hv = Hypervisor::open()?;
        let max = hv.max_vcpus();
        if usize::from(m.vcpus) > max {
            return Err(bad(
                state_path,
                format!(
                    "the snapshot has {} vCPUs; this host's KVM allows at most {max}",
                    m.vcpus
                ),
            ));
        }
        if m.linux && host_emulates_guest_kernel() && m.host_compat {
            notices.push(Notice::EmulatedHostWorkarounds);
        }
        let vm = new_vm(&hv, &ram, m.linux, config.track_dirty_pages)?;
        let mut kvm_stats = KvmStatsReaders::open_vm(&vm);
        let console = ConsoleOutput::start(console_dest)?;
        let saved = &state.devices;
        let generation_id = match &saved.vmgenid {
            Some(g) => GenerationId::Saved(g),
            None => GenerationId::Absent,
        };
        let devices = build_devices(&vm, &ram, m.linux, &console, &timeline, plan, generation_id)?;
        let device_err = |what: &str, e: &dyn std::error::Error| {
            bad(state_path, format!("{what}: {}", crate::error_chain(e)))
        };
        lock(&devices.serial)
            .restore_state(&saved.serial)
            .map_err(|e| device_err("serial", &e))?;
        if let (Some(kbd), Some(s)) = (&devices.i8042, &saved.i8042) {
            lock(kbd)
                .restore_state(s)
                .map_err(|e| device_err("i8042", &e))?;
        }
        if let (Some(rtc), Some(s)) = (&devices.rtc, &saved.rtc) {
            lock(rtc)
                .restore_state(s)
                .map_err(|e| device_err("RTC", &e))?;
        }
        for (d, s) in devices.virtio_devices.iter().zip(&saved.virtio) {
            d.restore_state(&s.state)
                .map_err(|e| device_err(&format!("virtio device at {:#x}", d.base), &e))?;
        }
        let options = RunOptions {
            max_exits: config.max_exits,
        };
        let mut runners = Vec::with_capacity(state.vcpus.len());
        for saved in &state.vcpus {
            let vcpu = vm.create_vcpu(saved.id)?;
            vcpu.restore_state(saved)?;
            kvm_stats.add_vcpu(&vcpu);
            runners.push(VcpuRunner::new(
                vcpu,
                devices.io.clone(),
                ram.clone(),
                options,
            ));
        }
        // The clock last, so guest time resumes where it stopped.
        if let Some(vm_state) = &state.vm {
            vm.restore_state(vm_state)?;
        }
        // A new generation: a restored VM (each of many clones of one snapshot) is not the VM
        // that was saved. Raised once the irqchip and the local APICs have their saved state,
        // so the interrupt is not lost; the guest takes it when it runs.
        if let Some(g) = &devices.vmgenid {
            lock(&g.device)
                .regenerate(ram.memory())
                .map_err(|e| device_err("VM generation ID", &e))?;
        }
        timeline.mark("VM, vCPUs and devices restored");
        let parts = Assembly {
            hv,
            vm,
            ram,
            machine: SavedMachine {
                huge_pages: vm_config.huge_pages,
                nets: vm_config.nets.clone(),
                vsock: vm_config.vsock.clone(),
                ..state.machine.clone()
            },
            dirty_tracking: config.track_dirty_pages,
            devices,
            runners,
            kvm_stats,
            console,
            notices,
            metrics: config.metrics.clone(),
            page_faults,
            working_set,
        };
        Self::assemble(parts, timeline)
    }
}

/// The restore's part in the snapshot's working set (see [`crate::working_set`]), once its RAM
/// `ram` is mapped: with [`WorkingSetMode::Prefetch`] and RAM from the memory file, brings in
/// the pages of a valid working-set file (a notice and `timeline` say so, or a notice why the
/// file was ignored); with [`WorkingSetMode::Record`], the recorder that saves the set when the
/// VM ends. Under the `Uffd` backend the page-fault handler owns the memory, so prefetching is
/// its business.
fn working_set(
    config: &RestoreConfig,
    id: SnapshotId,
    ram: &GuestRam,
    timeline: &Timeline,
    notices: &mut Vec<Notice>,
) -> Result<Option<Recorder>> {
    let path = crate::working_set::file_for(&config.state_path);
    match config.working_set {
        WorkingSetMode::Off => Ok(None),
        WorkingSetMode::Record => {
            Recorder::new(path, id)
                .map(Some)
                .map_err(|e| Error::InvalidConfig {
                    field: "working_set".into(),
                    value: "record".into(),
                    why: format!("cannot open /proc/self/pagemap to record it: {e}"),
                })
        }
        WorkingSetMode::Prefetch if config.mem_backend == MemBackend::Uffd => Ok(None),
        WorkingSetMode::Prefetch => {
            let started = Instant::now();
            let done = crate::working_set::read(&path, id).and_then(|runs| {
                runs.map(|runs| ram.prefetch(&runs).map_err(|e| crate::error_chain(&e)))
                    .transpose()
            });
            match done {
                Ok(None) => {}
                Ok(Some(done)) => {
                    timeline.mark("working set prefetched");
                    notices.push(Notice::WorkingSetPrefetched {
                        path,
                        done,
                        took: started.elapsed(),
                    });
                }
                Err(why) => notices.push(Notice::WorkingSetIgnored { path, why }),
            }
            Ok(None)
        }
    }
}

/// The configuration of the machine `m` a snapshot saved, with the restoring process's choices
/// from `config`: where the console goes, its limits and metrics, dirty tracking, and other taps
/// or another vsock socket. An override naming something the machine lacks is
/// [`Error::InvalidConfig`]. (The payload is never loaded: RAM comes from the memory file.)
fn machine_config(m: &SavedMachine, config: &RestoreConfig) -> Result<VmConfig> {
    let mut vm_config = VmConfig::raw(RawPayload {
        path: config.state_path.clone(),
        load_addr: 0,
        entry: None,
        regs: Vec::new(),
    });
    vm_config.mem_size = m.mem_size;
    vm_config.huge_pages = crate::snapshot_huge_pages::for_restore(m, config)?;
    vm_config.vcpus = m.vcpus;
    vm_config.host_compat = m.host_compat;
    vm_config.disks = m.disks.clone();
    vm_config.nets = m.nets.clone();
    vm_config.rng = m.rng;
    vm_config.rng_rate_limit = m.rng_rate_limit;
    vm_config.vsock = m.vsock.clone();
    vm_config.balloon = m.balloon;
    vm_config.mmds = m.mmds;
    vm_config.mmds_service = config.mmds_service.clone();
    vm_config.serial = config.serial.clone();
    vm_config.max_exits = config.max_exits;
    vm_config.metrics = config.metrics.clone();
    vm_config.track_dirty_pages = config.track_dirty_pages;
    for o in &config.net_overrides {
        let net = vm_config
            .nets
            .iter_mut()
            .find(|n| n.id.as_deref() == Some(o.iface_id.as_str()))
            .ok_or_else(|| Error::InvalidConfig {
                field: "network_overrides.iface_id".into(),
                value: o.iface_id.clone(),
                why: "the snapshot has no network interface of that id".into(),
            })?;
        net.tap = o.tap.clone();
    }
    if let Some(uds) = &config.vsock_uds {
        let vsock = vm_config
            .vsock
            .as_mut()
            .ok_or_else(|| Error::InvalidConfig {
                field: "vsock_override.uds_path".into(),
                value: uds.display().to_string(),
                why: "the snapshot has no vsock device".into(),
            })?;
        vsock.uds = uds.clone();
    }
    Ok(vm_config)
}

/// Checks that the virtio devices get the MMIO windows and interrupts (`windows`) they had
/// (`saved`, in the same order): their guest drivers keep using those.
fn check_windows(
    windows: impl Iterator<Item = (u64, u32)>,
    saved: impl Iterator<Item = (u64, u32)>,
) -> std::result::Result<(), String> {
    for (i, ((base, gsi), (was_base, was_gsi))) in windows.zip(saved).enumerate() {
        if (base, gsi) != (was_base, was_gsi) {
            return Err(format!(
                "virtio device {i} was at {was_base:#x} (GSI {was_gsi}) but would now be at \
                 {base:#x} (GSI {gsi})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{NetConfig, SerialConfig, VsockConfig, DEFAULT_MAC};
    use crate::snapshot::NetOverride;

    fn net(id: &str, tap: &str) -> NetConfig {
        NetConfig {
            id: Some(id.into()),
            tap: tap.into(),
            mac: DEFAULT_MAC,
            rx_rate_limit: Default::default(),
            tx_rate_limit: Default::default(),
            mmds: false,
        }
    }

    fn machine() -> SavedMachine {
        SavedMachine {
            mem_size: 64 << 20,
            huge_pages: Default::default(),
            vcpus: 2,
            linux: true,
            host_compat: false,
            disks: vec![],
            nets: vec![net("eth0", "tap0"), net("eth1", "tap1")],
            rng: true,
            rng_rate_limit: None,
            vsock: Some(VsockConfig {
                cid: 3,
                uds: "/run/old.sock".into(),
            }),
            mmds: None,
            balloon: None,
        }
    }

    #[test]
    fn the_mmds_configuration_comes_back_and_older_snapshots_have_none() {
        use crate::config::{MmdsConfig, MmdsVersion};
        let mmds = MmdsConfig {
            version: MmdsVersion::V2,
            ipv4_address: std::net::Ipv4Addr::new(169, 254, 170, 2),
            imds_compat: true,
        };
        let mut saved = machine();
        saved.mmds = Some(mmds);
        saved.nets[1].mmds = true;
        let mut restore = RestoreConfig::new("/snap/state", "/snap/mem");
        restore.net_overrides = vec![NetOverride {
            iface_id: "eth1".into(),
            tap: "tap9".into(),
        }];
        let c = machine_config(&saved, &restore).unwrap();
        assert_eq!(c.mmds, Some(mmds));
        let detoured: Vec<bool> = c.nets.iter().map(|n| n.mmds).collect();
        assert_eq!(detoured, [false, true]);
        // Through the state file's encoding and back.
        let text = serde_json::to_string(&saved).unwrap();
        let back: SavedMachine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        // A machine saved before the MMDS existed: no `mmds` anywhere.
        let mut old = serde_json::to_value(machine()).unwrap();
        old.as_object_mut().unwrap().remove("mmds");
        for n in old["nets"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("mmds");
        }
        let old: SavedMachine = serde_json::from_value(old).unwrap();
        assert_eq!(old, machine());
    }

    #[test]
    fn the_machine_comes_back_with_the_restoring_processs_choices() {
        let mut restore = RestoreConfig::new("/snap/state", "/snap/mem");
        restore.serial = SerialConfig::None;
        restore.max_exits = Some(7);
        restore.track_dirty_pages = true;
        restore.net_overrides = vec![NetOverride {
            iface_id: "eth1".into(),
            tap: "tap9".into(),
        }];
        restore.vsock_uds = Some("/run/new.sock".into());
        let c = machine_config(&machine(), &restore).unwrap();
        assert_eq!(
            (c.mem_size, c.vcpus, c.host_compat, c.rng),
            (64 << 20, 2, false, true)
        );
        assert_eq!(
            (c.serial, c.max_exits, c.track_dirty_pages),
            (SerialConfig::None, Some(7), true)
        );
        let taps: Vec<&str> = c.nets.iter().map(|n| n.tap.as_str()).collect();
        assert_eq!(taps, ["tap0", "tap9"]);
        assert_eq!(c.vsock.unwrap().uds, PathBuf::from("/run/new.sock"));
    }

    #[test]
    fn overrides_of_what_the_snapshot_lacks_are_refused() {
        let mut restore = RestoreConfig::new("/snap/state", "/snap/mem");
        restore.net_overrides = vec![NetOverride {
            iface_id: "eth7".into(),
            tap: "tap9".into(),
        }];
        let e = machine_config(&machine(), &restore).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid network_overrides.iface_id `eth7`: the snapshot has no network interface \
             of that id"
        );
        let mut restore = RestoreConfig::new("/snap/state", "/snap/mem");
        restore.vsock_uds = Some("/run/new.sock".into());
        let no_vsock = SavedMachine {
            vsock: None,
            ..machine()
        };
        let e = machine_config(&no_vsock, &restore).unwrap_err();
        assert!(
            e.to_string().contains("the snapshot has no vsock device"),
            "{e}"
        );
    }

    #[test]
    fn virtio_devices_must_keep_their_windows_and_interrupts() {
        let saved = [(0xd000_0000, 5), (0xd000_1000, 6)];
        check_windows(saved.into_iter(), saved.into_iter()).unwrap();
        let moved = [(0xd000_0000, 5), (0xd000_2000, 6)];
        let why = check_windows(moved.into_iter(), saved.into_iter()).unwrap_err();
        assert_eq!(
            why,
            "virtio device 1 was at 0xd0001000 (GSI 6) but would now be at 0xd0002000 (GSI 6)"
        );
    }
}

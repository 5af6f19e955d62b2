//! The snapshot routes: `PUT /snapshot/create` on a paused VM (and the working set saved
//! beside it), and `PUT /snapshot/load` before the start.

use std::path::PathBuf;
use std::time::Instant;

use petrel_api::model::{
    MemoryBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
};
use petrel_vmm::config::SerialConfig;
use petrel_vmm::snapshot::{MemBackend, NetOverride, RestoreConfig, SnapshotKind, SnapshotRequest};
use petrel_vmm::{Vmm, VmmHandle};

use super::{done, fault, Controller, Handled, Origin};
use crate::logger::Level;

impl Controller {
    /// `PUT /snapshot/create`: the VM must be paused; it stays paused.
    pub(super) fn create_snapshot(
        &mut self,
        vm: &VmmHandle,
        p: SnapshotCreateParams,
    ) -> Result<Handled, Handled> {
        let kind = match p.snapshot_type() {
            SnapshotType::Full => SnapshotKind::Full,
            SnapshotType::Diff => SnapshotKind::Diff,
        };
        let request = SnapshotRequest {
            kind,
            state_path: PathBuf::from(&p.snapshot_path),
            mem_path: PathBuf::from(&p.mem_file_path),
        };
        let report = vm.snapshot(&request).map_err(|e| {
            fault(format!(
                "cannot create the snapshot: {}",
                petrel_vmm::error_chain(&e)
            ))
        })?;
        let took = Some(report.took.as_micros() as u64);
        match kind {
            SnapshotKind::Full => self.counters.last_full_snapshot_us = took,
            SnapshotKind::Diff => self.counters.last_diff_snapshot_us = took,
        }
        self.log(
            Level::Info,
            file!(),
            line!(),
            &format!(
                "Snapshot written to {} and {} ({} KiB of memory) in {} us.",
                p.snapshot_path,
                p.mem_file_path,
                report.mem_bytes >> 10,
                report.took.as_micros()
            ),
        );
        Ok(done())
    }

    /// Saves the restored VM's working set now (`PUT /snapshot/working-set`, Petrel's): 204, or
    /// 400 with why not (not restored with `--working-set record`, or the file not written).
    pub(super) fn save_working_set(&mut self, vm: &VmmHandle) -> Result<Handled, Handled> {
        let recorded = vm.save_working_set().map_err(fault)?;
        self.log(Level::Info, file!(), line!(), &recorded.to_string());
        Ok(done())
    }

    /// Restores the VM from a snapshot (`PUT /snapshot/load`) and starts its vCPUs, paused
    /// unless `resume_vm`.
    pub fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<Vmm, String> {
        let started = Instant::now();
        let mut config = RestoreConfig::new(&p.snapshot_path, p.mem_file());
        if p.mem_backend_type() == MemoryBackendType::Uffd {
            config.mem_backend = MemBackend::Uffd;
        }
        config.track_dirty_pages = p.track_dirty_pages();
        config.huge_pages = p
            .huge_pages
            .and_then(|h| h.as_override())
            .map(crate::vm_config::huge_pages);
        config.net_overrides = p
            .network_overrides
            .iter()
            .map(|o| NetOverride {
                iface_id: o.iface_id.clone(),
                tap: o.host_dev_name.clone(),
            })
            .collect();
        config.vsock_uds = p
            .vsock_override
            .as_ref()
            .map(|v| PathBuf::from(&v.uds_path));
        config.serial = SerialConfig::Stdio;
        config.mmds_service = Some(self.mmds_service()?);
        config.working_set = self.working_set;
        let mut vmm = Vmm::restore_with_timeline(&config, self.timeline.clone())
            .map_err(|e| format!("cannot load the snapshot: {}", petrel_vmm::error_chain(&e)))?;
        for notice in vmm.notices() {
            let level = if notice.is_warning() {
                Level::Warning
            } else {
                Level::Info
            };
            self.log(level, file!(), line!(), &notice.to_string());
        }
        vmm.set_vcpu_thread_prefix("fc_vcpu ");
        if let Some(setup) = &mut self.setup {
            setup(&mut vmm, Origin::Restored);
        }
        let start = if p.resume_vm() {
            vmm.start()
        } else {
            vmm.start_paused()
        };
        start.map_err(|e| {
            format!(
                "cannot start the restored VM: {}",
                petrel_vmm::error_chain(&e)
            )
        })?;
        self.counters.last_load_snapshot_us = Some(started.elapsed().as_micros() as u64);
        self.vm = Some(vmm.handle());
        self.log(
            Level::Info,
            file!(),
            line!(),
            &format!("The guest was restored from {}.", p.snapshot_path),
        );
        Ok(vmm)
    }
}

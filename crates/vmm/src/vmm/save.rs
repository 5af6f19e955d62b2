//! Writing a snapshot of a paused VM ([`VmmHandle::snapshot`]): what may be written when, and
//! the order that keeps the state file and the memory file in agreement. The types a snapshot is
//! made of are in [`crate::snapshot`]; reading one back is `restore.rs`.

use std::time::Instant;

use petrel_guest_mem::FileId;
use petrel_util::lock_ignoring_poison as lock;

use super::{VmState, VmmHandle, VCPU_ACK_TIMEOUT};
use crate::snapshot::{
    SavedDevices, SnapshotKind, SnapshotReport, SnapshotRequest, SnapshotState, StagedFile,
};
use crate::virtio;
use crate::{Error, Result};

impl VmmHandle {
    /// Writes a snapshot of the paused VM: the state file (every vCPU, the irqchip, PIT and
    /// clock, every device, the machine's description) and the memory file (all of RAM for
    /// [`SnapshotKind::Full`], the pages written since the last snapshot for
    /// [`SnapshotKind::Diff`], which needs dirty tracking). The VM stays paused. Every virtio
    /// device is held still (locked) from its state being read until the memory is written, so
    /// the two agree even when this is called from another thread than the event loop. Both
    /// files are written under a temporary name and renamed over the names asked for, so a
    /// memory file a VM maps (this one's, restored from it, or another's) is never written
    /// into; a Diff naming the memory file this VM was restored from is
    /// [`Error::DiffOverMappedMemory`].
    pub fn snapshot(&self, request: &SnapshotRequest) -> Result<SnapshotReport> {
        let started = Instant::now();
        let vcpus = lock(&self.shared.life.vcpus);
        let state = *lock(&self.shared.life.state);
        let snap = &self.shared.snap;
        check_request(request, state, snap.dirty_tracking, snap.ram.backing_file())?;
        let mem_path = &request.mem_path;
        let mut saved_vcpus = Vec::with_capacity(vcpus.len());
        for h in vcpus.iter() {
            saved_vcpus.push(h.save_state(VCPU_ACK_TIMEOUT).map_err(Error::Vcpu)?);
        }
        let machine = lock(&snap.machine).clone();
        let vm = lock(&snap.vm);
        let vm_state = if machine.linux {
            Some(vm.save_state()?)
        } else {
            None
        };
        let held: Vec<virtio::HeldDevice<'_>> = self
            .shared
            .virtio_devices
            .iter()
            .map(|d| d.hold())
            .collect();
        let devices = SavedDevices {
            serial: lock(&snap.serial).save_state(),
            i8042: self.shared.i8042.as_ref().map(|k| lock(k).save_state()),
            rtc: snap.rtc.as_ref().map(|r| lock(r).save_state()),
            virtio: held.iter().map(|d| d.save_state()).collect(),
            vmgenid: snap.vmgenid.as_ref().map(|g| g.save()),
        };
        let body = SnapshotState {
            petrel_version: env!("CARGO_PKG_VERSION").to_string(),
            machine,
            vm: vm_state,
            vcpus: saved_vcpus,
            devices,
        };
        let write_err = |path: &std::path::Path, why: String| Error::SnapshotWrite {
            path: path.to_path_buf(),
            why,
        };
        let staged =
            StagedFile::create(mem_path).map_err(|e| write_err(mem_path, e.to_string()))?;
        let mem_file = staged.file();
        let mem_bytes = match request.kind {
            SnapshotKind::Full => {
                if snap.dirty_tracking {
                    // The next Diff is relative to this copy: forget what KVM logged so far.
                    vm.dirty_pages()?;
                }
                snap.ram.write_full(mem_file)
            }
            SnapshotKind::Diff => {
                let dirty = vm.dirty_pages()?;
                snap.ram.write_dirty(mem_file, &dirty)
            }
        }
        .map_err(|e| write_err(mem_path, crate::error_chain(&e)))?;
        drop(held);
        // Both files replace their names only once both are written (the memory file, staged,
        // is removed if the state file fails).
        petrel_snapshot::write_file(&request.state_path, &body)
            .map_err(|e| write_err(&request.state_path, crate::error_chain(&e)))?;
        staged
            .commit()
            .map_err(|e| write_err(mem_path, e.to_string()))?;
        Ok(SnapshotReport {
            mem_bytes,
            took: started.elapsed(),
        })
    }
}

/// Whether `request` may be written now: the VM must be paused, a Diff needs dirty tracking,
/// and a Diff may not replace the memory file the VM maps (`mapped`, the file its RAM was
/// restored from), which it applies to. (A Full one may: the new file is renamed over the
/// name, and the VM keeps mapping the old one.) Files compare by device and inode, so any name
/// of the mapped file is refused.
fn check_request(
    request: &SnapshotRequest,
    state: VmState,
    dirty_tracking: bool,
    mapped: Option<FileId>,
) -> Result<()> {
    if state != VmState::Paused {
        return Err(Error::InvalidState {
            op: "take a snapshot (pause the VM first)",
            state,
        });
    }
    if request.kind == SnapshotKind::Diff {
        if !dirty_tracking {
            return Err(Error::DirtyPagesNotTracked);
        }
        let target = FileId::of_path(&request.mem_path).ok().flatten();
        if target.is_some() && target == mapped {
            return Err(Error::DiffOverMappedMemory {
                path: request.mem_path.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn request(kind: SnapshotKind, mem_path: PathBuf) -> SnapshotRequest {
        SnapshotRequest {
            kind,
            state_path: "/nonexistent/state".into(),
            mem_path,
        }
    }

    #[test]
    fn only_a_paused_vm_is_saved() {
        let full = request(SnapshotKind::Full, "/nonexistent/mem".into());
        for state in [VmState::NotStarted, VmState::Running, VmState::Stopped] {
            let e = check_request(&full, state, true, None).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("cannot take a snapshot (pause the VM first): the VM is"),
                "{e}"
            );
        }
        check_request(&full, VmState::Paused, false, None).unwrap();
    }

    #[test]
    fn a_diff_needs_dirty_tracking_and_another_file_than_the_mapped_one() {
        let path = std::env::temp_dir().join(format!("petrel-vmm-mem-{}", std::process::id()));
        std::fs::write(&path, b"guest memory").unwrap();
        let mapped = FileId::of_path(&path).unwrap();
        assert!(mapped.is_some());
        let diff = request(SnapshotKind::Diff, path.clone());
        let e = check_request(&diff, VmState::Paused, false, mapped).unwrap_err();
        assert!(matches!(e, Error::DirtyPagesNotTracked), "{e}");
        let e = check_request(&diff, VmState::Paused, true, mapped).unwrap_err();
        assert!(
            matches!(&e, Error::DiffOverMappedMemory { path: p } if *p == path),
            "{e}"
        );
        // Another name of the same file is the same file.
        let link = path.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&path, &link).unwrap();
        let via_link = request(SnapshotKind::Diff, link.clone());
        let refused = check_request(&via_link, VmState::Paused, true, mapped);
        std::fs::remove_file(&link).unwrap();
        assert!(matches!(refused, Err(Error::DiffOverMappedMemory { .. })));
        // A Full snapshot may replace the mapped file (it is renamed over it), and a Diff may go
        // to a new file, or be taken of a VM that maps none.
        let full = request(SnapshotKind::Full, path.clone());
        check_request(&full, VmState::Paused, true, mapped).unwrap();
        let elsewhere = request(SnapshotKind::Diff, path.with_extension("new"));
        check_request(&elsewhere, VmState::Paused, true, mapped).unwrap();
        check_request(&diff, VmState::Paused, true, None).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}

//! Opening `/dev/kvm` and checking that it can run a Petrel guest.

use std::io;
use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::{Cap, Kvm};

use crate::{Error, Result};

/// The KVM API version every KVM since Linux 2.6.22 reports (api.rst, `KVM_GET_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;

/// The capabilities Petrel cannot run without, with the names users see in errors.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// An open, checked `/dev/kvm`.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
    vcpu_mmap_size: usize,
    msr_index_list: Arc<[u32]>,
}

impl Hypervisor {
    /// Opens `/dev/kvm` and checks its API version and Petrel's required capabilities.
    pub fn open() -> Result<Self> {
        Self::open_path(Path::new("/dev/kvm"))
    }

    /// Opens a KVM device node at `path` (for tests and unusual setups).
    pub fn open_path(path: &Path) -> Result<Self> {
        let kvm = Kvm::new_with_path(path_cstring(path)?).map_err(|e| open_error(path, e))?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(Error::ApiVersion { found: version });
        }
        let missing: Vec<&str> = REQUIRED_CAPS
            .iter()
            .filter(|(cap, _)| !kvm.check_extension(*cap))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingCapabilities(missing.join(", ")));
        }
        let vcpu_mmap_size = kvm.get_vcpu_mmap_size().map_err(Error::VcpuMmapSize)?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(|e| Error::Platform {
                what: "KVM_GET_MSR_INDEX_LIST",
                source: e,
            })?
            .as_slice()
            .into();
        Ok(Hypervisor {
            kvm,
            vcpu_mmap_size,
            msr_index_list,
        })
    }

    /// The kvm-ioctls handle, for calls this crate does not wrap.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Size of each vCPU's `kvm_run` mapping (`KVM_GET_VCPU_MMAP_SIZE`).
    pub fn vcpu_mmap_size(&self) -> usize {
        self.vcpu_mmap_size
    }

    /// The MSRs KVM saves and restores for a vCPU (`KVM_GET_MSR_INDEX_LIST`, api.rst 4.3: "the
    /// list of MSRs supported by the get/set msr ioctls", asked once when the device is opened).
    /// [`Vcpu::save_state`](crate::Vcpu::save_state) reads these.
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msr_index_list
    }

    /// The most vCPUs one VM may have (`KVM_CAP_MAX_VCPUS`).
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The CPUID KVM can offer a guest (`KVM_GET_SUPPORTED_CPUID`).
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::SupportedCpuid)
    }
}

/// Whether this host's KVM runs guest kernel code in its instruction emulator (the PVM vendor
/// module, no VT-x/AMD-V): such hosts need the workarounds in `../shared/HOST-KVM.md`.
///
/// Where sysfs shows the loaded modules, the `kvm_pvm` module decides. Where it is not mounted
/// (a jail's chroot), the CPU does: a KVM that works on a CPU without VMX and SVM cannot use
/// hardware virtualization, so it emulates.
pub fn host_emulates_guest_kernel() -> bool {
    if Path::new("/sys/module").exists() {
        return Path::new("/sys/module/kvm_pvm").exists();
    }
    !cpu_has_hardware_virtualization()
}

/// CPUID.1:ECX bit 5 (VMX) or CPUID.80000001h:ECX bit 2 (SVM) (Intel SDM vol. 2A, CPUID;
/// AMD APM vol. 3, CPUID Fn8000_0001_ECX).
fn cpu_has_hardware_virtualization() -> bool {
    // CPUID is available on every x86-64 CPU (a safe intrinsic); leaf 0x80000001 is read only
    // when the highest extended leaf reaches it.
    use std::arch::x86_64::__cpuid;
    let vmx = __cpuid(1).ecx & (1 << 5) != 0;
    let svm = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 2) != 0;
    vmx || svm
}

fn path_cstring(path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Open {
        path: path.display().to_string(),
        hint: "the path contains a NUL byte".into(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn open_error(path: &Path, e: vmm_sys_util::errno::Error) -> Error {
    let source = io::Error::from_raw_os_error(e.errno());
    let hint = match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => {
            "KVM not available: is the kvm module loaded (modprobe kvm_intel or kvm_amd), and \
             does the CPU or VM offer virtualization?"
                .to_string()
        }
        libc::EACCES | libc::EPERM => format!(
            "permission denied: add your user to the group that owns {} (usually `sudo usermod \
             -aG kvm $USER`, then log in again) or grant access with `sudo setfacl -m \
             u:$USER:rw {}`",
            path.display(),
            path.display()
        ),
        _ => "cannot open the KVM device".to_string(),
    };
    Error::Open {
        path: path.display().to_string(),
        hint,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_kvm_is_not_available() {
        let err = Hypervisor::open_path(Path::new("/nonexistent/kvm")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/kvm"), "{msg}");
        assert!(msg.contains("KVM not available"), "{msg}");
    }

    #[test]
    fn a_non_kvm_file_is_refused() {
        // /dev/null opens, but KVM_GET_API_VERSION fails on it.
        match Hypervisor::open_path(Path::new("/dev/null")) {
            Err(Error::ApiVersion { .. }) => {}
            other => panic!("expected an API version error, got {other:?}"),
        }
    }

    #[test]
    fn permission_hint_names_the_fix() {
        let e = open_error(
            Path::new("/dev/kvm"),
            vmm_sys_util::errno::Error::new(libc::EACCES),
        );
        let msg = e.to_string();
        assert!(msg.contains("usermod -aG kvm"), "{msg}");
        assert!(msg.contains("setfacl"), "{msg}");
    }
}

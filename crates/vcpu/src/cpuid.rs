//! Per-vCPU CPUID: KVM's supported leaves, normalised so each vCPU sees its own APIC id and a
//! consistent topology (Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3, appendix E).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31, "hypervisor present" (reserved for hypervisors on both vendors).
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, HTT: `EBX[23:16]` is a valid logical-processor count.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CPUID.0BH level type "SMT" (Intel SDM vol. 2A, table 3-8, leaf 0BH).
const LEVEL_TYPE_SMT: u32 = 1;
/// CPUID.0BH level type "Core".
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites `cpuid` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `vcpu_id` of `vcpu_count`:
/// one socket, one thread per core, `vcpu_count` cores.
pub fn normalize(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8) {
    let cores = u32::from(vcpu_count.max(1));
    // Bits needed to number the cores: the APIC-id shift of the package level.
    let core_bits = 32 - (cores - 1).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, u32::from(vcpu_id), cores, core_bits);
    }
}

fn normalize_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, cores: u32, core_bits: u32) {
    match e.function {
        0x1 => {
            // EBX[31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH line
            // size in 8-byte units (64 bytes).
            e.ebx = (apic_id << 24) | ((cores & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            if cores > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing this cache - 1.
            e.eax &= !(0xfc00_0000 | 0x03ff_c000);
            e.eax |= (cores - 1) << 26;
        }
        0xb | 0x1f => {
            // Extended topology: EDX is always the x2APIC id.
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = cores;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut c = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        normalize(&mut c, 3, 4);
        let e = c.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_one_package() {
        let mut c = CpuId::from_entries(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]).unwrap();
        normalize(&mut c, 1, 2);
        let s = c.as_slice();
        assert_eq!((s[0].ebx, s[0].ecx >> 8, s[0].edx), (1, LEVEL_TYPE_SMT, 1));
        assert_eq!((s[1].eax, s[1].ebx, s[1].ecx >> 8), (1, 2, LEVEL_TYPE_CORE));
        assert_eq!((s[2].ebx, s[2].ecx), (0, 2));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut c = CpuId::from_entries(&[entry(1, 0), entry(4, 0)]).unwrap();
        c.as_mut_slice()[0].edx = LEAF1_EDX_HTT;
        c.as_mut_slice()[1].eax = 0xffff_ffff;
        normalize(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(c.as_slice()[1].eax >> 26, 0);
    }
}

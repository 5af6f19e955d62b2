//! What hv-sys reads from memory KVM (or a guest, through KVM) wrote: the `kvm_run` region an
//! exit is decoded from, and the binary statistics file (header, id, descriptors, data).

use petrel_hv_sys::exit::{emulation_failure_bytes, RunRegion};
use petrel_hv_sys::kvm_bindings::kvm_run;
use petrel_hv_sys::stats::{decode_image, parse_descriptors, parse_header, StatValue};
use petrel_hv_sys::VmExit;

/// Size of the `kvm_run` mapping KVM gives a vCPU on x86 (`KVM_GET_VCPU_MMAP_SIZE`: the
/// structure's page, the PIO data page, the coalesced-MMIO ring page).
pub const RUN_REGION_SIZE: usize = 3 * 4096;

/// Decodes an exit from a `kvm_run` region filled with `data` (the rest zero); the region is
/// as long as a real mapping unless the first two bytes ask for a shorter one.
///
/// Checks that the data of an I/O exit is exactly `size * count` bytes inside the region and
/// past its header, that an MMIO exit carries 1 to 8 bytes, that an internal error counts at
/// most the words it has, and that the instruction bytes of an emulation failure fit the
/// 15 bytes of an x86 instruction.
pub fn exit(data: &[u8]) {
    let Some((len_sel, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let min = std::mem::size_of::<kvm_run>();
    let len = min + usize::from(u16::from_le_bytes(*len_sel)) % (RUN_REGION_SIZE - min + 1);
    // u64s: the region must be 8-byte aligned, as KVM's mapping is.
    let mut words = vec![0u64; RUN_REGION_SIZE / 8];
    // SAFETY: `words` owns RUN_REGION_SIZE initialized bytes; the byte view is dropped before
    // `words` is used again.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), RUN_REGION_SIZE) };
    let n = rest.len().min(len);
    bytes[..n].copy_from_slice(&rest[..n]);
    let region = &mut bytes[..len];
    let (lo, hi) = (region.as_ptr() as usize, region.as_ptr() as usize + len);
    let Some(run) = RunRegion::new(region) else {
        panic!("a {len}-byte aligned region was refused");
    };
    let exit = run.decode();
    let _ = exit.reason_name();
    let inside = |d: &[u8]| {
        let at = d.as_ptr() as usize;
        at >= lo + 8 && at + d.len() <= hi
    };
    match exit {
        VmExit::IoIn {
            size, count, data, ..
        } => {
            assert!(matches!(size, 1 | 2 | 4) && count > 0);
            assert_eq!(data.len() as u64, u64::from(size) * u64::from(count));
            assert!(inside(data), "I/O data outside the region");
        }
        VmExit::IoOut {
            size, count, data, ..
        } => {
            assert!(matches!(size, 1 | 2 | 4) && count > 0);
            assert_eq!(data.len() as u64, u64::from(size) * u64::from(count));
            assert!(inside(data), "I/O data outside the region");
        }
        VmExit::MmioRead { data, .. } => {
            assert!((1..=8).contains(&data.len()) && inside(data));
        }
        VmExit::MmioWrite { data, .. } => {
            assert!((1..=8).contains(&data.len()) && inside(data));
        }
        VmExit::InternalError {
            data: words, ndata, ..
        } => {
            assert!(ndata <= words.len());
            if let Some(insn) = emulation_failure_bytes(&words[..ndata]) {
                assert!(insn.len() <= 15, "{} instruction bytes", insn.len());
            }
        }
        _ => {}
    }
}

/// Decodes a binary statistics file held in `data`, whole and piece by piece.
///
/// Checks that a decoded file is consistent with itself: as many descriptors as the header
/// says, one value per descriptor, histograms and arrays as long as their descriptor's size.
pub fn stats(data: &[u8]) {
    if let Ok(header) = parse_header(data) {
        let _ = header.desc_block_len();
        let _ = parse_descriptors(data, &header);
    }
    let Ok(decoded) = decode_image(data) else {
        return;
    };
    assert_eq!(decoded.descriptors.len(), decoded.header.num_desc as usize);
    assert_eq!(decoded.snapshot.values.len(), decoded.descriptors.len());
    for (d, (name, value)) in decoded.descriptors.iter().zip(&decoded.snapshot.values) {
        assert_eq!(&d.name, name);
        let _ = d.unit_label();
        match value {
            StatValue::Scalar(_) => assert_eq!(d.size, 1, "{name}: a scalar of size {}", d.size),
            StatValue::Histogram(v) | StatValue::Array(v) => {
                assert_eq!(v.len(), usize::from(d.size), "{name}: wrong item count")
            }
        }
    }
}

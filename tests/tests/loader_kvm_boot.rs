//! Runs tiny guests from the states `petrel-loader` returns, on a real `/dev/kvm`: real mode from
//! `load_raw`, long mode from `configure_linux_boot` (below and above the MMIO gap), 32-bit
//! protected mode from `configure_pvh_boot`, and a kernel linked with a plain
//! `ld -Ttext=0x100000` (its ELF headers in a segment at 0xff000) through both protocols. Each
//! guest reads a boot structure through the register the protocol names and writes it to port
//! 0xe9, so a wrong GDT, page table, control register or pointer shows up as a wrong value or a
//! shutdown.
//!
//! It lives here rather than in `petrel-loader`, which touches no KVM.
//!
//! Without `/dev/kvm` the tests say they skipped; with `VMM_REQUIRE_KVM=1` they fail instead.

use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
use petrel_loader::linux::load_kernel_image;
use petrel_loader::{configure_linux_boot, configure_pvh_boot, load_raw, BootCpuState};
use petrel_vcpu::setup::kvm_segment_from;

/// The port the test guests write their result to.
const RESULT_PORT: u16 = 0xe9;

fn kvm_or_skip(test: &str) -> Option<Kvm> {
    petrel_tests::kvm_present_or_skip(test)
        .then(|| Kvm::new().unwrap_or_else(|e| panic!("{test}: cannot open /dev/kvm: {e}")))
}

/// Runs one vCPU from `state` until it halts; returns the bytes written to [`RESULT_PORT`].
fn run_guest(kvm: &Kvm, ram: &GuestRam, state: &BootCpuState) -> Vec<u8> {
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(KVM_TSS_START as usize).unwrap();
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START).unwrap();
    for (slot, r) in ram.regions().iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.guest_addr,
            memory_size: r.size,
            userspace_addr: r.host_addr,
        };
        // SAFETY: the region is a live mapping owned by `ram`, which outlives `vm` (the VM is
        // dropped at the end of this function, `ram` belongs to the caller).
        unsafe { vm.set_user_memory_region(region).unwrap() };
    }
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs = kvm_segment_from(&state.code);
    let data = kvm_segment_from(&state.data);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment_from(&state.tr);
    sregs.gdt.base = state.gdt_base;
    sregs.gdt.limit = state.gdt_limit;
    sregs.idt.base = state.idt_base;
    sregs.idt.limit = state.idt_limit;
    sregs.cr0 = state.cr0;
    sregs.cr3 = state.cr3;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = state.rip;
    regs.rsp = state.rsp;
    regs.rsi = state.rsi;
    regs.rbx = state.rbx;
    regs.rflags = state.rflags;
    vcpu.set_regs(&regs).unwrap();

    let mut out = Vec::new();
    // The guests are a handful of straight-line instructions: a few exits at most.
    for _ in 0..16 {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(RESULT_PORT, data) => out.extend_from_slice(data),
            VcpuExit::Hlt => return out,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("the guest did not halt");
}

/// A 64-bit x86 ELF executable with one PT_LOAD segment at 2 MiB holding `code64` at its
/// entry and `code32` at +0x100, announced as the PVH entry by a Xen note.
fn tiny_elf(code64: &[u8], code32: &[u8]) -> Vec<u8> {
    const PADDR: u64 = 0x20_0000;
    const DATA: usize = 0x1000;
    const NOTE: usize = 0x200;
    let mut image = vec![0u8; DATA + 0x200];
    let mut put = |off: usize, bytes: &[u8]| image[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, b"\x7fELF\x02\x01\x01"); // 64-bit, little-endian, version 1
    put(0x10, &2u16.to_le_bytes()); // ET_EXEC
    put(0x12, &62u16.to_le_bytes()); // EM_X86_64
    put(0x18, &PADDR.to_le_bytes()); // e_entry
    put(0x20, &64u64.to_le_bytes()); // e_phoff
    put(0x36, &56u16.to_le_bytes()); // e_phentsize
    put(0x38, &2u16.to_le_bytes()); // e_phnum
    put(64, &1u32.to_le_bytes()); // PT_LOAD
    put(64 + 8, &(DATA as u64).to_le_bytes()); // p_offset
    put(64 + 24, &PADDR.to_le_bytes()); // p_paddr
    put(64 + 32, &0x200u64.to_le_bytes()); // p_filesz
    put(64 + 40, &0x200u64.to_le_bytes()); // p_memsz
    put(120, &4u32.to_le_bytes()); // PT_NOTE
    put(120 + 8, &(NOTE as u64).to_le_bytes());
    put(120 + 32, &20u64.to_le_bytes());
    put(NOTE, &4u32.to_le_bytes()); // n_namesz
    put(NOTE + 4, &4u32.to_le_bytes()); // n_descsz
    put(NOTE + 8, &18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    put(NOTE + 12, b"Xen\0");
    put(NOTE + 16, &((PADDR + 0x100) as u32).to_le_bytes());
    put(DATA, code64);
    put(DATA + 0x100, code32);
    image
}

#[test]
fn real_mode_entry_uses_the_returned_segment() {
    let Some(kvm) = kvm_or_skip("real_mode_entry_uses_the_returned_segment") else {
        return;
    };
    let ram = GuestRam::new(1 << 20).unwrap();
    let code = [
        0xb0, 0x41, // mov al, 'A'
        0xe6, 0xe9, // out 0xe9, al
        0xf4, // hlt
    ];
    // Above 64 KiB, so CS.base must be non-zero for IP to reach it.
    let state = load_raw(&ram, &code, 0x1_2340, None).unwrap();
    assert_eq!(run_guest(&kvm, &ram, &state), b"A");
}

#[test]
fn long_mode_reaches_the_zero_page_through_rsi_and_the_identity_map() {
    let Some(kvm) = kvm_or_skip("long_mode_reaches_the_zero_page") else {
        return;
    };
    let code64 = [
        0x66, 0xba, 0xe9, 0x00, // mov dx, 0xe9
        0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]: the "HdrS" magic
        0xef, // out dx, eax
        0xf4, // hlt
    ];
    // Below the MMIO gap, and with RAM above 4 GiB.
    for size in [64 << 20, 5 << 30] {
        let ram = GuestRam::new(size).unwrap();
        let kernel =
            load_kernel_image(&ram, &tiny_elf(&code64, &[0xf4]), Path::new("tiny")).unwrap();
        let state = configure_linux_boot(&ram, &kernel, "console=ttyS0", None, 2, None).unwrap();
        assert_eq!(run_guest(&kvm, &ram, &state), b"HdrS", "{} MiB", size >> 20);
    }
}

#[test]
fn pvh_entry_reaches_the_start_info_through_ebx() {
    let Some(kvm) = kvm_or_skip("pvh_entry_reaches_the_start_info") else {
        return;
    };
    let code32 = [
        0x66, 0xba, 0xe9, 0x00, // mov dx, 0xe9
        0x8b, 0x03, // mov eax, [ebx]: hvm_start_info.magic
        0xef, // out dx, eax
        0xf4, // hlt
    ];
    let ram = GuestRam::new(64 << 20).unwrap();
    let kernel = load_kernel_image(&ram, &tiny_elf(&[0xf4], &code32), Path::new("tiny")).unwrap();
    let state = configure_pvh_boot(&ram, &kernel, "console=ttyS0", None, 1, None).unwrap();
    assert_eq!(run_guest(&kvm, &ram, &state), 0x336e_c578u32.to_le_bytes());
}

/// A tiny kernel in GNU `as` syntax: a 64-bit entry that reads the zero page's "HdrS" through
/// RSI and a PVH entry (announced by a `XEN_ELFNOTE_PHYS32_ENTRY` note, type 18) that reads
/// `hvm_start_info.magic` through EBX, each writing what it read to port 0xe9.
const LD_KERNEL_SOURCE: &str = r#"
    .code64
    .text
    .globl _start
_start:
    mov $0xe9, %dx
    mov 0x202(%rsi), %eax
    out %eax, %dx
    hlt
    .code32
pvh_entry:
    mov $0xe9, %dx
    mov (%ebx), %eax
    out %eax, %dx
    hlt
    .section .note.Xen, "a", @note
    .long 4, 4, 18
    .asciz "Xen"
    .long pvh_entry
"#;

/// Assembles [`LD_KERNEL_SOURCE`] and links it with a plain `ld -Ttext=0x100000`, which puts
/// the ELF headers in a read-only `PT_LOAD` segment at 0xff000. `None`, after saying why, when
/// binutils are not installed.
fn ld_kernel(test: &str) -> Option<Vec<u8>> {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("petrel-loader-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, obj, elf) = (dir.join("k.S"), dir.join("k.o"), dir.join("k.elf"));
    std::fs::write(&src, LD_KERNEL_SOURCE).unwrap();
    let steps: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        ("as", vec!["-o".as_ref(), obj.as_os_str(), src.as_os_str()]),
        (
            "ld",
            vec![
                "-Ttext=0x100000".as_ref(),
                "-o".as_ref(),
                elf.as_os_str(),
                obj.as_os_str(),
            ],
        ),
    ];
    for (tool, args) in steps {
        match Command::new(tool).args(&args).output() {
            Ok(o) => assert!(
                o.status.success(),
                "{tool} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("SKIPPED {test}: binutils are not installed (no `{tool}` on PATH)");
                std::fs::remove_dir_all(&dir).unwrap();
                return None;
            }
            Err(e) => panic!("{test}: cannot run {tool}: {e}"),
        }
    }
    let image = std::fs::read(&elf).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Some(image)
}

#[test]
fn kernel_linked_with_plain_ld_loads_and_boots_both_ways() {
    const TEST: &str = "kernel_linked_with_plain_ld";
    let Some(image) = ld_kernel(TEST) else {
        return;
    };
    let load = || {
        let ram = GuestRam::new(64 << 20).unwrap();
        let kernel = load_kernel_image(&ram, &image, Path::new("ld-kernel")).unwrap();
        (ram, kernel)
    };
    let (ram, kernel) = load();
    // The headers segment below 1 MiB is loaded: it holds the file's first bytes.
    assert_eq!(kernel.kernel_start, 0xff000);
    let mut headers = [0u8; 64];
    ram.read(0xff000, &mut headers).unwrap();
    assert_eq!(headers[..], image[..64]);
    assert_eq!(kernel.entry_64, 0x10_0000);
    assert!(kernel.pvh_entry.is_some());

    let Some(kvm) = kvm_or_skip(TEST) else {
        return;
    };
    let state = configure_linux_boot(&ram, &kernel, "console=ttyS0", None, 1, None).unwrap();
    assert_eq!(run_guest(&kvm, &ram, &state), b"HdrS");
    let (ram, kernel) = load();
    let state = configure_pvh_boot(&ram, &kernel, "console=ttyS0", None, 1, None).unwrap();
    assert_eq!(run_guest(&kvm, &ram, &state), 0x336e_c578u32.to_le_bytes());
}

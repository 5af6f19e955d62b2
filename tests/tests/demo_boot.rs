//! L2 tests: the whole VMM in-process. The built-in demo guest (a 64-bit ELF made by Petrel,
//! with a PVH entry note) goes through the loader, PVH or long mode, the port bus, COM1, the
//! CMOS RTC and the i8042 reset.

use petrel_demo_guest::{GREETING_LINE, RESETTING_LINE};
use petrel_tests::kvm_or_skip;
use petrel_vmm::config::{BootProtocol, SerialConfig};
use petrel_vmm::{StopReason, VmConfig};

/// The demo guest, with the boot protocol left to `Auto`.
fn demo_config() -> VmConfig {
    VmConfig::builtin_kernel(
        petrel_demo_guest::NAME,
        petrel_demo_guest::demo_kernel_elf(),
    )
}

fn boot_demo(name: &str, vcpus: u8) -> Option<(String, petrel_vmm::RunSummary)> {
    boot_demo_with(name, vcpus, BootProtocol::Auto)
}

fn boot_demo_with(
    name: &str,
    vcpus: u8,
    protocol: BootProtocol,
) -> Option<(String, petrel_vmm::RunSummary)> {
    kvm_or_skip(name)?;
    let log = std::env::temp_dir().join(format!("petrel-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut config = demo_config();
    config.vcpus = vcpus;
    config.boot_protocol = protocol;
    config.serial = SerialConfig::File(log.clone());
    let summary = petrel_vmm::run(&config).expect("the demo guest runs");
    let out = std::fs::read_to_string(&log).expect("serial log");
    std::fs::remove_file(&log).unwrap();
    Some((out, summary))
}

/// The timeline's "kernel loaded (...)" mark.
fn kernel_loaded_mark(summary: &petrel_vmm::RunSummary) -> String {
    summary
        .timeline
        .events()
        .into_iter()
        .map(|e| e.what)
        .find(|w| w.starts_with("kernel loaded"))
        .expect("a kernel-loaded mark")
}

fn check_output(out: &str, mem_mib: u64) {
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert_eq!(lines.first(), Some(&GREETING_LINE), "{out}");
    assert_eq!(lines.last(), Some(&RESETTING_LINE), "{out}");
    let cpu = lines
        .iter()
        .find(|l| l.starts_with("cpu: "))
        .expect("cpu line");
    assert_eq!(
        cpu.len(),
        "cpu: ".len() + 12,
        "a 12-character vendor: {cpu}"
    );
    // e820 leaves out the EBDA and the legacy hole below 1 MiB, so the guest sees just under.
    assert!(
        lines.contains(&format!("memory: {} MiB", mem_mib - 1).as_str()),
        "{out}"
    );
    let time = lines
        .iter()
        .find(|l| l.starts_with("time: "))
        .expect("time line");
    let year: u32 = time["time: ".len().."time: ".len() + 4]
        .parse()
        .expect("a year");
    assert!(year >= 2024, "the RTC gives the host's time: {time}");
}

#[test]
fn demo_guest_boots_and_resets_on_one_vcpu() {
    let Some((out, summary)) = boot_demo("demo_1vcpu", 1) else {
        return;
    };
    assert_eq!(summary.stop, StopReason::Reset, "{out}");
    assert_eq!(summary.exit_code(), 0);
    check_output(&out, 256);
    let total = &summary.stats.total;
    assert!(
        total.by_port.iter().any(|(p, _)| p == "0x0064"),
        "the i8042 reset was seen"
    );
    assert!(
        total.by_port.iter().any(|(p, _)| p == "0x0071"),
        "the RTC was read"
    );
}

#[test]
fn demo_guest_boots_and_resets_on_two_vcpus() {
    let Some((out, summary)) = boot_demo("demo_2vcpu", 2) else {
        return;
    };
    assert_eq!(summary.stop, StopReason::Reset, "{out}");
    check_output(&out, 256);
    // The AP waited for a SIPI that never came, and was stopped cleanly.
    assert_eq!(summary.stats.per_vcpu.len(), 2);
    assert_eq!(summary.stats.per_vcpu[1].total, 0);
}

#[test]
fn demo_guest_boots_through_pvh_by_default() {
    let Some(hv) = kvm_or_skip("demo_pvh_auto") else {
        return;
    };
    drop(hv);
    let emulated = petrel_hv_sys::host_emulates_guest_kernel();
    let log = std::env::temp_dir().join(format!("petrel-demo_pvh_auto-{}.log", std::process::id()));
    let run = |host_compat: bool| {
        let _ = std::fs::remove_file(&log);
        let mut config = demo_config();
        config.host_compat = host_compat;
        config.serial = SerialConfig::File(log.clone());
        let summary = petrel_vmm::run(&config).expect("the demo guest runs");
        let out = std::fs::read_to_string(&log).expect("serial log");
        std::fs::remove_file(&log).unwrap();
        assert_eq!(summary.stop, StopReason::Reset, "{out}");
        check_output(&out, 256);
        kernel_loaded_mark(&summary)
    };
    // As Firecracker does: PVH when the kernel has the note. (With the host workarounds off,
    // an emulating host too; the memory line then comes from hvm_start_info's map.)
    assert_eq!(run(false), "kernel loaded (PVH)");
    // An emulating host with its workarounds on prefers the 64-bit protocol (Petrel builds
    // the page tables); a host with VT-x/AMD-V keeps PVH.
    let want = if emulated {
        "kernel loaded (Linux 64-bit boot protocol)"
    } else {
        "kernel loaded (PVH)"
    };
    assert_eq!(run(true), want);
}

#[test]
fn demo_guest_boots_through_the_64_bit_protocol_when_asked() {
    let Some((out, summary)) = boot_demo_with("demo_linux64", 1, BootProtocol::Linux64) else {
        return;
    };
    assert_eq!(summary.stop, StopReason::Reset, "{out}");
    assert_eq!(
        kernel_loaded_mark(&summary),
        "kernel loaded (Linux 64-bit boot protocol)"
    );
    check_output(&out, 256);
}

#[test]
fn demo_guest_boots_through_pvh_on_two_vcpus_when_asked() {
    let Some((out, summary)) = boot_demo_with("demo_pvh_2vcpu", 2, BootProtocol::Pvh) else {
        return;
    };
    assert_eq!(summary.stop, StopReason::Reset, "{out}");
    assert_eq!(kernel_loaded_mark(&summary), "kernel loaded (PVH)");
    check_output(&out, 256);
}

#[test]
fn pvh_without_the_note_is_refused_naming_the_kernel_and_auto_falls_back() {
    // The demo guest with its XEN_ELFNOTE_PHYS32_ENTRY note turned into an unknown note type.
    let mut image = petrel_demo_guest::demo_kernel_elf();
    let name = image
        .windows(4)
        .position(|w| w == b"Xen\0")
        .expect("the Xen note");
    image[name - 4..name].copy_from_slice(&0u32.to_le_bytes()); // n_type
    let mut config = VmConfig::builtin_kernel("demo-without-pvh", image);
    config.serial = SerialConfig::None;
    config.boot_protocol = BootProtocol::Pvh;
    // Loading comes before KVM is opened: this needs no /dev/kvm.
    let msg = petrel_vmm::Vmm::build(&config).unwrap_err().to_string();
    assert!(
        msg.contains("demo-without-pvh") && msg.contains("no PVH entry point"),
        "{msg}"
    );

    if !petrel_tests::kvm_present_or_skip("demo_without_pvh_auto") {
        return;
    }
    config.boot_protocol = BootProtocol::Auto;
    let summary = petrel_vmm::run(&config).expect("the demo guest runs");
    assert_eq!(summary.stop, StopReason::Reset);
    assert_eq!(
        kernel_loaded_mark(&summary),
        "kernel loaded (Linux 64-bit boot protocol)"
    );
}

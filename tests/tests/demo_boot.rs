//! L2 tests: the whole VMM in-process. The built-in demo guest (a 64-bit ELF made by Petrel)
//! goes through the loader, long mode, the port bus, COM1, the CMOS RTC and the i8042 reset.

use petrel_demo_guest::{GREETING_LINE, RESETTING_LINE};
use petrel_tests::kvm_or_skip;
use petrel_vmm::config::SerialConfig;
use petrel_vmm::{StopReason, VmConfig};

fn boot_demo(name: &str, vcpus: u8) -> Option<(String, petrel_vmm::RunSummary)> {
    kvm_or_skip(name)?;
    let log = std::env::temp_dir().join(format!("petrel-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut config = VmConfig::builtin_kernel(
        petrel_demo_guest::NAME,
        petrel_demo_guest::demo_kernel_elf(),
    );
    config.vcpus = vcpus;
    config.serial = SerialConfig::File(log.clone());
    let summary = petrel_vmm::run(&config).expect("the demo guest runs");
    let out = std::fs::read_to_string(&log).expect("serial log");
    std::fs::remove_file(&log).unwrap();
    Some((out, summary))
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

//! A VM embedded in another program: build a [`VmConfig`] for Petrel's demo guest (a tiny
//! 64-bit kernel from `petrel-demo-guest` that greets, prints the CPU vendor, the RAM size and
//! the time, then resets), run it with its console going to a file, and print what it wrote and
//! how the run went.
//!
//! `cargo run -p petrel-vmm --example embed`; without /dev/kvm it says so and exits 0.

use petrel_vmm::config::SerialConfig;
use petrel_vmm::{error_chain, VmConfig, Vmm};

fn main() -> std::process::ExitCode {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("skipped: no /dev/kvm on this machine, so no VM to run");
        return std::process::ExitCode::SUCCESS;
    }
    match run() {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("embed: {}", error_chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<i32, Box<dyn std::error::Error>> {
    // The guest's console goes to a file the example reads back (SerialConfig::Stdio would
    // show it live on this terminal instead).
    let console = std::env::temp_dir().join(format!("petrel-embed-{}.log", std::process::id()));
    let mut config = VmConfig::builtin_kernel(
        petrel_demo_guest::NAME,
        petrel_demo_guest::demo_kernel_elf(),
    );
    config.mem_size = 64 << 20;
    config.serial = SerialConfig::File(console.clone());

    // Build checks every input and creates the VM; nothing runs until the event loop does.
    let vmm = Vmm::build(&config)?;
    for notice in vmm.notices() {
        println!("note: {notice}");
    }
    let handle = vmm.handle(); // what another thread would keep to pause, stop or inspect it
    let summary = vmm.run_until_stopped()?; // starts the vCPUs, returns when the guest resets

    let output = std::fs::read_to_string(&console)?;
    std::fs::remove_file(&console)?;
    println!("--- the guest's serial output ---");
    print!("{output}");
    println!("--- the run ---");
    println!(
        "stopped: {:?} (VM state {:?})",
        summary.stop,
        handle.state()
    );
    println!("exit code: {}", summary.exit_code());
    println!(
        "exits that reached Petrel: {} on {} vCPU(s)",
        summary.stats.total.total,
        summary.stats.per_vcpu.len()
    );
    print!("{}", summary.timeline.table());
    Ok(summary.exit_code())
}

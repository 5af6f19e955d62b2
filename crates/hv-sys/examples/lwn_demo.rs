//! LWN's "Using the KVM API" demo (<https://lwn.net/Articles/658511/>) on petrel-hv-sys: a
//! real-mode guest adds `al` and `bl`, writes the sum as a digit and a newline to port 0x3f8,
//! and halts. Source: `examples/lwn-demo/lwn-demo.S` at the repository root.
//!
//! `cargo run -p petrel-hv-sys --example lwn_demo` prints `guest wrote: "4\n"`; without a
//! usable /dev/kvm it says why and exits 0.

use petrel_hv_sys::{Hypervisor, Vm, VmExit};

/// mov dx, 0x3f8; add al, bl; add al, '0'; out dx, al; mov al, '\n'; out dx, al; hlt
const CODE: [u8; 12] = [
    0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, 0x30, 0xee, 0xb0, 0x0a, 0xee, 0xf4,
];
/// Where the guest's one page of RAM (and its code) sits in guest-physical memory.
const GUEST_ADDR: u64 = 0x1000;

/// A page of guest RAM: KVM wants a memory slot's host address page aligned.
#[repr(C, align(4096))]
struct Page([u8; 0x1000]);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            println!("no KVM here, nothing to run: {e}");
            return Ok(());
        }
    };
    // One page of guest RAM. Leaked, so that it outlives the VM that maps it.
    let page = &mut Box::leak(Box::new(Page([0; 0x1000]))).0;
    page[..CODE.len()].copy_from_slice(&CODE);
    let mut vm = Vm::new(&hv)?;
    // SAFETY: the page is leaked (it stays mapped until the process ends), read-write, and
    // nothing else maps it or relies on its contents.
    unsafe { vm.register_raw_slot(GUEST_ADDR, 0x1000, page.as_mut_ptr() as u64, Box::new(()))? };

    let mut vcpu = vm.create_vcpu(0)?;
    // Real mode with CS at 0: the code runs from CS:IP = 0:0x1000, with al = bl = 2.
    let mut sregs = vcpu.sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.regs()?;
    (regs.rip, regs.rax, regs.rbx, regs.rflags) = (GUEST_ADDR, 2, 2, 0x2);
    vcpu.set_regs(&regs)?;

    let mut written = Vec::new();
    loop {
        match vcpu.run()? {
            VmExit::IoOut {
                port: 0x3f8, data, ..
            } => written.extend_from_slice(data),
            VmExit::Hlt => break,
            other => return Err(format!("unexpected exit: {other:?}").into()),
        }
    }
    println!("guest wrote: {:?}", String::from_utf8_lossy(&written));
    Ok(())
}

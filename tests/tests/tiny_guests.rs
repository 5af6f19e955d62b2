//! L1 tests: hand-assembled tiny guests driving exits through the real vCPU loop on KVM.
//! Each instruction carries its encoding and meaning; `as --32`/`as --64` reproduce them.

use std::sync::Arc;

use petrel_hv_sys::host_emulates_guest_kernel;
use petrel_tests::{kvm_or_skip, Access, Recorder, TinyGuest};
use petrel_vcpu::StopReason;

#[test]
fn real_mode_out_and_in_on_com1() {
    let Some(hv) = kvm_or_skip("real_mode_out_and_in_on_com1") else {
        return;
    };
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8   ; COM1 data register
        0xb0, 0x41, //       mov al, 'A'
        0xee, //             out dx, al      ; write 'A'
        0xec, //             in al, dx       ; read a byte back
        0x42, //             inc dx          ; 0x3f9
        0xee, //             out dx, al      ; echo what was read to 0x3f9
        0xf4, //             hlt
    ];
    let io = Arc::new(Recorder {
        port_answers: vec![(0x3f8, 0x5a)],
        ..Default::default()
    });
    let out = TinyGuest::real_mode(&code, 1 << 20).run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(
        io.log(),
        vec![
            Access::PioWrite(0x3f8, vec![0x41]),
            Access::PioRead(0x3f8, vec![0x5a]),
            Access::PioWrite(0x3f9, vec![0x5a]),
        ]
    );
    assert_eq!(out.stats.count_of("io-out"), 2);
    assert_eq!(out.stats.count_of("io-in"), 1);
    assert_eq!(out.stats.count_of("hlt"), 1);
}

#[test]
fn rep_outsb_arrives_as_one_access_per_byte() {
    let Some(hv) = kvm_or_skip("rep_outsb_arrives_as_one_access_per_byte") else {
        return;
    };
    let code = [
        0xbe, 0x0e, 0x10, // mov si, 0x100e  ; the string below (loaded at 0x1000 + 0xe)
        0xb9, 0x05, 0x00, // mov cx, 5       ; its length
        0xba, 0xf8, 0x03, // mov dx, 0x3f8   ; COM1
        0xfc, //             cld             ; count upwards
        0xf3, 0x6e, //       rep outsb       ; write cx bytes from ds:si to port dx
        0xf4, //             hlt
        0x90, //             nop             ; padding so the string starts at offset 0xe
        b'h', b'e', b'l', b'l', b'o', // the string
    ];
    let io = Arc::new(Recorder::default());
    let out = TinyGuest::real_mode(&code, 1 << 20).run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::Halted);
    let writes = io.port_writes();
    assert_eq!(writes.len(), 5, "{writes:?}");
    assert!(writes.iter().all(|(p, d)| *p == 0x3f8 && d.len() == 1));
    let bytes: Vec<u8> = writes.iter().map(|(_, d)| d[0]).collect();
    assert_eq!(bytes, b"hello");
    // KVM batches string I/O: fewer exits than accesses is the point of decoding `count`.
    assert!(out.stats.count_of_port(0x3f8) <= 5);
}

#[test]
fn mmio_outside_ram_reaches_the_vmm() {
    let Some(hv) = kvm_or_skip("mmio_outside_ram_reaches_the_vmm") else {
        return;
    };
    let code = [
        0xb8, 0x00, 0x20, //       mov ax, 0x2000
        0x8e,
        0xd8, //             mov ds, ax            ; ds base = 0x20000, past the 64 KiB of RAM
        0xc6, 0x06, 0x00, 0x00, 0x42, // mov byte [0], 0x42 ; MMIO write at 0x20000
        0xa0, 0x01, 0x00, //       mov al, [1]           ; MMIO read at 0x20001
        0xe6, 0x10, //             out 0x10, al          ; report what the read returned
        0xf4, //                   hlt
    ];
    let io = Arc::new(Recorder {
        mmio_answer: Some(0x99),
        ..Default::default()
    });
    let out = TinyGuest::real_mode(&code, 64 << 10).run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(
        io.log(),
        vec![
            Access::MmioWrite(0x20000, vec![0x42]),
            Access::MmioRead(0x20001, vec![0x99]),
            Access::PioWrite(0x10, vec![0x99]),
        ]
    );
    assert_eq!(out.stats.count_of("mmio-write"), 1);
    assert_eq!(out.stats.count_of("mmio-read"), 1);
}

#[test]
fn unclaimed_port_reads_as_ff() {
    let Some(hv) = kvm_or_skip("unclaimed_port_reads_as_ff") else {
        return;
    };
    let code = [
        0xe4, 0x60, // in al, 0x60   ; no device answers port 0x60 here
        0xe6, 0x10, // out 0x10, al  ; report what the guest got
        0xf4, //       hlt
    ];
    let io = Arc::new(Recorder::default());
    let out = TinyGuest::real_mode(&code, 1 << 20).run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(io.port_writes(), vec![(0x10, vec![0xff])]);
}

#[test]
fn a_spinning_guest_is_kicked_out_and_stopped() {
    let Some(hv) = kvm_or_skip("a_spinning_guest_is_kicked_out_and_stopped") else {
        return;
    };
    let code = [
        0xeb, 0xfe, // jmp $   ; spin forever without a single exit
    ];
    let io = Arc::new(Recorder::default());
    let mut guest = TinyGuest::real_mode(&code, 1 << 20);
    guest.deadline = std::time::Duration::from_millis(300);
    let out = guest.run(&hv, io.clone());
    // The only way out is the kick (immediate_exit plus a signal) and the stop command.
    assert_eq!(out.stop, StopReason::Requested);
    assert!(io.log().is_empty());
}

#[test]
fn long_mode_runs_with_2mib_pages() {
    let Some(hv) = kvm_or_skip("long_mode_runs_with_2mib_pages") else {
        return;
    };
    let code = [
        0x48, 0xb8, 0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0, // mov rax, 0xdeadbeef
        0xe7, 0x10, //                                     out 0x10, eax
        0xf4, //                                           hlt
    ];
    let io = Arc::new(Recorder::default());
    let out = TinyGuest::long_mode(&code).run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(io.port_writes(), vec![(0x10, vec![0xef, 0xbe, 0xad, 0xde])]);
}

#[test]
fn long_mode_int3_reaches_the_guest_handler() {
    let Some(hv) = kvm_or_skip("long_mode_int3_reaches_the_guest_handler") else {
        return;
    };
    let code = [
        0xe6, 0x10, // out 0x10, al   ; before the breakpoint
        0xcc, //       int3           ; #BP -> the handler at 0x100006
        0xe6, 0x12, // out 0x12, al   ; after iretq returns here
        0xf4, //       hlt
        0xe6, 0x11, // out 0x11, al   ; #BP handler: report
        0x48, 0xcf, // iretq          ; back to the instruction after int3
    ];
    let mut guest = TinyGuest::long_mode(&code);
    // A 16-byte 64-bit interrupt gate for vector 3 at IDT + 3 * 16 (Intel SDM vol. 3A, 6.14.1):
    // offset 0x100006, selector = the code segment, present, DPL 0, type 0xe.
    let handler: u64 = 0x10_0006;
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&guest.state.code.selector.to_le_bytes());
    gate[5] = 0x8e;
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    let idt = 0x3000;
    guest.ram.write(idt, &[0u8; 256]).unwrap();
    guest.ram.write(idt + 3 * 16, &gate).unwrap();
    guest.state.idt_base = idt;
    guest.state.idt_limit = 255;
    let io = Arc::new(Recorder::default());
    let out = guest.run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::Halted);
    let ports: Vec<u16> = io.port_writes().into_iter().map(|(p, _)| p).collect();
    assert_eq!(ports, vec![0x10, 0x11, 0x12]);
    if host_emulates_guest_kernel() {
        // The emulator cannot run int3: Petrel completed it by injecting #BP.
        assert_eq!(out.emulation.int3_injected, 1);
    }
}

#[test]
fn long_mode_triple_fault_on_empty_idt() {
    let Some(hv) = kvm_or_skip("long_mode_triple_fault_on_empty_idt") else {
        return;
    };
    let code = [
        0x0f, 0x0b, // ud2   ; #UD with an empty IDT: #GP, #DF, then triple fault
        0xf4, //       hlt   ; never reached
    ];
    let io = Arc::new(Recorder::default());
    let out = TinyGuest::long_mode(&code).run(&hv, io);
    assert!(
        matches!(&out.stop, StopReason::GuestFault { what, .. } if what.contains("triple")),
        "{:?}",
        out.stop
    );
}

#[test]
fn exit_limit_stops_an_endless_loop() {
    let Some(hv) = kvm_or_skip("exit_limit_stops_an_endless_loop") else {
        return;
    };
    let code = [
        0xe7, 0x10, // out 0x10, ax   ; the kvmsample loop
        0x40, //       inc ax
        0xeb, 0xfb, // jmp -5         ; back to the out
    ];
    let io = Arc::new(Recorder::default());
    let mut guest = TinyGuest::real_mode(&code, 1 << 20);
    guest.max_exits = Some(7);
    let out = guest.run(&hv, io.clone());
    assert_eq!(out.stop, StopReason::ExitLimit(7));
    let values: Vec<u16> = io
        .port_writes()
        .iter()
        .map(|(_, d)| u16::from_le_bytes([d[0], d[1]]))
        .collect();
    assert_eq!(values, (0..7).collect::<Vec<u16>>());
    assert_eq!(out.stats.count_of_port(0x10), 7);
}

#[test]
fn pause_holds_the_vcpu_and_resume_lets_it_go_on() {
    let Some(hv) = kvm_or_skip("pause_holds_the_vcpu_and_resume_lets_it_go_on") else {
        return;
    };
    use petrel_vcpu::{VcpuCommand, VcpuState};
    use std::time::Duration;
    let code = [
        0xe7, 0x10, // out 0x10, ax   ; an exit per iteration: progress we can watch
        0x40, //       inc ax
        0xeb, 0xfb, // jmp -5
    ];
    let mut guest = TinyGuest::real_mode(&code, 1 << 20);
    guest.max_exits = None;
    let io = Arc::new(Recorder::default());
    let (_vm, mut handle) = guest.spawn(&hv, io.clone());
    let progress = || io.accesses.lock().unwrap().len();

    std::thread::sleep(Duration::from_millis(50));
    assert!(progress() > 0, "the loop runs");
    handle.send(VcpuCommand::Pause).unwrap();
    let acked = handle.wait_for(Duration::from_secs(5), |s| s == VcpuState::Paused);
    assert_eq!(acked, VcpuState::Paused, "the pause is acknowledged");
    let paused_at = progress();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        progress(),
        paused_at,
        "no exit once the pause is acknowledged"
    );
    let (stats, _) = handle
        .stats(Duration::from_secs(5))
        .expect("a paused vCPU answers for its statistics");
    assert_eq!(stats.count_of_port(0x10) as usize, paused_at);

    handle.send(VcpuCommand::Resume).unwrap();
    let acked = handle.wait_for(Duration::from_secs(5), |s| s == VcpuState::Running);
    assert_eq!(acked, VcpuState::Running);
    std::thread::sleep(Duration::from_millis(50));
    assert!(progress() > paused_at, "runs again after resume");

    handle.send(VcpuCommand::Stop).unwrap();
    let out = handle.join(Duration::from_secs(5)).expect("stops");
    assert_eq!(out.stop, StopReason::Requested);
}

#[test]
fn a_stop_sent_before_the_first_run_is_not_lost() {
    let Some(hv) = kvm_or_skip("a_stop_sent_before_the_first_run_is_not_lost") else {
        return;
    };
    use petrel_vcpu::VcpuCommand;
    use std::time::Duration;
    let code = [
        0xeb, 0xfe, // jmp $   ; spin forever without a single exit: only a kick ends it
    ];
    // The stop is sent the moment the thread exists, usually before its first KVM_RUN (where
    // round 1 lost the kick and the vCPU spun on). Each try must end within the deadline.
    for attempt in 0..50 {
        let guest = TinyGuest::real_mode(&code, 1 << 20);
        let (_vm, mut handle) = guest.spawn(&hv, Arc::new(Recorder::default()));
        handle.send(VcpuCommand::Stop).unwrap();
        let out = handle
            .join(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("attempt {attempt}: the early stop was lost"));
        assert_eq!(out.stop, StopReason::Requested);
    }
}

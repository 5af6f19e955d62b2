//! Petrel's built-in allow-lists, one per thread kind.
//!
//! Each rule allows one system call, with the argument values it needs where they are known
//! in advance (ioctl requests, fcntl commands, futex operations, socket families, mmap flags);
//! everything else traps (see `sigsys`). The lists were found by tracing every thread
//! (`strace -f`) through the test suite, the demo guest and the Linux boot scenarios (virtio
//! disk, rng and net), and hold only what a thread calls after its filter is installed.

use std::collections::BTreeMap;

use libc::c_long;
use seccompiler::{BpfProgram, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::Kind;

/// An allow-list under construction: system call number to the rules that allow it (an empty
/// list allows it with any arguments).
#[derive(Debug, Default)]
pub struct AllowList {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    /// How many rules the list has (an unconditional system call counts as one).
    count: usize,
}

/// A condition: argument `index` (from 0) equals `value` (compared as 32 bits, as the kernel
/// ABI gives these arguments as `int`).
type ArgEq = (u8, u64);

impl AllowList {
    /// Allows `nr` with any arguments.
    fn allow(&mut self, nr: c_long) -> &mut Self {
        let previous = self.rules.insert(nr, Vec::new());
        debug_assert!(previous.is_none(), "system call {nr} listed twice");
        self.count += 1;
        self
    }

    /// Allows `nr` when every argument in `args` has its value.
    fn allow_if(&mut self, nr: c_long, args: &[ArgEq]) -> Result<&mut Self, seccompiler::Error> {
        let conditions = args
            .iter()
            .map(|&(index, value)| {
                SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.push(nr, conditions)
    }

    /// Allows `nr` when argument `index` has none of the bits of `mask` set, and every
    /// argument in `args` has its value.
    fn allow_without_bits(
        &mut self,
        nr: c_long,
        (index, mask): (u8, u64),
        args: &[ArgEq],
    ) -> Result<&mut Self, seccompiler::Error> {
        let mut conditions = vec![SeccompCondition::new(
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?];
        for &(index, value) in args {
            conditions.push(SeccompCondition::new(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                value,
            )?);
        }
        self.push(nr, conditions)
    }

    fn push(
        &mut self,
        nr: c_long,
        conditions: Vec<SeccompCondition>,
    ) -> Result<&mut Self, seccompiler::Error> {
        let rule = SeccompRule::new(conditions)?;
        match self.rules.get_mut(&nr) {
            // An empty list allows every call: a conditional rule added to it would narrow it.
            Some(rules) => {
                debug_assert!(
                    !rules.is_empty(),
                    "system call {nr} allowed outright already"
                );
                rules.push(rule);
            }
            None => {
                self.rules.insert(nr, vec![rule]);
            }
        }
        self.count += 1;
        Ok(self)
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// How many distinct system calls the list allows.
    pub fn syscalls(&self) -> usize {
        self.rules.len()
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// How many rules it has (a system call allowed with several argument sets counts once
    /// per set).
    pub fn rules(&self) -> usize {
        self.count
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// Whether `nr` is allowed with some arguments.
    pub fn allows(&self, nr: c_long) -> bool {
        self.rules.contains_key(&nr)
    }

    /// Compiles the list into a BPF program whose mismatch action is
    /// [`seccompiler::SeccompAction::Trap`]: seccompiler's program for the same rules, with its system
    /// calls reached through a binary search on the number instead of one after another.
    ///
    /// seccompiler tests the system calls in turn, so the kernel's cost of installing the
    /// filter grows with the product of the list's length and the number of system calls: at
    /// install, Linux runs the filter once for every system call number to find those it
    /// allows whatever the arguments (its per-filter action cache), and a call that is not in
    /// the list goes through every test. Here each system call's block is seccompiler's own
    /// (the arch check, the rules of that call and their argument tests, unchanged), placed
    /// after a search tree of `jge` tests, so any number reaches the one block that can
    /// match it in a handful of instructions, and a call allowed whatever its arguments is one
    /// `jeq` to a shared return (seccompiler spends five instructions on it). The same
    /// decisions (the tests run both programs over the same inputs); installing the three
    /// filters went from about 0.62 to 0.40 ms of kernel time on our development host.
    pub fn compile(self) -> Result<BpfProgram, seccompiler::Error> {
        bst::compile(self.rules)
    }

    /// seccompiler's linear program for the same rules, to check [`compile`](Self::compile)
    /// against.
    #[cfg(test)]
    pub fn compile_linear(self) -> Result<BpfProgram, seccompiler::Error> {
        bst::linear(self.rules)
    }
}

/// The binary-search layout of [`AllowList::compile`].
mod bst {
    use std::collections::BTreeMap;

    use seccompiler::{
        sock_filter, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch,
    };

    /// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JA: u16 = 0x05;
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_RET_K: u16 = 0x06;
    /// The offset of `nr` in `struct seccomp_data`.
    const NR_OFFSET: u32 = 0;
    /// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
    const MAX_LEN: usize = 4096;

    /// seccompiler's program for `rules`: trap on a mismatch, allow on a match.
    pub(super) fn linear(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
    ) -> Result<BpfProgram, seccompiler::Error> {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?;
        Ok(filter.try_into()?)
    }

    fn stmt(code: u16, k: u32) -> sock_filter {
        sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// The program: seccompiler's arch check, the load of the system call number, a search
    /// tree on it, the two returns (allow, trap), then the blocks of the system calls allowed
    /// with some arguments only. A leaf of the tree is `jeq nr` to allow or trap for a call
    /// allowed with any arguments, else a jump to the call's block. A block is seccompiler's
    /// program for that one system call without its arch check and load: it tests the number
    /// again, then the rules, and ends with the trap, so a number the tree sends to a block
    /// that is not its own traps, as it does in the linear program.
    pub(super) fn compile(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
    ) -> Result<BpfProgram, seccompiler::Error> {
        let fallback = rules.clone();
        Ok(match searched(rules)? {
            Some(program) => program,
            // seccompiler's output not having the shape it has always had: its own program,
            // slower to install but the same decisions.
            None => linear(fallback)?,
        })
    }

    /// The searched program, or `None` where seccompiler's programs do not have the shape
    /// this relies on (or the tree would not fit a jump's reach).
    fn searched(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
    ) -> Result<Option<BpfProgram>, seccompiler::Error> {
        // The arch check: seccompiler's program for no rules, less its final return.
        let mut prefix = linear(BTreeMap::new())?;
        prefix.pop();
        let load_nr = stmt(BPF_LD_W_ABS, NR_OFFSET);
        // Per system call: `None` where it is allowed whatever the arguments, else its block.
        let mut blocks = Vec::with_capacity(rules.len());
        for (nr, chain) in rules {
            let Ok(number) = u32::try_from(nr) else {
                return Ok(None);
            };
            if chain.is_empty() {
                blocks.push((number, None));
                continue;
            }
            let one = linear(BTreeMap::from([(nr, chain)]))?;
            if !one.starts_with(&prefix) || one.get(prefix.len()) != Some(&load_nr) {
                return Ok(None);
            }
            blocks.push((number, Some(one[prefix.len() + 1..].to_vec())));
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        let mut program = prefix;
        program.push(load_nr);
        let numbers: Vec<u32> = blocks.iter().map(|(nr, _)| *nr).collect();
        // The tree, in pre-order: a node is `jge mid` (false: the left subtree, which
        // follows; true: the right one, after it); a leaf is filled in below.
        let mut leaves = Vec::with_capacity(numbers.len());
        if !tree(&numbers, &mut program, &mut leaves) {
            return Ok(None);
        }
        // The two returns the leaves of unconditional system calls share, right after the
        // tree; then the blocks.
        let allow_at = program.len();
        program.push(stmt(BPF_RET_K, u32::from(SeccompAction::Allow)));
        let trap_at = program.len();
        program.push(stmt(BPF_RET_K, u32::from(SeccompAction::Trap)));
        for (leaf, (nr, block)) in leaves.into_iter().zip(blocks) {
            match block {
                // `jeq nr`: allow, else trap.
                None => {
                    let (Ok(jt), Ok(jf)) = (
                        u8::try_from(allow_at - leaf - 1),
                        u8::try_from(trap_at - leaf - 1),
                    ) else {
                        return Ok(None);
                    };
                    program[leaf] = sock_filter {
                        code: BPF_JMP_JEQ_K,
                        jt,
                        jf,
                        k: nr,
                    };
                }
                // `ja` to the block, which tests the number again.
                Some(block) => {
                    let Ok(offset) = u32::try_from(program.len() - leaf - 1) else {
                        return Ok(None);
                    };
                    program[leaf] = stmt(BPF_JMP_JA, offset);
                    program.extend(block);
                }
            }
        }
        if program.len() > MAX_LEN {
            return Err(seccompiler::Error::Backend(
                seccompiler::BackendError::FilterTooLarge(program.len()),
            ));
        }
        Ok(Some(program))
    }

    /// The tree's size for `n` numbers: `n` leaves and `n - 1` nodes.
    fn size(n: usize) -> usize {
        2 * n - 1
    }

    /// Emits the subtree of `numbers` (sorted), recording where each leaf's jump is, in
    /// order; false if a subtree is too large for a conditional jump (255 instructions).
    fn tree(numbers: &[u32], program: &mut BpfProgram, leaves: &mut Vec<usize>) -> bool {
        if let [_] = numbers {
            leaves.push(program.len());
            program.push(stmt(BPF_JMP_JA, 0));
            return true;
        }
        let mid = numbers.len() / 2;
        let Ok(jt) = u8::try_from(size(mid)) else {
            return false;
        };
        program.push(sock_filter {
            code: BPF_JMP_JGE_K,
            jt,
            jf: 0,
            k: numbers[mid],
        });
        tree(&numbers[..mid], program, leaves) && tree(&numbers[mid..], program, leaves)
    }
}

/// `_IOC` as the kernel's `asm-generic/ioctl.h` builds it.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((kvm_bindings::KVMIO as u64) << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// The KVM vCPU ioctls a vCPU thread makes once it runs: `KVM_RUN`, and the register and
/// event reads and writes of the emulation-failure handling (int3 injection, `fwait`) and of
/// the fault report (numbers from linux/kvm.h).
pub const KVM_RUN: u64 = ioc(0, 0x80, 0);
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, 0x81, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_SET_REGS`.
pub const KVM_SET_REGS: u64 = ioc(IOC_WRITE, 0x82, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS`.
pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, 0x83, size_of::<kvm_bindings::kvm_sregs>());
/// `KVM_TRANSLATE`: the guest-fault report reads the instruction bytes at RIP through the
/// guest's page tables (hv-sys `Vcpu::instruction_bytes_at_rip`), after a triple fault, a
/// failed entry or an emulation failure whose bytes `kvm_run` does not carry.
pub const KVM_TRANSLATE: u64 = ioc(IOC_RW, 0x85, size_of::<kvm_bindings::kvm_translation>());
/// `KVM_GET_FPU`.
pub const KVM_GET_FPU: u64 = ioc(IOC_READ, 0x8c, size_of::<kvm_bindings::kvm_fpu>());
/// `KVM_GET_VCPU_EVENTS`.
pub const KVM_GET_VCPU_EVENTS: u64 =
    ioc(IOC_READ, 0x9f, size_of::<kvm_bindings::kvm_vcpu_events>());
/// `KVM_SET_VCPU_EVENTS`.
pub const KVM_SET_VCPU_EVENTS: u64 =
    ioc(IOC_WRITE, 0xa0, size_of::<kvm_bindings::kvm_vcpu_events>());

const IOC_RW: u64 = IOC_READ | IOC_WRITE;

/// The vCPU ioctls that read a paused vCPU's state for a snapshot, on its own thread
/// (hv-sys `Vcpu::save_state`), beside `KVM_GET_REGS`, `KVM_GET_SREGS` and
/// `KVM_GET_VCPU_EVENTS` above (numbers from linux/kvm.h).
pub const KVM_SAVE_VCPU: [u64; 9] = [
    ioc(IOC_READ, 0x98, size_of::<kvm_bindings::kvm_mp_state>()), // KVM_GET_MP_STATE
    ioc(IOC_READ, 0xa4, size_of::<kvm_bindings::kvm_xsave>()),    // KVM_GET_XSAVE
    ioc(IOC_READ, 0xcf, size_of::<kvm_bindings::kvm_xsave>()),    // KVM_GET_XSAVE2
    ioc(IOC_READ, 0xa6, size_of::<kvm_bindings::kvm_xcrs>()),     // KVM_GET_XCRS
    ioc(IOC_READ, 0xa1, size_of::<kvm_bindings::kvm_debugregs>()), // KVM_GET_DEBUGREGS
    ioc(IOC_READ, 0x8e, size_of::<kvm_bindings::kvm_lapic_state>()), // KVM_GET_LAPIC
    ioc(0, 0xa3, 0),                                              // KVM_GET_TSC_KHZ
    ioc(IOC_RW, 0x91, size_of::<kvm_bindings::kvm_cpuid2>()),     // KVM_GET_CPUID2
    ioc(IOC_RW, 0x88, size_of::<kvm_bindings::kvm_msrs>()),       // KVM_GET_MSRS
];

/// The VM ioctls of a snapshot, on the VMM thread (hv-sys `Vm::save_state` and
/// `Vm::dirty_pages`).
pub const KVM_SAVE_VM: [u64; 4] = [
    ioc(IOC_RW, 0x62, size_of::<kvm_bindings::kvm_irqchip>()), // KVM_GET_IRQCHIP
    ioc(IOC_READ, 0x9f, size_of::<kvm_bindings::kvm_pit_state2>()), // KVM_GET_PIT2
    ioc(IOC_READ, 0x7c, size_of::<kvm_bindings::kvm_clock_data>()), // KVM_GET_CLOCK
    ioc(IOC_WRITE, 0x42, size_of::<kvm_bindings::kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
];

/// `PROT_EXEC`, as a mask of mmap's and mprotect's `prot`.
const EXEC: u64 = libc::PROT_EXEC as u64;
/// futex(2) operations (`linux/futex.h`).
const OP_WAIT_BITSET: u64 = 9;
const OP_WAKE: u64 = 1;
const OP_WAIT: u64 = 0;
const OP_PRIVATE: u64 = 128;
const OP_CLOCK_REALTIME: u64 = 256;

/// What every thread calls: Rust's and glibc's memory allocation, locks and channels, thread
/// exit, the SIGSYS report itself (`write`, `exit_group`), and `abort`.
fn common(l: &mut AllowList) -> Result<(), seccompiler::Error> {
    use libc::*;
    l.allow(SYS_write)
        .allow(SYS_close)
        .allow(SYS_exit)
        .allow(SYS_exit_group)
        .allow(SYS_brk)
        .allow(SYS_munmap)
        .allow(SYS_mremap)
        .allow(SYS_rt_sigreturn)
        .allow(SYS_rt_sigprocmask)
        .allow(SYS_sigaltstack)
        .allow(SYS_sched_yield)
        .allow(SYS_clock_gettime)
        .allow(SYS_getpid)
        .allow(SYS_gettid);
    // The allocator: anonymous private memory, and glibc's per-thread heaps (reserved with
    // MAP_NORESERVE, then made accessible with mprotect); never executable.
    let anon = (MAP_PRIVATE | MAP_ANONYMOUS) as u64;
    l.allow_without_bits(SYS_mmap, (2, EXEC), &[(3, anon)])?
        .allow_without_bits(SYS_mmap, (2, EXEC), &[(3, anon | MAP_NORESERVE as u64)])?
        .allow_without_bits(SYS_mprotect, (2, EXEC), &[])?
        .allow_if(SYS_madvise, &[(2, MADV_DONTNEED as u64)])?;
    // std's locks, condition variables, parkers and channels.
    for op in [OP_WAIT, OP_WAKE, OP_WAIT_BITSET] {
        l.allow_if(SYS_futex, &[(1, op | OP_PRIVATE)])?;
    }
    // Debug builds of std check a descriptor is open before closing it.
    l.allow_if(SYS_fcntl, &[(1, F_GETFD as u64)])?;
    // A thread's first HashMap seeds itself.
    l.allow_if(SYS_getrandom, &[(2, GRND_INSECURE as u64)])?;
    // abort(): SIGABRT back to its default action, then raised.
    l.allow_if(SYS_rt_sigaction, &[(0, SIGABRT as u64)])?
        .allow_if(SYS_tgkill, &[(2, SIGABRT as u64)])?;
    Ok(())
}

/// A vCPU thread: `KVM_RUN` and the few vCPU ioctls above, the eventfd writes that wake the
/// event loop and the eventfd reads of a device reset, and the kick signal's return.
fn vcpu(l: &mut AllowList) -> Result<(), seccompiler::Error> {
    for request in [
        KVM_RUN,
        KVM_GET_REGS,
        KVM_SET_REGS,
        KVM_GET_SREGS,
        KVM_TRANSLATE,
        KVM_GET_FPU,
        KVM_GET_VCPU_EVENTS,
        KVM_SET_VCPU_EVENTS,
    ]
    .into_iter()
    .chain(KVM_SAVE_VCPU)
    {
        l.allow_if(libc::SYS_ioctl, &[(1, request)])?;
    }
    // A virtio device reset (the guest writes 0 to Status) drains the queue EventFds (8-byte
    // reads) and disarms the rate limiters' timers (timerfd_settime, flags 0).
    l.allow_if(libc::SYS_read, &[(2, 8)])?
        .allow_if(libc::SYS_timerfd_settime, &[(1, 0)])?;
    Ok(())
}

/// The console output thread: it writes the guest's serial output (in `common`) and waits
/// on a condition variable.
fn console(_: &mut AllowList) -> Result<(), seccompiler::Error> {
    Ok(())
}

/// The API thread: accepts connections on the listening socket it was given, reads
/// requests, writes answers, and hands requests to the VMM thread.
fn api(l: &mut AllowList) -> Result<(), seccompiler::Error> {
    use libc::*;
    l.allow(SYS_recvfrom)
        .allow(SYS_sendto)
        .allow(SYS_epoll_wait)
        .allow(SYS_epoll_ctl)
        .allow_if(SYS_accept4, &[(3, SOCK_CLOEXEC as u64)])?
        .allow_if(SYS_ioctl, &[(1, FIONBIO)])?;
    Ok(())
}

/// The VMM thread (the event loop, from the moment it runs the VM): the devices' I/O, the
/// vCPU kicks and joins, and (in Firecracker's mode) the API requests it executes.
fn vmm(l: &mut AllowList) -> Result<(), seccompiler::Error> {
    use libc::*;
    // The event loop, eventfds, timers; the block device (a seek, then read/write at the
    // position, and fdatasync for a flush), the tap, the serial input; the KVM statistics
    // (pread64 on their descriptors); the file size after PATCH /drives (statx).
    l.allow(SYS_read)
        .allow(SYS_lseek)
        .allow(SYS_pread64)
        .allow(SYS_fdatasync)
        .allow(SYS_statx)
        .allow(SYS_epoll_wait)
        .allow(SYS_epoll_ctl)
        .allow(SYS_timerfd_settime);
    // The vCPU kick (pthread_kill) and the joins of the threads it started.
    l.allow_if(SYS_tgkill, &[(2, SIGRTMIN() as u64)])?
        .allow_if(SYS_futex, &[(1, OP_WAIT_BITSET | OP_CLOCK_REALTIME)])?;
    // The serial input: how much is waiting, and its flags back when the VM ends.
    l.allow_if(SYS_ioctl, &[(1, FIONREAD)])?
        .allow_if(SYS_fcntl, &[(1, F_GETFL as u64)])?
        .allow_if(SYS_fcntl, &[(1, F_SETFL as u64)])?;
    // The terminal, restored when the VM ends.
    l.allow_if(SYS_ioctl, &[(1, TCGETS)])?
        .allow_if(SYS_ioctl, &[(1, TCSETS)])?;
    // The virtio-rng device.
    l.allow_if(SYS_getrandom, &[(2, GRND_NONBLOCK as u64)])?;
    // virtio-vsock: connections to the host's Unix sockets (PATH_port), connections accepted
    // on PATH, and the data both ways (std's `UnixStream::read` is `recv(fd, buf, len, 0)`,
    // a recvfrom with no flags).
    l.allow_if(
        SYS_socket,
        &[
            (0, AF_UNIX as u64),
            (1, (SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC) as u64),
            (2, 0),
        ],
    )?
    .allow(SYS_connect)
    .allow_if(SYS_accept4, &[(3, SOCK_CLOEXEC as u64)])?
    .allow_if(SYS_ioctl, &[(1, FIONBIO)])?
    .allow_if(SYS_sendto, &[(3, (MSG_NOSIGNAL | MSG_DONTWAIT) as u64)])?
    .allow_if(SYS_recvfrom, &[(3, 0)])?
    .allow(SYS_shutdown);
    // --metrics: the file is written afresh under a temporary name, then renamed.
    l.allow_if(
        SYS_openat,
        &[(2, (O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC) as u64)],
    )?
    .allow(SYS_rename);
    // Firecracker's mode: PATCH /drives opens the new backing file (read-write or read-only),
    // and the API socket's file is removed at the end.
    for flags in [O_RDWR | O_CLOEXEC, O_RDONLY | O_CLOEXEC] {
        l.allow_if(SYS_openat, &[(2, flags as u64)])?;
    }
    l.allow(SYS_unlink);
    // Snapshots: the VM's state and dirty log, the memory file (opened read-write, sized,
    // written at offsets, synced) and the state file (written like the metrics, then synced).
    for request in KVM_SAVE_VM {
        l.allow_if(SYS_ioctl, &[(1, request)])?;
    }
    l.allow_if(SYS_openat, &[(2, (O_RDWR | O_CREAT | O_CLOEXEC) as u64)])?
        .allow(SYS_ftruncate)
        .allow(SYS_pwrite64)
        .allow(SYS_fsync);
    Ok(())
}

/// The built-in allow-list of `kind`.
pub fn builtin(kind: Kind) -> Result<AllowList, seccompiler::Error> {
    let mut l = AllowList::default();
    common(&mut l)?;
    match kind {
        Kind::Vmm => vmm(&mut l)?,
        Kind::Api => api(&mut l)?,
        Kind::Vcpu => vcpu(&mut l)?,
        Kind::Console => console(&mut l)?,
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_in_the_readme_are_these() {
        let counts: Vec<(&str, usize, usize)> = Kind::ALL
            .into_iter()
            .map(|k| {
                let l = builtin(k).unwrap();
                (k.name(), l.syscalls(), l.rules())
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("vmm", 43, 61),
                ("api", 28, 31),
                ("vcpu", 25, 44),
                ("console", 22, 25)
            ],
            "update README.md's seccomp table with these (system calls, rules)"
        );
    }

    #[test]
    fn kvm_ioctl_numbers_are_the_kernels() {
        // From linux/kvm.h on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_GET_FPU, 0x81a0_ae8c);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(KVM_SAVE_VCPU[0], 0x8004_ae98, "KVM_GET_MP_STATE");
        assert_eq!(KVM_SAVE_VCPU[1], 0x9000_aea4, "KVM_GET_XSAVE");
        assert_eq!(KVM_SAVE_VCPU[2], 0x9000_aecf, "KVM_GET_XSAVE2");
        assert_eq!(KVM_SAVE_VCPU[3], 0x8188_aea6, "KVM_GET_XCRS");
        assert_eq!(KVM_SAVE_VCPU[5], 0x8400_ae8e, "KVM_GET_LAPIC");
        assert_eq!(KVM_SAVE_VCPU[6], 0xaea3, "KVM_GET_TSC_KHZ");
        assert_eq!(KVM_SAVE_VCPU[7], 0xc008_ae91, "KVM_GET_CPUID2");
        assert_eq!(KVM_SAVE_VCPU[8], 0xc008_ae88, "KVM_GET_MSRS");
        assert_eq!(KVM_SAVE_VM[0], 0xc208_ae62, "KVM_GET_IRQCHIP");
        assert_eq!(KVM_SAVE_VM[1], 0x8070_ae9f, "KVM_GET_PIT2");
        assert_eq!(KVM_SAVE_VM[2], 0x8030_ae7c, "KVM_GET_CLOCK");
        assert_eq!(KVM_SAVE_VM[3], 0x4010_ae42, "KVM_GET_DIRTY_LOG");
    }

    #[test]
    fn no_thread_may_start_programs_and_only_the_vmm_thread_opens_files_or_sockets() {
        for kind in Kind::ALL {
            let l = builtin(kind).unwrap();
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_ptrace,
                libc::SYS_open,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_kill,
            ] {
                assert!(!l.allows(forbidden), "{kind:?} allows {forbidden}");
            }
            // The SIGSYS report needs these in every filter.
            assert!(l.allows(libc::SYS_write) && l.allows(libc::SYS_exit_group));
            assert!(l.rules() >= l.syscalls());
            l.compile().unwrap();
        }
        for kind in [Kind::Api, Kind::Vcpu, Kind::Console] {
            let l = builtin(kind).unwrap();
            for forbidden in [libc::SYS_openat, libc::SYS_socket, libc::SYS_connect] {
                assert!(!l.allows(forbidden), "{kind:?} allows {forbidden}");
            }
        }
        let vcpu = builtin(Kind::Vcpu).unwrap();
        assert!(!vcpu.allows(libc::SYS_lseek) && !vcpu.allows(libc::SYS_pread64));
        assert!(builtin(Kind::Vmm).unwrap().allows(libc::SYS_lseek));
    }

    /// A classic-BPF interpreter for what seccompiler and the search tree emit: the
    /// action a program returns for one `struct seccomp_data`.
    fn run(program: &[seccompiler::sock_filter], data: &[u8; 64]) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = &program[pc];
            let k = i.k;
            pc += 1;
            match i.code {
                0x20 => {
                    let at = k as usize;
                    a = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => a &= k,
                0x05 => pc += k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == k,
                        0x25 => a > k,
                        0x35 => a >= k,
                        _ => a & k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return k,
                other => panic!("opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    #[test]
    fn the_searched_filters_decide_as_seccompilers_linear_ones() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for kind in Kind::ALL {
            let searched = builtin(kind).unwrap().compile().unwrap();
            let linear = builtin(kind).unwrap().compile_linear().unwrap();
            assert_ne!(searched, linear, "{kind:?}: the search tree was not used");
            // Argument values that matter: every constant the programs compare with or mask
            // by, and a few that none does.
            let mut values: Vec<u64> = linear.iter().map(|i| u64::from(i.k)).collect();
            values.extend([0, 1, u64::MAX, 1 << 32, 0xffff_ffff]);
            values.sort_unstable();
            values.dedup();
            let listed: Vec<u32> = linear
                .iter()
                .filter(|i| i.code == 0x15)
                .map(|i| i.k)
                .collect();
            let mut cases = 0;
            for round in 0..40_000u32 {
                let mut data = [0u8; 64];
                let nr = if round % 2 == 0 {
                    listed[next() as usize % listed.len()]
                } else {
                    (next() % 600) as u32
                };
                let arch: u32 = if round % 50 == 0 {
                    0x4000_0003
                } else {
                    0xc000_003e
                };
                data[..4].copy_from_slice(&nr.to_le_bytes());
                data[4..8].copy_from_slice(&arch.to_le_bytes());
                for arg in 0..6 {
                    let lo = values[next() as usize % values.len()] & 0xffff_ffff;
                    let hi = if next() % 4 == 0 { next() >> 32 } else { 0 };
                    let at = 16 + 8 * arg;
                    data[at..at + 8].copy_from_slice(&(lo | hi << 32).to_le_bytes());
                }
                assert_eq!(
                    run(&searched, &data),
                    run(&linear, &data),
                    "{kind:?}: system call {nr}, data {data:?}"
                );
                cases += 1;
            }
            assert_eq!(cases, 40_000);
        }
    }

    #[test]
    fn userfaultfd_is_needed_by_no_confined_thread() {
        // The Uffd backend creates and registers its userfaultfd and sends it to the handler
        // while restoring, before the VMM thread confines itself; afterwards the VMM thread only
        // watches the handler's connection (epoll_ctl, read) and vCPU faults wait in the
        // kernel. So no list allows the userfaultfd system call.
        for kind in Kind::ALL {
            assert!(
                !builtin(kind).unwrap().allows(libc::SYS_userfaultfd),
                "{}",
                kind.name()
            );
        }
    }

    #[test]
    fn the_vmm_thread_reads_vsock_streams() {
        // The vsock muxer reads host connections with std's `UnixStream::read`, which is
        // recvfrom(2); without it the first guest connection killed petrel (code 148).
        assert!(builtin(Kind::Vmm).unwrap().allows(libc::SYS_recvfrom));
    }
}

//! The kernel command line, built with linux-loader's [`Cmdline`] and written at
//! [`CMDLINE_START`].

use linux_loader::cmdline::Cmdline;
use petrel_guest_mem::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use petrel_guest_mem::GuestRam;

use crate::linux::LoadedKernel;
use crate::{Error, Result};

/// What Petrel adds to the command line on hosts whose KVM runs guest kernel code in its
/// instruction emulator (see `../shared/HOST-KVM.md`): keep Linux away from instructions that
/// emulator cannot run, and skip boot work that costs far more there than on hardware
/// where no guest can notice in practice:
///
/// - `pty.legacy_count=0`: no legacy BSD ptys (`/dev/ptyp0`...), which a kernel with
///   `CONFIG_LEGACY_PTYS` (tinyconfig's default: 256) spends about 40 s registering under
///   emulation. Programs have used Unix98 ptys (`/dev/ptmx`, `/dev/pts`) for two decades; a
///   guest that still opens `/dev/ptyXX` is vanishingly rare, and `--host-compat off`
///   gives it back. Kernels without legacy ptys ignore the parameter.
/// - `110,111` in `clearcpuid=`: `X86_FEATURE_SYSCALL32` and `X86_FEATURE_SYSENTER32`
///   (Linux's `arch/x86/include/asm/cpufeatures.h`: word 3, bits 14 and 15), flags with no
///   name, so the numbers. There a SYSCALL from 32-bit compat mode enters the guest kernel at
///   CPL0 on the user stack and the guest double-faults, and a 32-bit program whose vDSO
///   uses SYSENTER (Intel CPUs) dies of a general protection fault in the vDSO; without the
///   flags the 32-bit vDSO makes its system calls with `int $0x80`, which a guest kernel can
///   take (see `docs/guest-kernel.md` for the patch that makes user-mode system calls work
///   there).
///
/// - `clocksource=kvm-clock`: keep timekeeping on kvmclock. Linux moves to the TSC once it
///   trusts it (`Switched to clocksource tsc`), but there the guest reads the host's TSC
///   unchanged: the TSC a restore writes (`IA32_TSC` through `KVM_SET_MSRS`, which hardware
///   KVM turns into a TSC offset) does not reach it, so a restored guest's clock leaps ahead by
///   the time since the snapshot, and a kernel with periodic ticks then runs every missed tick
///   in the emulator (about 6% of that time: a snapshot ten minutes old answered after 38 s).
///   kvmclock is restored with `KVM_SET_CLOCK` and resumes where the snapshot stopped it.
///
/// These words come after the user's command line, so they win over the same parameters
/// given there; `--host-compat off` leaves them all out.
pub const EMULATED_HOST_CMDLINE: &str = "pty.legacy_count=0 clocksource=kvm-clock noxsave nosmap \
    nosmep nofsgsbase \
    clearcpuid=popcnt,cx16,smap,smep,fsgsbase,pcid,invpcid,rdrand,rdseed,rdpid,movbe,erms,fsrm,\
    umip,avx,avx2,avx512f,xsave,110,111";

/// Room for `kernel`'s command line, terminating NUL included: the smaller of what the kernel
/// accepts (`cmdline_size` + 1) and what the layout reserves ([`CMDLINE_MAX_SIZE`]).
pub fn cmdline_capacity(kernel: &LoadedKernel) -> usize {
    // CMDLINE_MAX_SIZE is 64 KiB: it fits in usize.
    kernel.cmdline_max.min(CMDLINE_MAX_SIZE as usize)
}

/// Checks `cmdline` (leading and trailing whitespace removed) against `capacity` and
/// linux-loader's rules (printable ASCII only), and returns it NUL-terminated.
pub fn build_cmdline(cmdline: &str, capacity: usize) -> Result<Vec<u8>> {
    let trimmed = cmdline.trim();
    let max = capacity.saturating_sub(1);
    if trimmed.len() > max {
        return Err(Error::CmdlineTooLong {
            len: trimmed.len(),
            max,
        });
    }
    let mut built = Cmdline::new(capacity).map_err(|source| Error::BuildCmdline { source })?;
    if !trimmed.is_empty() {
        built
            .insert_str(trimmed)
            .map_err(|source| Error::BuildCmdline { source })?;
    }
    let cstring = built
        .as_cstring()
        .map_err(|source| Error::BuildCmdline { source })?;
    Ok(cstring.into_bytes_with_nul())
}

/// Writes `cmdline` for `kernel` at [`CMDLINE_START`] and returns its length without the NUL.
pub fn write_cmdline(ram: &GuestRam, kernel: &LoadedKernel, cmdline: &str) -> Result<usize> {
    let bytes = build_cmdline(cmdline, cmdline_capacity(kernel))?;
    ram.write(CMDLINE_START, &bytes)
        .map_err(|source| Error::WriteGuestMemory {
            what: "kernel command line",
            addr: CMDLINE_START,
            source,
        })?;
    Ok(bytes.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::{load_kernel_image, KernelKind};
    use crate::test_images;
    use std::path::Path;

    fn elf_kernel(ram: &GuestRam) -> LoadedKernel {
        load_kernel_image(ram, &test_images::elf(None), Path::new("vmlinux")).unwrap()
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let k = elf_kernel(&ram);
        let len = write_cmdline(&ram, &k, "  console=ttyS0 reboot=k  ").unwrap();
        assert_eq!(len, 22);
        let mut back = [0xffu8; 23];
        ram.read(CMDLINE_START, &mut back).unwrap();
        assert_eq!(&back, b"console=ttyS0 reboot=k\0");
    }

    #[test]
    fn empty_cmdline_is_just_a_nul() {
        assert_eq!(build_cmdline("", 16).unwrap(), b"\0");
        assert_eq!(build_cmdline("   ", 16).unwrap(), b"\0");
    }

    #[test]
    fn capacity_is_the_smaller_of_kernel_and_layout() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let mut k = elf_kernel(&ram);
        assert_eq!(k.kind, KernelKind::Elf);
        assert_eq!(cmdline_capacity(&k), 2048);
        k.cmdline_max = usize::MAX;
        assert_eq!(cmdline_capacity(&k), CMDLINE_MAX_SIZE as usize);
    }

    #[test]
    fn too_long_cmdline_names_length_and_limit() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let k = elf_kernel(&ram);
        assert!(write_cmdline(&ram, &k, &"a".repeat(2047)).is_ok());
        let err = write_cmdline(&ram, &k, &"a".repeat(2048)).unwrap_err();
        assert!(matches!(
            err,
            Error::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("2048") && msg.contains("2047"), "{msg}");
    }

    #[test]
    fn invalid_characters_are_refused() {
        let err = build_cmdline("console=ttyS0\u{7}", 64).unwrap_err();
        assert!(matches!(err, Error::BuildCmdline { .. }));
        assert!(build_cmdline("root=/dev/vda\0init=/x", 64).is_err());
        assert!(build_cmdline("quiet\u{e9}", 64).is_err());
    }

    #[test]
    fn emulated_host_cmdline_is_one_line_of_words() {
        assert!(!EMULATED_HOST_CMDLINE.contains('\n'));
        assert!(EMULATED_HOST_CMDLINE.contains("clearcpuid=popcnt,cx16,"));
        assert!(EMULATED_HOST_CMDLINE.ends_with("avx512f,xsave,110,111"));
        // Linux copies clearcpuid's value into a 128-byte buffer (cpu_parse_early_param).
        let clear = EMULATED_HOST_CMDLINE
            .split(' ')
            .find_map(|w| w.strip_prefix("clearcpuid="))
            .unwrap();
        assert!(clear.len() < 128, "{} bytes", clear.len());
        assert!(!EMULATED_HOST_CMDLINE.contains("  "));
        // The one time saver: no legacy BSD ptys (40 s of an emulated boot).
        let words: Vec<&str> = EMULATED_HOST_CMDLINE.split(' ').collect();
        assert_eq!(words[0], "pty.legacy_count=0");
        assert_eq!(words.iter().filter(|w| w.starts_with("pty.")).count(), 1);
        // Restored guests keep their time (kvmclock, not the host's TSC).
        assert!(words.contains(&"clocksource=kvm-clock"));
    }
}

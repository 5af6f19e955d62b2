//! `petrel-jailer`: starts a VMM in a jail, with Firecracker's jailer flags, so that tools
//! which drive Firecracker's jailer (Kata Containers, firecracker-go-sdk) can drive Petrel.
//!
//! ```text
//! petrel-jailer --id ID --exec-file PATH --uid UID --gid GID [--chroot-base-dir DIR]
//!               [--netns PATH] [--daemonize] [--new-pid-ns] [--cgroup-version 1|2]
//!               [--cgroup FILE=VALUE ...] [--parent-cgroup PATH]
//!               [--resource-limit fsize=N|no-file=N ...] [-- VMM ARGS...]
//! ```
//!
//! It closes inherited descriptors above 2 and clears the environment first, checks every
//! flag and the exec file (a statically linked ELF: the jail has no `ld.so`), then builds
//! the jail and execs the VMM in it ([`jail`] has the steps). Bad input is one line naming
//! the input, exit 2; a step the host refuses is one line naming the step, exit 1.

mod cgroup;
mod cli;
mod elf;
mod error;
mod jail;
mod sys;

use std::process::ExitCode;

use error::{JailerError, EXIT_FAILURE};

fn main() -> ExitCode {
    // Before anything else opens a descriptor: none of the caller's may reach the VMM.
    if let Err(e) = sys::close_fds_from_3() {
        return fail(&JailerError::step("cannot close inherited descriptors", e));
    }
    let args: Vec<_> = std::env::args_os().collect();
    // The VMM gets an empty environment at exec; nothing here reads one either.
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(Ok(help)) => {
            print!("{help}");
            return ExitCode::SUCCESS;
        }
        Err(Err(e)) => return fail(&e),
    };
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match jail::run(&config) {
        // Only the parent of a new PID namespace returns: the VMM runs in its child.
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `e` as one line on stderr and gives its exit code.
fn fail(e: &JailerError) -> ExitCode {
    use std::error::Error as _;
    let mut line = format!("petrel-jailer: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    eprintln!("{line}");
    let code = e.exit_code();
    debug_assert!(code == error::EXIT_BAD_INPUT || code == EXIT_FAILURE);
    ExitCode::from(code)
}

//! `petrel`: a virtual machine monitor for Linux KVM on x86_64.
//!
//! ```text
//! petrel --kernel PATH [--initrd PATH] [--cmdline STR] [--mem 256M] [--vcpus N]
//!        [--serial stdio|file:PATH|none] [--host-compat on|off] [--exit-stats[=json]]
//! petrel demo
//! petrel run --raw FILE --real-mode [--load-addr ADDR] [--entry ADDR] [--reg rax=2 ...]
//!            [--max-exits N] [--exit-stats[=table|json]] [--mem SIZE]
//! ```

mod cli;

use std::process::ExitCode;

use clap::Parser;
use petrel_vmm::{StatsFormat, StopReason, EXIT_BAD_INPUT};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let (config, stats) = match cli.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e, e.exit_code()),
    };
    match petrel_vmm::run(&config) {
        Ok(summary) => {
            match &summary.stop {
                StopReason::GuestFault { what, details } => {
                    eprintln!("petrel: guest error: {what}\n{details}");
                }
                StopReason::VmmError(msg) => eprintln!("petrel: error: {msg}"),
                StopReason::ExitLimit(n) => {
                    eprintln!("petrel: stopped after {n} exits (--max-exits)")
                }
                _ => {}
            }
            if let Some(sig) = summary.signal {
                eprintln!("petrel: stopped the guest on {sig}");
            }
            match stats {
                Some(StatsFormat::Table) => eprint!("{}", summary.stats.table()),
                Some(StatsFormat::Json) => println!("{}", summary.stats.json()),
                None => {}
            }
            ExitCode::from(summary.exit_code() as u8)
        }
        Err(e) => {
            let code = e.exit_code();
            fail(&e, code)
        }
    }
}

/// Prints an error with its whole chain of causes, and returns `code`.
fn fail(e: &dyn std::error::Error, code: i32) -> ExitCode {
    let mut msg = format!("petrel: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    eprintln!("{msg}");
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT as u8))
}

//! `petrel`: a virtual machine monitor for Linux KVM on x86_64.
//!
//! ```text
//! petrel --kernel PATH [--initrd PATH] [--cmdline STR] [--mem 256M] [--vcpus N]
//!        [--serial stdio|file:PATH|none] [--host-compat on|off] [--exit-stats[=json]]
//!        [--boot-timer] [--metrics PATH]
//! petrel demo
//! petrel run --raw FILE --real-mode [--load-addr ADDR] [--entry ADDR] [--reg rax=2 ...]
//!            [--max-exits N] [--exit-stats[=table|json]] [--mem SIZE]
//! ```

mod cli;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use petrel_vmm::{RunSummary, StatsFormat, StopReason, Timeline, EXIT_BAD_INPUT};

fn main() -> ExitCode {
    let timeline = Timeline::new(Instant::now());
    let cli = cli::Cli::parse();
    let (config, outputs) = match cli.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e, e.exit_code()),
    };
    timeline.mark("command line parsed");
    match petrel_vmm::run_with_timeline(&config, timeline) {
        Ok(summary) => {
            report_stop(&summary);
            summary.timeline.mark("process end");
            match outputs.stats {
                Some(StatsFormat::Table) => eprint!("{}", summary.stats.table()),
                Some(StatsFormat::Json) => println!("{}", summary.stats.json()),
                None => {}
            }
            if outputs.boot_timer {
                eprint!("{}", summary.timeline.table());
            }
            if let Some(path) = &outputs.metrics {
                if let Err(e) = petrel_vmm::metrics::write_atomically(path, &metrics_json(&summary))
                {
                    eprintln!("petrel: cannot write metrics to {}: {e}", path.display());
                    return ExitCode::from(petrel_vmm::EXIT_FAILURE as u8);
                }
            }
            ExitCode::from(summary.exit_code() as u8)
        }
        Err(e) => {
            let code = e.exit_code();
            fail(&e, code)
        }
    }
}

fn report_stop(summary: &RunSummary) {
    match &summary.stop {
        StopReason::GuestFault { what, details } => {
            eprintln!("petrel: guest error: {what}\n{details}");
        }
        StopReason::VmmError(msg) => eprintln!("petrel: error: {msg}"),
        StopReason::ExitLimit(n) => eprintln!("petrel: stopped after {n} exits (--max-exits)"),
        _ => {}
    }
    if let Some(sig) = summary.signal {
        eprintln!("petrel: stopped the guest on {sig}");
    }
}

/// The `--metrics` document: why the VM stopped, the boot timeline, and the exit statistics.
fn metrics_json(summary: &RunSummary) -> String {
    let doc = serde_json::json!({
        "running": false,
        "stop": format!("{:?}", summary.stop),
        "exit_code": summary.exit_code(),
        "timeline": summary.timeline.events(),
        "exit_stats": summary.stats,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Prints an error with its whole chain of causes, and returns `code`.
fn fail(e: &dyn std::error::Error, code: i32) -> ExitCode {
    eprintln!("petrel: {}", petrel_vmm::error_chain(e));
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT as u8))
}

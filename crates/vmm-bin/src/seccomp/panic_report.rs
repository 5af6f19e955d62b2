//! The panic report of a confined thread.
//!
//! A panic in a device is caught (on a vCPU thread by its runner, on the VMM thread by the
//! event loop) and ends the VM with a VMM error and exit code 1; but Rust's panic hook runs
//! first, under the thread's filter. With `RUST_BACKTRACE` set, the default hook resolves a
//! backtrace: it calls `getcwd`, opens `/proc/self/maps` and the executable and maps the
//! latter, none of which any filter allows, so the caught panic ended Petrel with exit code
//! 148 instead. On a thread whose filter is installed, [`install`]'s hook writes what the
//! default hook writes, the thread, the location and the message, with one `write(2)` and
//! no backtrace (the line says why); every other thread keeps the hook it had.

use std::cell::Cell;
use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::Once;

thread_local! {
    /// Whether this thread's filter is installed.
    static CONFINED: Cell<bool> = const { Cell::new(false) };
}

/// Records that the calling thread's filter is installed.
pub fn mark_confined() {
    CONFINED.with(|c| c.set(true));
}

/// Whether the calling thread's filter is installed.
pub fn is_confined() -> bool {
    CONFINED.with(Cell::get)
}

/// Installs the hook (once), in front of the one already set.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if is_confined() {
                let _ = std::io::stderr().write_all(report(info).as_bytes());
            } else {
                previous(info);
            }
        }));
    });
}

/// What the hook writes for `info` on a confined thread: the default hook's lines, and why
/// there is no backtrace. Lines end in CR LF while the terminal is raw (an interactive guest
/// console), where a bare LF would not return the cursor.
fn report(info: &PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let location = info
        .location()
        .map_or_else(|| "an unknown location".to_string(), ToString::to_string);
    let text = format!(
        "\nthread '{name}' panicked at {location}:\n{message}\nnote: no backtrace: this \
         thread runs under its seccomp filter, which does not allow reading one\n"
    );
    if crate::terminal::is_raw() {
        text.replace('\n', "\r\n")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_report_names_the_thread_the_place_and_the_message() {
        let seen = Arc::new(Mutex::new(String::new()));
        let sink = seen.clone();
        let previous = std::panic::take_hook();
        // The hook is the process's: keep only this test's thread's report.
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("petrel-vcpu7") {
                *sink.lock().unwrap() = report(info);
            }
        }));
        let joined = std::thread::Builder::new()
            .name("petrel-vcpu7".into())
            .spawn(|| panic!("boom {}", 42))
            .unwrap()
            .join();
        std::panic::set_hook(previous);
        assert!(joined.is_err());
        let text = seen.lock().unwrap().clone();
        assert!(
            text.starts_with("\nthread 'petrel-vcpu7' panicked at crates/vmm-bin/src/seccomp/"),
            "{text}"
        );
        assert!(text.contains(":\nboom 42\nnote: no backtrace"), "{text}");
    }

    #[test]
    fn threads_start_unconfined() {
        let confined = std::thread::spawn(|| {
            let before = is_confined();
            mark_confined();
            (before, is_confined())
        })
        .join()
        .unwrap();
        assert_eq!(confined, (false, true));
        assert!(!std::thread::spawn(is_confined).join().unwrap());
    }
}

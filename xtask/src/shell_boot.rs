//! The boot-test scenario `serial-shell` (in the default set): an interactive shell on the
//! guest's serial console, driven as a user at a terminal drives it.
//!
//! xtask opens a pseudo-terminal and starts `petrel --serial stdio` with the terminal's
//! slave side as its stdin, stdout and controlling terminal (in a session of its own, so that
//! petrel is in the terminal's foreground and puts it in raw mode, as at a real terminal).
//! The guest's `/init` (busybox from a read-only virtio-blk root) checks that its console is
//! a terminal, prints [`SHELL_READY`], and runs `sh -i` on the console with the prompt
//! [`PROMPT`]. On the master side xtask waits for the cue and the prompt, types
//! [`TYPED_COMMAND`] and Enter in one write (more than the UART's 16-byte receive FIFO), waits
//! for the line [`TYPED_OUTPUT`] (which only the shell's evaluation can print: the guest's
//! echo of the typed characters is the command itself), then, at the next prompt, types
//! [`TYPED_EXIT`]. The script then reports the shell's exit status as a check (it must be
//! the typed one) and resets the guest: petrel must exit 0.
//!
//! Everything read from the master is the serial log (`target/boot-test/serial-shell.log`),
//! judged as every scenario's is; each step's time is reported.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::guest_script;
use crate::host;
use crate::initramfs::MARKER;
use crate::scenario::{
    evaluate, judge_serial, kill_vmm, petrel_command, report, Exit, Outcome, Scenario,
    RUN_INIT_LINE,
};
use crate::virtio_boot::read_only_root_scenario;

/// The scenario's name.
pub const SHELL_SCENARIO: &str = "serial-shell";

/// The serial-console scenarios in the default set.
pub const SCENARIOS: &[&str] = &[SHELL_SCENARIO];

/// What the guest prints just before it starts the interactive shell.
pub const SHELL_READY: &str = "PETREL-SHELL-READY";

/// The interactive shell's prompt (its `PS1`).
pub const PROMPT: &str = "petrel-sh# ";

/// The command xtask types at the first prompt.
pub const TYPED_COMMAND: &str = "echo $((6*7))-typed";

/// The line only the shell's evaluation of [`TYPED_COMMAND`] prints.
pub const TYPED_OUTPUT: &str = "42-typed";

/// The command xtask types at the next prompt: the shell ends with status 7.
pub const TYPED_EXIT: &str = "exit 7";

/// The guest's init script body.
const SHELL_SCRIPT: &str = r#"if [ -t 0 ] && [ -t 1 ]; then
    ok console-tty "the console is a terminal on stdin and stdout"
else
    fail console-tty "stdin or stdout is not a terminal"
fi
echo PETREL-SHELL-READY
PS1='petrel-sh# ' sh -i
st=$?
if [ "$st" = 7 ]; then
    ok shell-exit "the interactive shell ended with the typed status $st"
else
    fail shell-exit "the interactive shell ended with status $st, not the typed 7"
fi"#;

/// How long each step may wait for what it waits for, once the previous one is done.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// How long one `poll` of the terminal's master side waits.
const POLL_MS: i32 = 50;

/// Lines of the logs to print when the scenario fails.
const TAIL: usize = 30;

/// What a step waits for in the terminal's output (after the previous step's match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// This text anywhere (a prompt has no line end after it).
    Text(&'static str),
    /// A whole line that is exactly this, its end included.
    Line(&'static str),
}

/// One step of the session: wait for something, then type something (maybe nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What it waits for.
    pub wait: Wait,
    /// What is then typed (with Enter, a carriage return, as a terminal sends it), if
    /// anything.
    pub then_type: Option<&'static str>,
}

/// The session: the cue, the prompt, the command, its output, the prompt, `exit`.
pub const STEPS: &[Step] = &[
    Step {
        wait: Wait::Text(SHELL_READY),
        then_type: None,
    },
    Step {
        wait: Wait::Text(PROMPT),
        then_type: Some(TYPED_COMMAND),
    },
    Step {
        wait: Wait::Line(TYPED_OUTPUT),
        then_type: None,
    },
    Step {
        wait: Wait::Text(PROMPT),
        then_type: Some(TYPED_EXIT),
    },
];

/// Where `wait` is first satisfied in `text`: the offset just past the match.
pub fn find(wait: Wait, text: &str) -> Option<usize> {
    match wait {
        Wait::Text(t) => text.find(t).map(|i| i + t.len()),
        // Line ends as a terminal shows them: `\r\n`, or `\r\r\n` where the host terminal
        // also turns the guest's `\n` into `\r\n` (ONLCR, which petrel leaves on).
        Wait::Line(line) => text.match_indices(line).find_map(|(i, _)| {
            let before = text[..i].trim_end_matches('\r');
            let starts_line = before.is_empty() || before.ends_with('\n');
            let ends_line = text[i + line.len()..]
                .trim_start_matches('\r')
                .starts_with('\n');
            (starts_line && ends_line).then_some(i + line.len())
        }),
    }
}

/// Follows the session through the terminal's output: which steps are done, where, when.
#[derive(Debug, Default)]
pub struct Session {
    /// How many of [`STEPS`] are done.
    pub done: usize,
    /// The offset in the output after the last match.
    cursor: usize,
    /// When each done step matched, from the VMM's start.
    pub times: Vec<Duration>,
}

impl Session {
    /// Looks for the next steps in `text` (all the output so far) at time `now`; returns what
    /// to type now, for each step that matched, in order.
    pub fn advance(&mut self, text: &str, now: Duration) -> Vec<&'static str> {
        let mut typed = Vec::new();
        while let Some(step) = STEPS.get(self.done) {
            let Some(end) = find(step.wait, &text[self.cursor..]) else {
                break;
            };
            self.cursor += end;
            self.done += 1;
            self.times.push(now);
            typed.extend(step.then_type);
        }
        typed
    }

    /// Whether every step is done.
    pub fn finished(&self) -> bool {
        self.done == STEPS.len()
    }

    /// When the last step matched (or `start` if none did).
    fn last_progress(&self) -> Duration {
        self.times.last().copied().unwrap_or_default()
    }
}

/// What the host saw, in words, for each step: a note when it happened, a failure for the
/// first that did not.
pub fn step_report(session: &Session) -> (Vec<String>, Option<String>) {
    let what = |s: &Step| match s.wait {
        Wait::Text(t) => format!("`{}`", t.trim_end()),
        Wait::Line(l) => format!("the line `{l}`"),
    };
    let notes = STEPS
        .iter()
        .zip(&session.times)
        .map(|(s, t)| {
            let typed = s
                .then_type
                .map(|c| format!(", then typed `{c}`"))
                .unwrap_or_default();
            format!("host: saw {} at {:.1} s{typed}", what(s), t.as_secs_f64())
        })
        .collect();
    let failure = STEPS.get(session.done).map(|s| {
        format!(
            "the host never saw {} on the terminal (step {} of {})",
            what(s),
            session.done + 1,
            STEPS.len()
        )
    });
    (notes, failure)
}

/// The serial-console scenarios named in `names`, booting `vmlinux` from a fresh read-only
/// root disk in `dir`.
pub fn scenarios(names: &[&str], vmlinux: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    if !names.contains(&SHELL_SCENARIO) {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let image = dir.join(format!("{SHELL_SCENARIO}.ext4"));
    let script = guest_script::init_script(SHELL_SCRIPT);
    guest_script::build_rootfs(&image, &script, &[], 16)?;
    let mut s = read_only_root_scenario(SHELL_SCENARIO, vmlinux, &image);
    s.checks = vec!["console-tty", "shell-exit"];
    s.terminal = true;
    Ok(vec![s])
}

/// A pseudo-terminal: (master, slave), both close-on-exec.
fn open_pty() -> std::io::Result<(OwnedFd, fs::File)> {
    // SAFETY: posix_openpt takes flags and returns a new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we just opened and own.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt and unlockpt take the master's descriptor; ptsname_r writes a
    // NUL-terminated name into `name`, at most its length.
    let ok = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)?;
    Ok((master, slave))
}

/// Starts `cmd` with the terminal's slave side as stdin and stdout, stderr to `vmm_log`, in
/// a new session whose controlling terminal it is (so petrel is in its foreground group and
/// the leader of its own process group, which [`kill_vmm`] kills).
fn spawn_on_terminal(cmd: &mut Command, slave: fs::File, vmm_log: &Path) -> Result<Child> {
    let err = fs::File::create(vmm_log).ctx(|| format!("creating {}", vmm_log.display()))?;
    let stdin = slave.try_clone().ctx(|| "duplicating a file".into())?;
    cmd.stdin(stdin).stdout(slave).stderr(Stdio::from(err));
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid and
    // ioctl, which are async-signal-safe; fd 0 is the terminal's slave side by then.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .ctx(|| format!("starting `{}`", host::describe(cmd)))
}

/// Reads what the master side has now (waiting up to [`POLL_MS`]); `None` once the slave
/// side is closed everywhere.
fn read_master(master: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    let mut pfd = libc::pollfd {
        fd: master.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the length given.
    let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    if n <= 0 {
        return Some(0);
    }
    if pfd.revents & libc::POLLIN == 0 {
        // POLLHUP alone: nobody has the slave side open any more.
        return None;
    }
    // SAFETY: reads at most buf.len() bytes into buf, which we own.
    let got = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    // EIO: the slave side closed.
    usize::try_from(got).ok().filter(|&g| g > 0)
}

/// Types `line` and Enter on the master side, in one write.
fn type_line(master: &OwnedFd, line: &str) -> std::io::Result<()> {
    let mut f = fs::File::from(master.try_clone()?);
    f.write_all(format!("{line}\r").as_bytes())
}

/// Runs the scenario `s` with `petrel` on a pseudo-terminal.
pub fn run(petrel: &Path, s: &Scenario, log_dir: &Path, timeout: Duration) -> Result<Outcome> {
    fs::create_dir_all(log_dir).ctx(|| format!("creating {}", log_dir.display()))?;
    let serial_log = log_dir.join(format!("{}.log", s.name));
    let vmm_log = log_dir.join(format!("{}.vmm-output.log", s.name));
    let (master, slave) = open_pty().ctx(|| "opening a pseudo-terminal".into())?;
    let mut cmd = petrel_command(petrel, s, &serial_log);
    println!(
        "==> {}: {} (on a pseudo-terminal)",
        s.name,
        host::describe(&cmd)
    );
    let mut log =
        fs::File::create(&serial_log).ctx(|| format!("creating {}", serial_log.display()))?;
    let interrupts = host::InterruptGuard::install();
    let start = Instant::now();
    let mut child = spawn_on_terminal(&mut cmd, slave, &vmm_log)?;
    // Our copies of the slave side go with the command, so the master sees the hang-up.
    drop(cmd);
    let mut out = Vec::new();
    let mut session = Session::default();
    let (mut run_init, mut marker) = (None, None);
    let mut buf = [0u8; 4096];
    let mut failures = Vec::new();
    let mut open = true;
    let exit = loop {
        if open {
            match read_master(&master, &mut buf) {
                Some(n) => {
                    out.extend_from_slice(&buf[..n]);
                    let _ = log.write_all(&buf[..n]);
                }
                None => open = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(POLL_MS as u64));
        }
        let now = start.elapsed();
        // One character a byte, so that the session's offsets stay put as the output grows.
        let text: String = out
            .iter()
            .map(|&b| if b.is_ascii() { char::from(b) } else { '?' })
            .collect();
        if run_init.is_none() && text.contains(RUN_INIT_LINE) {
            run_init = Some(now);
        }
        if marker.is_none() && text.contains(MARKER) {
            marker = Some(now);
        }
        for line in session.advance(&text, now) {
            if let Err(e) = type_line(&master, line) {
                failures.push(format!("typing `{line}` failed: {e}"));
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break Exit::from_status(status),
            Ok(None) => {}
            Err(e) => {
                kill_vmm(&mut child);
                return Err(e).ctx(|| "waiting for the VMM".into());
            }
        }
        if let Some(sig) = interrupts.caught() {
            kill_vmm(&mut child);
            println!(
                "{}: interrupted by signal {sig}; killed the VMM's process group; logs: {}, {}",
                s.name,
                serial_log.display(),
                vmm_log.display()
            );
            std::process::exit(128 + sig);
        }
        // Once the shell is up, each step has its own limit.
        let stuck = session.done > 0
            && !session.finished()
            && now.saturating_sub(session.last_progress()) >= STEP_LIMIT;
        if now >= timeout || stuck {
            kill_vmm(&mut child);
            break Exit::TimedOut(now);
        }
    };
    drop(interrupts);
    // What the guest wrote last, if petrel's exit left it unread.
    while open {
        match read_master(&master, &mut buf) {
            Some(0) | None => open = false,
            Some(n) => {
                out.extend_from_slice(&buf[..n]);
                let _ = log.write_all(&buf[..n]);
            }
        }
    }
    let wall = start.elapsed();
    let serial = String::from_utf8_lossy(&out).into_owned();
    let mut verdict = evaluate(&serial, &exit);
    verdict.failures.extend(failures);
    let (notes, failure) = step_report(&session);
    verdict.notes.extend(notes);
    verdict.failures.extend(failure);
    judge_serial(s, &serial, &mut verdict);

    Ok(report(
        &s.name,
        &exit,
        Outcome {
            verdict,
            wall,
            run_init,
            marker,
            parts: Vec::new(),
        },
        &[
            ("terminal's output", &serial_log, TAIL),
            ("VMM's stderr", &vmm_log, TAIL),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_match_text_and_whole_lines() {
        assert_eq!(find(Wait::Text("sh# "), "x\r\npetrel-sh# "), Some(14));
        assert_eq!(find(Wait::Text("sh# "), "petrel-sh#"), None);
        // The guest's echo of the typed command is not its output.
        let echo = "petrel-sh# echo $((6*7))-typed\r\n";
        assert_eq!(find(Wait::Line(TYPED_OUTPUT), echo), None);
        let out = format!("{echo}42-typed\r\npetrel-sh# ");
        assert_eq!(
            find(Wait::Line(TYPED_OUTPUT), &out),
            Some(echo.len() + TYPED_OUTPUT.len())
        );
        // Only a whole line, ended.
        assert_eq!(find(Wait::Line("42-typed"), "\r\n42-typed"), None);
        assert_eq!(find(Wait::Line("42-typed"), "\n142-typed\n"), None);
        assert_eq!(find(Wait::Line("42-typed"), "42-typed\n"), Some(8));
        assert_eq!(
            find(Wait::Line("42-typed"), "x\r\r\n42-typed\r\r\n"),
            Some(12)
        );
        assert_eq!(find(Wait::Line("42-typed"), "x\r\r\n42-typed\r\r"), None);
    }

    #[test]
    fn the_session_goes_step_by_step() {
        let mut s = Session::default();
        let t = |n| Duration::from_secs(n);
        let mut text = String::from("Run /init as init process\r\nPETREL-SHELL-READY\r\n");
        assert!(s.advance(&text, t(1)).is_empty());
        assert_eq!(s.done, 1);
        // A prompt before the cue would not count; this one comes after it.
        text.push_str("\r\nBusyBox v1.35.0 built-in shell (ash)\r\npetrel-sh# ");
        assert_eq!(s.advance(&text, t(2)), [TYPED_COMMAND]);
        // Nothing new: nothing typed twice.
        assert!(s.advance(&text, t(3)).is_empty());
        text.push_str("echo $((6*7))-typed\r\n");
        assert!(s.advance(&text, t(4)).is_empty());
        assert_eq!(s.done, 2);
        // The output and the next prompt in one read: both steps at once.
        text.push_str("42-typed\r\npetrel-sh# ");
        assert_eq!(s.advance(&text, t(5)), [TYPED_EXIT]);
        assert!(s.finished());
        assert_eq!(s.times, [t(1), t(2), t(5), t(5)]);
        let (notes, failure) = step_report(&s);
        assert_eq!(failure, None);
        assert_eq!(notes.len(), 4);
        assert_eq!(
            notes[1],
            "host: saw `petrel-sh#` at 2.0 s, then typed `echo $((6*7))-typed`"
        );
        assert_eq!(notes[2], "host: saw the line `42-typed` at 5.0 s");
    }

    #[test]
    fn a_prompt_before_the_cue_does_not_count() {
        let mut s = Session::default();
        assert!(s
            .advance("petrel-sh# PETREL-SHELL-READY\r\n", Duration::ZERO)
            .is_empty());
        assert_eq!(s.done, 1);
        let (_, failure) = step_report(&s);
        assert_eq!(
            failure.as_deref(),
            Some("the host never saw `petrel-sh#` on the terminal (step 2 of 4)")
        );
    }

    #[test]
    fn the_script_matches_the_steps() {
        let script = guest_script::init_script(SHELL_SCRIPT);
        assert!(script.contains(&format!("echo {SHELL_READY}\n")));
        assert!(script.contains(&format!("PS1='{PROMPT}' sh -i\n")));
        assert_eq!(TYPED_EXIT, "exit 7");
        assert!(script.contains("[ \"$st\" = 7 ]"));
    }
}

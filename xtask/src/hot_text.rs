//! `cargo xtask hot-text`: writes `crates/vmm-bin/hot-text.ld`, the functions a Petrel VMM
//! runs, in the order the linker lays them out ahead of the rest of `.text`.
//!
//! Why: a VMM's resident memory is mostly its code. The kernel maps a file-backed page
//! together with the pages around it (fault-around, 64 KiB by default), so one function run in
//! a 64 KiB stretch of `.text` makes all of it resident. With the functions a VMM runs spread
//! over the 1.9 MB of `.text`, nearly all of it was; laid out together, the rest stays on
//! disk.
//!
//! How: a release petrel runs each [`Scenario`] under gdb (`xtask/hot-text/collect.py`),
//! which records every function it enters. Functions entered in every scenario come first,
//! then those of fewer scenarios; within that, in the order they were first entered. Each is
//! named by its v0 symbol (`.cargo/config.toml` asks for the v0 scheme) with the crates'
//! disambiguators left open (`Cs*_`), which change with a crate's version and build options
//! but not with its code; both `.text.NAME` and `.text.unlikely.NAME` (LLVM's section for a
//! function marked cold) are matched. The scenarios run the static build, as Petrel ships, so
//! the C library's functions are listed too, by the archive member that holds each (glibc's
//! members are not split into a section per function). A function added or renamed since the file was written
//! is laid out with the rest: the binary is the same, only less compact, until the file is
//! written again.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::build::{self, target_dir, workspace_root};
use crate::error::{Error, IoContext, Result};
use crate::fcapi::ApiClient;
use crate::host;
use crate::scenario::{GUEST_CMDLINE, RUN_INIT_LINE};

/// Where the linker script goes, from the workspace root.
pub const SCRIPT: &str = "crates/vmm-bin/hot-text.ld";

/// The gdb script, from the workspace root.
const COLLECT: &str = "xtask/hot-text/collect.py";

/// How long a scenario may take (the Linux boot is the slow one: about 20 s when guest kernel
/// code is emulated).
const LIMIT: Duration = Duration::from_secs(300);

/// How long a VM that runs forever is left running before SIGTERM, once its vCPU runs (the
/// program starts slowly under gdb, stopping at each function's first entry).
const SETTLE: Duration = Duration::from_secs(2);

/// The name of Petrel's first vCPU thread (`/proc/PID/task/TID/comm`).
const VCPU_THREAD: &str = "petrel-vcpu0";

/// What each scenario does once petrel runs under gdb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// Nothing: the program ends by itself.
    ToExit,
    /// SIGTERM [`SETTLE`] after its first vCPU thread started.
    Settle,
    /// SIGTERM once this line has been printed.
    UntilLine(&'static str),
    /// API requests on the socket the arguments name, then SIGTERM.
    Api(ApiSteps),
}

/// The API scenarios' requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiSteps {
    /// Configure and start the spin guest, pause it, snapshot it, resume it.
    BootAndSnapshot,
    /// Load that snapshot.
    Load,
}

/// One run of petrel: its arguments and how it is driven.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    args: Vec<String>,
    drive: Drive,
}

/// The files the scenarios use, under `target/hot-text`.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    spin_bin: PathBuf,
    spin_elf: PathBuf,
    disk: PathBuf,
    snapshot: PathBuf,
    socket: PathBuf,
}

impl Files {
    fn write(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let files = Self {
            dir: dir.to_owned(),
            spin_bin: dir.join("spin.bin"),
            spin_elf: dir.join("spin.elf"),
            disk: dir.join("disk.img"),
            snapshot: dir.join("snapshot"),
            socket: dir.join("api.sock"),
        };
        let write = |path: &Path, bytes: &[u8]| {
            fs::write(path, bytes).ctx(|| format!("writing {}", path.display()))
        };
        write(&files.spin_bin, &crate::elf::SPIN_CODE)?;
        write(&files.spin_elf, &crate::elf::spin_kernel_elf())?;
        write(&files.disk, &vec![0u8; 1 << 20])?;
        let _ = fs::remove_dir_all(&files.snapshot);
        Ok(files)
    }
}

/// The scenarios: the built-in demo guest to its end, a spinning guest from the command line
/// (raw and ELF), Firecracker's API (boot, pause, snapshot, resume; then a load of that
/// snapshot), and Linux booted to `/init` with a virtio disk and the entropy device.
fn scenarios(f: &Files, linux: &build::Guest) -> Vec<Scenario> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let path = |p: &Path| p.display().to_string();
    let api = || s(&["--api-sock", &path(&f.socket)]);
    vec![
        Scenario {
            name: "demo",
            args: s(&["demo"]),
            drive: Drive::ToExit,
        },
        Scenario {
            name: "raw",
            args: s(&["run", "--raw", &path(&f.spin_bin), "--real-mode"]),
            drive: Drive::Settle,
        },
        Scenario {
            name: "elf",
            args: s(&["--kernel", &path(&f.spin_elf), "--mem", "256M"]),
            drive: Drive::Settle,
        },
        Scenario {
            name: "api",
            args: api(),
            drive: Drive::Api(ApiSteps::BootAndSnapshot),
        },
        Scenario {
            name: "api-load",
            args: api(),
            drive: Drive::Api(ApiSteps::Load),
        },
        Scenario {
            name: "linux",
            args: s(&[
                "--kernel",
                &path(&linux.kernel.vmlinux),
                "--initrd",
                &path(&linux.initramfs),
                "--cmdline",
                GUEST_CMDLINE,
                "--mem",
                "128M",
                "--disk",
                &format!("{},ro", path(&f.disk)),
                "--rng",
            ]),
            drive: Drive::UntilLine(RUN_INIT_LINE),
        },
    ]
}

/// The command: builds petrel and the guest, runs the scenarios, writes [`SCRIPT`].
pub fn run() -> Result<()> {
    host::ensure_packages(&["gdb", "binutils"])?;
    let root = workspace_root();
    // The static build, as Petrel ships (its list also names the C library's functions), and
    // the default one: where LTO instantiated a generic function, or numbered a local copy of
    // one, can differ between the two, and with it the symbol.
    let builds = [
        ("static", build::build_petrel(&root)?),
        (
            "dynamic",
            build::build_release(&root, &target_dir(&root), "petrel", "petrel", false)?,
        ),
    ];
    let linux = build::build_guest(&[])?;
    let files = Files::write(&target_dir(&root).join("hot-text"))?;
    let mut entered = Vec::new();
    let mut symbols = HashMap::new();
    for (build, petrel) in &builds {
        for sc in scenarios(&files, &linux) {
            let started = Instant::now();
            let name = format!("{}-{build}", sc.name);
            let functions = collect(&root, petrel, &sc, &name, &files)?;
            println!(
                "hot-text: {name}: {} functions entered ({:.1} s)",
                functions.len(),
                started.elapsed().as_secs_f64()
            );
            entered.push((name, functions));
        }
        symbols.extend(symbols_by_address(petrel)?);
    }
    let members = c_library_members()?;
    let order = merge(&entered);
    let script = linker_script(&order, &symbols, &members, &entered);
    let out = root.join(SCRIPT);
    fs::write(&out, script).ctx(|| format!("writing {}", out.display()))?;
    println!(
        "hot-text: {} functions written to {}",
        order.len(),
        out.display()
    );
    Ok(())
}

/// Runs `sc` under gdb and returns the functions it entered, in order; its files are named
/// `name`.
fn collect(
    root: &Path,
    petrel: &Path,
    sc: &Scenario,
    name: &str,
    f: &Files,
) -> Result<Vec<String>> {
    let out = f.dir.join(format!("{name}.functions"));
    let pid_file = f.dir.join(format!("{name}.pid"));
    let _ = fs::remove_file(&out);
    let _ = fs::remove_file(&pid_file);
    let _ = fs::remove_file(&f.socket);
    let log = f.dir.join(format!("{name}.gdb.log"));
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("gdb");
    cmd.args(["-q", "-batch", "-x"])
        .arg(root.join(COLLECT))
        .arg("--args")
        .arg(petrel)
        .args(&sc.args)
        .env("HOT_TEXT_OUT", &out)
        .env("HOT_TEXT_PID", &pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err);
    let mut gdb = host::Reaped(
        cmd.spawn()
            .ctx(|| format!("starting `{}`", host::describe(&cmd)))?,
    );
    let start = Instant::now();
    // The program's output (gdb's stdout carries it) is read to its end, so that it never
    // blocks on a full pipe; its lines come through `lines`.
    let lines = drain(gdb.stdout.take().expect("stdout is piped"));
    let pid = wait_for_pid(&pid_file, &mut gdb, start)?;
    let driven = match sc.drive {
        Drive::ToExit => Ok(()),
        Drive::Settle => wait_for_thread(pid, VCPU_THREAD, start).map(|()| thread::sleep(SETTLE)),
        Drive::UntilLine(line) => wait_for_line(&lines, line, start),
        Drive::Api(steps) => api_steps(steps, f, pid, start),
    };
    if let Err(e) = driven {
        // gdb, killed when `gdb` is dropped, would leave the program running on its own.
        host::signal_process(pid, libc::SIGKILL);
        return Err(e);
    }
    if sc.drive != Drive::ToExit {
        // SIGTERM ends a Petrel run.
        host::signal_process(pid, libc::SIGTERM);
    }
    let status = wait_with_limit(&mut gdb, start)?;
    let text = fs::read_to_string(&out).map_err(|e| {
        Error::Other(format!(
            "gdb ({status}) wrote no function list for `{name}` ({e}); its log: {}",
            log.display()
        ))
    })?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// The program's process ID, once collect.py has written it (it is then stopped at its
/// first instruction, breakpoints set).
fn wait_for_pid(pid_file: &Path, gdb: &mut Child, start: Instant) -> Result<u32> {
    loop {
        if let Some(pid) = fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(pid);
        }
        if let Ok(Some(status)) = gdb.try_wait() {
            return Err(Error::Other(format!(
                "gdb ended ({status}) before it started the program"
            )));
        }
        if start.elapsed() > LIMIT {
            return Err(Error::Other("gdb did not start the program".into()));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until process `pid` has a thread named `name`.
fn wait_for_thread(pid: u32, name: &str, start: Instant) -> Result<()> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    while start.elapsed() < LIMIT {
        let named = fs::read_dir(&tasks)
            .ctx(|| format!("reading {}", tasks.display()))?
            .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .any(|comm| comm.trim_end() == name);
        if named {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Other(format!(
        "process {pid} started no thread `{name}`"
    )))
}

/// Reads `out` to its end on a thread, sending each line.
fn drain(out: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            // The receiver is gone once its line was seen: the rest is only read.
            let _ = tx.send(l);
        }
    });
    rx
}

/// Waits (within [`LIMIT`] from `start`) for a line of `lines` that holds `line`.
fn wait_for_line(lines: &Receiver<String>, line: &str, start: Instant) -> Result<()> {
    while let Some(left) = LIMIT.checked_sub(start.elapsed()) {
        match lines.recv_timeout(left) {
            Ok(l) if l.contains(line) => return Ok(()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Err(Error::Other(format!("the program never printed `{line}`")))
}

/// The API requests of `steps` to the program `pid`, each of which must succeed.
fn api_steps(steps: ApiSteps, f: &Files, pid: u32, start: Instant) -> Result<()> {
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    let (mut c, _) = ApiClient::connect_when_ready(&f.socket, start, LIMIT, alive)?;
    let path = |p: &Path| p.display().to_string();
    match steps {
        ApiSteps::BootAndSnapshot => {
            let boot = serde_json::json!({ "kernel_image_path": path(&f.spin_elf) });
            let machine = serde_json::json!({ "vcpu_count": 1, "mem_size_mib": 256 });
            let snapshot = serde_json::json!({
                "snapshot_type": "Full",
                "snapshot_path": path(&f.snapshot.join("state")),
                "mem_file_path": path(&f.snapshot.join("mem")),
            });
            fs::create_dir_all(&f.snapshot).ctx(|| format!("creating {}", f.snapshot.display()))?;
            c.expect("GET", "/", None, 200)?;
            c.expect("PUT", "/boot-source", Some(&boot.to_string()), 204)?;
            c.expect("PUT", "/machine-config", Some(&machine.to_string()), 204)?;
            c.expect(
                "PUT",
                "/actions",
                Some(r#"{"action_type":"InstanceStart"}"#),
                204,
            )?;
            c.expect("GET", "/machine-config", None, 200)?;
            c.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204)?;
            c.expect("PUT", "/snapshot/create", Some(&snapshot.to_string()), 204)?;
            c.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204)?;
            c.expect("GET", "/", None, 200)?;
        }
        ApiSteps::Load => {
            let load = serde_json::json!({
                "snapshot_path": path(&f.snapshot.join("state")),
                "mem_backend": { "backend_type": "File", "backend_path": path(&f.snapshot.join("mem")) },
                "resume_vm": true,
            });
            c.expect("PUT", "/snapshot/load", Some(&load.to_string()), 204)?;
            c.expect("GET", "/", None, 200)?;
        }
    }
    thread::sleep(SETTLE);
    Ok(())
}

/// Waits for gdb to end (it ends once the program has), within [`LIMIT`] from `start`.
fn wait_with_limit(gdb: &mut Child, start: Instant) -> Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = gdb.try_wait().ctx(|| "waiting for gdb".into())? {
            return Ok(status);
        }
        if start.elapsed() > LIMIT {
            return Err(Error::Other(format!(
                "gdb was still running after {} s",
                LIMIT.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every function symbol of `binary`, to every name at its address: functions that LLVM
/// merged share one section under one of their names, so each name at a hot address is
/// matched.
fn symbols_by_address(binary: &Path) -> Result<HashMap<String, Vec<String>>> {
    let file = fs::read(binary).ctx(|| format!("reading {}", binary.display()))?;
    Ok(aliases(crate::elf::function_symbol_names(&file)))
}

/// The C libraries' functions (libc.a and libm.a, as `cc -print-file-name` finds them), each
/// by the archive member that defines it: glibc's members have one `.text` each, not a
/// section per function, so a statically linked binary's C functions are laid out by member.
fn c_library_members() -> Result<HashMap<String, String>> {
    let mut members = HashMap::new();
    for lib in ["libc.a", "libm.a"] {
        let mut cmd = Command::new("cc");
        cmd.arg(format!("-print-file-name={lib}"));
        let out = cmd
            .output()
            .ctx(|| format!("running `{}`", host::describe(&cmd)))?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !Path::new(&path).is_absolute() {
            // cc found no such archive (it prints the bare name): no C functions to place.
            continue;
        }
        let mut cmd = Command::new("nm");
        cmd.args(["-A", "--defined-only"]).arg(&path);
        let out = cmd
            .output()
            .ctx(|| format!("running `{}`", host::describe(&cmd)))?;
        for (name, member) in archive_functions(lib, &String::from_utf8_lossy(&out.stdout)) {
            members.entry(name).or_insert(member);
        }
    }
    Ok(members)
}

/// From `nm -A` output of the archive `lib`: (function, `lib:member`) for each function.
fn archive_functions(lib: &str, nm: &str) -> Vec<(String, String)> {
    nm.lines()
        .filter_map(|line| {
            // `/path/libc.a:printf.o:0000000000000000 T printf`
            let (place, symbol) = line.rsplit_once(':')?;
            let member = place.rsplit_once(':')?.1;
            match symbol.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "t" | "T" | "i" | "W", name] => {
                    Some((name.to_owned(), format!("{lib}:{member}")))
                }
                _ => None,
            }
        })
        .collect()
}

/// Each function's name to every function name at its address.
fn aliases(by_address: HashMap<u64, Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut names = HashMap::new();
    for group in by_address.into_values() {
        for name in &group {
            names.insert(name.clone(), group.clone());
        }
    }
    names
}

/// The functions of all scenarios: those entered in more scenarios first, then in the order
/// of their first entry (scenario by scenario).
fn merge(entered: &[(String, Vec<String>)]) -> Vec<String> {
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut order = Vec::new();
    for (_, functions) in entered {
        for f in functions {
            let e = seen.entry(f.as_str()).or_insert_with(|| {
                order.push(f.as_str());
                (0, order.len())
            });
            e.0 += 1;
        }
    }
    order.sort_by_key(|f| {
        let (scenarios, first) = seen[f];
        (std::cmp::Reverse(scenarios), first)
    });
    order.into_iter().map(str::to_owned).collect()
}

/// A v0 symbol with each crate's disambiguator (`Cs` base-62 `_`) left open, and the number
/// LLVM gives a local copy of a function (`name.123`, `name.llvm.123`) too.
fn pattern(symbol: &str) -> String {
    let symbol = match symbol.rsplit_once('.') {
        Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            return format!("{}.*", pattern(name));
        }
        _ => symbol,
    };
    if !symbol.starts_with("_R") {
        return symbol.to_owned();
    }
    let mut out = String::with_capacity(symbol.len());
    let mut rest = symbol;
    while let Some(i) = rest.find("Cs") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('_') {
            Some(end) if end > 0 && after[..end].bytes().all(|b| b.is_ascii_alphanumeric()) => {
                out.push_str("Cs*_");
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("Cs");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The linker script: one output section `.text.hot` before `.text`, holding the sections of
/// `order`'s functions (and of the names they share an address with) in that order; a C
/// library function by its archive member's text (`members`).
fn linker_script(
    order: &[String],
    aliases: &HashMap<String, Vec<String>>,
    members: &HashMap<String, String>,
    entered: &[(String, Vec<String>)],
) -> String {
    let mut s = String::from(
        "/* Generated by `cargo xtask hot-text` (xtask/src/hot_text.rs): the functions a Petrel\n \
         * VMM runs, laid out ahead of the rest of .text so that the few 64 KiB stretches of\n \
         * code it touches are all it keeps resident. Linked into the petrel binary by\n \
         * build.rs (INSERT BEFORE .text adds to the linker's own layout). A stale list costs\n \
         * memory, never correctness; write it again after larger changes.\n",
    );
    let runs: Vec<String> = entered
        .iter()
        .map(|(name, f)| format!("{name} {}", f.len()))
        .collect();
    s.push_str(&format!(
        " * Scenarios and the functions each entered: {}.\n */\n",
        runs.join(", ")
    ));
    s.push_str("SECTIONS\n{\n  .text.hot :\n  {\n");
    let mut written = std::collections::HashSet::new();
    for f in order {
        let names = aliases.get(f).cloned().unwrap_or_else(|| vec![f.clone()]);
        for name in names {
            let line = match members.get(&name) {
                Some(member) if !name.starts_with("_R") => {
                    format!("    *{member}(.text .text.*)\n")
                }
                _ => {
                    let p = pattern(&name);
                    format!("    *(.text.{p} .text.unlikely.{p})\n")
                }
            };
            if written.insert(line.clone()) {
                s.push_str(&line);
            }
        }
    }
    s.push_str("  }\n}\nINSERT BEFORE .text;\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_leave_crate_disambiguators_open() {
        assert_eq!(
            pattern("_RNvCsbeZUG3Ceifn_6petrel4main"),
            "_RNvCs*_6petrel4main"
        );
        assert_eq!(
            pattern("_RNvMs4_NtCslNYArtu3iFV_5alloc7raw_vecNtB5_11RawVecInner11finish_growCsduwmD7cSIQq_5gimli"),
            "_RNvMs4_NtCs*_5alloc7raw_vecNtB5_11RawVecInner11finish_growCs*_5gimli"
        );
        // Not a disambiguator: "Cs" inside an identifier, not followed by base-62 and `_`.
        assert_eq!(pattern("_RNvCsab_3foo3Cs_"), "_RNvCs*_3foo3Cs_");
        assert_eq!(pattern("main"), "main");
        assert_eq!(
            pattern("_RNvMs0_NtCsjrHSEGnQ3l9_3std4sync6notify.968"),
            "_RNvMs0_NtCs*_3std4sync6notify.*"
        );
        assert_eq!(
            pattern("_RNvCsab_3foo3bar.llvm.12345"),
            "_RNvCs*_3foo3bar.llvm.*"
        );
        assert_eq!(pattern("frame.dummy"), "frame.dummy");
        assert_eq!(pattern("_start"), "_start");
    }

    #[test]
    fn functions_of_more_scenarios_come_first() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let entered = vec![
            ("a".to_string(), v(&["main", "only_a", "both"])),
            ("b".to_string(), v(&["both", "main", "only_b"])),
        ];
        assert_eq!(merge(&entered), v(&["main", "both", "only_a", "only_b"]));
    }

    #[test]
    fn archive_members_are_read_from_nm() {
        let nm = "/usr/lib/x86_64-linux-gnu/libc.a:printf.o:0000000000000000 T printf\n\
                  /usr/lib/x86_64-linux-gnu/libc.a:printf.o:0000000000000000 T _IO_printf\n\
                  /usr/lib/x86_64-linux-gnu/libc.a:memcpy.o:0000000000000040 i memcpy\n\
                  /usr/lib/x86_64-linux-gnu/libc.a:errno.o:0000000000000000 B errno\n\
                  \n\
                  /usr/lib/x86_64-linux-gnu/libc.a:init-first.o:\n";
        let f = archive_functions("libc.a", nm);
        assert_eq!(
            f,
            [
                ("printf".to_string(), "libc.a:printf.o".to_string()),
                ("_IO_printf".to_string(), "libc.a:printf.o".to_string()),
                ("memcpy".to_string(), "libc.a:memcpy.o".to_string()),
            ]
        );
    }

    #[test]
    fn aliases_group_names_at_one_address() {
        // Only functions reach it: crate::elf::function_symbol_names leaves data out.
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let by_address = HashMap::from([
            (0x1000, v(&["_RNvCsa_1x1f", "_RNvCsb_1y1g"])),
            (0x2000, v(&["main"])),
        ]);
        let a = aliases(by_address);
        assert_eq!(a["_RNvCsa_1x1f"].len(), 2);
        assert_eq!(a["_RNvCsb_1y1g"], a["_RNvCsa_1x1f"]);
        assert_eq!(a["main"], vec!["main".to_string()]);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn the_script_inserts_a_hot_section_before_text() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let entered = vec![("demo".to_string(), v(&["_RNvCsa_1x1f", "main", "memcpy"]))];
        let order = merge(&entered);
        let mut a = HashMap::new();
        a.insert(
            "_RNvCsa_1x1f".to_string(),
            v(&["_RNvCsa_1x1f", "_RNvCsb_1y1g"]),
        );
        let mut members = HashMap::new();
        members.insert("memcpy".to_string(), "libc.a:memcpy.o".to_string());
        let s = linker_script(&order, &a, &members, &entered);
        assert!(
            s.contains("Scenarios and the functions each entered: demo 3."),
            "{s}"
        );
        let f = s
            .find("*(.text._RNvCs*_1x1f .text.unlikely._RNvCs*_1x1f)")
            .unwrap();
        let g = s
            .find("*(.text._RNvCs*_1y1g .text.unlikely._RNvCs*_1y1g)")
            .unwrap();
        let m = s.find("*(.text.main .text.unlikely.main)").unwrap();
        let c = s.find("*libc.a:memcpy.o(.text .text.*)").unwrap();
        assert!(f < g && g < m && m < c, "{s}");
        assert!(s.trim_end().ends_with("INSERT BEFORE .text;"), "{s}");
    }
}

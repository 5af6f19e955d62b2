//! The snapshot cases: restoring a snapshot of a 256 MiB guest, from the command line and
//! through Firecracker's `PUT /snapshot/load`, beside a fresh boot of the same guest; and the
//! same load with `mem_backend: Uffd`, served by Petrel's own page-fault handler (the
//! `uffd_handler` example), and with `huge_pages: Transparent`, each beside the File backend
//! (the three loads' runs alternate).
//!
//! The guest is the counter guest (`petrel_demo_guest::counter`), snapshotted once per bench
//! run with `--snapshot-on-signal` after its first tick. Firecracker is not installed here: its
//! figure is the range measured earlier on this kind of machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::api::{connect, spawn_api, stop};
use super::proc::{self, Watchdog};
use super::report::{Cell, Row, Target, Unit};
use super::{alternate, missing, ms, Bench, GUEST_MIB, SHORT_LIMIT};
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::uffd_handler::Handler;
use petrel_demo_guest::counter;

/// Firecracker's `PUT /snapshot/load` (with `resume_vm`) for a 128 MiB guest, ms: the range
/// measured earlier on this kind of machine (its median is not known, so the middle is shown).
const FIRECRACKER_LOAD_MS: (f64, f64) = (9.8, 22.0);

/// From the load (or the restore's start) to the guest running again must not take longer, ms.
const RESTORE_TARGET_MS: f64 = 5.0;

/// How long the guest may take to print its first tick before the snapshot (its kernel code is
/// emulated on some hosts, and a tick waits for the RTC's next second).
const FIRST_TICK_LIMIT: Duration = Duration::from_secs(30);

/// Boots the counter guest with the bench's memory, waits for its first tick, and snapshots
/// it into `dir` with SIGUSR1.
pub(super) fn make_snapshot(b: &Bench, kernel: &Path, dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    let out = b.dir.join("logs").join("snapshot-source.serial");
    let log = b.dir.join("logs").join("snapshot-source.stderr");
    let _ = fs::remove_file(&out);
    let mut cmd = Command::new(&b.petrel);
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--mem", &format!("{GUEST_MIB}M")])
        .arg("--serial")
        .arg(format!("file:{}", out.display()))
        .arg("--snapshot-on-signal")
        .arg(dir);
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let dog = Watchdog::arm(child.id(), SHORT_LIMIT);
    let deadline = Instant::now() + FIRST_TICK_LIMIT;
    while counter::ticks(&fs::read_to_string(&out).unwrap_or_default()).is_empty() {
        if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
            dog.disarm();
            return Err(Error::Other(format!(
                "the counter guest printed no tick; stderr: {}",
                proc::tail_of(&log, 3)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    host::signal_process(child.id(), libc::SIGUSR1);
    let status = child.wait().ctx(|| "waiting for petrel".into())?;
    if dog.disarm() || !status.success() || !dir.join("state").is_file() {
        return Err(Error::Other(format!(
            "the snapshot was not written ({status}); stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    Ok(())
}

/// Microseconds from petrel's start (its `main`) to the first `KVM_RUN`, from `--metrics`.
fn first_run_ms(metrics: &Path) -> Result<f64> {
    let text = fs::read_to_string(metrics).ctx(|| format!("reading {}", metrics.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Other(format!("petrel's metrics JSON: {e}")))?;
    v["timeline"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["what"] == "first KVM_RUN"))
        .and_then(|e| e["at_us"].as_u64())
        .map(|us| us as f64 / 1e3)
        .ok_or_else(|| Error::Other("petrel's metrics have no `first KVM_RUN` event".into()))
}

/// One petrel run that ends after the guest's first exit; returns main() to first `KVM_RUN`.
fn one_exit_run(b: &Bench, name: &str, args: &[PathBuf]) -> Result<f64> {
    let metrics = b.dir.join(format!("{name}-metrics.json"));
    let log = b.dir.join("logs").join(format!("{name}.stderr"));
    let _ = fs::remove_file(&metrics);
    let mut cmd = Command::new(&b.petrel);
    cmd.args(args)
        .args(["--serial", "none", "--max-exits", "1", "--no-seccomp"])
        .arg("--metrics")
        .arg(&metrics);
    let t = proc::run_timed(&mut cmd, &log, SHORT_LIMIT)?;
    if !t.status.success() {
        return Err(Error::Other(format!(
            "`{}`: {}; stderr: {}",
            host::describe(&cmd),
            t.status,
            proc::tail_of(&log, 3)
        )));
    }
    first_run_ms(&metrics)
}

/// Where the bench's page-fault handler listens: under the temporary directory, since a
/// socket's path must fit in 108 bytes.
fn handler_socket() -> PathBuf {
    std::env::temp_dir().join(format!("petrel-bench-uffd-{}.sock", std::process::id()))
}

/// Starts Petrel's page-fault handler `handler` on `mem` (with `state`, prefetching that
/// snapshot's working set), its stderr in `logs/NAME.stderr`, and waits until it listens.
pub(super) fn start_handler(
    b: &Bench,
    handler: &Path,
    mem: &Path,
    state: Option<&Path>,
    name: &str,
) -> Result<Handler> {
    let log = b.dir.join("logs").join(format!("{name}.stderr"));
    Handler::start(handler, handler_socket(), mem, state, log)
}

/// The memory backend of a timed `PUT /snapshot/load`.
enum Backend<'a> {
    /// `File`: petrel maps the snapshot's memory file.
    File,
    /// `File` with `huge_pages: Transparent`: petrel advises that mapping with
    /// `madvise(MADV_HUGEPAGE)`.
    FileTransparent,
    /// `Uffd`: the page-fault handler at this path serves the memory file.
    Uffd(&'a Path),
}

/// One `PUT /snapshot/load` with `resume_vm` to a fresh `petrel --api-sock`: the wall time of
/// the request, ms. With [`Backend::Uffd`] the handler is started (and listening) first, and
/// must exit 0 once petrel has ended.
fn api_load_run(b: &Bench, snapshot: &Path, backend: &Backend) -> Result<f64> {
    let mem = snapshot.join("mem");
    let (name, handler) = match backend {
        Backend::File => ("snapshot-load", None),
        Backend::FileTransparent => ("snapshot-load-thp", None),
        Backend::Uffd(path) => (
            "snapshot-load-uffd",
            Some(start_handler(
                b,
                path,
                &mem,
                None,
                "snapshot-load-uffd-handler",
            )?),
        ),
    };
    let log = b.dir.join("logs").join(format!("{name}.stderr"));
    let (mut p, sock, start) = spawn_api(b, Stdio::null(), &log)?;
    let (mut client, _) = connect(&mut p, &sock, start)?;
    let mem_backend = match &handler {
        None => serde_json::json!({ "backend_type": "File", "backend_path": mem }),
        Some(h) => serde_json::json!({ "backend_type": "Uffd", "backend_path": h.socket }),
    };
    let mut body = serde_json::json!({
        "snapshot_path": snapshot.join("state"),
        "mem_backend": mem_backend,
        "resume_vm": true,
    });
    if let Backend::FileTransparent = backend {
        body["huge_pages"] = "Transparent".into();
    }
    let body = body.to_string();
    let sent = Instant::now();
    client.send("PUT", "/snapshot/load", Some(&body))?;
    let answer = client.receive()?;
    let took = sent.elapsed();
    if answer.status != 204 {
        return Err(Error::Other(format!(
            "PUT /snapshot/load was answered {}: {}",
            answer.status,
            answer.body.trim()
        )));
    }
    let reply = client.expect("GET", "/", None, 200)?;
    if !reply.body.contains("Running") {
        return Err(Error::Other(format!(
            "after the load the instance is not running: {}",
            reply.body.trim()
        )));
    }
    drop(client);
    stop(&mut p, &log)?;
    if let Some(h) = handler {
        h.finish()?;
    }
    Ok(ms(took))
}

/// The cases' rows: restore from the command line beside a fresh boot, the API's load, and
/// the API's load with the Uffd backend beside the File backend's (their runs alternate).
pub fn restore(b: &Bench, runs: u32) -> Vec<Row> {
    let kernel = b.dir.join("counter.elf");
    let snapshot = b.dir.join("snapshot");
    let prepared = missing(b, false).map(Err).unwrap_or_else(|| {
        fs::write(&kernel, counter::counter_guest_elf())
            .ctx(|| format!("writing {}", kernel.display()))
            .and_then(|()| make_snapshot(b, &kernel, &snapshot))
            .map_err(|e| Cell::Error(format!("making the snapshot: {e}")))
    });
    let skip = prepared.clone().err();
    let restore_args: Vec<PathBuf> = vec!["restore".into(), snapshot.clone()];
    let boot_args: Vec<PathBuf> = vec![
        "--kernel".into(),
        kernel.clone(),
        "--mem".into(),
        format!("{GUEST_MIB}M").into(),
    ];
    let (restore_cells, boot_cells) = alternate(
        runs + 1,
        (skip.clone(), |_| one_exit_run(b, "restore", &restore_args)),
        (skip.clone(), |_| one_exit_run(b, "fresh-boot", &boot_args)),
    );
    let handler = prepared.and_then(|()| {
        crate::build::build_uffd_handler(&crate::build::workspace_root())
            .map_err(|e| Cell::Error(format!("building the page-fault handler: {e}")))
    });
    let handler_path = handler.clone().unwrap_or_default();
    let [load_cell, uffd_cell, thp_cell] = alternate_loads(
        runs + 1,
        [
            (skip.clone(), Backend::File),
            (handler.err(), Backend::Uffd(&handler_path)),
            (skip.clone(), Backend::FileTransparent),
        ],
        |backend| api_load_run(b, &snapshot, backend),
    );
    let load_cell = drop_warm_up(load_cell);
    vec![
        Row {
            id: "snapshot_restore_cli",
            name: "restore: start to guest running".into(),
            unit: Unit::MsFine,
            petrel: drop_warm_up(restore_cells),
            comparison_name: "fresh boot, same guest".into(),
            comparison: drop_warm_up(boot_cells),
            target: Target::ValueAtMost(RESTORE_TARGET_MS),
            measures: format!(
                "A Full snapshot of the counter guest with {GUEST_MIB} MiB of RAM (taken once \
                 with `--snapshot-on-signal` and SIGUSR1 after its first tick). Petrel: `petrel \
                 restore DIR --serial none --max-exits 1 --no-seccomp --metrics FILE`, the \
                 `first KVM_RUN` of its timeline (from its main(): reading and checking the \
                 state file, mapping the memory file, the VM, vCPU and devices restored, the \
                 vCPU thread started). Beside it: a fresh boot of the same guest (`petrel \
                 --kernel counter.elf --mem {GUEST_MIB}M`, same flags), to the same event. Runs \
                 alternate; the first of each is an untimed warm-up. Runs: {runs}."
            ),
        },
        Row {
            id: "snapshot_load_api",
            name: "API: PUT /snapshot/load (resume_vm) answered".into(),
            unit: Unit::MsFine,
            petrel: load_cell.clone(),
            comparison_name: "Firecracker (earlier, 128 MiB)".into(),
            comparison: Cell::Reference {
                median: (FIRECRACKER_LOAD_MS.0 + FIRECRACKER_LOAD_MS.1) / 2.0,
                source: format!(
                    "Firecracker answered PUT /snapshot/load with resume_vm for a 128 MiB guest \
                     in {} to {} ms, measured earlier on this kind of machine (the middle of \
                     that range is shown); Firecracker is not installed here",
                    FIRECRACKER_LOAD_MS.0, FIRECRACKER_LOAD_MS.1
                ),
            },
            target: Target::ValueAtMost(RESTORE_TARGET_MS),
            measures: format!(
                "The same snapshot ({GUEST_MIB} MiB), loaded by a fresh `petrel --api-sock \
                 SOCKET`: wall time from just before writing `PUT /snapshot/load` \
                 (`mem_backend` File, `resume_vm: true`) to the end of its 204 (Petrel answers \
                 once the vCPUs are started); then `GET /` must say Running and petrel must \
                 end by SIGTERM when sent it. The first run is an untimed warm-up; runs \
                 alternate with the Uffd and huge-page rows'. Runs: {runs}."
            ),
        },
        Row {
            id: "snapshot_load_uffd",
            name: "UFFD restore: PUT /snapshot/load (Uffd) answered".into(),
            unit: Unit::MsFine,
            petrel: drop_warm_up(uffd_cell),
            comparison_name: "File backend (the API row)".into(),
            comparison: load_cell.clone(),
            target: Target::None,
            measures: format!(
                "The same snapshot ({GUEST_MIB} MiB) and the same load as the API row, but \
                 `mem_backend` Uffd: before each run Petrel's own page-fault handler \
                 (`crates/vmm/examples/uffd_handler.rs`, built as petrel is: `cargo build \
                 --release -p petrel-vmm --example uffd_handler`, statically linked) is started \
                 as `uffd_handler SOCKET DIR/mem` and waited for until it listens (not timed). \
                 Timed: from just before writing `PUT /snapshot/load` (`backend_type: Uffd`, \
                 `backend_path: SOCKET`, `resume_vm: true`) to the end of its 204: petrel maps \
                 guest RAM anonymously, registers it with a userfaultfd, connects to the handler \
                 and sends it the descriptor and the layout, restores the VM and starts the \
                 vCPUs. Pages are copied in by the handler on first touch, mostly after the \
                 204, outside the timed window, as with the File backend's page-cache faults. \
                 Then `GET /` must say Running, petrel must end by SIGTERM, and the handler \
                 must exit 0 on petrel's hang-up. Compared with the File rows' values from \
                 the same, alternating runs. The first run of each is an untimed warm-up. \
                 Runs: {runs}."
            ),
        },
        Row {
            id: "snapshot_load_huge_pages",
            name: "restore with huge pages: PUT /snapshot/load (Transparent) answered".into(),
            unit: Unit::MsFine,
            petrel: drop_warm_up(thp_cell),
            comparison_name: "File backend, no huge pages (the API row)".into(),
            comparison: load_cell,
            target: Target::None,
            measures: format!(
                "The same snapshot ({GUEST_MIB} MiB; its guest ran with huge_pages None) and \
                 the same timed window as the API row (from just before writing `PUT \
                 /snapshot/load` to the end of its 204, `resume_vm: true`, `mem_backend` \
                 File), with `\"huge_pages\": \"Transparent\"`: petrel maps the memory file \
                 privately as always and advises the mapping with madvise(MADV_HUGEPAGE) \
                 (the host's transparent_hugepage setting must be madvise or always); whether \
                 the kernel then backs guest pages with 2 MiB pages is up to it and is not \
                 measured here. Then `GET /` must say Running and petrel must end by SIGTERM. \
                 Compared with the API row's values from the same, alternating runs; the \
                 first run of each is an untimed warm-up. Restoring onto hugetlbfs (`2M`) is \
                 refused with either backend: a memory file cannot be mapped onto hugetlbfs \
                 pages, and Petrel's Uffd backend hands its handler 4 KiB pages \
                 (Firecracker serves 2M snapshots only through a Uffd handler). A guest \
                 booted on `2M` pages (which needs free pages in the host's hugetlbfs pool, \
                 /proc/sys/vm/nr_hugepages; the bench does not grow it) can be snapshotted, \
                 and its memory file, a plain file like any other, is restored with \
                 Transparent or None: this row's load. Runs: {runs}."
            ),
        },
    ]
}

/// Runs `load` for each of `arms` in turn, `runs` rounds (an arm with a cell already is left
/// out); returns each arm's values, or its cell, or the first run's error.
fn alternate_loads<'a, const N: usize>(
    runs: u32,
    arms: [(Option<Cell>, Backend<'a>); N],
    mut load: impl FnMut(&Backend<'a>) -> Result<f64>,
) -> [Cell; N] {
    let mut arms = arms.map(|(done, backend)| (done, backend, Vec::new()));
    for i in 0..runs {
        for (done, backend, values) in &mut arms {
            if done.is_none() {
                match load(backend) {
                    Ok(v) => values.push(v),
                    Err(e) => *done = Some(Cell::Error(format!("run {}: {e}", i + 1))),
                }
            }
        }
    }
    arms.map(|(done, _, values)| done.unwrap_or(Cell::Measured(values)))
}

/// The cell without its first value (the warm-up run).
fn drop_warm_up(cell: Cell) -> Cell {
    match cell {
        Cell::Measured(mut v) if !v.is_empty() => {
            v.remove(0);
            Cell::Measured(v)
        }
        other => other,
    }
}

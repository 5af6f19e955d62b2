//! `cargo xtask fuzz [TARGET] [--time SECONDS]`: runs the cargo-fuzz targets of `fuzz/`.
//!
//! Installs cargo-fuzz when `cargo fuzz` is missing, then runs each target (or the one named)
//! in turn for the time given, one libFuzzer process at a time under `nice -n 19`, starting
//! from the checked-in seeds (`fuzz/corpus/<target>/`). What a run learns goes to
//! `fuzz/corpus-new/<target>/` (ignored by git), so the seeds stay the few small files they
//! are. Each run's output is kept in `target/fuzz-logs/<target>.log`; a summary line per target
//! gives executions per second, coverage (edges) and the outcome.
//!
//! On a crash the input is minimised (`cargo fuzz tmin`) and copied to
//! `fuzz/regressions/<target>/`, where the stable test `crates/fuzz-harness/tests/replay.rs`
//! replays it in `cargo test`: fix the bug, then commit the fix with that file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::cli::FuzzArgs;
use crate::error::{Error, IoContext, Result};

/// What one target's run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// `stat::average_exec_per_sec` of libFuzzer's final statistics.
    pub exec_per_sec: Option<u64>,
    /// The last `cov:` figure: edges (coverage points) reached.
    pub edges: Option<u64>,
    /// Inputs in the corpus at the end.
    pub corpus: Option<u64>,
}

/// Reads libFuzzer's output: the last `cov:` and `corp:` figures and the final exec/s.
pub fn parse_stats(log: &str) -> RunStats {
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = &line[line.find(name)? + name.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let mut stats = RunStats {
        exec_per_sec: None,
        edges: None,
        corpus: None,
    };
    for line in log.lines() {
        if let Some(v) = field(line, "cov:") {
            stats.edges = Some(v);
        }
        if let Some(v) = field(line, "corp:") {
            stats.corpus = Some(v);
        }
        if let Some(v) = field(line, "stat::average_exec_per_sec:") {
            stats.exec_per_sec = Some(v);
        }
    }
    stats
}

/// The targets: the files of `fuzz/fuzz_targets/`, by name, sorted.
pub fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .ctx(|| format!("reading {}", dir.display()))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz (cargo install cargo-fuzz)");
    run_checked(Command::new("cargo").args(["install", "cargo-fuzz"]))
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().ctx(|| format!("running {cmd:?}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("{cmd:?}"),
            detail: status.to_string(),
        })
    }
}

/// The newest file of `dir`, if any.
fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            e.file_type().ok()?.is_file().then(|| (modified, e.path()))
        })
        .max_by_key(|(t, _): &(SystemTime, PathBuf)| *t)
        .map(|(_, p)| p)
}

/// Minimises the crash `artifact` of `target` into `fuzz/regressions/<target>/`; returns
/// where it went.
///
/// libFuzzer's crash minimisation (`cargo fuzz tmin`, `-minimize_crash=1`) writes each
/// smaller crashing input it finds to `-exact_artifact_path`, so that file ends as the
/// smallest; when it cannot minimise at all (the input does not crash again) the crash is
/// kept as it is.
fn keep_crash(fuzz_dir: &Path, target: &str, artifact: &Path) -> Result<PathBuf> {
    let name = artifact
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("crash")
        .to_owned();
    let dir = fuzz_dir.join("regressions").join(target);
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(&name);
    let tmin = Command::new("nice")
        .args(["-n", "19", "cargo", "+nightly", "fuzz", "tmin", target])
        .arg(artifact)
        .arg("--")
        .arg(exact_artifact_path(&dest))
        .arg("-runs=2000")
        .current_dir(fuzz_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if tmin.is_err() || !dest.is_file() {
        fs::copy(artifact, &dest)
            .ctx(|| format!("copying {} to {}", artifact.display(), dest.display()))?;
    }
    Ok(dest)
}

/// libFuzzer's `-exact_artifact_path=PATH`, `PATH` made absolute (libFuzzer runs in `fuzz/`).
fn exact_artifact_path(path: &Path) -> std::ffi::OsString {
    let mut flag = std::ffi::OsString::from("-exact_artifact_path=");
    flag.push(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    flag
}

/// Runs one target for `time`; `Ok(None)` when it found nothing, else the regression file.
fn run_target(root: &Path, target: &str, time: Duration) -> Result<(RunStats, Option<PathBuf>)> {
    let fuzz_dir = root.join("fuzz");
    let learned = fuzz_dir.join("corpus-new").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&learned, &seeds, &artifacts] {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    let logs = root.join("target").join("fuzz-logs");
    fs::create_dir_all(&logs).ctx(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
    let before = newest_file(&artifacts);
    let status = Command::new("nice")
        .args(["-n", "19", "cargo", "+nightly", "fuzz", "run", target])
        .arg(&learned)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", time.as_secs().max(1)))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=4096"])
        .current_dir(&fuzz_dir)
        .env("CARGO_BUILD_JOBS", "1")
        .stdout(log.try_clone().ctx(|| "duplicating the log".into())?)
        .stderr(log)
        .status()
        .ctx(|| format!("running cargo fuzz run {target}"))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let stats = parse_stats(&text);
    if status.success() {
        return Ok((stats, None));
    }
    let artifact = newest_file(&artifacts).filter(|a| Some(a) != before.as_ref());
    let Some(artifact) = artifact else {
        return Err(Error::Command {
            command: format!("cargo fuzz run {target}"),
            detail: format!("{status}, no crash input; see {}", log_path.display()),
        });
    };
    Ok((stats, Some(keep_crash(&fuzz_dir, target, &artifact)?)))
}

/// `cargo xtask fuzz`: exit status 0 when no target crashed.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<bool> {
    let fuzz_dir = root.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<String> = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => {
            return Err(Error::Usage(format!(
                "fuzz: no target {t:?}; the targets are {}",
                all.join(", ")
            )))
        }
        None => all,
    };
    ensure_cargo_fuzz()?;
    let mut clean = true;
    println!(
        "{:<18} {:>8} {:>8} {:>8}  result",
        "target", "exec/s", "edges", "corpus"
    );
    for target in &chosen {
        let (stats, crash) = run_target(root, target, args.time)?;
        let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let result = match &crash {
            None => "no crash".to_string(),
            Some(file) => {
                clean = false;
                format!(
                    "CRASH, minimised into {} (replayed by `cargo test -p petrel-fuzz-harness`)",
                    file.display()
                )
            }
        };
        println!(
            "{target:<18} {:>8} {:>8} {:>8}  {result}",
            show(stats.exec_per_sec),
            show(stats.edges),
            show(stats.corpus)
        );
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statistics_are_read() {
        let log = "\
#2\tINITED cov: 710 ft: 1200 corp: 12/3Kb exec/s: 0 rss: 40Mb
#4096\tpulse  cov: 812 ft: 2281 corp: 406/8468b lim: 68 exec/s: 2048 rss: 176Mb
#59523\tDONE   cov: 820 ft: 2282 corp: 410/8468b lim: 68 exec/s: 5411 rss: 176Mb
Done 59523 runs in 11 second(s)
stat::number_of_executed_units: 59523
stat::average_exec_per_sec:     5411
";
        assert_eq!(
            parse_stats(log),
            RunStats {
                exec_per_sec: Some(5411),
                edges: Some(820),
                corpus: Some(410),
            }
        );
        assert_eq!(
            parse_stats("nothing here"),
            RunStats {
                exec_per_sec: None,
                edges: None,
                corpus: None
            }
        );
    }

    #[test]
    fn the_minimised_crash_path_is_absolute() {
        let flag = exact_artifact_path(Path::new("fuzz/regressions/x/crash-1"));
        let flag = flag.to_str().unwrap();
        let path = flag.strip_prefix("-exact_artifact_path=").unwrap();
        assert!(Path::new(path).is_absolute(), "{flag}");
        assert!(path.ends_with("fuzz/regressions/x/crash-1"), "{flag}");
    }

    #[test]
    fn targets_are_the_files_of_fuzz_targets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let names = targets(&root).unwrap();
        assert!(names.contains(&"virtio_blk".to_string()), "{names:?}");
        assert!(names.windows(2).all(|w| w[0] < w[1]));
    }
}

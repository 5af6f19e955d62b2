//! Writes the seed corpora: `fuzz-seeds CORPUS_DIR [RECORDING] [BZIMAGE]`.
//!
//! `RECORDING` is a `PETREL_RECORD_IO` file of a Linux boot (docs/fuzzing.md); `BZIMAGE` the
//! kernel it booted (only its setup header is used). Each seed goes to
//! `CORPUS_DIR/<target>/<name>`.

use std::path::PathBuf;
use std::process::ExitCode;

use petrel_fuzz_harness::seeds;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds CORPUS_DIR [RECORDING] [BZIMAGE]");
        return ExitCode::from(2);
    };
    let recording = match args.get(1).map(std::fs::read_to_string).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: cannot read the recording: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bzimage = args.get(2).and_then(|p| std::fs::read(p).ok());
    let mut all = seeds::from_recording(&recording);
    all.extend(seeds::built(bzimage.as_deref()));
    for (target, name, bytes) in all.into_iter().filter(|(_, _, b)| !b.is_empty()) {
        let path = dir.join(target).join(name);
        let written =
            std::fs::create_dir_all(dir.join(target)).and_then(|()| std::fs::write(&path, &bytes));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    ExitCode::SUCCESS
}

//! Seccomp filters: one allow-list per thread kind, installed on each thread before it handles
//! guest or client input, with `PR_SET_NO_NEW_PRIVS`.
//!
//! The filters are the binary's policy; the libraries only call
//! [`petrel_thread_hook::thread_started`] at the start of the threads they spawn (vCPUs, the
//! API server, the console writer), and [`enable`] registers the hook that installs the
//! filter of that kind. The VMM thread (the event loop, which is the main thread) confines
//! itself with [`confine_current_thread`] once the VM is started and before the event loop
//! runs.
//!
//! The filters are ready before any thread exists: the built-in lists ([`rules`]), compiled to
//! BPF by the build script (`build.rs`) so that the binary carries them (or at start, for a
//! cross build), or seccompiler's JSON format from `--seccomp-filter FILE`, compiled at start
//! (keys `vmm`, `api`,
//! `vcpu`, and optionally `console`, which otherwise gets the `vmm` filter: Firecracker's own
//! files have no console thread). A call outside a thread's list traps: see [`sigsys`].

mod names;
pub mod panic_report;
// With the filters compiled by the build script (build.rs includes this file), the binary
// uses these lists only in its tests and for a cross build.
#[cfg_attr(petrel_prebuilt_seccomp, allow(dead_code))]
pub mod rules;
pub mod sigsys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use petrel_thread_hook::ThreadKind;
use seccompiler::{BpfProgram, TargetArch};

use crate::error::CliError;

/// The thread kinds that get a filter of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The VMM thread: the event loop and its devices (and, in Firecracker's mode, the API
    /// requests it carries out).
    Vmm,
    /// The API server thread.
    Api,
    /// A vCPU thread.
    Vcpu,
    /// The console output thread.
    Console,
}

impl Kind {
    /// Every kind, in the order of [`Filters`].
    pub const ALL: [Kind; 4] = [Kind::Vmm, Kind::Api, Kind::Vcpu, Kind::Console];

    /// The name of its filter in a `--seccomp-filter` file.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vmm => "vmm",
            Kind::Api => "api",
            Kind::Vcpu => "vcpu",
            Kind::Console => "console",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The kind of a name, as [`Kind::name`] gives it.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl From<ThreadKind> for Kind {
    fn from(k: ThreadKind) -> Kind {
        match k {
            ThreadKind::Vcpu => Kind::Vcpu,
            ThreadKind::Api => Kind::Api,
            ThreadKind::Console => Kind::Console,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Choice {
    /// The built-in filters (the default).
    #[default]
    Builtin,
    /// `--no-seccomp`: no filters.
    Off,
    /// `--seccomp-filter FILE`: filters compiled from seccompiler's JSON format.
    File(PathBuf),
}

impl Choice {
    /// The choice that `--no-seccomp` and `--seccomp-filter` make (they exclude each other).
    pub fn from_flags(no_seccomp: bool, file: Option<PathBuf>) -> Result<Choice, CliError> {
        match (no_seccomp, file) {
            (false, None) => Ok(Choice::Builtin),
            (true, None) => Ok(Choice::Off),
            (false, Some(path)) => Ok(Choice::File(path)),
            (true, Some(path)) => Err(CliError::InvalidFlag {
                flag: "--seccomp-filter",
                value: path.display().to_string(),
                why: "give either --no-seccomp or --seccomp-filter, not both".into(),
            }),
        }
    }
}

/// The built-in filters as the build script compiled them, in the order of [`Kind::ALL`].
#[cfg(petrel_prebuilt_seccomp)]
const PREBUILT: [&[seccompiler::sock_filter]; 4] =
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// A compiled filter for each thread kind.
#[derive(Debug)]
pub struct Filters {
    programs: [BpfProgram; 4],
}

#[cfg_attr(petrel_prebuilt_seccomp, allow(dead_code))]
fn compile_error(source: seccompiler::Error) -> CliError {
    CliError::Seccomp {
        what: "compile",
        source: Box::new(source),
    }
}

impl Filters {
    /// The built-in filters: compiled by the build script (`build.rs`), or here where it
    /// could not (a cross build).
    pub fn builtin() -> Result<Filters, CliError> {
        #[cfg(petrel_prebuilt_seccomp)]
        {
            Ok(Filters {
                programs: PREBUILT.map(<[seccompiler::sock_filter]>::to_vec),
            })
        }
        #[cfg(not(petrel_prebuilt_seccomp))]
        Filters::compile_builtin()
    }

    /// The built-in filters, compiled from [`rules`] now.
    #[cfg_attr(petrel_prebuilt_seccomp, allow(dead_code))]
    pub fn compile_builtin() -> Result<Filters, CliError> {
        let mut programs = Vec::with_capacity(Kind::ALL.len());
        for kind in Kind::ALL {
            let list = rules::builtin(kind).map_err(compile_error)?;
            programs.push(list.compile().map_err(compile_error)?);
        }
        Ok(Filters {
            programs: programs.try_into().unwrap_or_else(|_| unreachable!()),
        })
    }

    /// The filters of a JSON file in seccompiler's format.
    pub fn from_json_file(path: &Path) -> Result<Filters, CliError> {
        let bad = |why: String| CliError::InvalidFlag {
            flag: "--seccomp-filter",
            value: path.display().to_string(),
            why,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut map =
            seccompiler::compile_from_json(std::io::BufReader::new(file), TargetArch::x86_64)
                .map_err(|e| bad(petrel_vmm::error_chain(&e)))?;
        Filters::from_map(&mut map).map_err(bad)
    }

    fn from_map(map: &mut HashMap<String, BpfProgram>) -> Result<Filters, String> {
        if let Some(unknown) = map.keys().find(|k| Kind::parse(k).is_none()) {
            return Err(format!(
                "unknown filter `{unknown}`: the thread kinds are vmm, api, vcpu and console"
            ));
        }
        let take = |kind: Kind| {
            map.get(kind.name())
                .cloned()
                .ok_or_else(|| format!("no `{}` filter", kind.name()))
        };
        let vmm = take(Kind::Vmm)?;
        let console = take(Kind::Console).unwrap_or_else(|_| vmm.clone());
        Ok(Filters {
            programs: [vmm, take(Kind::Api)?, take(Kind::Vcpu)?, console],
        })
    }

    /// The filters `choice` asks for, or none for `--no-seccomp`.
    pub fn load(choice: &Choice) -> Result<Option<Filters>, CliError> {
        match choice {
            Choice::Off => Ok(None),
            Choice::Builtin => Filters::builtin().map(Some),
            Choice::File(path) => Filters::from_json_file(path).map(Some),
        }
    }

    /// The filter of `kind`.
    pub fn get(&self, kind: Kind) -> &BpfProgram {
        &self.programs[kind.index()]
    }
}

/// Loads the filters `choice` asks for and, unless it is `--no-seccomp`, installs the SIGSYS
/// report and the panic report of confined threads ([`panic_report`]), and registers the hook that confines each library thread as it starts. Call it
/// once, before any thread starts. Returns the filters, for the VMM thread's own.
pub fn enable(choice: &Choice) -> Result<Option<Arc<Filters>>, CliError> {
    let Some(filters) = Filters::load(choice)? else {
        return Ok(None);
    };
    let filters = Arc::new(filters);
    sigsys::install_handler().map_err(|e| CliError::Seccomp {
        what: "install the SIGSYS handler for",
        source: Box::new(e),
    })?;
    panic_report::install();
    let for_hook = filters.clone();
    petrel_thread_hook::set_thread_hook(Box::new(move |kind| {
        if let Err(e) = confine_current_thread(&for_hook, kind.into()) {
            // An unconfined thread must not run: end here, before it reads any input.
            eprintln!("petrel: {}", crate::error::chain(&e));
            std::process::exit(petrel_vmm::EXIT_FAILURE);
        }
    }))
    .map_err(|e| CliError::Seccomp {
        what: "register the thread hook for",
        source: Box::new(e),
    })?;
    Ok(Some(filters))
}

/// Installs the filter of `kind` on the calling thread, for good.
pub fn confine_current_thread(filters: &Filters, kind: Kind) -> Result<(), CliError> {
    let thread = std::thread::current();
    sigsys::set_thread_label(thread.name().unwrap_or("?"), kind.name());
    seccompiler::apply_filter(filters.get(kind)).map_err(|e| CliError::Seccomp {
        what: "install",
        source: Box::new(e),
    })?;
    panic_report::mark_confined();
    Ok(())
}

/// `petrel __seccomp-selftest KIND [FILE]`: a hidden aid for the tests. Confines a thread of
/// KIND (named as Petrel names it, through the same hook) with the built-in filters or those
/// of FILE, then makes a call no filter allows, `socket(AF_INET, SOCK_STREAM, 0)`. The process
/// is expected to end with [`sigsys::EXIT_BAD_SYSCALL`] and the report on stderr; if the call is
/// allowed, it says so and exits with 1.
pub fn selftest(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let Some(kind) = args.first().and_then(|k| Kind::parse(k)) else {
        eprintln!("usage: petrel __seccomp-selftest vmm|api|vcpu|console [FILTER-FILE]");
        return ExitCode::from(petrel_vmm::EXIT_BAD_INPUT as u8);
    };
    let choice = args
        .get(1)
        .map_or(Choice::Builtin, |f| Choice::File(f.into()));
    let filters = match enable(&choice) {
        Ok(f) => f.expect("a filter was asked for"),
        Err(e) => {
            eprintln!("petrel: {}", crate::error::chain(&e));
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let forbidden = || {
        // SAFETY: socket(2) with constant arguments; the descriptor, if any, is closed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: the descriptor was just created here.
            unsafe { libc::close(fd) };
        }
    };
    let (name, thread_kind) = match kind {
        Kind::Vmm => {
            if let Err(e) = confine_current_thread(&filters, Kind::Vmm) {
                eprintln!("petrel: {}", crate::error::chain(&e));
                return ExitCode::from(petrel_vmm::EXIT_FAILURE as u8);
            }
            forbidden();
            eprintln!("petrel: the vmm filter allowed socket(AF_INET)");
            return ExitCode::FAILURE;
        }
        Kind::Api => ("fc_api", ThreadKind::Api),
        Kind::Vcpu => ("petrel-vcpu0", ThreadKind::Vcpu),
        Kind::Console => ("petrel-console", ThreadKind::Console),
    };
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            petrel_thread_hook::thread_started(thread_kind);
            forbidden();
        })
        .map(|t| t.join());
    eprintln!(
        "petrel: the {} filter allowed socket(AF_INET): {spawned:?}",
        kind.name()
    );
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_choose_and_exclude_each_other() {
        assert_eq!(Choice::from_flags(false, None).unwrap(), Choice::Builtin);
        assert_eq!(Choice::from_flags(true, None).unwrap(), Choice::Off);
        assert_eq!(
            Choice::from_flags(false, Some("f.json".into())).unwrap(),
            Choice::File("f.json".into())
        );
        assert!(Choice::from_flags(true, Some("f.json".into())).is_err());
    }

    #[test]
    fn a_filter_file_needs_vmm_api_and_vcpu_and_console_defaults_to_vmm() {
        let json = |kinds: &[&str]| {
            let filters: Vec<String> = kinds
                .iter()
                .map(|k| {
                    format!(
                        r#""{k}": {{"default_action": "trap", "filter_action": "allow",
                              "filter": [{{"syscall": "write"}}, {{"syscall": "{k_call}"}}]}}"#,
                        k_call = if *k == "console" { "read" } else { "close" }
                    )
                })
                .collect();
            format!("{{{}}}", filters.join(","))
        };
        let compile = |text: String| {
            let mut map =
                seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64).unwrap();
            Filters::from_map(&mut map)
        };
        let three = compile(json(&["vmm", "api", "vcpu"])).unwrap();
        assert_eq!(three.get(Kind::Console), three.get(Kind::Vmm));
        let four = compile(json(&["vmm", "api", "vcpu", "console"])).unwrap();
        assert_ne!(four.get(Kind::Console), four.get(Kind::Vmm));
        assert!(compile(json(&["vmm", "api"]))
            .unwrap_err()
            .contains("no `vcpu` filter"));
        assert!(compile(json(&["vmm", "api", "vcpu", "vcpus"]))
            .unwrap_err()
            .contains("unknown filter `vcpus`"));
    }

    #[test]
    fn the_embedded_filters_are_the_rules_compiled() {
        let embedded = Filters::builtin().unwrap();
        let compiled = Filters::compile_builtin().unwrap();
        for kind in Kind::ALL {
            assert_eq!(embedded.get(kind), compiled.get(kind), "{kind:?}");
        }
    }

    #[test]
    fn the_builtin_filters_compile() {
        let f = Filters::builtin().unwrap();
        for kind in Kind::ALL {
            assert!(!f.get(kind).is_empty());
            assert_eq!(Kind::parse(kind.name()), Some(kind));
        }
    }
}

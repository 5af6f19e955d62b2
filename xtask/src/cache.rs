//! Where built guest artefacts are kept between runs, how they are keyed, and a simple
//! inter-process lock so that two runs do not build into the same directory at once.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::error::{Error, IoContext, Result};
use crate::sha256::Sha256;

/// Hex digits of the SHA-256 kept in a cache key: 80 bits, plenty for a handful of entries.
const KEY_HEX_DIGITS: usize = 20;

/// The cache directory: `$PETREL_CACHE`, else `$XDG_CACHE_HOME/petrel`, else
/// `$HOME/.cache/petrel`. Empty variables count as unset; a relative `XDG_CACHE_HOME` is
/// ignored, as the XDG base directory specification asks.
pub fn resolve_root(get: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let nonempty = |name: &str| get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = nonempty("PETREL_CACHE") {
        return Some(dir);
    }
    if let Some(dir) = nonempty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(dir.join("petrel"));
    }
    nonempty("HOME").map(|home| home.join(".cache").join("petrel"))
}

/// The cache directory of this run.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache named by the environment (see [`resolve_root`]).
    pub fn from_env() -> Result<Self> {
        let root = resolve_root(|name| std::env::var_os(name)).ok_or_else(|| {
            Error::Other("no cache directory: set PETREL_CACHE, XDG_CACHE_HOME or HOME".into())
        })?;
        Ok(Self { root })
    }

    /// The top of the cache.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The subdirectory `name` of the cache, created if missing.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

/// Builds a cache key from labelled inputs. Each input is framed by its label and length,
/// so that moving bytes from one input to the next changes the key.
#[derive(Debug, Clone, Default)]
pub struct KeyBuilder {
    hash: Sha256,
}

impl KeyBuilder {
    /// Starts a key for artefacts of kind `kind` (e.g. "kernel").
    pub fn new(kind: &str) -> Self {
        let mut key = Self::default();
        key.add("kind", kind.as_bytes());
        key
    }

    /// Adds one input.
    pub fn add(&mut self, label: &str, data: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), data] {
            self.hash.update(&(part.len() as u64).to_le_bytes());
            self.hash.update(part);
        }
        self
    }

    /// The key: the first hex digits of the SHA-256 of all inputs.
    pub fn finish(&self) -> String {
        let mut hex = self.hash.clone().finish_hex();
        hex.truncate(KEY_HEX_DIGITS);
        hex
    }
}

/// An exclusive lock held through a file created with `create_new`; the file holds the
/// owner's process id. A lock whose owner no longer runs is taken over.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
}

impl Lock {
    /// Waits until the lock at `path` is free, then takes it.
    pub fn acquire(path: &Path) -> Result<Self> {
        let mut told = false;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut file) => {
                    writeln!(file, "{}", std::process::id())
                        .ctx(|| format!("writing lock {}", path.display()))?;
                    return Ok(Self {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match lock_owner(path) {
                        Owner::Alive(pid) => {
                            if !told {
                                println!(
                                    "waiting for process {pid}, which holds {}",
                                    path.display()
                                );
                                told = true;
                            }
                            thread::sleep(Duration::from_secs(2));
                        }
                        Owner::Fresh => thread::sleep(Duration::from_millis(200)),
                        Owner::Gone => {
                            // Stale: its owner died. Removing it races only with another
                            // taker of the same stale lock; create_new settles who wins.
                            let _ = fs::remove_file(path);
                        }
                    }
                }
                Err(e) => return Err(e).ctx(|| format!("creating lock {}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

enum Owner {
    Alive(u32),
    /// No readable pid yet, but the file is new: its owner may still be writing it.
    Fresh,
    Gone,
}

fn lock_owner(path: &Path) -> Owner {
    let pid = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => Owner::Alive(pid),
        Some(_) => Owner::Gone,
        None => {
            let age = fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            match age {
                Some(age) if age < Duration::from_secs(10) => Owner::Fresh,
                _ => Owner::Gone,
            }
        }
    }
}

/// Moves the finished directory `tmp` to `dest` in one rename, so a reader never sees a
/// half-written entry. If `dest` appeared meanwhile, it is replaced.
pub fn publish_dir(tmp: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        fs::remove_dir_all(dest).ctx(|| format!("removing old {}", dest.display()))?;
    }
    fs::rename(tmp, dest).ctx(|| format!("moving {} to {}", tmp.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn root_prefers_petrel_cache() {
        let get = env(&[
            ("PETREL_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(resolve_root(get), Some(PathBuf::from("/c")));
    }

    #[test]
    fn root_falls_back_to_xdg_then_home() {
        let get = env(&[
            ("PETREL_CACHE", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(resolve_root(get), Some(PathBuf::from("/x/petrel")));
        let get = env(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]);
        assert_eq!(resolve_root(get), Some(PathBuf::from("/h/.cache/petrel")));
        assert_eq!(resolve_root(env(&[])), None);
    }

    #[test]
    fn key_is_stable_and_sensitive_to_every_input() {
        let key = |kind: &str, inputs: &[(&str, &[u8])]| {
            let mut k = KeyBuilder::new(kind);
            for (label, data) in inputs {
                k.add(label, data);
            }
            k.finish()
        };
        let base = key("kernel", &[("config", b"A=y"), ("version", b"1")]);
        assert_eq!(base.len(), KEY_HEX_DIGITS);
        assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            base,
            key("kernel", &[("config", b"A=y"), ("version", b"1")])
        );
        assert_ne!(
            base,
            key("initramfs", &[("config", b"A=y"), ("version", b"1")])
        );
        assert_ne!(
            base,
            key("kernel", &[("config", b"A=n"), ("version", b"1")])
        );
        assert_ne!(
            base,
            key("kernel", &[("config", b"A=y"), ("version", b"2")])
        );
        // Framing: shifting bytes between inputs gives a different key.
        assert_ne!(
            base,
            key("kernel", &[("config", b"A=y1"), ("version", b"")])
        );
    }

    #[test]
    fn lock_excludes_and_recovers_stale() {
        let dir = std::env::temp_dir().join(format!("xtask-lock-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.lock");
        // A lock left by a process that no longer exists (pid beyond pid_max) is taken.
        fs::write(&path, "4294967295\n").unwrap();
        let lock = Lock::acquire(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        assert!(matches!(lock_owner(&path), Owner::Alive(_)));
        drop(lock);
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

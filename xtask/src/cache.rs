//! Where built guest artefacts are kept between runs, how they are keyed, and a simple
//! inter-process lock so that two runs do not build into the same directory at once.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

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
            self.hash.update((part.len() as u64).to_le_bytes());
            self.hash.update(part);
        }
        self
    }

    /// The key: the first hex digits of the SHA-256 of all inputs.
    pub fn finish(&self) -> String {
        let mut hex = to_hex(&self.hash.clone().finalize());
        hex.truncate(KEY_HEX_DIGITS);
        hex
    }
}

/// The SHA-256 of `data`, in lowercase hex (as `sha256sum` prints it).
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// `bytes` as lowercase hex, two digits a byte.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    fn key_is_the_sha256_of_the_framed_inputs() {
        // Worked out with Python's hashlib over the framing: le64(4) "kind" le64(6) "kernel"
        // le64(6) "config" le64(12) "CONFIG_PVH=y".
        let mut k = KeyBuilder::new("kernel");
        k.add("config", b"CONFIG_PVH=y");
        assert_eq!(k.finish(), "7e24fb7585ee223ebfdc");
    }

    #[test]
    fn sha256_known_values() {
        // FIPS 180-2, appendix B.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn sha256_matches_sha256sum() {
        // A file of several blocks with an odd tail, hashed by coreutils as well.
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("xtask-sha256-{}", std::process::id()));
        fs::write(&path, &data).unwrap();
        let out = std::process::Command::new("sha256sum").arg(&path).output();
        fs::remove_file(&path).unwrap();
        let Ok(out) = out else {
            eprintln!("NOTE: sha256sum not found: the comparison with coreutils did NOT run");
            return;
        };
        assert!(out.status.success());
        let theirs = String::from_utf8(out.stdout).unwrap();
        assert_eq!(theirs.split(' ').next(), Some(sha256_hex(&data).as_str()));
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

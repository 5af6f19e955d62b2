//! Reading a process's memory from `/proc/PID/smaps` and `/proc/PID/status`.
//!
//! A VMM's resident set has two parts: the guest's RAM (one large anonymous mapping of the
//! guest's size; its `Rss` is the guest memory the guest or the loader touched) and
//! everything else (code, heap, stacks, libraries, device buffers): the VMM's overhead.

use std::fs;

/// One mapping of `/proc/PID/smaps`, with the fields the bench uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mapping {
    /// The mapping's size (`Size:`), in KiB.
    pub size_kib: u64,
    /// Resident pages (`Rss:`), in KiB.
    pub rss_kib: u64,
    /// Resident pages that belong to no file (`Anonymous:`: anonymous memory and private
    /// copies of file pages), in KiB.
    pub anon_kib: u64,
    /// Pages written by this process only (`Private_Dirty:`: its own anonymous pages, and
    /// its private copies of a privately mapped file's pages), in KiB.
    pub private_dirty_kib: u64,
    /// The inode of the file mapped; 0 for anonymous memory.
    pub inode: u64,
    /// The path column: a file, `[heap]`, `[stack]`, `[anon:NAME]`, or empty.
    pub path: String,
}

impl Mapping {
    /// Whether it maps no file (anonymous memory, named or not).
    pub fn is_anonymous(&self) -> bool {
        self.inode == 0 && (self.path.is_empty() || self.path.starts_with("[anon"))
    }
}

/// Parses the text of `/proc/PID/smaps`. Lines that are neither a mapping's header nor a
/// `Key: value kB` field are ignored.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_header(line) {
            maps.push(m);
            continue;
        }
        let Some(current) = maps.last_mut() else {
            continue;
        };
        if let Some(kib) = field_kib(line, "Size:") {
            current.size_kib = kib;
        } else if let Some(kib) = field_kib(line, "Rss:") {
            current.rss_kib = kib;
        } else if let Some(kib) = field_kib(line, "Anonymous:") {
            current.anon_kib = kib;
        } else if let Some(kib) = field_kib(line, "Private_Dirty:") {
            current.private_dirty_kib = kib;
        }
    }
    maps
}

/// `start-end perms offset dev inode [path]`, the first line of each mapping.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut cols = line.splitn(6, ' ');
    let range = cols.next()?;
    let (start, end) = range.split_once('-')?;
    u64::from_str_radix(start, 16).ok()?;
    u64::from_str_radix(end, 16).ok()?;
    let perms = cols.next()?;
    if perms.len() != 4 {
        return None;
    }
    let _offset = cols.next()?;
    let _dev = cols.next()?;
    let inode = cols.next()?.parse().ok()?;
    let path = cols.next().unwrap_or("").trim().to_owned();
    Some(Mapping {
        inode,
        path,
        ..Mapping::default()
    })
}

/// The value of a `Key:   N kB` line, if `line` is that key's.
fn field_kib(line: &str, key: &str) -> Option<u64> {
    let rest = line.strip_prefix(key)?;
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(n)
}

/// A resident set split into guest RAM and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSplit {
    /// All resident memory (the sum of every mapping's `Rss`), KiB.
    pub total_rss_kib: u64,
    /// Resident guest RAM (the guest mapping's `Rss`), KiB.
    pub guest_rss_kib: u64,
    /// All anonymous resident memory (the sum of `Anonymous`), KiB.
    pub total_anon_kib: u64,
    /// Anonymous resident guest RAM, KiB.
    pub guest_anon_kib: u64,
}

impl MemSplit {
    /// Everything but guest RAM: the VMM's own memory, KiB.
    pub fn overhead_kib(&self) -> u64 {
        self.total_rss_kib.saturating_sub(self.guest_rss_kib)
    }

    /// The VMM's own anonymous memory (heap, stacks, private copies of file pages): what
    /// it does not share with any other process, KiB.
    pub fn private_overhead_kib(&self) -> u64 {
        self.total_anon_kib.saturating_sub(self.guest_anon_kib)
    }
}

/// Most a guest RAM mapping may exceed the guest's size by (a VMM may over-allocate to align
/// it, or add guard pages), KiB.
pub const GUEST_MAPPING_SLACK_KIB: u64 = 4 * 1024;

/// Splits `maps` into guest RAM and the rest: the guest's RAM is the anonymous mapping whose
/// size is at least `guest_kib` and at most [`GUEST_MAPPING_SLACK_KIB`] more (the closest to
/// `guest_kib` if several are). `None` when there is no such mapping.
pub fn split(maps: &[Mapping], guest_kib: u64) -> Option<MemSplit> {
    let guest = maps
        .iter()
        .filter(|m| m.is_anonymous())
        .filter(|m| m.size_kib >= guest_kib && m.size_kib - guest_kib <= GUEST_MAPPING_SLACK_KIB)
        .min_by_key(|m| (m.size_kib - guest_kib, u64::MAX - m.rss_kib))?;
    Some(MemSplit {
        total_rss_kib: maps.iter().map(|m| m.rss_kib).sum(),
        guest_rss_kib: guest.rss_kib,
        total_anon_kib: maps.iter().map(|m| m.anon_kib).sum(),
        guest_anon_kib: guest.anon_kib,
    })
}

/// `VmRSS` and `VmHWM` of `/proc/PID/status`, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Resident set now.
    pub vm_rss_kib: u64,
    /// Peak resident set ("high water mark").
    pub vm_hwm_kib: u64,
}

/// Parses `/proc/PID/status`; `None` when either field is missing (a zombie has neither).
pub fn parse_status(text: &str) -> Option<Status> {
    let mut rss = None;
    let mut hwm = None;
    for line in text.lines() {
        if let Some(v) = field_kib(line, "VmRSS:") {
            rss = Some(v);
        } else if let Some(v) = field_kib(line, "VmHWM:") {
            hwm = Some(v);
        }
    }
    Some(Status {
        vm_rss_kib: rss?,
        vm_hwm_kib: hwm?,
    })
}

/// Reads and parses `/proc/<pid>/status`; `None` once the process is gone or a zombie.
pub fn read_status(pid: u32) -> Option<Status> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Reads and parses `/proc/<pid>/smaps`; `None` once the process is gone.
pub fn read_smaps(pid: u32) -> Option<Vec<Mapping>> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let maps = parse_smaps(&text);
    (!maps.is_empty()).then_some(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fd:01 1234                       /usr/bin/petrel
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Pss:                 800 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:                  48 kB
Anonymous:            48 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
Anonymous:           100 kB
7f0020000000-7f0020800000 rw-p 00000000 00:00 0                          [anon:stack]
Size:               8192 kB
Rss:                  16 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn smaps_fields() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].path, "/usr/bin/petrel");
        assert_eq!(
            (maps[0].size_kib, maps[0].rss_kib, maps[0].inode),
            (1024, 800, 1234)
        );
        assert!(!maps[0].is_anonymous());
        assert_eq!(maps[1].path, "");
        assert!(maps[1].is_anonymous());
        assert_eq!(
            (maps[1].size_kib, maps[1].rss_kib, maps[1].anon_kib),
            (262_144, 48, 48)
        );
        assert!(!maps[2].is_anonymous(), "[heap] is the VMM's");
        assert!(maps[3].is_anonymous());
    }

    #[test]
    fn guest_ram_is_the_mapping_of_the_guest_size() {
        let maps = parse_smaps(SMAPS);
        let s = split(&maps, 256 * 1024).unwrap();
        assert_eq!(s.total_rss_kib, 800 + 48 + 100 + 16 + 12);
        assert_eq!(s.guest_rss_kib, 48);
        assert_eq!(s.overhead_kib(), 800 + 100 + 16 + 12);
        assert_eq!((s.total_anon_kib, s.guest_anon_kib), (148, 48));
        assert_eq!(
            s.private_overhead_kib(),
            100,
            "the heap; file pages are shared"
        );
        assert_eq!(split(&maps, 512 * 1024), None, "no 512 MiB mapping");
        // An 8 MiB guest would be the 8 MiB stack-like mapping: sizes must match.
        assert_eq!(split(&maps, 8 * 1024).unwrap().guest_rss_kib, 16);
    }

    #[test]
    fn guest_mapping_may_be_a_little_larger() {
        let mut maps = parse_smaps(SMAPS);
        maps[1].size_kib = 256 * 1024 + 2048;
        assert_eq!(split(&maps, 256 * 1024).unwrap().guest_rss_kib, 48);
        maps[1].size_kib = 256 * 1024 + GUEST_MAPPING_SLACK_KIB + 4;
        assert_eq!(split(&maps, 256 * 1024), None);
    }

    #[test]
    fn status_fields() {
        let text =
            "Name:\tpetrel\nVmPeak:\t  300000 kB\nVmHWM:\t    2500 kB\nVmRSS:\t    2400 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                vm_rss_kib: 2400,
                vm_hwm_kib: 2500
            })
        );
        assert_eq!(parse_status("Name:\tzombie\nState:\tZ (zombie)\n"), None);
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let st = read_status(me).unwrap();
        assert!(st.vm_rss_kib > 0 && st.vm_hwm_kib >= st.vm_rss_kib);
        let maps = read_smaps(me).unwrap();
        assert!(maps.iter().any(|m| m.rss_kib > 0));
    }
}

use super::*;

/// The `/proc/self/smaps` fields of the mapping that holds `addr` (`KernelPageSize`,
/// `THPeligible`, `VmFlags`, ...).
fn smaps_of(addr: u64) -> Vec<(String, String)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut fields = Vec::new();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                if inside {
                    break;
                }
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    assert!(!fields.is_empty(), "no mapping holds {addr:#x}");
    fields
}

fn field(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
}

#[test]
fn sizes_must_be_whole_huge_pages() {
    for huge in [HugePages::Transparent, HugePages::Hugetlbfs2M] {
        let err = GuestRam::with_huge_pages(3 << 20, huge).unwrap_err();
        assert!(
            matches!(err, Error::HugePageSize { size, huge_pages } if size == 3 << 20 && huge_pages == huge),
            "{err}"
        );
        assert!(err.to_string().contains("multiple of 2 MiB"), "{err}");
        assert!(err.to_string().contains(huge.name()), "{err}");
    }
    // Without huge pages, 4 KiB pages are enough.
    let ram = GuestRam::with_huge_pages(3 << 20, HugePages::None).unwrap();
    assert_eq!(ram.huge_pages(), HugePages::None);
    assert_eq!(HugePages::Hugetlbfs2M.page_size(), 2 << 20);
    assert_eq!(HugePages::Transparent.page_size(), 4096);
}

#[test]
fn a_pool_too_small_is_an_error_that_names_it() {
    let pool = HugePagePool {
        total: 10,
        free: 6,
        reserved: 2,
    };
    assert_eq!(pool.available(), 4);
    check_pool(4, Some(pool)).unwrap();
    let err = check_pool(64, Some(pool)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::HugePagePool {
                needed: 64,
                available: 4,
                total: 10
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    for word in [
        "huge_pages",
        "2M",
        "64",
        "4 free of 10",
        "/proc/sys/vm/nr_hugepages",
        "echo 70",
    ] {
        assert!(text.contains(word), "{word:?} missing from {text:?}");
    }
    let err = check_pool(1, None).unwrap_err();
    assert!(matches!(
        err,
        Error::HugePagePool {
            needed: 1,
            available: 0,
            total: 0
        }
    ));
}

#[test]
fn transparent_memory_is_advised_for_huge_pages() {
    let ram = GuestRam::with_huge_pages(8 << 20, HugePages::Transparent).unwrap();
    assert_eq!(ram.huge_pages(), HugePages::Transparent);
    ram.write(0x1000, b"thp").unwrap();
    let mut b = [0u8; 3];
    ram.read(0x1000, &mut b).unwrap();
    assert_eq!(&b, b"thp");
    let fields = smaps_of(ram.regions()[0].host_addr);
    // VmFlags `hg`: the VMA has MADV_HUGEPAGE (VM_HUGEPAGE), whatever the host's THP mode.
    let flags = field(&fields, "VmFlags");
    assert!(
        flags.split_whitespace().any(|f| f == "hg"),
        "VmFlags: {flags}"
    );
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if enabled.contains("[never]") {
        eprintln!("THPeligible not checked: transparent huge pages are off on this host");
    } else {
        assert_eq!(field(&fields, "THPeligible"), "1", "{fields:?}");
    }
    // A plain guest's memory is not advised.
    let plain = GuestRam::new(8 << 20).unwrap();
    let flags = field(&smaps_of(plain.regions()[0].host_addr), "VmFlags");
    assert!(
        !flags.split_whitespace().any(|f| f == "hg"),
        "VmFlags: {flags}"
    );
}

#[test]
fn a_memory_file_maps_with_transparent_pages_but_never_hugetlbfs() {
    let (path, f) = crate::tests::temp_file("thp");
    let ram = GuestRam::new(4 << 20).unwrap();
    ram.write(0x2000, b"saved").unwrap();
    ram.write_full(&f).unwrap();
    let restored =
        GuestRam::from_file_with_huge_pages(4 << 20, &f, HugePages::Transparent).unwrap();
    assert_eq!(restored.huge_pages(), HugePages::Transparent);
    let mut b = [0u8; 5];
    restored.read(0x2000, &mut b).unwrap();
    assert_eq!(&b, b"saved");
    let flags = field(&smaps_of(restored.regions()[0].host_addr), "VmFlags");
    assert!(
        flags.split_whitespace().any(|f| f == "hg"),
        "VmFlags: {flags}"
    );
    let err = GuestRam::from_file_with_huge_pages(4 << 20, &f, HugePages::Hugetlbfs2M).unwrap_err();
    assert!(matches!(err, Error::HugetlbfsFromFile), "{err}");
    assert!(
        err.to_string().contains("huge_pages None or Transparent"),
        "{err}"
    );
    std::fs::remove_file(path).unwrap();
}

/// Sets the host's pool of 2 MiB pages to `pages` for as long as it lives, then back to what
/// it was.
struct PoolGuard {
    was: String,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl PoolGuard {
    /// `None` (with the reason printed) where the pool cannot be set: not root, no pool.
    fn grow_by(pages: u64, test: &str) -> Option<PoolGuard> {
        let skip = |why: String| {
            if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: {why} (VMM_REQUIRE_KVM=1)");
            }
            eprintln!("SKIPPED {test}: {why} (set VMM_REQUIRE_KVM=1 to fail)");
            None
        };
        let was = match std::fs::read_to_string(NR_HUGEPAGES) {
            Ok(v) => v.trim().to_string(),
            Err(e) => return skip(format!("cannot read {NR_HUGEPAGES}: {e}")),
        };
        let Some(pool) = HugePagePool::read() else {
            return skip("the host has no pool of 2 MiB pages".into());
        };
        let want = pool.total + pages;
        if let Err(e) = std::fs::write(NR_HUGEPAGES, want.to_string()) {
            return skip(format!("cannot set {NR_HUGEPAGES} (needs root): {e}"));
        }
        let guard = PoolGuard { was };
        let now = HugePagePool::read().unwrap();
        if now.available() < pages {
            return skip(format!(
                "the host gave {} of the {pages} 2 MiB pages asked for (fragmented memory?)",
                now.available()
            ));
        }
        Some(guard)
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR_HUGEPAGES, &self.was) {
            eprintln!("could not restore {NR_HUGEPAGES} to {}: {e}", self.was);
        }
    }
}

#[test]
fn hugetlbfs_memory_comes_from_the_pool_and_a_short_pool_is_refused_at_start() {
    let test = "hugetlbfs_memory_comes_from_the_pool_and_a_short_pool_is_refused_at_start";
    let Some(_pool) = PoolGuard::grow_by(4, test) else {
        return;
    };
    let before = HugePagePool::read().unwrap();
    let ram = GuestRam::with_huge_pages(8 << 20, HugePages::Hugetlbfs2M).unwrap();
    assert_eq!(ram.huge_pages(), HugePages::Hugetlbfs2M);
    // The four pages are reserved by the mapping itself, before the guest touches any.
    let after = HugePagePool::read().unwrap();
    assert_eq!(
        after.available() + 4,
        before.available(),
        "{before:?} -> {after:?}"
    );
    ram.write(0x1000, b"huge").unwrap();
    ram.write((8 << 20) - 4, b"edge").unwrap();
    let mut b = [0u8; 4];
    ram.read(0x1000, &mut b).unwrap();
    assert_eq!(&b, b"huge");
    let fields = smaps_of(ram.regions()[0].host_addr);
    assert_eq!(field(&fields, "KernelPageSize"), "2048 kB", "{fields:?}");
    // The pool is used up: one more guest is refused now, not with a SIGBUS later.
    let err = GuestRam::with_huge_pages(8 << 20, HugePages::Hugetlbfs2M).unwrap_err();
    assert!(
        matches!(err, Error::HugePagePool { needed: 4, available, .. } if available < 4),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/proc/sys/vm/nr_hugepages"),
        "{err}"
    );
    // The balloon's discard frees whole 2 MiB pages only: a 4 KiB range changes nothing,
    // the page covering [2 MiB, 4 MiB) reads zeros afterwards.
    ram.write(2 << 20, b"keep").unwrap();
    ram.discard(2 << 20, 0x1000).unwrap();
    ram.read(2 << 20, &mut b).unwrap();
    assert_eq!(&b, b"keep");
    ram.discard(0x1000, 4 << 20).unwrap();
    ram.read(2 << 20, &mut b).unwrap();
    assert_eq!(b, [0; 4]);
    ram.read(0x1000, &mut b).unwrap();
    assert_eq!(&b, b"huge", "the first 2 MiB page is only partly covered");
    drop(ram);
    assert_eq!(
        HugePagePool::read().unwrap().available(),
        before.available()
    );
}

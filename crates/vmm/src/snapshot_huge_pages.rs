//! Huge pages and snapshots: the setting saved with the machine (by Firecracker's name), and
//! the one a restore uses. As in Firecracker, a restore keeps the snapshot's setting unless
//! told otherwise (`huge_pages` on `PUT /snapshot/load`), advises a memory file mapping for
//! `Transparent`, and refuses `2M` with a memory file: hugetlbfs pages need a userfaultfd
//! handler to fill them (Firecracker's `HugetlbfsSnapshot` error).

use serde::{Deserialize, Deserializer, Serializer};

use crate::config::HugePages;
use crate::snapshot::{RestoreConfig, SavedMachine};
use crate::{Error, Result};

/// Writes `huge_pages` as Firecracker names it (`None`, `Transparent`, `2M`).
pub(crate) fn serialize<S: Serializer>(
    huge_pages: &HugePages,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(huge_pages.name())
}

/// Reads a name [`serialize`] wrote.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<HugePages, D::Error> {
    let name = String::deserialize(d)?;
    [
        HugePages::None,
        HugePages::Transparent,
        HugePages::Hugetlbfs2M,
    ]
    .into_iter()
    .find(|h| h.name() == name)
    .ok_or_else(|| {
        serde::de::Error::custom(format!(
            "huge_pages `{name}` is not one of None, Transparent, 2M"
        ))
    })
}

/// The setting a restore uses: the override, else the snapshot's. `2M` is refused: a memory
/// file is restored by mapping it, which hugetlbfs pages cannot be, and the Uffd backend
/// registers 4 KiB pages (Firecracker serves hugetlbfs snapshots through a Uffd handler; Petrel
/// does not yet).
pub(crate) fn for_restore(m: &SavedMachine, config: &RestoreConfig) -> Result<HugePages> {
    let huge_pages = config.huge_pages.unwrap_or(m.huge_pages);
    if huge_pages == HugePages::Hugetlbfs2M {
        let whose = if config.huge_pages.is_some() {
            "asked for"
        } else {
            "the snapshot's guest had"
        };
        return Err(Error::InvalidConfig {
            field: "huge_pages".into(),
            value: "2M".into(),
            why: format!(
                "{whose} 2M hugetlbfs pages, which Petrel cannot restore yet: a memory file \
                 (mem_backend File) cannot be mapped onto them, and Petrel's Uffd backend \
                 hands its handler 4 KiB pages; restore with huge_pages None or Transparent"
            ),
        });
    }
    Ok(huge_pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawPayload, VmConfig};

    fn saved(huge_pages: HugePages) -> SavedMachine {
        let mut config = VmConfig::raw(RawPayload {
            path: "/guest".into(),
            load_addr: 0,
            entry: None,
            regs: Vec::new(),
        });
        config.huge_pages = huge_pages;
        SavedMachine::of(&config, false)
    }

    #[test]
    fn the_setting_is_saved_by_firecrackers_name_and_older_snapshots_have_none() {
        let m = saved(HugePages::Hugetlbfs2M);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["huge_pages"], "2M");
        let back: SavedMachine = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.huge_pages, HugePages::Hugetlbfs2M);
        let mut older = json.clone();
        older.as_object_mut().unwrap().remove("huge_pages");
        let back: SavedMachine = serde_json::from_value(older).unwrap();
        assert_eq!(back.huge_pages, HugePages::None);
        let mut bad = json;
        bad["huge_pages"] = "1G".into();
        let e = serde_json::from_value::<SavedMachine>(bad).unwrap_err();
        assert!(e.to_string().contains("`1G`"), "{e}");
    }

    #[test]
    fn a_restore_keeps_the_snapshots_setting_unless_told_and_refuses_hugetlbfs() {
        let mut restore = RestoreConfig::new("/snap/state", "/snap/mem");
        let thp = saved(HugePages::Transparent);
        assert_eq!(for_restore(&thp, &restore).unwrap(), HugePages::Transparent);
        restore.huge_pages = Some(HugePages::None);
        assert_eq!(for_restore(&thp, &restore).unwrap(), HugePages::None);

        let huge = saved(HugePages::Hugetlbfs2M);
        restore.huge_pages = None;
        let e = for_restore(&huge, &restore).unwrap_err().to_string();
        for word in ["huge_pages", "the snapshot's guest had 2M", "Uffd", "File"] {
            assert!(e.contains(word), "{word:?} missing from {e}");
        }
        restore.huge_pages = Some(HugePages::Transparent);
        assert_eq!(
            for_restore(&huge, &restore).unwrap(),
            HugePages::Transparent
        );
        restore.huge_pages = Some(HugePages::Hugetlbfs2M);
        let e = for_restore(&saved(HugePages::None), &restore).unwrap_err();
        assert!(e.to_string().contains("asked for 2M"), "{e}");
    }
}

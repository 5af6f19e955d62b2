//! The snapshot state file: the container's checks (magic, version, length, checksum) and the
//! body's parser and consistency check, as `petrel restore` and `PUT /snapshot/load` run them.
//!
//! The first byte picks how the rest is used: even, as a whole state file (so the container's
//! checks see every kind of damage); odd, as a body that the harness frames with a valid
//! header and checksum (so the fuzzer reaches the JSON parser past the checksum).
//!
//! Invariants beyond "no panic": a body that parses and passes `SnapshotState::check` encodes
//! and parses again to the same document (what one Petrel writes, it reads back unchanged).

use petrel_vmm::snapshot::SnapshotState;

/// The `snapshot_state` target.
pub fn state(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        petrel_snapshot::frame(rest)
    };
    let Ok(state) = petrel_snapshot::decode::<SnapshotState>(&file) else {
        return;
    };
    if state.check().is_err() {
        return;
    }
    let again = petrel_snapshot::encode(&state).expect("a parsed state encodes");
    let reparsed: SnapshotState =
        petrel_snapshot::decode(&again).expect("what Petrel writes, it reads back");
    let a = serde_json::to_value(&state).expect("a state is JSON");
    let b = serde_json::to_value(&reparsed).expect("a state is JSON");
    assert_eq!(a, b, "a state changed on its way through a file");
}

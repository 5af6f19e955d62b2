//! The harnesses of Petrel's fuzz targets, one function per target, each taking the fuzzer's
//! bytes.
//!
//! They live here, in a stable workspace crate, rather than in the cargo-fuzz crate (`fuzz/`,
//! nightly only), so that two callers share them:
//!
//! - each `fuzz/fuzz_targets/<target>.rs` is one line that calls [`run`] with its name;
//! - `tests/replay.rs` feeds every stored input (`fuzz/corpus/<target>/*`, the seeds, and
//!   `fuzz/regressions/<target>/*`, the minimised crashes) through the same function on stable,
//!   so `cargo test` replays every past crash without nightly or libFuzzer.
//!
//! A harness panics when it finds a bug: a panic in the code under test, or a broken invariant
//! it checks after each step (see each module). Inputs that do not decode into anything useful
//! are simply ignored.
//!
//! The inputs are sequences of operations read with [`arbitrary::Unstructured`]: a tag byte,
//! then the operation's fields as little-endian integers and length-prefixed byte strings. The
//! same layout is written by the `encode` helpers the seed-corpus tools use, so a recorded
//! Linux boot becomes a seed that replays exactly (see `docs/fuzzing.md`).

pub mod acpi;
pub mod api;
pub mod kvm;
pub mod legacy;
pub mod loader;
pub mod mem;
pub mod mmds;
pub mod seeds;
pub mod snapshot;
pub mod virtio;

/// Every fuzz target, by the name of its file under `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &[
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_vsock",
    "legacy_bus",
    "acpi_pm",
    "kvm_exit",
    "kvm_stats",
    "loader_kernel",
    "loader_cmdline",
    "api_http",
    "api_request",
    "api_config_file",
    "snapshot_state",
    "mmds_net",
    "balloon",
];

/// Runs the harness of `target` (one of [`TARGETS`]) on `data`; panics on a finding.
///
/// # Panics
///
/// When `target` is not one of [`TARGETS`], or the harness finds a bug.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "virtio_blk" => virtio::blk(data),
        "virtio_net" => virtio::net(data),
        "virtio_rng" => virtio::rng(data),
        "virtio_vsock" => virtio::vsock(data),
        "legacy_bus" => legacy::bus(data),
        "acpi_pm" => acpi::pm(data),
        "kvm_exit" => kvm::exit(data),
        "kvm_stats" => kvm::stats(data),
        "loader_kernel" => loader::kernel(data),
        "loader_cmdline" => loader::cmdline(data),
        "api_http" => api::http(data),
        "api_request" => api::request(data),
        "api_config_file" => api::config_file(data),
        "snapshot_state" => snapshot::state(data),
        "mmds_net" => mmds::net(data),
        "balloon" => virtio::balloon(data),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}

/// Appends `value` as the harnesses read it back (little-endian, like `arbitrary`'s integers).
pub(crate) trait Encode {
    /// Appends the encoding to `out`.
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
encode_int!(u8, u16, u32, u64);

/// Appends a byte string with its one-byte length (at most 255 bytes are kept), the way
/// [`take_bytes`] reads it.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Reads a byte string written by [`put_bytes`]: a length byte, then that many bytes.
pub(crate) fn take_bytes<'a>(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<&'a [u8]> {
    let len: u8 = u.arbitrary()?;
    u.bytes(usize::from(len))
}

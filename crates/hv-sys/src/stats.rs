//! KVM's binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+): per-VM and per-vCPU counters
//! such as `exits`, `io_exits` or `halt_wait_ns`, read from a file descriptor KVM hands out.
//!
//! The file is self-describing (`Documentation/virt/kvm/api.rst`, section 4.133
//! "KVM_GET_STATS_FD"; `struct kvm_stats_header` and `struct kvm_stats_desc` in
//! `include/uapi/linux/kvm.h`). It has four parts, each located by the header:
//!
//! ```text
//! offset 0            struct kvm_stats_header { flags, name_size, num_desc,
//!                                               id_offset, desc_offset, data_offset }
//! id_offset           id string, name_size bytes, NUL-padded ("kvm-1234/vcpu-0")
//! desc_offset         num_desc x { struct kvm_stats_desc (16 bytes) + name, name_size bytes }
//! data_offset         the values: descriptor d's `size` u64s start at data_offset + d.offset
//! ```
//!
//! Nothing here knows where a particular statistic lives: every offset comes from the file.
//! [`StatsReader`] reads the header, id and descriptors once (they never change for the life
//! of the file descriptor) and then each [`StatsReader::read`] is a single `pread` of the data
//! block. The decoding itself ([`parse_header`], [`parse_id`], [`parse_descriptors`],
//! [`parse_values`], [`decode_image`]) works on byte buffers, checks every length and offset,
//! and returns [`Error::StatsFormat`] on malformed input instead of panicking.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    kvm_stats_desc, kvm_stats_header, KVM_CAP_BINARY_STATS_FD, KVM_STATS_BASE_MASK,
    KVM_STATS_BASE_POW10, KVM_STATS_BASE_POW2, KVM_STATS_BASE_SHIFT, KVM_STATS_TYPE_CUMULATIVE,
    KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK, KVM_STATS_TYPE_SHIFT, KVM_STATS_UNIT_BOOLEAN,
    KVM_STATS_UNIT_BYTES, KVM_STATS_UNIT_CYCLES, KVM_STATS_UNIT_MASK, KVM_STATS_UNIT_NONE,
    KVM_STATS_UNIT_SECONDS, KVM_STATS_UNIT_SHIFT,
};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::{Error, Result, Vcpu, Vm};

/// Size of `struct kvm_stats_header` (kvm.h): six `__u32`s.
pub const STATS_HEADER_SIZE: usize = std::mem::size_of::<kvm_stats_header>();

/// Size of the fixed part of `struct kvm_stats_desc` (kvm.h); the name (`name_size` bytes)
/// follows it, so each descriptor takes `STATS_DESC_FIXED_SIZE + name_size` bytes.
pub const STATS_DESC_FIXED_SIZE: usize = std::mem::size_of::<kvm_stats_desc>();

/// Largest `name_size` accepted. KVM uses `KVM_STATS_NAME_SIZE` (48, include/linux/kvm_host.h);
/// the limit only keeps a corrupt header from asking for absurd allocations.
pub const MAX_NAME_SIZE: u32 = 4096;

/// Most descriptors accepted (KVM has under a hundred per VM or vCPU); same purpose.
pub const MAX_DESCRIPTORS: u32 = 1 << 16;

/// Largest data block accepted, in bytes (KVM's is a few hundred bytes); same purpose.
pub const MAX_DATA_BYTES: usize = 16 << 20;

/// Size of one data item: every statistic is an array of `size` `__u64`s (api.rst 4.133).
const ITEM_SIZE: usize = std::mem::size_of::<u64>();

mod ioctls {
    // `KVM_GET_STATS_FD _IO(KVMIO, 0xce)` (include/uapi/linux/kvm.h; api.rst 4.133): a VM and a
    // vCPU ioctl with no argument that returns a new, read-only file descriptor.
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}

/// `struct kvm_stats_header`, as read from the start of a statistics file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsHeader {
    /// Extra information about the file; always 0 so far.
    pub flags: u32,
    /// Bytes reserved for the id string and for each statistic's name, including the NUL.
    pub name_size: u32,
    /// Number of descriptors.
    pub num_desc: u32,
    /// File offset of the id string.
    pub id_offset: u32,
    /// File offset of the first descriptor.
    pub desc_offset: u32,
    /// File offset of the data block.
    pub data_offset: u32,
}

impl StatsHeader {
    /// Bytes one descriptor takes in the file: the fixed part plus `name_size`.
    pub fn desc_stride(&self) -> usize {
        STATS_DESC_FIXED_SIZE + self.name_size as usize
    }

    /// Bytes the descriptor block takes, or an error if that is absurdly large.
    pub fn desc_block_len(&self) -> Result<usize> {
        if self.num_desc > MAX_DESCRIPTORS {
            return Err(format_error(format!(
                "num_desc {} is more than the {MAX_DESCRIPTORS} accepted",
                self.num_desc
            )));
        }
        (self.num_desc as usize)
            .checked_mul(self.desc_stride())
            .ok_or_else(|| format_error("descriptor block size overflows"))
    }
}

/// How a statistic's value behaves: bits 0-3 of `kvm_stats_desc.flags` (api.rst 4.133).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StatKind {
    /// A count that only goes up (`KVM_STATS_TYPE_CUMULATIVE`).
    Cumulative,
    /// A current value that goes up and down (`KVM_STATS_TYPE_INSTANT`).
    Instant,
    /// The highest value seen (`KVM_STATS_TYPE_PEAK`).
    Peak,
    /// `size` buckets of width `bucket_size`; the last is open-ended
    /// (`KVM_STATS_TYPE_LINEAR_HIST`).
    LinearHistogram,
    /// `size` buckets: [0, 1), then [2^(n-2), 2^(n-1)) for bucket n, the last open-ended
    /// (`KVM_STATS_TYPE_LOG_HIST`).
    LogHistogram,
    /// A type this code does not know (a newer kernel), by its raw value.
    Other(u32),
}

impl StatKind {
    fn from_flags(flags: u32) -> Self {
        match flags & KVM_STATS_TYPE_MASK {
            KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
            KVM_STATS_TYPE_INSTANT => StatKind::Instant,
            KVM_STATS_TYPE_PEAK => StatKind::Peak,
            KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHistogram,
            KVM_STATS_TYPE_LOG_HIST => StatKind::LogHistogram,
            other => StatKind::Other(other >> KVM_STATS_TYPE_SHIFT),
        }
    }

    /// Whether the value is an array of histogram buckets.
    pub fn is_histogram(self) -> bool {
        matches!(self, StatKind::LinearHistogram | StatKind::LogHistogram)
    }
}

/// What a statistic counts: bits 4-7 of `kvm_stats_desc.flags` (api.rst 4.133). For a
/// histogram it is the unit of the bucket ranges, not of the bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StatUnit {
    /// A plain count (`KVM_STATS_UNIT_NONE`).
    None,
    /// Bytes (`KVM_STATS_UNIT_BYTES`).
    Bytes,
    /// Seconds (`KVM_STATS_UNIT_SECONDS`).
    Seconds,
    /// CPU cycles (`KVM_STATS_UNIT_CYCLES`).
    Cycles,
    /// 0 or 1 (`KVM_STATS_UNIT_BOOLEAN`).
    Boolean,
    /// A unit this code does not know, by its raw value.
    Other(u32),
}

impl StatUnit {
    fn from_flags(flags: u32) -> Self {
        match flags & KVM_STATS_UNIT_MASK {
            KVM_STATS_UNIT_NONE => StatUnit::None,
            KVM_STATS_UNIT_BYTES => StatUnit::Bytes,
            KVM_STATS_UNIT_SECONDS => StatUnit::Seconds,
            KVM_STATS_UNIT_CYCLES => StatUnit::Cycles,
            KVM_STATS_UNIT_BOOLEAN => StatUnit::Boolean,
            other => StatUnit::Other(other >> KVM_STATS_UNIT_SHIFT),
        }
    }
}

/// The base `exponent` scales the unit by: bits 8-11 of `kvm_stats_desc.flags` (api.rst 4.133).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StatBase {
    /// The value is in unit x 10^exponent (`KVM_STATS_BASE_POW10`).
    Pow10,
    /// The value is in unit x 2^exponent (`KVM_STATS_BASE_POW2`).
    Pow2,
    /// A base this code does not know, by its raw value.
    Other(u32),
}

impl StatBase {
    fn from_flags(flags: u32) -> Self {
        match flags & KVM_STATS_BASE_MASK {
            KVM_STATS_BASE_POW10 => StatBase::Pow10,
            KVM_STATS_BASE_POW2 => StatBase::Pow2,
            other => StatBase::Other(other >> KVM_STATS_BASE_SHIFT),
        }
    }
}

/// One `struct kvm_stats_desc`, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatDescriptor {
    /// The statistic's name, e.g. `io_exits`.
    pub name: String,
    /// How the value behaves.
    pub kind: StatKind,
    /// What it counts.
    pub unit: StatUnit,
    /// Base of the scale `exponent` gives the unit.
    pub base: StatBase,
    /// The value is in `unit` x `base`^`exponent` (e.g. -9 with seconds: nanoseconds).
    pub exponent: i16,
    /// Number of `u64` items (1 except for histograms, where it is the bucket count).
    pub size: u16,
    /// Byte offset of the first item from the start of the data block.
    pub offset: u32,
    /// Bucket width, in the statistic's unit, for linear histograms; 0 otherwise.
    pub bucket_size: u32,
}

impl StatDescriptor {
    /// Human label of the unit, e.g. `ns`; see [`unit_label`].
    pub fn unit_label(&self) -> String {
        unit_label(self.unit, self.base, self.exponent)
    }

    /// The byte range of the value inside the data block (checked against overflow).
    fn data_range(&self) -> Result<std::ops::Range<usize>> {
        let start = self.offset as usize;
        let end = (self.size as usize)
            .checked_mul(ITEM_SIZE)
            .and_then(|len| start.checked_add(len))
            .ok_or_else(|| format_error(format!("{}: data range overflows", self.name)))?;
        Ok(start..end)
    }
}

/// Formats a unit with its scale as a short human label: `ns` for seconds with base 10 and
/// exponent -9, `KiB` for bytes with base 2 and exponent 10, `cycles`, `bool`, an empty string
/// for a plain count, and an explicit scale such as `10^-2 s` where no prefix fits.
pub fn unit_label(unit: StatUnit, base: StatBase, exponent: i16) -> String {
    let symbol = match unit {
        StatUnit::None => "",
        StatUnit::Bytes => "B",
        StatUnit::Seconds => "s",
        StatUnit::Cycles => "cycles",
        StatUnit::Boolean => return "bool".into(),
        StatUnit::Other(raw) => return format!("unit#{raw}"),
    };
    if exponent == 0 {
        return symbol.into();
    }
    let prefix = match (base, exponent) {
        (StatBase::Pow10, -9) => Some("n"),
        (StatBase::Pow10, -6) => Some("u"),
        (StatBase::Pow10, -3) => Some("m"),
        (StatBase::Pow10, 3) => Some("k"),
        (StatBase::Pow10, 6) => Some("M"),
        (StatBase::Pow10, 9) => Some("G"),
        (StatBase::Pow2, 10) => Some("Ki"),
        (StatBase::Pow2, 20) => Some("Mi"),
        (StatBase::Pow2, 30) => Some("Gi"),
        (StatBase::Pow2, 40) => Some("Ti"),
        _ => None,
    };
    match prefix {
        Some(p) if !symbol.is_empty() => format!("{p}{symbol}"),
        _ => {
            let scale = match base {
                StatBase::Pow10 => format!("10^{exponent}"),
                StatBase::Pow2 => format!("2^{exponent}"),
                StatBase::Other(raw) => format!("base#{raw}^{exponent}"),
            };
            if symbol.is_empty() {
                scale
            } else {
                format!("{scale} {symbol}")
            }
        }
    }
}

/// One statistic's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StatValue {
    /// A single number (cumulative, instant and peak statistics).
    Scalar(u64),
    /// Histogram bucket counts, first bucket first.
    Histogram(Vec<u64>),
    /// A non-histogram statistic with `size` other than 1 (none in Linux 6.x), item by item.
    Array(Vec<u64>),
}

/// The values of every statistic at one moment, in descriptor order. Serializes as a map from
/// name to number (scalars) or array (histograms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (name, value) pairs in descriptor order.
    pub values: Vec<(String, StatValue)>,
}

impl Snapshot {
    /// The value of scalar statistic `name`; `None` if there is none or it is not a scalar.
    pub fn get(&self, name: &str) -> Option<u64> {
        match self.value(name)? {
            StatValue::Scalar(v) => Some(*v),
            _ => None,
        }
    }

    /// The buckets of histogram `name`; `None` if there is none or it is not a histogram.
    pub fn histogram(&self, name: &str) -> Option<&[u64]> {
        match self.value(name)? {
            StatValue::Histogram(b) => Some(b),
            _ => None,
        }
    }

    /// The value of statistic `name`, whatever its shape.
    pub fn value(&self, name: &str) -> Option<&StatValue> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The statistics' names, in descriptor order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (name, value) in &self.values {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

fn format_error(reason: impl Into<String>) -> Error {
    Error::StatsFormat(reason.into())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(b)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[at..at + 2]);
    u16::from_ne_bytes(b)
}

/// Decodes `struct kvm_stats_header` from the first [`STATS_HEADER_SIZE`] bytes of `bytes`
/// (native byte order, as KVM writes it) and checks `name_size` is usable.
pub fn parse_header(bytes: &[u8]) -> Result<StatsHeader> {
    let Some(h) = bytes.get(..STATS_HEADER_SIZE) else {
        return Err(format_error(format!(
            "header truncated: {} bytes, need {STATS_HEADER_SIZE}",
            bytes.len()
        )));
    };
    let header = StatsHeader {
        flags: u32_at(h, std::mem::offset_of!(kvm_stats_header, flags)),
        name_size: u32_at(h, std::mem::offset_of!(kvm_stats_header, name_size)),
        num_desc: u32_at(h, std::mem::offset_of!(kvm_stats_header, num_desc)),
        id_offset: u32_at(h, std::mem::offset_of!(kvm_stats_header, id_offset)),
        desc_offset: u32_at(h, std::mem::offset_of!(kvm_stats_header, desc_offset)),
        data_offset: u32_at(h, std::mem::offset_of!(kvm_stats_header, data_offset)),
    };
    if header.name_size == 0 || header.name_size > MAX_NAME_SIZE {
        return Err(format_error(format!(
            "name_size {} is outside 1..={MAX_NAME_SIZE}",
            header.name_size
        )));
    }
    Ok(header)
}

/// Decodes a NUL-padded string field of `name_size` bytes; `what` names it in errors.
fn nul_terminated(field: &[u8], what: impl Fn() -> String) -> Result<String> {
    let Some(len) = field.iter().position(|&b| b == 0) else {
        return Err(format_error(format!("{} is not NUL-terminated", what())));
    };
    if len == 0 {
        return Err(format_error(format!("{} is empty", what())));
    }
    std::str::from_utf8(&field[..len])
        .map(str::to_owned)
        .map_err(|_| format_error(format!("{} is not UTF-8", what())))
}

/// Decodes the id string (e.g. `kvm-1234/vcpu-0`) from `field`, the `name_size` bytes at
/// `id_offset`.
pub fn parse_id(field: &[u8], header: &StatsHeader) -> Result<String> {
    let Some(field) = field.get(..header.name_size as usize) else {
        return Err(format_error("id string truncated"));
    };
    nul_terminated(field, || "the id string".into())
}

/// Decodes the descriptor block: `block` holds the bytes from `desc_offset` on, and must hold
/// `num_desc` descriptors of [`StatsHeader::desc_stride`] bytes each.
pub fn parse_descriptors(block: &[u8], header: &StatsHeader) -> Result<Vec<StatDescriptor>> {
    let need = header.desc_block_len()?;
    if block.len() < need {
        return Err(format_error(format!(
            "descriptor block truncated: {} bytes for {} descriptors of {} bytes",
            block.len(),
            header.num_desc,
            header.desc_stride()
        )));
    }
    let mut out = Vec::with_capacity(header.num_desc as usize);
    for (i, d) in block[..need].chunks_exact(header.desc_stride()).enumerate() {
        let flags = u32_at(d, std::mem::offset_of!(kvm_stats_desc, flags));
        let name = nul_terminated(&d[std::mem::offset_of!(kvm_stats_desc, name)..], || {
            format!("the name of descriptor {i}")
        })?;
        let desc = StatDescriptor {
            kind: StatKind::from_flags(flags),
            unit: StatUnit::from_flags(flags),
            base: StatBase::from_flags(flags),
            exponent: i16::from_ne_bytes(
                u16_at(d, std::mem::offset_of!(kvm_stats_desc, exponent)).to_ne_bytes(),
            ),
            size: u16_at(d, std::mem::offset_of!(kvm_stats_desc, size)),
            offset: u32_at(d, std::mem::offset_of!(kvm_stats_desc, offset)),
            bucket_size: u32_at(d, std::mem::offset_of!(kvm_stats_desc, bucket_size)),
            name,
        };
        if desc.size == 0 {
            return Err(format_error(format!("{}: size 0", desc.name)));
        }
        desc.data_range()?;
        out.push(desc);
    }
    Ok(out)
}

/// Bytes of the data block the descriptors cover: the end of the furthest value.
pub fn data_block_len(descriptors: &[StatDescriptor]) -> Result<usize> {
    let mut len = 0;
    for d in descriptors {
        len = len.max(d.data_range()?.end);
    }
    if len > MAX_DATA_BYTES {
        return Err(format_error(format!(
            "data block of {len} bytes is more than the {MAX_DATA_BYTES} accepted"
        )));
    }
    Ok(len)
}

/// Reads every statistic's value out of `data`, the data block (starting at `data_offset`).
pub fn parse_values(data: &[u8], descriptors: &[StatDescriptor]) -> Result<Snapshot> {
    let mut values = Vec::with_capacity(descriptors.len());
    for d in descriptors {
        let range = d.data_range()?;
        let Some(bytes) = data.get(range.clone()) else {
            return Err(format_error(format!(
                "{}: bytes {range:?} lie outside the {}-byte data block",
                d.name,
                data.len()
            )));
        };
        let items: Vec<u64> = bytes
            .chunks_exact(ITEM_SIZE)
            .map(|c| {
                let mut b = [0u8; ITEM_SIZE];
                b.copy_from_slice(c);
                u64::from_ne_bytes(b)
            })
            .collect();
        let value = if d.kind.is_histogram() {
            StatValue::Histogram(items)
        } else if items.len() == 1 {
            StatValue::Scalar(items[0])
        } else {
            StatValue::Array(items)
        };
        values.push((d.name.clone(), value));
    }
    Ok(Snapshot { values })
}

/// Returns `len` bytes of `image` at `offset`, or an error naming `what` lies outside.
fn slice_at<'a>(image: &'a [u8], offset: u32, len: usize, what: &str) -> Result<&'a [u8]> {
    let start = offset as usize;
    start
        .checked_add(len)
        .and_then(|end| image.get(start..end))
        .ok_or_else(|| {
            format_error(format!(
                "{what} ({len} bytes at {offset}) lies outside the {}-byte file",
                image.len()
            ))
        })
}

/// A whole statistics file decoded at once: what [`decode_image`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedStats {
    /// The header.
    pub header: StatsHeader,
    /// The id string.
    pub id: String,
    /// The descriptors, in file order.
    pub descriptors: Vec<StatDescriptor>,
    /// The values.
    pub snapshot: Snapshot,
}

/// Decodes a whole statistics file held in memory (`image` starts at file offset 0), checking
/// that the id, descriptors and data all lie inside it.
pub fn decode_image(image: &[u8]) -> Result<DecodedStats> {
    let header = parse_header(image)?;
    let id_field = slice_at(image, header.id_offset, header.name_size as usize, "id")?;
    let id = parse_id(id_field, &header)?;
    let block_len = header.desc_block_len()?;
    let block = slice_at(image, header.desc_offset, block_len, "descriptor block")?;
    let descriptors = parse_descriptors(block, &header)?;
    let data_len = data_block_len(&descriptors)?;
    let data = slice_at(image, header.data_offset, data_len, "data block")?;
    let snapshot = parse_values(data, &descriptors)?;
    Ok(DecodedStats {
        header,
        id,
        descriptors,
        snapshot,
    })
}

/// Reads a VM's or vCPU's binary statistics file.
#[derive(Debug)]
pub struct StatsReader {
    file: File,
    header: StatsHeader,
    id: String,
    descriptors: Vec<StatDescriptor>,
    data: Vec<u8>,
}

impl StatsReader {
    /// Whether this KVM offers binary statistics (`KVM_CAP_BINARY_STATS_FD` in kvm.h, the
    /// capability api.rst 4.133 names), asked on the VM file descriptor.
    pub fn supported(vm: &Vm) -> bool {
        vm.vm_fd()
            .check_extension_raw(libc::c_ulong::from(KVM_CAP_BINARY_STATS_FD))
            > 0
    }

    /// Opens the VM-wide statistics (`KVM_GET_STATS_FD` on the VM fd). `Ok(None)` where this
    /// KVM lacks `KVM_CAP_BINARY_STATS_FD` (Linux before 5.14), so a caller can say so once and
    /// carry on without them.
    pub fn from_vm(vm: &Vm) -> Result<Option<Self>> {
        if !Self::supported(vm) {
            return Ok(None);
        }
        open_stats_fd(vm.vm_fd())?.map(Self::from_file).transpose()
    }

    /// Opens a vCPU's statistics (`KVM_GET_STATS_FD` on the vCPU fd). `Ok(None)` where KVM
    /// does not know the ioctl (Linux before 5.14: `EINVAL` or `ENOTTY`). The returned reader
    /// keeps working while the vCPU runs on another thread.
    pub fn from_vcpu(vcpu: &Vcpu) -> Result<Option<Self>> {
        open_stats_fd(vcpu.fd())?.map(Self::from_file).transpose()
    }

    /// Reads the header, id and descriptors of an already open statistics file (also any file
    /// laid out the same way, for tests); the data is read by [`StatsReader::read`].
    pub fn from_file(file: File) -> Result<Self> {
        let mut head = [0u8; STATS_HEADER_SIZE];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| read_error("header", e))?;
        let header = parse_header(&head)?;
        let mut id_field = vec![0u8; header.name_size as usize];
        file.read_exact_at(&mut id_field, u64::from(header.id_offset))
            .map_err(|e| read_error("id string", e))?;
        let id = parse_id(&id_field, &header)?;
        let mut block = vec![0u8; header.desc_block_len()?];
        file.read_exact_at(&mut block, u64::from(header.desc_offset))
            .map_err(|e| read_error("descriptors", e))?;
        let descriptors = parse_descriptors(&block, &header)?;
        let data = vec![0u8; data_block_len(&descriptors)?];
        Ok(StatsReader {
            file,
            header,
            id,
            descriptors,
            data,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &StatsHeader {
        &self.header
    }

    /// The id string KVM gives this VM or vCPU, e.g. `kvm-1234/vcpu-0`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The descriptors, read once when the reader was opened.
    pub fn descriptors(&self) -> &[StatDescriptor] {
        &self.descriptors
    }

    /// The descriptor of statistic `name`.
    pub fn descriptor(&self, name: &str) -> Option<&StatDescriptor> {
        self.descriptors.iter().find(|d| d.name == name)
    }

    /// Reads the current values: one `pread` of the data block.
    pub fn read(&mut self) -> Result<Snapshot> {
        self.file
            .read_exact_at(&mut self.data, u64::from(self.header.data_offset))
            .map_err(|e| read_error("data block", e))?;
        parse_values(&self.data, &self.descriptors)
    }
}

fn read_error(what: &'static str, source: std::io::Error) -> Error {
    Error::StatsRead { what, source }
}

/// Issues `KVM_GET_STATS_FD` on a VM or vCPU fd; `Ok(None)` where the kernel does not know it.
fn open_stats_fd(fd: &impl AsRawFd) -> Result<Option<File>> {
    // SAFETY: `fd` is an open KVM VM or vCPU file descriptor (borrowed for the call), and
    // KVM_GET_STATS_FD takes no argument and touches no user memory; it only returns a new fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl(fd, ioctls::KVM_GET_STATS_FD()) };
    if ret < 0 {
        let e = vmm_sys_util::errno::Error::last();
        return match e.errno() {
            // Unknown ioctl: vCPU ioctls answer EINVAL, VM ioctls ENOTTY (pre-5.14 kernels).
            libc::EINVAL | libc::ENOTTY => Ok(None),
            _ => Err(Error::StatsFd(e)),
        };
    }
    // SAFETY: `ret` is a file descriptor KVM just created for us and nothing else owns; the
    // `File` takes sole ownership and closes it on drop.
    Ok(Some(unsafe { File::from_raw_fd(ret) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_SIZE: u32 = 48;

    /// One descriptor for [`image`]: name, flags, exponent, size, offset, bucket_size.
    type Desc<'a> = (&'a str, u32, i16, u16, u32, u32);

    /// Builds a statistics file laid out as KVM does: header, id, descriptors, data.
    fn image(descs: &[Desc], data: &[u64]) -> Vec<u8> {
        let id_offset = STATS_HEADER_SIZE as u32;
        let desc_offset = id_offset + NAME_SIZE;
        let stride = STATS_DESC_FIXED_SIZE as u32 + NAME_SIZE;
        let data_offset = desc_offset + stride * descs.len() as u32;
        let mut out = Vec::new();
        for v in [
            0,
            NAME_SIZE,
            descs.len() as u32,
            id_offset,
            desc_offset,
            data_offset,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        let mut id = b"kvm-42/vcpu-0".to_vec();
        id.resize(NAME_SIZE as usize, 0);
        out.extend_from_slice(&id);
        for &(name, flags, exponent, size, offset, bucket_size) in descs {
            out.extend_from_slice(&flags.to_ne_bytes());
            out.extend_from_slice(&exponent.to_ne_bytes());
            out.extend_from_slice(&size.to_ne_bytes());
            out.extend_from_slice(&offset.to_ne_bytes());
            out.extend_from_slice(&bucket_size.to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(NAME_SIZE as usize, 0);
            out.extend_from_slice(&n);
        }
        for v in data {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out
    }

    const SECONDS_NS: u32 = KVM_STATS_UNIT_SECONDS | KVM_STATS_BASE_POW10;

    /// Four statistics whose values are deliberately not in descriptor order.
    fn sample() -> Vec<u8> {
        image(
            &[
                ("exits", KVM_STATS_TYPE_CUMULATIVE, 0, 1, 40, 0),
                (
                    "halt_wait_ns",
                    KVM_STATS_TYPE_CUMULATIVE | SECONDS_NS,
                    -9,
                    1,
                    0,
                    0,
                ),
                ("pages_4k", KVM_STATS_TYPE_INSTANT, 0, 1, 8, 0),
                (
                    "halt_wait_hist",
                    KVM_STATS_TYPE_LOG_HIST | SECONDS_NS,
                    -9,
                    3,
                    16,
                    0,
                ),
                (
                    "max_mmu_rmap_size",
                    KVM_STATS_TYPE_PEAK | KVM_STATS_UNIT_BYTES | KVM_STATS_BASE_POW2,
                    10,
                    1,
                    48,
                    0,
                ),
                (
                    "lin_hist",
                    KVM_STATS_TYPE_LINEAR_HIST | KVM_STATS_UNIT_BOOLEAN,
                    0,
                    2,
                    56,
                    5,
                ),
            ],
            &[7000, 12, 1, 2, 3, 1234, 64, 9, 10],
        )
    }

    #[test]
    fn decodes_names_kinds_units_and_values_from_the_file() {
        let d = decode_image(&sample()).unwrap();
        assert_eq!(d.id, "kvm-42/vcpu-0");
        assert_eq!(d.header.num_desc, 6);
        let names: Vec<&str> = d.descriptors.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "exits",
                "halt_wait_ns",
                "pages_4k",
                "halt_wait_hist",
                "max_mmu_rmap_size",
                "lin_hist"
            ]
        );
        let wait = &d.descriptors[1];
        assert_eq!(wait.kind, StatKind::Cumulative);
        assert_eq!(wait.unit, StatUnit::Seconds);
        assert_eq!(wait.base, StatBase::Pow10);
        assert_eq!(wait.exponent, -9);
        assert_eq!(wait.unit_label(), "ns");
        assert_eq!(d.descriptors[2].kind, StatKind::Instant);
        assert_eq!(d.descriptors[3].kind, StatKind::LogHistogram);
        assert_eq!(d.descriptors[3].size, 3);
        assert_eq!(d.descriptors[4].kind, StatKind::Peak);
        assert_eq!(d.descriptors[4].unit_label(), "KiB");
        assert_eq!(d.descriptors[5].kind, StatKind::LinearHistogram);
        assert_eq!(d.descriptors[5].bucket_size, 5);

        let s = &d.snapshot;
        assert_eq!(s.get("exits"), Some(1234));
        assert_eq!(s.get("halt_wait_ns"), Some(7000));
        assert_eq!(s.get("pages_4k"), Some(12));
        assert_eq!(s.histogram("halt_wait_hist"), Some(&[1, 2, 3][..]));
        assert_eq!(s.get("halt_wait_hist"), None, "a histogram is not a scalar");
        assert_eq!(s.get("max_mmu_rmap_size"), Some(64));
        assert_eq!(s.histogram("lin_hist"), Some(&[9, 10][..]));
        assert_eq!(s.get("no_such_stat"), None);
        assert_eq!(s.names().count(), 6);
    }

    #[test]
    fn unknown_types_and_units_are_kept_not_refused() {
        let img = image(&[("future", 0x5 | 0x70 | 0x300, 2, 2, 0, 0)], &[1, 2]);
        let d = decode_image(&img).unwrap();
        let f = &d.descriptors[0];
        assert_eq!(f.kind, StatKind::Other(5));
        assert_eq!(f.unit, StatUnit::Other(7));
        assert_eq!(f.base, StatBase::Other(3));
        assert_eq!(
            d.snapshot.value("future"),
            Some(&StatValue::Array(vec![1, 2]))
        );
    }

    #[test]
    fn unit_labels() {
        use StatBase::*;
        use StatUnit::*;
        assert_eq!(unit_label(Seconds, Pow10, -9), "ns");
        assert_eq!(unit_label(Seconds, Pow10, -6), "us");
        assert_eq!(unit_label(Seconds, Pow10, 0), "s");
        assert_eq!(unit_label(Seconds, Pow10, -2), "10^-2 s");
        assert_eq!(unit_label(Bytes, Pow2, 0), "B");
        assert_eq!(unit_label(Bytes, Pow2, 10), "KiB");
        assert_eq!(unit_label(Bytes, Pow2, 12), "2^12 B");
        assert_eq!(unit_label(Bytes, Pow10, 6), "MB");
        assert_eq!(unit_label(Cycles, Pow10, 0), "cycles");
        assert_eq!(unit_label(Boolean, Pow10, 0), "bool");
        assert_eq!(unit_label(StatUnit::None, Pow10, 0), "");
        assert_eq!(unit_label(StatUnit::None, Pow10, 3), "10^3");
        assert_eq!(unit_label(StatUnit::Other(9), Pow10, 0), "unit#9");
    }

    fn format_err(img: &[u8]) -> String {
        match decode_image(img) {
            Err(e @ Error::StatsFormat(_)) => e.to_string(),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    fn set_u32(img: &mut [u8], at: usize, v: u32) {
        img[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn header_field(field: &str) -> usize {
        match field {
            "num_desc" => std::mem::offset_of!(kvm_stats_header, num_desc),
            "name_size" => std::mem::offset_of!(kvm_stats_header, name_size),
            "desc_offset" => std::mem::offset_of!(kvm_stats_header, desc_offset),
            "data_offset" => std::mem::offset_of!(kvm_stats_header, data_offset),
            "id_offset" => std::mem::offset_of!(kvm_stats_header, id_offset),
            _ => unreachable!(),
        }
    }

    /// File offset of descriptor `i`'s fixed part in [`sample`].
    fn desc_at(i: usize) -> usize {
        STATS_HEADER_SIZE + NAME_SIZE as usize + i * (STATS_DESC_FIXED_SIZE + NAME_SIZE as usize)
    }

    #[test]
    fn truncated_header_is_an_error() {
        assert!(format_err(&sample()[..10]).contains("header truncated"));
        assert!(format_err(&[]).contains("header truncated"));
    }

    #[test]
    fn too_many_descriptors_is_an_error() {
        let mut img = sample();
        set_u32(&mut img, header_field("num_desc"), 8);
        assert!(format_err(&img).contains("descriptor block"));
        set_u32(&mut img, header_field("num_desc"), u32::MAX);
        assert!(format_err(&img).contains("num_desc"));
    }

    #[test]
    fn offsets_outside_the_file_are_errors() {
        for field in ["desc_offset", "data_offset", "id_offset"] {
            let mut img = sample();
            set_u32(&mut img, header_field(field), u32::MAX - 3);
            let msg = format_err(&img);
            assert!(msg.contains("outside"), "{field}: {msg}");
        }
        // A value's offset past the end of the data block.
        let mut img = sample();
        set_u32(
            &mut img,
            desc_at(0) + std::mem::offset_of!(kvm_stats_desc, offset),
            4096,
        );
        assert!(format_err(&img).contains("outside"));
        // A histogram whose buckets run past the end.
        let mut img = sample();
        let size_at = desc_at(3) + std::mem::offset_of!(kvm_stats_desc, size);
        img[size_at..size_at + 2].copy_from_slice(&100u16.to_ne_bytes());
        assert!(format_err(&img).contains("outside"));
    }

    #[test]
    fn bad_names_and_sizes_are_errors() {
        let name_at = desc_at(2) + STATS_DESC_FIXED_SIZE;
        let mut img = sample();
        img[name_at..name_at + NAME_SIZE as usize].fill(b'x');
        assert!(format_err(&img).contains("not NUL-terminated"));
        let mut img = sample();
        img[name_at] = 0xff;
        assert!(format_err(&img).contains("UTF-8"));
        let mut img = sample();
        img[STATS_HEADER_SIZE..STATS_HEADER_SIZE + NAME_SIZE as usize].fill(b'i');
        assert!(format_err(&img).contains("id string"));
        let mut img = sample();
        img[name_at] = 0;
        assert!(format_err(&img).contains("is empty"));
        let mut img = sample();
        set_u32(&mut img, header_field("name_size"), 0);
        assert!(format_err(&img).contains("name_size"));
        let mut img = sample();
        let size_at = desc_at(0) + std::mem::offset_of!(kvm_stats_desc, size);
        img[size_at..size_at + 2].copy_from_slice(&0u16.to_ne_bytes());
        assert!(format_err(&img).contains("size 0"));
    }

    #[test]
    fn no_truncation_or_corruption_panics() {
        let good = sample();
        for len in 0..good.len() {
            assert!(decode_image(&good[..len]).is_err(), "truncated to {len}");
        }
        for at in 0..good.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut img = good.clone();
                img[at] = v;
                let _ = decode_image(&img);
            }
        }
    }

    #[test]
    fn snapshot_serializes_as_a_name_to_value_map() {
        let s = decode_image(&sample()).unwrap().snapshot;
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.starts_with(r#"{"exits":1234,"halt_wait_ns":7000,"#),
            "{json}"
        );
        assert!(json.contains(r#""halt_wait_hist":[1,2,3]"#), "{json}");
    }

    #[test]
    fn reader_reads_descriptors_once_and_then_only_the_data() {
        let path = std::env::temp_dir().join(format!("petrel-stats-{}", std::process::id()));
        let img = sample();
        std::fs::write(&path, &img).unwrap();
        let mut r = StatsReader::from_file(File::open(&path).unwrap()).unwrap();
        assert_eq!(r.id(), "kvm-42/vcpu-0");
        assert_eq!(r.descriptors().len(), 6);
        assert_eq!(r.descriptor("halt_wait_ns").unwrap().unit_label(), "ns");
        assert_eq!(r.read().unwrap().get("exits"), Some(1234));

        // Change a value and scribble over the descriptors: the reader sees the new value and
        // keeps the descriptors it read at open.
        let mut img2 = img.clone();
        let data_offset = r.header().data_offset as usize;
        img2[data_offset + 40..data_offset + 48].copy_from_slice(&99u64.to_ne_bytes());
        img2[desc_at(0) + STATS_DESC_FIXED_SIZE] = b'X';
        std::fs::write(&path, &img2).unwrap();
        let s = r.read().unwrap();
        assert_eq!(s.get("exits"), Some(99));
        assert_eq!(s.names().next(), Some("exits"));

        // A file cut short before the data block is a read error, not a panic.
        std::fs::write(&path, &img[..data_offset + 8]).unwrap();
        assert!(matches!(r.read(), Err(Error::StatsRead { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}

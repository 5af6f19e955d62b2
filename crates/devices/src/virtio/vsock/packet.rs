//! The virtio-vsock packet header and its constants (virtio v1.2, 5.10.6 Device Operation).
//!
//! Every packet on the receive and transmit queues starts with a `struct virtio_vsock_hdr`
//! (44 bytes, little-endian, packed), followed by `len` bytes of payload for
//! [`OP_RW`] packets and nothing for the others.

/// Length of `struct virtio_vsock_hdr` (virtio v1.2, 5.10.6: `le64 src_cid; le64 dst_cid;
/// le32 src_port; le32 dst_port; le32 len; le16 type; le16 op; le32 flags; le32 buf_alloc;
/// le32 fwd_cnt;`, packed).
pub const HDR_LEN: usize = 44;

/// The host's CID, `VMADDR_CID_HOST` (virtio v1.2, 5.10.4 Device configuration layout: CIDs 0,
/// 1 and 2 are reserved; the host is 2).
pub const HOST_CID: u64 = 2;

/// `type`: a stream socket, `VIRTIO_VSOCK_TYPE_STREAM` (virtio v1.2, 5.10.6 Device Operation).
pub const TYPE_STREAM: u16 = 1;
/// `type`: a seqpacket socket, `VIRTIO_VSOCK_TYPE_SEQPACKET` (virtio v1.2, 5.10.6); not
/// supported here (VIRTIO_VSOCK_F_SEQPACKET is not offered).
pub const TYPE_SEQPACKET: u16 = 2;

/// `op`: not a valid operation, `VIRTIO_VSOCK_OP_INVALID` (virtio v1.2, 5.10.6).
pub const OP_INVALID: u16 = 0;
/// `op`: connection request, `VIRTIO_VSOCK_OP_REQUEST` (virtio v1.2, 5.10.6.2 Addressing).
pub const OP_REQUEST: u16 = 1;
/// `op`: connection accepted, `VIRTIO_VSOCK_OP_RESPONSE` (virtio v1.2, 5.10.6).
pub const OP_RESPONSE: u16 = 2;
/// `op`: connection reset or refused, `VIRTIO_VSOCK_OP_RST` (virtio v1.2, 5.10.6).
pub const OP_RST: u16 = 3;
/// `op`: the sender will send or receive no more, `VIRTIO_VSOCK_OP_SHUTDOWN` (virtio v1.2,
/// 5.10.6.5 Stream Sockets).
pub const OP_SHUTDOWN: u16 = 4;
/// `op`: payload data, `VIRTIO_VSOCK_OP_RW` (virtio v1.2, 5.10.6).
pub const OP_RW: u16 = 5;
/// `op`: the sender's credit changed, `VIRTIO_VSOCK_OP_CREDIT_UPDATE` (virtio v1.2, 5.10.6.3
/// Flow Control).
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `op`: the sender asks for a credit update, `VIRTIO_VSOCK_OP_CREDIT_REQUEST` (virtio v1.2,
/// 5.10.6.3).
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `flags` of [`OP_SHUTDOWN`]: the sender will receive no more data,
/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE` (virtio v1.2, 5.10.6.5).
pub const SHUTDOWN_F_RECEIVE: u32 = 1;
/// `flags` of [`OP_SHUTDOWN`]: the sender will send no more data,
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND` (virtio v1.2, 5.10.6.5).
pub const SHUTDOWN_F_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_F_BOTH: u32 = SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND;

/// A `struct virtio_vsock_hdr` (virtio v1.2, 5.10.6), in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Length of the payload that follows the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`OP_REQUEST`], ...).
    pub op: u16,
    /// Operation flags ([`SHUTDOWN_F_RECEIVE`], [`SHUTDOWN_F_SEND`]).
    pub flags: u32,
    /// The sender's total receive buffer space for this connection (virtio v1.2, 5.10.6.3).
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far, modulo 2^32 (virtio v1.2,
    /// 5.10.6.3).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes a header from its wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |o: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(w)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header in its wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Whether `op` is one of the operations of virtio v1.2, 5.10.6 ([`OP_REQUEST`] to
    /// [`OP_CREDIT_REQUEST`]).
    pub fn op_is_known(&self) -> bool {
        (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_the_spec_layout() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1234,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_F_BOTH,
            buf_alloc: 0x1_0000,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..16], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[20..24], &1234u32.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[40..44], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::from_bytes(&b), h);
        assert!(h.op_is_known());
        for op in [OP_INVALID, 8, 0xffff] {
            assert!(!Header { op, ..h }.op_is_known());
        }
    }
}

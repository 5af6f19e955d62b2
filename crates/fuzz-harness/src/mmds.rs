//! The MMDS's frame path: [`MmdsStack`] fed what a hostile guest sends on an interface that
//! detours to the MMDS, with an HTTP side that answers complete requests.
//!
//! Operations: a raw frame; a TCP segment to the MMDS address with a valid checksum, either
//! with the input's sequence numbers or as a reply to the last segment the stack sent (so
//! handshakes complete and requests reach the HTTP side); an ARP request for the MMDS; a poll
//! after some milliseconds, with answers of the input's size; and the guest taking frames
//! into a buffer of the input's size.
//!
//! Checks, after each step: no panic; at most [`MAX_CONNECTIONS`] connections; at most 129
//! frames queued (64 each way, one answer over); a frame that names neither ARP nor IPv4 is
//! never taken; every frame for the guest comes from the MMDS's MAC, holds an Ethernet header
//! and is at most [`MAX_FRAME_LEN`] bytes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use petrel_mmds::net::{MmdsStack, DEFAULT_IPV4, DEFAULT_MAC, MAX_CONNECTIONS, MAX_FRAME_LEN};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpPacket, TcpSeqNumber,
};

use crate::{put_bytes, take_bytes, Encode};

/// The guest's MAC and address.
const GUEST_MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

/// One step of the guest or the clock.
#[derive(Debug, Clone)]
pub enum Op {
    /// A frame as the guest sends it.
    Raw(Vec<u8>),
    /// A TCP segment to the MMDS: `reply` takes the ports and numbers from the last segment
    /// the stack sent (ACKing it), otherwise `port`, `seq` and `ack` are used. `flags` are
    /// TCP's (FIN 1, SYN 2, RST 4, PSH 8, ACK 16).
    Tcp {
        /// Answer the last segment received.
        reply: bool,
        /// The guest's port.
        port: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgement number.
        ack: u32,
        /// TCP flags.
        flags: u8,
        /// Payload.
        payload: Vec<u8>,
    },
    /// An ARP request for the MMDS address.
    Arp,
    /// The clock moves `ms` milliseconds and the stack is polled; complete requests get an
    /// answer of `answer_len` bytes (none when 0).
    Poll {
        /// Milliseconds.
        ms: u16,
        /// Size of each answer.
        answer_len: u16,
    },
    /// The guest takes frames into a buffer of `buf_len` bytes until there is none.
    Take {
        /// The buffer's size.
        buf_len: u16,
    },
}

impl Op {
    /// Appends the operation as [`net`] reads it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Raw(frame) => {
                out.push(0);
                put_bytes(out, frame);
            }
            Op::Tcp {
                reply,
                port,
                seq,
                ack,
                flags,
                payload,
            } => {
                out.push(1);
                out.push(u8::from(*reply));
                port.put(out);
                seq.put(out);
                ack.put(out);
                flags.put(out);
                put_bytes(out, payload);
            }
            Op::Arp => out.push(2),
            Op::Poll { ms, answer_len } => {
                out.push(3);
                ms.put(out);
                answer_len.put(out);
            }
            Op::Take { buf_len } => {
                out.push(4);
                buf_len.put(out);
            }
        }
    }
}

/// A guest that opens a connection, asks `GET /` and closes: the seed.
pub fn seed_session() -> Vec<u8> {
    let tcp = |reply, flags, payload: &[u8]| Op::Tcp {
        reply,
        port: 40000,
        seq: 1000,
        ack: 0,
        flags,
        payload: payload.to_vec(),
    };
    let poll = Op::Poll {
        ms: 1,
        answer_len: 300,
    };
    let take = Op::Take { buf_len: 2048 };
    let ops = [
        Op::Arp,
        poll.clone(),
        take.clone(),
        tcp(false, 2, b""),
        poll.clone(),
        take.clone(),
        tcp(true, 16, b""),
        tcp(
            true,
            16 | 8,
            b"GET / HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        ),
        poll.clone(),
        take.clone(),
        tcp(true, 16 | 1, b""),
        poll.clone(),
        take,
        Op::Poll {
            ms: 11000,
            answer_len: 0,
        },
    ];
    let mut out = Vec::new();
    for op in &ops {
        op.encode(&mut out);
    }
    out
}

/// An Ethernet frame from the guest.
fn eth(ethertype: EthernetProtocol, dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype,
    };
    let mut f = vec![0; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    f
}

/// The last TCP segment the stack sent: (its source port, destination port, sequence number,
/// acknowledgement number, sequence space it takes).
type Seen = (u16, u16, i32, i32, usize);

/// A TCP segment from the guest to the MMDS with valid checksums.
fn tcp_frame(op: &Op, last: Option<Seen>) -> Vec<u8> {
    let Op::Tcp {
        reply,
        port,
        seq,
        ack,
        flags,
        payload,
    } = op
    else {
        return Vec::new();
    };
    let (port, seq, ack) = match (reply, last) {
        (true, Some((_, their_dst, their_seq, their_ack, len))) => {
            (their_dst, their_ack, their_seq.wrapping_add(len as i32))
        }
        _ => (*port, *seq as i32, *ack as i32),
    };
    let mut tcp = vec![0u8; 20 + payload.len()];
    {
        let mut p = TcpPacket::new_unchecked(&mut tcp[..]);
        p.set_src_port(port);
        p.set_dst_port(80);
        p.set_seq_number(TcpSeqNumber(seq));
        p.set_ack_number(TcpSeqNumber(ack));
        p.set_header_len(20);
        p.set_fin(flags & 1 != 0);
        p.set_syn(flags & 2 != 0);
        p.set_rst(flags & 4 != 0);
        p.set_psh(flags & 8 != 0);
        p.set_ack(flags & 16 != 0);
        p.set_window_len(65535);
        p.payload_mut().copy_from_slice(payload);
        p.fill_checksum(&IpAddress::Ipv4(GUEST_IP), &IpAddress::Ipv4(DEFAULT_IPV4));
    }
    let repr = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: DEFAULT_IPV4,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.len(),
        hop_limit: 64,
    };
    let mut ip = vec![0u8; repr.buffer_len() + tcp.len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut ip[..]);
    repr.emit(&mut packet, &Default::default());
    packet.payload_mut().copy_from_slice(&tcp);
    eth(EthernetProtocol::Ipv4, DEFAULT_MAC, &ip)
}

/// An ARP request from the guest for the MMDS address.
fn arp_request() -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&GUEST_MAC);
    p.extend_from_slice(&GUEST_IP.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&DEFAULT_IPV4.octets());
    eth(EthernetProtocol::Arp, [0xff; 6], &p)
}

/// What a frame for the guest says about the segment in it, if it holds TCP.
fn seen(frame: &[u8]) -> Option<Seen> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let len = tcp.payload().len() + usize::from(tcp.syn()) + usize::from(tcp.fin());
    Some((
        tcp.src_port(),
        tcp.dst_port(),
        tcp.seq_number().0,
        tcp.ack_number().0,
        len,
    ))
}

fn read_op(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
    Ok(match u.arbitrary::<u8>()? % 5 {
        0 => Op::Raw(take_bytes(u)?.to_vec()),
        1 => Op::Tcp {
            reply: u.arbitrary::<u8>()? & 1 != 0,
            port: u.arbitrary()?,
            seq: u.arbitrary()?,
            ack: u.arbitrary()?,
            flags: u.arbitrary()?,
            payload: take_bytes(u)?.to_vec(),
        },
        2 => Op::Arp,
        3 => Op::Poll {
            ms: u.arbitrary()?,
            answer_len: u.arbitrary()?,
        },
        _ => Op::Take {
            buf_len: u.arbitrary()?,
        },
    })
}

/// Runs the operations in `data` against one stack.
pub fn net(data: &[u8]) {
    drive(data);
}

/// Runs the operations in `data`, checking after each; returns the stack and the number of
/// requests answered.
fn drive(data: &[u8]) -> (MmdsStack, usize) {
    let mut answered = 0;
    let mut u = Unstructured::new(data);
    let mut stack = MmdsStack::with_seed(DEFAULT_IPV4, DEFAULT_MAC, 0x5eed);
    let mut now = Instant::now();
    let mut last: Option<Seen> = None;
    // `Unstructured` gives zeros once the input is spent: stop there.
    while !u.is_empty() {
        let Ok(op) = read_op(&mut u) else {
            break;
        };
        match &op {
            Op::Raw(frame) => {
                let taken = stack.detour(frame, now);
                let ethertype = frame.get(12..14);
                if taken {
                    assert!(
                        ethertype == Some(&[8, 0]) || ethertype == Some(&[8, 6]),
                        "took a frame that is neither ARP nor IPv4: {frame:02x?}"
                    );
                }
            }
            Op::Tcp { .. } => {
                assert!(stack.detour(&tcp_frame(&op, last), now));
            }
            Op::Arp => {
                assert!(stack.detour(&arp_request(), now));
            }
            Op::Poll { ms, answer_len } => {
                now += Duration::from_millis(u64::from(*ms));
                let len = usize::from(*answer_len);
                let mut answer = |request: &[u8]| {
                    let complete = request.windows(4).any(|w| w == b"\r\n\r\n");
                    let answer = (complete && len > 0).then(|| vec![b'x'; len]);
                    answered += usize::from(answer.is_some());
                    answer
                };
                stack.poll(now, &mut answer);
            }
            Op::Take { buf_len } => {
                let mut buf = vec![0u8; usize::from(*buf_len)];
                for _ in 0..1000 {
                    let Some(n) = stack.next_frame(&mut buf) else {
                        break;
                    };
                    let frame = &buf[..n];
                    assert!(
                        (14..=MAX_FRAME_LEN).contains(&n) && frame[6..12] == DEFAULT_MAC,
                        "a frame for the guest of {n} bytes from {:02x?}",
                        frame.get(6..12)
                    );
                    last = seen(frame).or(last);
                }
            }
        }
        assert!(stack.connections() <= MAX_CONNECTIONS);
        assert!(stack.queued().0 <= 129, "{:?}", stack.queued());
    }
    (stack, answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_completes_a_request() {
        // The seed's session reaches the HTTP side: a connection is made, answered, and ends.
        let (stack, answered) = drive(&seed_session());
        assert_eq!(answered, 1);
        let stats = stack.stats();
        assert_eq!(
            (stats.connections_created, stats.connections_destroyed),
            (1, 1),
            "{stats:?}"
        );
        // An empty input is no operation at all.
        assert_eq!(drive(&[]).1, 0);
    }

    #[test]
    fn pseudo_random_inputs_and_mutated_seeds_pass() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seed = seed_session();
        for i in 0..512 {
            let data: Vec<u8> = if i % 2 == 0 {
                (0..2048).map(|_| next() as u8).collect()
            } else {
                let mut d = seed.clone();
                for _ in 0..1 + next() % 6 {
                    let at = next() as usize % d.len();
                    d[at] = next() as u8;
                }
                d
            };
            net(&data);
        }
    }
}

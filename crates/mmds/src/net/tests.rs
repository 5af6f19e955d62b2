//! The responder against a guest that speaks real TCP (a second smoltcp interface), and
//! against hand-made and hostile frames.

use std::collections::VecDeque;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

use super::*;

const GUEST_MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

/// The guest's side of the wire: frames it sent, frames for it.
#[derive(Default)]
struct Wire {
    sent: VecDeque<Vec<u8>>,
    received: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.received.pop_front()?;
        Some((Rx(f), Tx(&mut self.sent)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.sent))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// A guest with a TCP/IP stack of its own on one interface, and the MMDS on its path.
struct Rig {
    stack: MmdsStack,
    guest: Interface,
    sockets: SocketSet<'static>,
    wire: Wire,
    epoch: Instant,
    now: Instant,
    /// Frames the MMDS did not take (they would go to the tap).
    to_tap: Vec<Vec<u8>>,
}

/// The test's HTTP side: answers a complete head (up to a blank line) with its first line
/// repeated `n` times, `n` read from a `?n` at the end of the path (1 without).
fn echo(request: &[u8]) -> Option<Vec<u8>> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&request[..end]).ok()?;
    let line = head.lines().next()?;
    let n: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.split_once('?'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1);
    let body = line.repeat(n);
    Some(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn rig() -> Rig {
    let mut wire = Wire::default();
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
    let mut guest = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
    guest.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 16)).unwrap();
    });
    let stack = MmdsStack::new(DEFAULT_IPV4, DEFAULT_MAC);
    let now = Instant::now();
    Rig {
        stack,
        guest,
        sockets: SocketSet::new(Vec::new()),
        wire,
        epoch: now,
        now,
        to_tap: Vec::new(),
    }
}

impl Rig {
    fn t(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            self.now.saturating_duration_since(self.epoch).as_micros() as i64,
        )
    }

    /// A guest socket connecting to the MMDS from `port`.
    fn connect(&mut self, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        s.set_ack_delay(None);
        s.connect(
            self.guest.context(),
            (IpAddress::Ipv4(DEFAULT_IPV4), PORT),
            port,
        )
        .unwrap();
        self.sockets.add(s)
    }

    fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Moves frames both ways until neither side has anything to say.
    fn run(&mut self, answer: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) {
        for _ in 0..10_000 {
            let t = self.t();
            self.guest.poll(t, &mut self.wire, &mut self.sockets);
            let mut moved = false;
            while let Some(f) = self.wire.sent.pop_front() {
                moved = true;
                if !self.stack.detour(&f, self.now) {
                    self.to_tap.push(f);
                }
            }
            self.stack.poll(self.now, answer);
            let mut buf = [0u8; MAX_FRAME_LEN];
            while let Some(n) = self.stack.next_frame(&mut buf) {
                moved = true;
                self.wire.received.push_back(buf[..n].to_vec());
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange never settled");
    }

    fn recv_all(&mut self, h: SocketHandle) -> Vec<u8> {
        let mut out = Vec::new();
        let s = self.sock(h);
        while s.can_recv() {
            s.recv(|d| {
                out.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
        out
    }
}

fn eth(dst: [u8; 6], ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype,
    };
    let mut f = vec![0; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    f
}

fn arp(op: ArpOperation, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut p = vec![0; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut p));
    eth([0xff; 6], EthernetProtocol::Arp, &p)
}

fn ipv4(dst: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut p = vec![0; repr.buffer_len() + payload.len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut p);
    repr.emit(&mut packet, &Default::default());
    packet.payload_mut().copy_from_slice(payload);
    eth(DEFAULT_MAC, EthernetProtocol::Ipv4, &p)
}

#[test]
fn an_arp_request_for_the_mmds_address_gets_its_mac() {
    let mut r = rig();
    assert!(r
        .stack
        .detour(&arp(ArpOperation::Request, DEFAULT_IPV4), r.now));
    assert!(!r.stack.has_frames());
    r.stack.poll(r.now, &mut echo);
    assert!(r.stack.has_frames());
    let mut buf = [0u8; 100];
    let n = r.stack.next_frame(&mut buf).unwrap();
    let frame = EthernetFrame::new_checked(&buf[..n]).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress(GUEST_MAC));
    assert_eq!(frame.src_addr(), EthernetAddress(DEFAULT_MAC));
    let reply = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
    assert_eq!(
        reply,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(DEFAULT_MAC),
            source_protocol_addr: DEFAULT_IPV4,
            target_hardware_addr: EthernetAddress(GUEST_MAC),
            target_protocol_addr: GUEST_IP,
        }
    );
    assert_eq!(r.stack.next_frame(&mut buf), None);
    let s = r.stack.stats();
    assert_eq!((s.rx_accepted, s.rx_count, s.tx_frames), (1, 1, 1));
    assert_eq!(s.tx_bytes, n as u64);
}

#[test]
fn frames_not_for_the_mmds_pass_untouched() {
    let mut r = rig();
    let other = Ipv4Addr::new(169, 254, 0, 1);
    let frames = [
        arp(ArpOperation::Request, other),
        ipv4(other, IpProtocol::Tcp, &[0; 20]),
        eth(DEFAULT_MAC, EthernetProtocol::Ipv6, &[0; 60]),
        eth([0xff; 6], EthernetProtocol::Unknown(0x8100), &[0; 60]),
        // Too short to hold the MMDS address where ARP or IPv4 keep it.
        eth([0xff; 6], EthernetProtocol::Arp, &[0; 10]),
        eth([0xff; 6], EthernetProtocol::Ipv4, &[0; 10]),
    ];
    for f in &frames {
        assert!(!r.stack.detour(f, r.now), "{f:?}");
    }
    assert!(!r.stack.detour(&[0; 13], r.now));
    assert!(!r.stack.detour(&[], r.now));
    r.stack.poll(r.now, &mut echo);
    assert!(!r.stack.has_frames());
    let s = r.stack.stats();
    assert_eq!((s.rx_accepted, s.rx_bad_eth, s.rx_count), (0, 2, 0));
}

#[test]
fn other_ipv4_to_the_mmds_is_taken_and_dropped() {
    let mut r = rig();
    // An ICMP echo request and a UDP datagram: Firecracker answers neither.
    assert!(r.stack.detour(
        &ipv4(
            DEFAULT_IPV4,
            IpProtocol::Icmp,
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]
        ),
        r.now
    ));
    assert!(r
        .stack
        .detour(&ipv4(DEFAULT_IPV4, IpProtocol::Udp, &[0; 12]), r.now));
    r.stack.poll(r.now, &mut echo);
    assert!(!r.stack.has_frames());
    let s = r.stack.stats();
    assert_eq!(
        (s.rx_accepted, s.rx_accepted_unusual, s.rx_count),
        (2, 2, 0)
    );
}

#[test]
fn a_guest_gets_its_answer_over_tcp_and_closes() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    assert_eq!(r.sock(h).state(), tcp::State::Established);
    assert_eq!(r.stack.connections(), 1);
    r.sock(h)
        .send_slice(b"GET /latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
        .unwrap();
    r.run(&mut echo);
    let got = r.recv_all(h);
    assert_eq!(
        got,
        b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nGET /latest/meta-data HTTP/1.1"
    );
    r.sock(h).close();
    r.run(&mut echo);
    assert_eq!(r.stack.connections(), 0);
    assert!(r.to_tap.is_empty(), "{:?}", r.to_tap);
    let s = r.stack.stats();
    assert_eq!((s.connections_created, s.connections_destroyed), (1, 1));
    assert_eq!((s.rx_accepted_err, s.tx_errors), (0, 0));
}

#[test]
fn a_50_kib_answer_arrives_whole() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    // 22 bytes of first line, 2300 times: 50600 bytes, through an 8 KiB send buffer.
    r.sock(h)
        .send_slice(b"GET /big?2300 HTTP/1.1\r\n\r\n")
        .unwrap();
    r.run(&mut echo);
    let got = r.recv_all(h);
    let want = echo(b"GET /big?2300 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want);
    // At most 64 frames ever waited for the guest.
    assert!(r.stack.stats().tx_frames > 35);
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    r.sock(h).send_slice(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
    r.run(&mut echo);
    r.sock(h).send_slice(b"GET /b HTTP/1.1\r\n\r\n").unwrap();
    r.run(&mut echo);
    // Two in one segment, the second with a body.
    r.sock(h)
        .send_slice(b"GET /c HTTP/1.1\r\n\r\nPUT /d HTTP/1.1\r\nContent-Length: 2\r\n\r\nxy")
        .unwrap();
    r.run(&mut echo);
    let got = String::from_utf8(r.recv_all(h)).unwrap();
    let bodies: Vec<&str> = got
        .split("HTTP/1.1 200 OK\r\n")
        .filter(|s| !s.is_empty())
        .map(|s| s.split("\r\n\r\n").nth(1).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
            "GET /c HTTP/1.1",
            "PUT /d HTTP/1.1"
        ]
    );
    assert_eq!(r.stack.connections(), 1);
}

#[test]
fn an_answer_to_a_request_of_unclear_length_closes_the_connection() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    let mut bad =
        |_: &[u8]| Some(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec());
    r.sock(h)
        .send_slice(b"\x01\x02 garbage\r\n\r\nmore")
        .unwrap();
    r.run(&mut bad);
    assert_eq!(
        r.recv_all(h),
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    );
    assert!(!r.sock(h).may_recv(), "{}", r.sock(h).state());
    r.sock(h).close();
    r.run(&mut bad);
    // The MMDS closed first: its side waits in TIME-WAIT, then goes.
    r.now += TIMEOUT + Duration::from_secs(1);
    r.run(&mut bad);
    assert_eq!(r.stack.connections(), 0);
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let mut r = rig();
    let hs: Vec<_> = (0..40).map(|i| r.connect(40000 + i)).collect();
    r.run(&mut echo);
    let established = hs
        .iter()
        .filter(|&&h| r.sock(h).state() == tcp::State::Established)
        .count();
    assert_eq!(established, MAX_CONNECTIONS);
    assert_eq!(r.stack.connections(), MAX_CONNECTIONS);
    // The others were reset.
    let closed = hs
        .iter()
        .filter(|&&h| r.sock(h).state() == tcp::State::Closed)
        .count();
    assert_eq!(closed, 10);
    // Every connection still works, and once one ends, a new one is accepted.
    let first = hs[0];
    r.sock(first)
        .send_slice(b"GET /x HTTP/1.1\r\n\r\n")
        .unwrap();
    r.run(&mut echo);
    assert!(!r.recv_all(first).is_empty());
    r.sock(first).close();
    r.run(&mut echo);
    assert_eq!(r.stack.connections(), MAX_CONNECTIONS - 1);
    let late = r.connect(50000);
    r.run(&mut echo);
    assert_eq!(r.sock(late).state(), tcp::State::Established);
}

#[test]
fn stalled_and_unfinished_connections_time_out() {
    let mut r = rig();
    let idle = r.connect(49152);
    let slow = r.connect(49153);
    r.run(&mut echo);
    assert_eq!(r.stack.connections(), 2);
    let deadline = r.stack.poll_at(r.now).unwrap();
    assert!(deadline <= r.now + TIMEOUT, "{deadline:?}");
    // The slow one trickles a request that never ends, a byte a second.
    for _ in 0..9 {
        r.now += Duration::from_secs(1);
        r.sock(slow).send_slice(b"G").unwrap();
        r.run(&mut echo);
    }
    r.now += Duration::from_millis(1500);
    r.run(&mut echo);
    assert_eq!(r.stack.connections(), 0);
    // Both were reset.
    assert_eq!(r.sock(idle).state(), tcp::State::Closed);
    assert_eq!(r.sock(slow).state(), tcp::State::Closed);
    let s = r.stack.stats();
    assert_eq!((s.connections_created, s.connections_destroyed), (2, 2));
}

#[test]
fn a_request_over_the_limit_aborts_its_connection() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    let mut never = |_: &[u8]| None;
    let junk = vec![b'a'; 1000];
    for _ in 0..20 {
        let _ = r.sock(h).send_slice(&junk);
        r.run(&mut never);
    }
    assert_eq!(r.stack.connections(), 0);
    assert_eq!(r.sock(h).state(), tcp::State::Closed);
    assert_eq!(r.stack.stats().rx_accepted_err, 1);
}

#[test]
fn a_guest_that_takes_no_frames_holds_a_bounded_queue() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    r.sock(h)
        .send_slice(b"GET /big?2300 HTTP/1.1\r\n\r\n")
        .unwrap();
    let t = r.t();
    r.guest.poll(t, &mut r.wire, &mut r.sockets);
    while let Some(f) = r.wire.sent.pop_front() {
        assert!(r.stack.detour(&f, r.now));
    }
    // Many polls, nobody reading: the stack stops at its socket's window and buffer.
    for _ in 0..100 {
        r.stack.poll(r.now, &mut echo);
    }
    let (frames, bytes) = r.stack.queued();
    assert!(frames <= 64, "{frames}");
    assert!(bytes <= 64 * MAX_FRAME_LEN, "{bytes}");
    // The guest reads on: everything arrives.
    r.run(&mut echo);
    assert!(r.recv_all(h) == echo(b"GET /big?2300 HTTP/1.1\r\n\r\n").unwrap());
}

#[test]
fn a_guest_routing_through_a_gateway_is_answered_too() {
    let mut r = rig();
    // The ARP reply teaches the guest the MMDS's MAC; this frame names a gateway's instead.
    let h = r.connect(49152);
    let t = r.t();
    r.guest.poll(t, &mut r.wire, &mut r.sockets);
    // The guest's ARP request.
    let arp_req = r.wire.sent.pop_front().unwrap();
    assert!(r.stack.detour(&arp_req, r.now));
    r.stack.poll(r.now, &mut echo);
    let mut buf = [0u8; 100];
    let n = r.stack.next_frame(&mut buf).unwrap();
    r.wire.received.push_back(buf[..n].to_vec());
    let t = r.t();
    r.guest.poll(t, &mut r.wire, &mut r.sockets);
    let mut syn = r.wire.sent.pop_front().unwrap();
    syn[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    assert!(r.stack.detour(&syn, r.now));
    r.run(&mut echo);
    assert_eq!(r.sock(h).state(), tcp::State::Established);
}

#[test]
fn hostile_frames_never_panic_nor_grow_the_stack() {
    let mut r = rig();
    let h = r.connect(49152);
    r.run(&mut echo);
    // A small xorshift generator: the same frames every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let templates = [
        arp(ArpOperation::Request, DEFAULT_IPV4),
        ipv4(DEFAULT_IPV4, IpProtocol::Tcp, &[0; 40]),
    ];
    let mut buf = [0u8; MAX_FRAME_LEN];
    for i in 0..20_000 {
        let mut f = templates[i % 2].clone();
        let len = 14 + (next() as usize % 1600);
        f.resize(len.max(f.len().min(len)), 0);
        // Flip bytes past the addresses that make it the MMDS's.
        for _ in 0..(next() % 8) {
            let at = next() as usize % f.len();
            if !(12..14).contains(&at) && !(30..34).contains(&at) && !(38..42).contains(&at) {
                f[at] = next() as u8;
            }
        }
        r.stack.detour(&f, r.now);
        if i % 16 == 0 {
            r.stack.poll(r.now, &mut echo);
            while r.stack.next_frame(&mut buf).is_some() {}
        }
        assert!(r.stack.connections() <= MAX_CONNECTIONS);
        assert!(r.stack.queued().0 <= 2 * 64 + 1);
    }
    // The real connection still works, once the guest has told its MAC again (the garbage
    // included ARP from its address with other MACs: a guest can only confuse itself).
    assert!(r
        .stack
        .detour(&arp(ArpOperation::Request, DEFAULT_IPV4), r.now));
    r.sock(h).send_slice(b"GET /ok HTTP/1.1\r\n\r\n").unwrap();
    r.run(&mut echo);
    assert!(r.recv_all(h).ends_with(b"GET /ok HTTP/1.1"));
}

#[test]
fn a_frame_larger_than_the_guest_buffer_is_dropped_and_counted() {
    let mut r = rig();
    assert!(r
        .stack
        .detour(&arp(ArpOperation::Request, DEFAULT_IPV4), r.now));
    r.stack.poll(r.now, &mut echo);
    let mut small = [0u8; 20];
    assert_eq!(r.stack.next_frame(&mut small), None);
    assert_eq!(r.stack.stats().tx_errors, 1);
    assert!(!r.stack.has_frames());
    // Oversized guest frames to the MMDS are taken and dropped.
    let mut big = ipv4(DEFAULT_IPV4, IpProtocol::Tcp, &[0; 1600]);
    assert!(r.stack.detour(&big, r.now));
    big.truncate(100);
    assert_eq!(r.stack.stats().rx_accepted_err, 1);
}

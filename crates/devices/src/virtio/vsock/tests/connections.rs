//! Connections: made from either side, refused, reset, half-closed, timed out and capped.

use super::*;

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mut r = rig();
    r.post_rx(8);
    // Bytes after the CONNECT line belong to the connection.
    let (mut host, req) = r.host_connect(1234, b"early");
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.dst_port, 1234);
    assert!(req.src_port >= 1 << 30, "{req:?}");
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
    let local = req.src_port;

    // The guest accepts; the host learns the local port.
    r.send(&from_guest(OP_RESPONSE, 1234, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}\n"));
    r.host_events();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (local, 1234));
    assert_eq!(pkts[0].1, b"early");

    // Host to guest.
    host.write_all(b"hello").unwrap();
    r.host_events();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"hello"[..]));

    // Guest to host.
    r.send(&from_guest(OP_RW, 1234, local), b"world");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    let s = r.stats();
    assert_eq!((s.bytes_to_guest, s.bytes_to_host), (10, 5));
    assert_eq!((s.connections_opened, s.connections_closed), (1, 0));
    assert_eq!(r.m.device().connections(), 1);

    // The host closes: the guest is told both directions are shut, and resets.
    drop(host);
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_BOTH));
    r.send(&from_guest(OP_RST, 1234, local), &[]);
    assert_eq!(r.m.device().connections(), 0);
    let s = r.stats();
    assert_eq!(
        (s.connections_closed, s.resets_received, s.resets_sent),
        (1, 1, 0)
    );
    // Nothing more for the guest.
    r.host_events();
    assert!(r.recv().is_empty());
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mut r = rig();
    r.post_rx(8);
    let listener = UnixListener::bind(port_path(&r.uds, 5000)).unwrap();
    r.send(&from_guest(OP_REQUEST, 777, 5000), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].op, OP_RESPONSE);
    assert_eq!((pkts[0].src_port, pkts[0].dst_port), (5000, 777));
    assert_eq!(pkts[0].buf_alloc, CONN_BUF_SIZE);

    r.send(&from_guest(OP_RW, 777, 5000), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    r.host_events();
    let pkts = r.recv();
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"pong"[..]));
    assert_eq!(
        pkts[0].0.fwd_cnt, 4,
        "the device's fwd_cnt counts what the host took"
    );

    // The guest closes: the device answers with a reset and the host sees EOF.
    let shut = Header {
        flags: SHUTDOWN_F_BOTH,
        ..from_guest(OP_SHUTDOWN, 777, 5000)
    };
    r.send(&shut, &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, 5000, 777)
    );
    assert!(at_eof(&mut host));
    let s = r.stats();
    assert_eq!((s.connections_opened, s.connections_closed), (1, 1));
    assert_eq!((s.bytes_to_guest, s.bytes_to_host), (4, 4));
}

#[test]
fn guest_rst_closes_the_host_stream_at_once() {
    let mut r = rig();
    r.post_rx(8);
    let (mut host, local) = r.established(80, 64 * 1024);
    r.send(&from_guest(OP_RST, 80, local), &[]);
    assert!(at_eof(&mut host));
    assert_eq!(r.m.device().connections(), 0);
    // No reset answers a reset.
    assert!(r.recv().is_empty());
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mut r = rig();
    r.post_rx(8);
    r.send(&from_guest(OP_REQUEST, 1000, 6000), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, 6000, 1000)
    );
    assert_eq!(r.stats().connect_failures, 1);
    assert_eq!(r.m.device().connections(), 0);
    // A stale socket file with nobody behind it fails the same way.
    drop(UnixListener::bind(port_path(&r.uds, 6001)).unwrap());
    r.send(&from_guest(OP_REQUEST, 1000, 6001), &[]);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().connect_failures, 2);
}

#[test]
fn packets_for_unknown_connections_are_reset() {
    let mut r = rig();
    r.post_rx(8);
    for op in [
        OP_RW,
        OP_SHUTDOWN,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        OP_RESPONSE,
    ] {
        r.send(
            &from_guest(op, 41, 42),
            if op == OP_RW { b"x" } else { b"" },
        );
    }
    // A reset for nothing is not answered.
    r.send(&from_guest(OP_RST, 41, 42), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 5, "{pkts:?}");
    for h in pkts {
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.type_),
            (OP_RST, 42, 41, TYPE_STREAM)
        );
    }
    let s = r.stats();
    assert_eq!(
        (s.unknown_connection, s.resets_sent, s.resets_received),
        (5, 5, 1)
    );
    assert_eq!((s.bytes_to_host, s.bad_packets), (0, 0));
}

#[test]
fn half_closes_both_ways() {
    let mut r = rig();
    r.post_rx(16);
    let (mut host, local) = r.established(8, 64 * 1024);
    // The host stops sending: the guest hears "no more data", and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_SEND));
    r.send(&from_guest(OP_RW, 8, local), b"reply");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    // The guest stops sending too: the host reads EOF; both directions are shut, so the
    // device closes and the guest resets.
    let shut = Header {
        flags: SHUTDOWN_F_SEND,
        ..from_guest(OP_SHUTDOWN, 8, local)
    };
    r.send(&shut, &[]);
    assert!(at_eof(&mut host));
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_BOTH));
    r.send(&from_guest(OP_RST, 8, local), &[]);
    assert_eq!(r.m.device().connections(), 0);
}

#[test]
fn guest_refusal_and_timeouts_close_the_host_stream() {
    let mut r = rig();
    r.post_rx(16);
    // The guest refuses: the host gets EOF and no OK line.
    let (mut host, req) = r.host_connect(99, b"");
    r.send(&from_guest(OP_RST, 99, req.src_port), &[]);
    assert!(at_eof(&mut host));
    assert_eq!(r.stats().refused_by_guest, 1);

    // The guest never answers: after CONNECT_TIMEOUT the host gets EOF and the guest a reset.
    let (mut host, req) = r.host_connect(99, b"");
    r.m.device_mut()
        .mux
        .expire(Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1));
    assert!(at_eof(&mut host));
    r.post_rx(1);
    let pkts = r.recv_headers();
    assert_eq!((pkts[0].op, pkts[0].src_port), (OP_RST, req.src_port));

    // The host closes and the guest never resets: the device does after SHUTDOWN_TIMEOUT.
    let (host, local) = r.established(99, 4096);
    drop(host);
    r.host_events();
    assert_eq!(r.recv_headers()[0].op, OP_SHUTDOWN);
    r.m.device_mut()
        .mux
        .expire(Instant::now() + SHUTDOWN_TIMEOUT + Duration::from_secs(1));
    r.post_rx(1);
    let pkts = r.recv_headers();
    assert_eq!((pkts[0].op, pkts[0].src_port), (OP_RST, local));
    assert_eq!(r.stats().timeouts, 2);
    assert_eq!(r.m.device().connections(), 0);
}

#[test]
fn the_timer_fires_through_the_event_source() {
    let mut r = rig();
    r.post_rx(4);
    let (mut host, _) = r.host_connect(99, b"");
    // Bring the deadline close instead of waiting five seconds.
    r.m.device_mut()
        .mux
        .move_deadlines(Instant::now() + Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(50));
    r.host_events();
    assert!(at_eof(&mut host));
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().timeouts, 1);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut r = rig();
    r.post_rx(4);
    for line in [&b"CONNECT x\n"[..], b"HELLO 5\n", b"CONNECT 99999999999\n"] {
        let mut host = UnixStream::connect(&r.uds).unwrap();
        host.write_all(line).unwrap();
        r.host_events();
        assert!(at_eof(&mut host), "{line:?}");
    }
    // Too long without a newline.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(&[b'7'; 100]).unwrap();
    r.host_events();
    assert!(at_eof(&mut host));
    // A client that hangs up mid-line is simply forgotten.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONN").unwrap();
    drop(host);
    r.host_events();
    assert_eq!(r.stats().bad_host_requests, 4);
    assert!(r.recv().is_empty());
    // A line sent in pieces is fine.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNE").unwrap();
    r.host_events();
    host.write_all(b"CT 6\n").unwrap();
    r.host_events();
    assert_eq!(r.recv_headers()[0].dst_port, 6);
}

#[test]
fn connections_are_capped() {
    let mut r = rig();
    r.post_rx(8);
    r.m.device_mut().mux.max_connections = 2;
    let (_a, _) = r.host_connect(1, b"");
    let (_b, _) = r.host_connect(2, b"");
    let mut c = UnixStream::connect(&r.uds).unwrap();
    r.host_events();
    assert!(at_eof(&mut c));
    let _listener = UnixListener::bind(port_path(&r.uds, 3)).unwrap();
    r.send(&from_guest(OP_REQUEST, 10, 3), &[]);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().connections_refused, 2);
    assert_eq!(r.m.device().connections(), 2);
}

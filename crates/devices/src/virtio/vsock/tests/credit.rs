//! Credit: data flows within what the peer said it can take, and a peer that ignores it is reset.

use super::*;

#[test]
fn host_data_waits_for_guest_credit() {
    let mut r = rig();
    r.post_rx(16);
    let (mut host, local) = r.established(7, 10);
    host.write_all(b"0123456789abcdefghijKLMNO").unwrap();
    r.host_events();
    let pkts = r.recv();
    let ops: Vec<_> = pkts.iter().map(|(h, _)| h.op).collect();
    // Ten bytes of credit, then a request for more.
    assert_eq!(ops, [OP_RW, OP_CREDIT_REQUEST], "{pkts:?}");
    assert_eq!(pkts[0].1, b"0123456789");
    // Nothing more however often the device looks.
    r.host_events();
    assert!(r.recv().is_empty());

    let update = |fwd_cnt| Header {
        buf_alloc: 10,
        fwd_cnt,
        ..from_guest(OP_CREDIT_UPDATE, 7, local)
    };
    r.send(&update(10), &[]);
    let pkts = r.recv();
    assert_eq!(pkts[0].1, b"abcdefghij");
    assert_eq!(pkts[1].0.op, OP_CREDIT_REQUEST);
    r.send(&update(20), &[]);
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].1, b"KLMNO");
    assert_eq!(r.stats().bytes_to_guest, 25);
    // A guest claiming to have consumed more than it got gains nothing.
    host.write_all(b"zz").unwrap();
    r.send(&update(1000), &[]);
    r.host_events();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_CREDIT_REQUEST);
}

#[test]
fn credit_request_is_answered_and_credit_updates_are_sent() {
    let mut r = rig();
    r.post_rx(8);
    let listener = UnixListener::bind(port_path(&r.uds, 22)).unwrap();
    r.send(&from_guest(OP_REQUEST, 900, 22), &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(r.recv_headers()[0].op, OP_RESPONSE);
    r.send(&from_guest(OP_CREDIT_REQUEST, 900, 22), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].buf_alloc, pkts[0].fwd_cnt),
        (OP_CREDIT_UPDATE, CONN_BUF_SIZE, 0)
    );
    // A little data: no update needed. Enough that the guest's view of our buffer runs low:
    // an update, unasked.
    r.send(&from_guest(OP_RW, 900, 22), &[1; 100]);
    assert!(r.recv().is_empty());
    r.send(&from_guest(OP_RW, 900, 22), &[2; 40 * 1024]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].fwd_cnt),
        (OP_CREDIT_UPDATE, 100 + 40 * 1024)
    );
    let mut got = vec![0u8; 100 + 40 * 1024];
    host.read_exact(&mut got).unwrap();
    assert!(got[..100].iter().all(|&b| b == 1) && got[100..].iter().all(|&b| b == 2));
}

#[test]
fn a_slow_host_gets_everything_within_the_credit_and_a_close_waits_for_it() {
    let mut r = rig();
    r.post_rx(32);
    let listener = UnixListener::bind(port_path(&r.uds, 9000)).unwrap();
    r.send(&from_guest(OP_REQUEST, 700, 9000), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    assert_eq!(r.recv_headers()[0].op, OP_RESPONSE);

    // The guest sends while it has credit; the host does not read, so the host socket fills,
    // then the device's buffer, until the guest has no credit left.
    let pattern = |i: usize| (i * 7 % 251) as u8;
    let (mut sent, mut fwd_seen, mut updates) = (0usize, 0u32, 0);
    loop {
        let credit = (CONN_BUF_SIZE - (sent as u32 - fwd_seen)) as usize;
        if credit == 0 {
            break;
        }
        let chunk: Vec<u8> = (sent..sent + credit.min(16 * 1024)).map(pattern).collect();
        r.send(&from_guest(OP_RW, 700, 9000), &chunk);
        sent += chunk.len();
        for h in r.recv_headers() {
            assert_eq!(h.op, OP_CREDIT_UPDATE);
            updates += 1;
            fwd_seen = h.fwd_cnt;
        }
        r.post_rx(32 - r.rx_posted.wrapping_sub(r.rx_seen));
        assert!(sent < 64 << 20, "the credit never ran out");
    }
    assert!(updates > 0);
    assert!(sent > CONN_BUF_SIZE as usize);
    assert_eq!(r.stats().credit_violations, 0);

    // The guest closes with data still in the device: no reset until the host has it all.
    let shut = Header {
        flags: SHUTDOWN_F_BOTH,
        ..from_guest(OP_SHUTDOWN, 700, 9000)
    };
    r.send(&shut, &[]);
    assert!(r.recv().is_empty());
    assert_eq!(r.m.device().connections(), 1);

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = [0u8; 32 * 1024];
        match host.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => r.host_events(),
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "host got {} of {sent}",
            got.len()
        );
    }
    assert_eq!(got.len(), sent);
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    let pkts = r.recv_headers();
    assert_eq!(pkts.last().unwrap().op, OP_RST, "{pkts:?}");
    assert_eq!(r.m.device().connections(), 0);
    assert_eq!(r.stats().bytes_to_host, sent as u64);
}

#[test]
fn a_guest_ignoring_credit_is_reset() {
    let mut r = rig();
    r.post_rx(32);
    let listener = UnixListener::bind(port_path(&r.uds, 9001)).unwrap();
    r.send(&from_guest(OP_REQUEST, 701, 9001), &[]);
    let (_host, _) = listener.accept().unwrap();
    r.recv();
    let chunk = vec![0x5a; MAX_PAYLOAD];
    let mut sent = 0;
    let reset = loop {
        r.send(&from_guest(OP_RW, 701, 9001), &chunk);
        sent += chunk.len();
        if let Some(h) = r.recv_headers().into_iter().find(|h| h.op == OP_RST) {
            break h;
        }
        r.post_rx(32 - r.rx_posted.wrapping_sub(r.rx_seen));
        assert!(sent < 64 << 20, "never reset");
    };
    assert_eq!((reset.src_port, reset.dst_port), (9001, 701));
    assert_eq!(r.stats().credit_violations, 1);
    assert_eq!(r.m.device().connections(), 0);
    // Later packets of that connection are answered with resets too.
    r.send(&from_guest(OP_RW, 701, 9001), b"x");
    assert_eq!(r.recv_headers()[0].op, OP_RST);
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut r = rig();
    r.post_rx(16);
    // Data before the guest answered the request.
    let (mut host, req) = r.host_connect(5, b"");
    r.send(&from_guest(OP_RW, 5, req.src_port), b"x");
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert!(at_eof(&mut host));
    // A second request, or a response, on a live connection.
    for op in [OP_REQUEST, OP_RESPONSE] {
        let (mut host, local) = r.established(5, 4096);
        r.send(&from_guest(op, 5, local), &[]);
        assert_eq!(r.recv_headers()[0].op, OP_RST);
        assert!(at_eof(&mut host));
    }
    // Data after the guest said it would send no more.
    let (mut host, local) = r.established(5, 4096);
    let shut = Header {
        flags: SHUTDOWN_F_SEND,
        ..from_guest(OP_SHUTDOWN, 5, local)
    };
    r.send(&shut, &[]);
    r.send(&from_guest(OP_RW, 5, local), b"late");
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert!(at_eof(&mut host));
    assert_eq!(r.stats().bad_packets, 4);
    assert_eq!(r.stats().bytes_to_host, 0);
    assert_eq!(r.m.device().connections(), 0);
}

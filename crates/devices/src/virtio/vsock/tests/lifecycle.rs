//! The device's life: receive buffers that run out, resets, the event loop, a driver not yet
//! ready, and a restored device's transport reset.

use super::*;

#[test]
fn replies_wait_for_receive_buffers_and_stall_the_transmit_queue() {
    let mut r = rig();
    // No receive buffers: a full ring of packets for nothing, each owed a reset.
    for i in 0..u32::from(QUEUE_SIZE) {
        r.publish_tx(&from_guest(OP_RW, i, 1), b"x");
    }
    // One wake-up takes a budget's worth; the device asks for the rest.
    r.m.process_queue_event(TX_QUEUE);
    assert_eq!(u32::from(r.tx.used_idx(&r.mem)), MAX_CHAINS_PER_WAKEUP);
    run_rearmed(&mut r.m);
    assert_eq!(r.tx.used_idx(&r.mem), QUEUE_SIZE);
    // More: the device stops taking them.
    for i in 0..10 {
        r.publish_tx(&from_guest(OP_RW, 1000 + i, 1), b"x");
    }
    r.m.process_queue_event(TX_QUEUE);
    assert_eq!(r.tx.used_idx(&r.mem), QUEUE_SIZE);
    assert_eq!(r.stats().tx_stalls, 1);
    assert!(r.m.is_running());
    // Receive buffers: the resets go out and the transmit queue moves again.
    let mut resets = Vec::new();
    while resets.len() < usize::from(QUEUE_SIZE) + 10 {
        r.post_rx(32);
        let got = r.recv_headers();
        assert!(!got.is_empty(), "stuck after {} resets", resets.len());
        resets.extend(got);
    }
    assert!(resets.iter().all(|h| h.op == OP_RST));
    assert_eq!(resets.last().unwrap().dst_port, 1009);
    assert_eq!(r.tx.used_idx(&r.mem), QUEUE_SIZE + 10);
    assert!(RST_QUEUE_CAP <= usize::from(QUEUE_SIZE));
}

#[test]
fn reset_closes_every_connection_and_keeps_listening() {
    let mut r = rig();
    r.post_rx(8);
    let (mut host, _) = r.established(1, 4096);
    wr(&mut r.m, 0x70, 0);
    assert!(at_eof(&mut host));
    assert_eq!(r.m.device().connections(), 0);
    assert!(r.uds.exists());
    // Brought up again on fresh rings, the device takes new connections.
    r.rx = TestQueue::new(0xa000, QUEUE_SIZE);
    r.tx = TestQueue::new(0xc000, QUEUE_SIZE);
    let ev = TestQueue::new(0xe000, QUEUE_SIZE);
    bring_up(&mut r.m, FEATURES, &[r.rx, r.tx, ev]);
    (r.rx_posted, r.rx_seen, r.tx_next) = (0, 0, 0);
    r.post_rx(4);
    let (_host, req) = r.host_connect(2, b"");
    assert_eq!(req.op, OP_REQUEST);
}

#[test]
fn host_connections_before_the_driver_is_ready_are_served_after() {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock");
    let mem = guest_mem();
    let mut m = VirtioMmio::new(Vsock::new(CID, uds.clone()).unwrap(), mem.clone()).unwrap();
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 4\n").unwrap();
    m.process_device_event(EVENT_TOKEN);
    assert_eq!(m.device().connections(), 1);
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x4000, QUEUE_SIZE);
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    rx.chain(&mem, 0, &[(RXB, 4096, true)]);
    rx.publish(&mem, 0);
    // The driver's initialization (as `bring_up`, without its opening reset, which would close
    // the connection: the guest is to forget every connection at a reset).
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    wr(&mut m, 0x70, s);
    wr(&mut m, 0x24, 1);
    wr(&mut m, 0x20, 1);
    wr(&mut m, 0x70, s | STATUS_FEATURES_OK);
    for (i, q) in [rx, tx, ev].iter().enumerate() {
        setup_queue(&mut m, i as u32, q);
    }
    wr(&mut m, 0x70, s | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(m.is_running());
    m.process_queue_event(RX_QUEUE);
    assert_eq!(rx.used_idx(&mem), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(RXB)).unwrap();
    let h = Header::from_bytes(&raw);
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 4));
}

#[test]
fn the_event_manager_drives_host_connections() {
    let r = rig();
    let Rig {
        m,
        mem,
        rx,
        uds,
        _dir,
        ..
    } = r;
    rx.chain(&mem, 0, &[(RXB, 4096, true)]);
    rx.publish(&mem, 0);
    let dev = Arc::new(Mutex::new(m));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 77\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.used_idx(&mem) == 0 && Instant::now() < deadline {
        em.run_with_timeout(100).unwrap();
    }
    assert_eq!(rx.used_idx(&mem), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(RXB)).unwrap();
    assert_eq!(Header::from_bytes(&raw).dst_port, 77);
    // Nothing left to do: the loop goes idle rather than spinning.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    let m = dev.lock().unwrap();
    assert_eq!(m.stats().event_registration_failures, 0);
    assert_eq!(m.interrupt().status(), INTERRUPT_VRING);
}

#[test]
fn guest_receive_shutdown_stops_host_data() {
    let mut r = rig();
    r.post_rx(8);
    let (mut host, local) = r.established(12, 64 * 1024);
    let shut = Header {
        flags: SHUTDOWN_F_RECEIVE,
        ..from_guest(OP_SHUTDOWN, 12, local)
    };
    r.send(&shut, &[]);
    // The host can no longer send; the guest gets nothing, and can still send itself.
    host.write_all(b"unwanted").unwrap_err();
    r.host_events();
    assert!(r.recv().is_empty());
    r.send(&from_guest(OP_RW, 12, local), b"still");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
    // When the host then closes, the guest is told and resets.
    drop(host);
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_BOTH));
    assert_eq!(r.stats().bytes_to_guest, 0);
}

#[test]
fn a_host_client_giving_up_before_the_guest_answers_resets_the_request() {
    let mut r = rig();
    r.post_rx(8);
    let (host, req) = r.host_connect(31, b"");
    drop(host);
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, req.src_port, 31)
    );
    assert_eq!(r.m.device().connections(), 0);
    // The guest's late answer is for nothing now.
    r.send(&from_guest(OP_RESPONSE, 31, req.src_port), &[]);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().unknown_connection, 1);
}

/// Where the test driver puts its event buffers.
const EVB: u64 = 0xc_0000;

#[test]
fn a_restored_device_sends_the_guest_a_transport_reset() {
    let r = rig();
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    // The driver keeps event buffers posted (Linux fills the event queue at probe).
    r.mem.write_obj(0xffff_ffffu32, GuestAddress(EVB)).unwrap();
    let head = ev.chain(&r.mem, 0, &[(EVB, 4, true)]);
    ev.publish(&r.mem, head);
    let state = r.m.save_state();
    let json = serde_json::to_string(&state).unwrap();
    let back: crate::virtio::VirtioMmioState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    // The device did not touch the buffer before the snapshot.
    assert_eq!(ev.used_idx(&r.mem), 0);

    // A new process: the socket bound at another path (the user's override).
    let uds2 = r._dir.0.join("restored.sock");
    let dev = Vsock::new(CID, uds2.clone()).unwrap();
    let mut m = VirtioMmio::new(dev, r.mem.clone()).unwrap();
    m.restore_state(&back).unwrap();
    assert!(m.is_running());
    assert_eq!(m.device().uds_path(), uds2);
    run_rearmed(&mut m);
    assert_eq!(ev.used_idx(&r.mem), 1);
    assert_eq!(ev.used_elem(&r.mem, 0), (u32::from(head), 4));
    let id: u32 = r.mem.read_obj(GuestAddress(EVB)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    assert_eq!(m.interrupt_evt().unwrap().read().unwrap(), 1);
    assert_eq!(m.device().stats().transport_resets_sent, 1);

    // One reset only: the next event buffer waits.
    let head = ev.chain(&r.mem, 1, &[(EVB + 4, 4, true)]);
    ev.publish(&r.mem, head);
    m.process_queue_event(EVENT_QUEUE);
    assert_eq!(ev.used_idx(&r.mem), 1);
    // The restored device serves host clients at the new path.
    assert!(UnixStream::connect(&uds2).is_ok());
}

#[test]
fn the_reset_event_waits_for_an_event_buffer_and_a_wrong_cid_is_refused() {
    let r = rig();
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    let state = r.m.save_state();

    let dev = Vsock::new(CID + 1, r._dir.0.join("other.sock")).unwrap();
    let mut m = VirtioMmio::new(dev, r.mem.clone()).unwrap();
    let err = m.restore_state(&state).unwrap_err();
    assert!(err.to_string().contains("guest CID is 3"), "{err}");
    assert!(!m.is_running());

    let dev = Vsock::new(CID, r._dir.0.join("restored.sock")).unwrap();
    let mut m = VirtioMmio::new(dev, r.mem.clone()).unwrap();
    m.restore_state(&state).unwrap();
    run_rearmed(&mut m);
    assert_eq!(m.device().stats().transport_resets_sent, 0);
    // The guest adds an event buffer and notifies.
    let head = ev.chain(&r.mem, 0, &[(EVB, 4, true)]);
    ev.publish(&r.mem, head);
    m.process_queue_event(EVENT_QUEUE);
    assert_eq!(ev.used_idx(&r.mem), 1);
    assert_eq!(m.device().stats().transport_resets_sent, 1);
}

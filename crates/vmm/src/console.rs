//! Serial console input: bytes from a host file descriptor into the guest's UART.
//!
//! [`SerialInput`] is an `event_manager` subscriber. It reads its descriptor with `read(2)`
//! directly, never through std's buffered stdin: a byte read is a byte handed to the UART, so
//! nothing can wait in a user-space buffer that epoll does not see. It reads only as many bytes
//! as the UART's receive FIFO has room for ([`Serial::input_space`]); when the FIFO is full it
//! stops watching the descriptor, and watches it again when the UART's "input ready" `EventFd`
//! says the guest drained the FIFO. Whatever the guest is not ready for stays in the host
//! (a pipe, a terminal's line buffer), where the writer feels back-pressure.
//!
//! The descriptor is switched to non-blocking mode for as long as the [`SerialInput`] lives,
//! and switched back when it is dropped: it may be a duplicate of the user's terminal, whose
//! open file description (flags included) the shell shares. Nothing else about the descriptor
//! is touched: not the terminal's modes, not signal masks, not `std::io::stdin()`.
//!
//! Epoll refuses regular files (`EPERM`); a regular file is always readable, so for one the
//! [`SerialInput`] reads at start and then each time the guest drained the FIFO.
//!
//! ```
//! use std::os::fd::{FromRawFd, OwnedFd};
//! use std::sync::{Arc, Mutex};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use petrel_devices::{BusDevice, Serial};
//! use petrel_vmm::console::SerialInput;
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! let input_ready = EventFd::new(EFD_NONBLOCK)?;
//! let serial = Serial::with_input_ready(
//!     EventFd::new(EFD_NONBLOCK)?,
//!     Box::new(std::io::sink()),
//!     input_ready.try_clone()?,
//! );
//! let serial = Arc::new(Mutex::new(serial));
//! let mut fds = [0; 2];
//! // SAFETY: `fds` has room for the two descriptors pipe2 returns.
//! assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
//! // SAFETY: pipe2 just opened both descriptors and nothing else owns them.
//! let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
//! let input = SerialInput::new(reader, serial.clone(), input_ready)?;
//! let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
//! em.add_subscriber(Arc::new(Mutex::new(input)));
//!
//! std::io::Write::write_all(&mut std::fs::File::from(writer), b"hi")?;
//! em.run_with_timeout(1000)?;
//! let mut byte = [0u8];
//! serial.lock().unwrap().read(0, &mut byte); // the guest reads RBR
//! assert_eq!(&byte, b"h");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_devices::serial::SERIAL_FIFO_SIZE;
use petrel_devices::Serial;
use petrel_util::{set_status_flags, status_flags};
use vmm_sys_util::eventfd::EventFd;

/// What a [`SerialInput`] is doing with its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// Waiting for the descriptor to become readable (or, for a regular file, for the guest
    /// to drain the FIFO).
    Watching,
    /// The FIFO is full: not watching the descriptor until the guest drains it.
    Paused,
    /// End of input (EOF, hang-up or a read error): the descriptor is not watched any more.
    Ended,
}

/// Counters kept by a [`SerialInput`], for the VMM's reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SerialInputStats {
    /// Bytes read from the descriptor and queued in the UART.
    pub bytes_forwarded: u64,
    /// `read(2)` calls that returned data.
    pub reads: u64,
    /// Times reading stopped because the UART's FIFO was full.
    pub fifo_full_pauses: u64,
}

/// How the descriptor's readiness is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// Through epoll.
    Polled,
    /// A regular file (epoll refuses it): always readable.
    AlwaysReady,
}

/// Forwards bytes from a host descriptor into a [`Serial`]'s receive FIFO, never reading more
/// than the FIFO can take. See the [module documentation](self).
#[derive(Debug)]
pub struct SerialInput {
    fd: OwnedFd,
    /// Whether `new` set `O_NONBLOCK` (and so `drop` must clear it again).
    set_nonblock: bool,
    serial: Arc<Mutex<Serial>>,
    input_ready: EventFd,
    readiness: Readiness,
    /// Whether `fd` is in the epoll set now.
    fd_watched: bool,
    state: InputState,
    stats: SerialInputStats,
}

impl SerialInput {
    /// Forwards what `fd` yields into `serial`. `input_ready` must be the `EventFd` `serial` was
    /// built with ([`Serial::with_input_ready`]), or a clone of it.
    ///
    /// Sets `O_NONBLOCK` on `fd`'s open file description; dropping the `SerialInput` clears it
    /// again if it was clear before.
    pub fn new(
        fd: OwnedFd,
        serial: Arc<Mutex<Serial>>,
        input_ready: EventFd,
    ) -> io::Result<SerialInput> {
        let flags = status_flags(&fd)?;
        let set_nonblock = flags & libc::O_NONBLOCK == 0;
        if set_nonblock {
            set_status_flags(&fd, flags | libc::O_NONBLOCK)?;
        }
        Ok(SerialInput {
            fd,
            set_nonblock,
            serial,
            input_ready,
            readiness: Readiness::Polled,
            fd_watched: false,
            state: InputState::Watching,
            stats: SerialInputStats::default(),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> SerialInputStats {
        self.stats
    }

    /// What the input is doing now.
    pub fn state(&self) -> InputState {
        self.state
    }

    fn fd_events(&self) -> Events {
        Events::new_raw(self.fd.as_raw_fd(), EventSet::IN)
    }

    fn input_space(&self) -> usize {
        // A poisoned lock means a vCPU thread panicked in the UART: take no more input.
        self.serial.lock().map(|s| s.input_space()).unwrap_or(0)
    }

    /// Adds the descriptor to the epoll set (polled descriptors only).
    fn watch(&mut self, ops: &mut EventOps) {
        if self.readiness == Readiness::Polled && !self.fd_watched {
            match ops.add(self.fd_events()) {
                Ok(()) => self.fd_watched = true,
                Err(_) => self.end(ops),
            }
        }
    }

    /// Removes the descriptor from the epoll set, if it is there.
    fn unwatch(&mut self, ops: &mut EventOps) {
        if self.fd_watched {
            // Removal fails only if it is not registered, which is the goal anyway.
            let _ = ops.remove(self.fd_events());
            self.fd_watched = false;
        }
    }

    /// Stops for good: neither the descriptor nor `input_ready` is watched any more.
    fn end(&mut self, ops: &mut EventOps) {
        self.unwatch(ops);
        let _ = ops.remove(Events::new(&self.input_ready, EventSet::IN));
        self.state = InputState::Ended;
    }

    /// Pauses until the guest drains the FIFO.
    fn pause(&mut self, ops: &mut EventOps) {
        self.unwatch(ops);
        self.state = InputState::Paused;
        self.stats.fifo_full_pauses += 1;
    }

    /// Reads and queues input until the FIFO is full or the descriptor has nothing more now.
    fn forward(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; SERIAL_FIFO_SIZE];
        loop {
            let space = self.input_space();
            if space == 0 {
                self.pause(ops);
                return;
            }
            let want = space.min(buf.len());
            // SAFETY: `buf` is valid for writes of `want <= buf.len()` bytes, and `self.fd` is
            // an open descriptor this struct owns.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            match usize::try_from(n) {
                Ok(0) => {
                    self.end(ops);
                    return;
                }
                Ok(n) => {
                    // Nothing else adds input to this UART, so all `n <= space` bytes fit.
                    let queued = self
                        .serial
                        .lock()
                        .map(|mut s| s.enqueue_input(&buf[..n]))
                        .unwrap_or(0);
                    self.stats.reads += 1;
                    self.stats.bytes_forwarded += queued as u64;
                }
                Err(_) => match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => {
                        // `EWOULDBLOCK` is `EAGAIN` on Linux. Wait for the next readiness.
                        self.state = InputState::Watching;
                        self.watch(ops);
                        return;
                    }
                    _ => {
                        self.end(ops);
                        return;
                    }
                },
            }
        }
    }

    /// The guest drained the FIFO: read again.
    fn resume(&mut self, ops: &mut EventOps) {
        match self.readiness {
            // A regular file is readable now; read it without waiting.
            Readiness::AlwaysReady => self.forward(ops),
            Readiness::Polled => {
                if self.input_space() > 0 {
                    self.state = InputState::Watching;
                    self.watch(ops);
                }
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(&self.input_ready, EventSet::IN))
            .is_err()
        {
            self.state = InputState::Ended;
            return;
        }
        match ops.add(self.fd_events()) {
            Ok(()) => self.fd_watched = true,
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                self.readiness = Readiness::AlwaysReady;
                self.forward(ops);
            }
            Err(_) => self.end(ops),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.state == InputState::Ended {
            return;
        }
        let fd = events.fd();
        let set = events.event_set();
        if fd == self.input_ready.as_raw_fd() {
            // Clear the counter so level-triggered epoll stops reporting it.
            let _ = self.input_ready.read();
            if self.state == InputState::Paused || self.readiness == Readiness::AlwaysReady {
                self.resume(ops);
            }
        } else if fd == self.fd.as_raw_fd() {
            if set.contains(EventSet::IN) {
                #[cfg(feature = "fault-injection")]
                crate::inject::device_panic("vmm-device-panic");
                // Data (possibly with a hang-up behind it): read until EOF tells the end.
                self.forward(ops);
            } else if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                // A hang-up with nothing left to read, or an error.
                self.end(ops);
            }
        }
    }
}

impl Drop for SerialInput {
    fn drop(&mut self) {
        if self.set_nonblock {
            // Clear only the flag `new` set; other flags may have changed since, through
            // another descriptor for the same open file description.
            if let Ok(flags) = status_flags(&self.fd) {
                let _ = set_status_flags(&self.fd, flags & !libc::O_NONBLOCK);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, SubscriberOps};
    use petrel_devices::BusDevice;

    /// Receive buffer register (16550 datasheet, register table, A2..A0 = 000, DLAB = 0).
    const RBR: u64 = 0;
    /// Line status register (A2..A0 = 101).
    const LSR: u64 = 5;
    /// LSR bit 0: data ready.
    const LSR_DR: u8 = 0x01;

    type Manager = EventManager<Arc<Mutex<SerialInput>>>;

    /// A pipe: the read end, and the write end as a `File`.
    fn pipe() -> (OwnedFd, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 just opened both descriptors; nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    /// Bytes waiting in the pipe that `fd` is one end of (`FIONREAD`).
    fn pipe_pending(fd: &impl AsRawFd) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int, to `n`.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        usize::try_from(n).unwrap()
    }

    /// `len` pseudo-random bytes (xorshift64), the same for the same `seed`.
    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    /// A UART with an "input ready" EventFd, and the guest's view of it.
    struct Uart {
        serial: Arc<Mutex<Serial>>,
        input_ready: EventFd,
    }

    impl Uart {
        fn new() -> Uart {
            let input_ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let serial = Serial::with_input_ready(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                Box::new(io::sink()),
                input_ready.try_clone().unwrap(),
            );
            Uart {
                serial: Arc::new(Mutex::new(serial)),
                input_ready,
            }
        }

        /// A `SerialInput` from `fd` into this UART, subscribed to a new event manager.
        fn subscribe(&self, fd: OwnedFd) -> (Manager, Arc<Mutex<SerialInput>>) {
            let ready = self.input_ready.try_clone().unwrap();
            let input = SerialInput::new(fd, self.serial.clone(), ready).unwrap();
            let input = Arc::new(Mutex::new(input));
            let mut em = Manager::new().unwrap();
            em.add_subscriber(input.clone());
            (em, input)
        }

        fn reg(&self, offset: u64) -> u8 {
            let mut b = [0u8; 1];
            self.serial.lock().unwrap().read(offset, &mut b);
            b[0]
        }

        /// What a polling guest does: read RBR while LSR says data ready, at most `max` bytes.
        fn guest_reads(&self, max: usize) -> Vec<u8> {
            let mut got = Vec::new();
            while got.len() < max && self.reg(LSR) & LSR_DR != 0 {
                got.push(self.reg(RBR));
            }
            got
        }
    }

    /// Pumps the event loop and plays the guest until the input ended; returns what arrived.
    fn receive_all(uart: &Uart, em: &mut Manager, input: &Mutex<SerialInput>) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        loop {
            em.run_with_timeout(50).unwrap();
            let ended = input.lock().unwrap().state() == InputState::Ended;
            got.extend(uart.guest_reads(usize::MAX));
            if ended {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "input not ended after 30 s; {} bytes arrived, {:?}",
                got.len(),
                input.lock().unwrap()
            );
        }
    }

    #[test]
    fn forwards_every_byte_in_order_once_and_stops_at_eof() {
        let uart = Uart::new();
        let (reader, mut writer) = pipe();
        let (mut em, input) = uart.subscribe(reader);
        let data = pseudo_random(100 * 1024, 0x5e41a1);
        let sent = data.clone();
        let feeder = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            // Dropping `writer` closes the write end: EOF for the reader.
        });

        let got = receive_all(&uart, &mut em, &input);
        feeder.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes arrived out of order or altered");

        let stats = input.lock().unwrap().stats();
        assert_eq!(stats.bytes_forwarded, data.len() as u64);
        // At most a FIFO's worth per read.
        assert!(
            stats.reads >= (data.len() / SERIAL_FIFO_SIZE) as u64,
            "{stats:?}"
        );
        assert!(stats.fifo_full_pauses > 0, "{stats:?}");

        // Stopped for good: neither the closed pipe (which would report a hang-up forever) nor
        // `input_ready` is watched.
        uart.input_ready.write(1).unwrap();
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
        assert_eq!(input.lock().unwrap().state(), InputState::Ended);
    }

    #[test]
    fn full_fifo_pauses_reading_and_input_ready_resumes_it() {
        let uart = Uart::new();
        let (reader, mut writer) = pipe();
        let (mut em, input) = uart.subscribe(reader);
        let data = pseudo_random(200, 7);
        writer.write_all(&data).unwrap();

        // One readiness: reads exactly the FIFO's room, then stops watching the pipe.
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(input.lock().unwrap().state(), InputState::Paused);
        assert_eq!(pipe_pending(&writer), 200 - SERIAL_FIFO_SIZE);
        let stats = input.lock().unwrap().stats();
        assert_eq!(stats.bytes_forwarded, SERIAL_FIFO_SIZE as u64);
        assert_eq!(stats.fifo_full_pauses, 1);
        // Paused: the readable pipe is not reported again (no busy loop).
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);

        // The guest reads part of the FIFO: no "input ready" yet, still paused.
        let mut got = uart.guest_reads(10);
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
        assert_eq!(pipe_pending(&writer), 200 - SERIAL_FIFO_SIZE);

        // The guest drains it: "input ready" fires, the pipe is watched and read again.
        got.extend(uart.guest_reads(usize::MAX));
        assert_eq!(got.len(), SERIAL_FIFO_SIZE);
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(input.lock().unwrap().state(), InputState::Watching);
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(pipe_pending(&writer), 200 - 2 * SERIAL_FIFO_SIZE);
        assert_eq!(input.lock().unwrap().stats().fifo_full_pauses, 2);

        drop(writer);
        got.extend(receive_all(&uart, &mut em, &input));
        assert_eq!(got, data);
    }

    #[test]
    fn hang_up_with_nothing_to_read_ends_the_input() {
        let uart = Uart::new();
        let (reader, writer) = pipe();
        let (mut em, input) = uart.subscribe(reader);
        drop(writer);
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(input.lock().unwrap().state(), InputState::Ended);
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
        assert_eq!(input.lock().unwrap().stats(), SerialInputStats::default());
    }

    #[test]
    fn nonblocking_mode_lasts_as_long_as_the_input() {
        let uart = Uart::new();
        let (reader, _writer) = pipe();
        // Shares the open file description, as a dup of the terminal's stdin would.
        let shared = reader.try_clone().unwrap();
        assert_eq!(status_flags(&shared).unwrap() & libc::O_NONBLOCK, 0);
        let input = SerialInput::new(
            reader,
            uart.serial.clone(),
            uart.input_ready.try_clone().unwrap(),
        )
        .unwrap();
        assert_ne!(status_flags(&shared).unwrap() & libc::O_NONBLOCK, 0);
        drop(input);
        assert_eq!(status_flags(&shared).unwrap() & libc::O_NONBLOCK, 0);

        // A descriptor that was non-blocking already stays so.
        let flags = status_flags(&shared).unwrap();
        set_status_flags(&shared, flags | libc::O_NONBLOCK).unwrap();
        let input = SerialInput::new(
            shared.try_clone().unwrap(),
            uart.serial.clone(),
            uart.input_ready.try_clone().unwrap(),
        )
        .unwrap();
        drop(input);
        assert_ne!(status_flags(&shared).unwrap() & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn a_regular_file_is_read_without_epoll() {
        let path = std::env::temp_dir().join(format!(
            "petrel-console-test-{}-regular-file",
            std::process::id()
        ));
        let data = pseudo_random(1000, 99);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        let uart = Uart::new();
        let (mut em, input) = uart.subscribe(OwnedFd::from(file));
        // Read at once on subscription, up to the FIFO's room.
        assert_eq!(input.lock().unwrap().state(), InputState::Paused);
        assert_eq!(
            input.lock().unwrap().stats().bytes_forwarded,
            SERIAL_FIFO_SIZE as u64
        );
        assert_eq!(receive_all(&uart, &mut em, &input), data);
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    }
}

//! Output that never blocks the vCPU.
//!
//! [`NonBlockingWriter`] is an `io::Write` that copies bytes into a bounded buffer and returns at
//! once; a dedicated thread drains the buffer into the real destination (stdout, a file, a
//! pipe). If the destination is slow or stuck, the buffer fills and further bytes are dropped
//! and counted, never queued without bound and never waited for. The thread is stopped, after
//! it has written what is buffered, through the [`OutputThread`] handle.
//!
//! The only wait a writer can see is the buffer's mutex, which the drain thread holds just long
//! enough to copy the buffered bytes out (at most the buffer's capacity), never across I/O.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// A buffer size that holds a few screens of console output.
pub const DEFAULT_OUTPUT_BUFFER: usize = 64 * 1024;

/// Errors from the output thread behind a [`NonBlockingWriter`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thread that drains a [`NonBlockingWriter`] could not be started.
    #[error("cannot start the output thread")]
    SpawnOutputThread(#[source] std::io::Error),
    /// The output thread panicked.
    #[error("the output thread panicked")]
    OutputThreadPanicked,
    /// The output thread did not finish writing within the time given.
    #[error("output not flushed within {timeout:?}: {pending} bytes still buffered")]
    FlushOutputTimeout {
        /// How long we waited.
        timeout: std::time::Duration,
        /// Bytes not yet taken by the thread.
        pending: usize,
    },
    /// The output destination returned an error; later output was discarded.
    #[error("cannot write to the output destination")]
    WriteOutput(#[source] std::io::Error),
}

/// How long the drain thread keeps polling for more output before it goes to sleep and asks
/// writers to wake it. While it lingers, writers only append under the lock: a guest printing a
/// byte every few microseconds costs no wake-up (a futex syscall, and an IPI to the other CPU)
/// per byte. It bounds how late a byte reaches the destination during a burst.
pub const DRAIN_LINGER: Duration = Duration::from_millis(1);

/// What the drain thread and the writers share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the drain thread: data arrived or closing was asked.
    wake: Condvar,
    /// Wakes a waiter in [`OutputThread::flush_and_join_timeout`]: the thread finished.
    finished: Condvar,
    /// Bytes dropped because the buffer was full or the thread was closing.
    dropped: AtomicU64,
    /// Bytes the destination refused (write error), discarded.
    failed: AtomicU64,
    /// Bytes written to the destination.
    written: AtomicU64,
}

struct State {
    buf: VecDeque<u8>,
    capacity: usize,
    closing: bool,
    finished: bool,
    /// The drain thread waits without a timeout and must be woken by the next write.
    drainer_asleep: bool,
    /// The destination's first error; once set, later bytes are discarded.
    error: Option<io::Error>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The drain thread does no I/O and nothing that can panic while holding the lock, so a
        // poisoned lock still guards a consistent buffer.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts kept by a [`NonBlockingWriter`] and its drain thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Bytes written to the destination.
    pub written: u64,
    /// Bytes dropped because the buffer was full (or the thread was stopping).
    pub dropped: u64,
    /// Bytes discarded because the destination returned an error.
    pub failed: u64,
}

/// An `io::Write` that never blocks on I/O: it buffers up to a fixed size and drops the rest.
///
/// Cloning gives another writer into the same buffer.
#[derive(Clone)]
pub struct NonBlockingWriter {
    shared: Arc<Shared>,
}

impl fmt::Debug for NonBlockingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonBlockingWriter")
            .field("stats", &stats(&self.shared))
            .finish()
    }
}

/// The drain thread of a [`NonBlockingWriter`]; stop it with [`flush_and_join`].
///
/// Dropping the handle without joining asks the thread to stop after it has written what is
/// buffered, and does not wait for it.
///
/// [`flush_and_join`]: OutputThread::flush_and_join
pub struct OutputThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for OutputThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputThread")
            .field("stats", &stats(&self.shared))
            .field("running", &self.thread.is_some())
            .finish()
    }
}

fn stats(shared: &Shared) -> OutputStats {
    OutputStats {
        written: shared.written.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
    }
}

impl NonBlockingWriter {
    /// Starts a drain thread called `thread_name` that writes to `dest`, with a buffer of
    /// `capacity` bytes (at least 1), allocated once here.
    pub fn spawn(
        thread_name: &str,
        dest: Box<dyn Write + Send>,
        capacity: usize,
    ) -> Result<(NonBlockingWriter, OutputThread), Error> {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: VecDeque::with_capacity(capacity),
                capacity,
                closing: false,
                finished: false,
                drainer_asleep: false,
                error: None,
            }),
            wake: Condvar::new(),
            finished: Condvar::new(),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                // Before any guest output: the embedder's hook (the binary's seccomp filter).
                petrel_thread_hook::thread_started(petrel_thread_hook::ThreadKind::Console);
                drain(&for_thread, dest, capacity)
            })
            .map_err(Error::SpawnOutputThread)?;
        Ok((
            NonBlockingWriter {
                shared: shared.clone(),
            },
            OutputThread {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Counts so far.
    pub fn stats(&self) -> OutputStats {
        stats(&self.shared)
    }
}

impl Write for NonBlockingWriter {
    /// Buffers what fits, drops and counts the rest, and always reports the whole `buf` as
    /// written: dropping is the policy, not an error for the caller to retry.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = self.shared.lock();
        // Wake the drain thread only when it has gone to sleep (see DRAIN_LINGER): one wake
        // per burst of output instead of one per byte.
        let wake = st.drainer_asleep;
        let taken = if st.closing {
            0
        } else {
            let room = st.capacity.saturating_sub(st.buf.len());
            let n = room.min(buf.len());
            st.buf.extend(&buf[..n]);
            n
        };
        if taken > 0 && wake {
            st.drainer_asleep = false;
            drop(st);
            self.shared.wake.notify_one();
        } else {
            drop(st);
        }
        let lost = buf.len() - taken;
        if lost > 0 {
            self.shared
                .dropped
                .fetch_add(lost as u64, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    /// Returns at once: waiting for the destination is exactly what this type avoids.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The drain thread's body.
fn drain(shared: &Shared, mut dest: Box<dyn Write + Send>, capacity: usize) {
    let mut chunk: Vec<u8> = Vec::with_capacity(capacity);
    let mut broken = false;
    loop {
        let mut st = shared.lock();
        if st.buf.is_empty() && !st.closing {
            // Linger: more output usually follows within microseconds.
            st = shared
                .wake
                .wait_timeout(st, DRAIN_LINGER)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        while st.buf.is_empty() && !st.closing {
            st.drainer_asleep = true;
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.drainer_asleep = false;
        if st.buf.is_empty() {
            // Closing and nothing left.
            break;
        }
        let (a, b) = st.buf.as_slices();
        chunk.extend_from_slice(a);
        chunk.extend_from_slice(b);
        st.buf.clear();
        drop(st);

        let n = chunk.len() as u64;
        if broken {
            shared.failed.fetch_add(n, Ordering::Relaxed);
        } else {
            match dest.write_all(&chunk).and_then(|()| dest.flush()) {
                Ok(()) => {
                    shared.written.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    broken = true;
                    shared.failed.fetch_add(n, Ordering::Relaxed);
                    shared.lock().error = Some(e);
                }
            }
        }
        chunk.clear();
    }
    if !broken {
        if let Err(e) = dest.flush() {
            shared.lock().error = Some(e);
        }
    }
    shared.lock().finished = true;
    shared.finished.notify_all();
}

impl OutputThread {
    /// Counts so far.
    pub fn stats(&self) -> OutputStats {
        stats(&self.shared)
    }

    /// Bytes buffered and not yet taken by the drain thread.
    pub fn pending(&self) -> usize {
        self.shared.lock().buf.len()
    }

    fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
    }

    /// Stops accepting bytes, waits for the thread to write everything buffered, and joins it.
    ///
    /// Waits as long as the destination takes; see [`flush_and_join_timeout`] for a bound.
    ///
    /// [`flush_and_join_timeout`]: OutputThread::flush_and_join_timeout
    pub fn flush_and_join(mut self) -> Result<OutputStats, Error> {
        self.close();
        self.join()
    }

    /// Like [`flush_and_join`](OutputThread::flush_and_join), but gives up after `timeout` if
    /// the destination is stuck; the thread is then left to finish (or block) on its own.
    pub fn flush_and_join_timeout(mut self, timeout: Duration) -> Result<OutputStats, Error> {
        self.close();
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .finished
            .wait_timeout_while(st, timeout, |st| !st.finished)
            .unwrap_or_else(|p| p.into_inner());
        if !st.finished {
            let pending = st.buf.len();
            drop(st);
            // Detach: joining would block on the stuck destination.
            drop(self.thread.take());
            return Err(Error::FlushOutputTimeout { timeout, pending });
        }
        drop(st);
        self.join()
    }

    fn join(&mut self) -> Result<OutputStats, Error> {
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| Error::OutputThreadPanicked)?;
        }
        match self.shared.lock().error.take() {
            Some(e) => Err(Error::WriteOutput(e)),
            None => Ok(self.stats()),
        }
    }
}

impl Drop for OutputThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A destination that appends to a shared Vec.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A destination that blocks each write until the test sends a token (or drops the sender).
    struct Gate {
        go: mpsc::Receiver<()>,
        out: Sink,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.go.recv();
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A destination that always fails.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_until(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached in 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn bytes_reach_the_destination_and_join_flushes() {
        let sink = Sink::default();
        let (mut w, t) =
            NonBlockingWriter::spawn("test-out", Box::new(sink.clone()), 1024).unwrap();
        w.write_all(b"hello, ").unwrap();
        w.write_all(b"world\n").unwrap();
        let stats = t.flush_and_join().unwrap();
        assert_eq!(&*sink.0.lock().unwrap(), b"hello, world\n");
        assert_eq!(
            stats,
            OutputStats {
                written: 13,
                dropped: 0,
                failed: 0
            }
        );
        // After the thread stopped, writes are dropped and counted, and still never block.
        assert_eq!(w.write(b"late").unwrap(), 4);
        assert_eq!(w.stats().dropped, 4);
    }

    #[test]
    fn full_buffer_drops_and_counts_without_blocking() {
        let (go, rx) = mpsc::channel();
        let out = Sink::default();
        let gate = Gate {
            go: rx,
            out: out.clone(),
        };
        let (mut w, t) = NonBlockingWriter::spawn("test-out", Box::new(gate), 8).unwrap();

        // The thread takes "a" and blocks in the destination's write.
        w.write_all(b"a").unwrap();
        wait_until(|| t.pending() == 0);

        // Eight more fit in the buffer, the other twelve are dropped; the call returns at once.
        let start = Instant::now();
        assert_eq!(w.write(b"0123456789abcdefghij").unwrap(), 20);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(t.pending(), 8);
        assert_eq!(w.stats().dropped, 12);

        // Let the destination go; join writes what was buffered.
        drop(go);
        let stats = t.flush_and_join().unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"a01234567");
        assert_eq!(stats.written, 9);
        assert_eq!(stats.dropped, 12);
    }

    #[test]
    fn stuck_destination_times_out_instead_of_hanging() {
        let (go, rx) = mpsc::channel();
        let gate = Gate {
            go: rx,
            out: Sink::default(),
        };
        let (mut w, t) = NonBlockingWriter::spawn("test-out", Box::new(gate), 8).unwrap();
        w.write_all(b"a").unwrap();
        wait_until(|| t.pending() == 0);
        w.write_all(b"bc").unwrap();

        let err = t
            .flush_and_join_timeout(Duration::from_millis(50))
            .unwrap_err();
        assert!(
            matches!(err, Error::FlushOutputTimeout { pending: 2, .. }),
            "{err}"
        );
        // Unblock the detached thread so it can finish.
        drop(go);
    }

    #[test]
    fn destination_errors_are_counted_and_reported_at_join() {
        let (mut w, t) = NonBlockingWriter::spawn("test-out", Box::new(Broken), 16).unwrap();
        w.write_all(b"xyz").unwrap();
        wait_until(|| w.stats().failed == 3);
        w.write_all(b"more").unwrap();
        let err = t.flush_and_join().unwrap_err();
        assert!(matches!(err, Error::WriteOutput(_)), "{err}");
        assert_eq!(w.stats().failed, 7);
        assert_eq!(w.stats().written, 0);
    }
}

//! The API server: HTTP/1.1 on a Unix domain socket, on its own thread (`fc_api`, the name of
//! Firecracker's API thread) with its own epoll loop.
//!
//! The loop never blocks on a client: sockets are non-blocking, a connection's input is bounded
//! by [`MAX_REQUEST_BYTES`] and its output by one response (it reads nothing more until that
//! response is written), at most [`MAX_CONNECTIONS`] are open at once, and a request that takes
//! longer than [`REQUEST_TIMEOUT`] to arrive, or a connection idle for [`IDLE_TIMEOUT`], is
//! closed. Requests are handed to the handler one at a time, in the order they complete; a
//! problem on one connection closes that connection only.
//!
//! The socket file exists while the server runs: binding refuses an existing path (as
//! Firecracker does), and [`ApiServer::shutdown`] or dropping the server removes it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::http::{
    parse_request, ParseOutcome, Request, Response, CONTINUE_RESPONSE, MAX_REQUEST_BYTES,
};

/// The most client connections open at once; a client beyond them is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a request may take from its first byte to its last, and how long a client may take
/// to read a response, before its connection is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay open with no request in progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the server's thread, Firecracker's name for its API thread.
pub const API_THREAD_NAME: &str = "fc_api";

/// How long the listener rests after `accept` fails for want of resources (file descriptors,
/// memory), instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 4096;

/// Epoll tokens; connections get the ones above these.
const LISTENER_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;
const FIRST_CONNECTION_TOKEN: u64 = 2;

/// The request handler: called on the server thread with each complete request, one at a time.
pub type Handler = Box<dyn FnMut(Request) -> Response + Send>;

/// The server's timeouts ([`REQUEST_TIMEOUT`] and [`IDLE_TIMEOUT`] by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From a request's first byte to its last, and for a client to read a response.
    pub request: Duration,
    /// With no request in progress.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            request: REQUEST_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// Why the server cannot start, or why it stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Something already exists at the socket path.
    #[error("the API socket path {} already exists; remove it or choose another path", .0.display())]
    PathExists(PathBuf),
    /// The socket cannot be created at the path.
    #[error("cannot bind the API socket at {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error from `bind`.
        source: io::Error,
    },
    /// The epoll instance, the stop event or the socket's settings could not be set up.
    #[error("cannot set up the API server: {0}")]
    Setup(io::Error),
    /// The thread could not be started.
    #[error("cannot start the API server thread: {0}")]
    Spawn(io::Error),
    /// The thread could not be told to stop.
    #[error("cannot stop the API server thread: {0}")]
    Stop(io::Error),
    /// The event loop failed (`epoll_wait` or `epoll_ctl` on the listener).
    #[error("the API server's event loop failed: {0}")]
    EventLoop(io::Error),
    /// The thread panicked.
    #[error("the API server thread panicked")]
    Panicked,
}

/// A running API server: its thread, and the socket file it removes when it stops.
#[derive(Debug)]
pub struct ApiServer {
    thread: Option<JoinHandle<Result<(), ServerError>>>,
    stop: EventFd,
    accepting_since: Instant,
    // Dropped after `Drop::drop` has joined the thread.
    socket: SocketFile,
}

/// Binds a listening socket at `path` so that the file appears only once the socket listens:
/// bound and listening under a temporary name beside it, then hard-linked into place (which
/// fails if `path` appeared meanwhile: nobody else's file is ever replaced). A client that
/// connects as soon as it sees the file is never refused. Where the temporary name would not
/// fit in a socket address, or is taken, it binds at `path` directly.
fn bind_listening(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_direct = |path: &Path| match UnixListener::bind(path) {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(ServerError::PathExists(path.to_path_buf()))
        }
        Err(source) => Err(ServerError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let Ok(listener) = UnixListener::bind(&tmp) else {
        return bind_direct(path);
    };
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(ServerError::PathExists(path.to_path_buf()))
        }
        Err(source) => Err(ServerError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A listening API socket whose server thread has not started yet: clients can connect (the
/// kernel queues them) and are served once [`ApiSocket::serve`] starts the thread. Binding
/// first lets a VMM make its socket available as early as it can, before the set-up that must
/// precede any thread (blocking signals, say). Dropping it removes the socket file.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    accepting_since: Instant,
    socket: SocketFile,
}

impl ApiSocket {
    /// Binds and listens at `path` (an existing path is an error: [`ServerError::PathExists`]).
    pub fn bind(path: impl AsRef<Path>) -> Result<ApiSocket, ServerError> {
        let path = path.as_ref().to_path_buf();
        if fs::symlink_metadata(&path).is_ok() {
            return Err(ServerError::PathExists(path));
        }
        let listener = bind_listening(&path)?;
        // Clients can connect from here on; they are served once the thread runs.
        let accepting_since = Instant::now();
        let metadata = fs::symlink_metadata(&path).map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        // From here on the file is ours, and removed if anything below fails.
        let socket = SocketFile {
            path,
            id: (metadata.dev(), metadata.ino()),
        };
        Ok(ApiSocket {
            listener,
            accepting_since,
            socket,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Starts the server thread with the default [`Timeouts`].
    pub fn serve<H>(self, handler: H) -> Result<ApiServer, ServerError>
    where
        H: FnMut(Request) -> Response + Send + 'static,
    {
        self.serve_with_timeouts(handler, Timeouts::default())
    }

    /// Starts the server thread (named [`API_THREAD_NAME`]) answering with `handler`.
    pub fn serve_with_timeouts<H>(
        self,
        handler: H,
        timeouts: Timeouts,
    ) -> Result<ApiServer, ServerError>
    where
        H: FnMut(Request) -> Response + Send + 'static,
    {
        let ApiSocket {
            listener,
            accepting_since,
            socket,
        } = self;
        listener.set_nonblocking(true).map_err(ServerError::Setup)?;
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(ServerError::Setup)?;
        let event_loop = EventLoop::new(
            listener,
            stop.try_clone().map_err(ServerError::Setup)?,
            Box::new(handler),
            timeouts,
        )?;
        let thread = std::thread::Builder::new()
            .name(API_THREAD_NAME.to_string())
            .spawn(move || {
                // Before any client is read: the embedder's hook (the binary's seccomp filter).
                petrel_thread_hook::thread_started(petrel_thread_hook::ThreadKind::Api);
                event_loop.run()
            })
            .map_err(ServerError::Spawn)?;
        Ok(ApiServer {
            thread: Some(thread),
            stop,
            accepting_since,
            socket,
        })
    }
}

impl ApiServer {
    /// Binds a socket at `path` and serves it on a new thread with `handler` and the default
    /// [`Timeouts`]. Fails, naming the path, if something already exists there.
    pub fn spawn<H>(path: impl AsRef<Path>, handler: H) -> Result<ApiServer, ServerError>
    where
        H: FnMut(Request) -> Response + Send + 'static,
    {
        ApiServer::spawn_with_timeouts(path, handler, Timeouts::default())
    }

    /// [`ApiServer::spawn`] with other timeouts.
    pub fn spawn_with_timeouts<H>(
        path: impl AsRef<Path>,
        handler: H,
        timeouts: Timeouts,
    ) -> Result<ApiServer, ServerError>
    where
        H: FnMut(Request) -> Response + Send + 'static,
    {
        ApiSocket::bind(path)?.serve_with_timeouts(handler, timeouts)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// When the socket was bound and listening: clients could connect from then on.
    pub fn accepting_since(&self) -> Instant {
        self.accepting_since
    }

    /// Whether the server thread has ended (it only ends by itself on an event-loop error,
    /// which [`ApiServer::shutdown`] then returns).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread, closing every connection, waits for it, and removes the socket file.
    /// Returns the error the event loop stopped on, if it stopped by itself.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop_thread()
        // `self` is dropped here: the socket file goes.
    }

    fn stop_thread(&mut self) -> Result<(), ServerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.write(1).map_err(ServerError::Stop)?;
        thread.join().map_err(|_| ServerError::Panicked)?
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Nothing to report to from here; `shutdown` returns the same result.
        let _ = self.stop_thread();
    }
}

/// The socket file, removed on drop if it is still the one the server created (not a file
/// someone put at the path since).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    /// Device and inode numbers.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(metadata) = fs::symlink_metadata(&self.path) {
            if (metadata.dev(), metadata.ino()) == self.id {
                // A failure leaves a stale file that the next bind reports by name.
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// What a connection waits for next.
enum Next {
    /// Readiness of these kinds.
    Wait(EventSet),
    /// Nothing: close it.
    Close,
}

/// One client connection's state.
struct Connection {
    stream: UnixStream,
    /// Bytes received and not yet consumed by a request (at most [`MAX_REQUEST_BYTES`]).
    input: Vec<u8>,
    /// Bytes to send: at most one response (or a `100 Continue`).
    output: Vec<u8>,
    /// How much of `output` is sent.
    sent: usize,
    /// Whether `100 Continue` went out for the request in progress.
    continue_sent: bool,
    /// Close once `output` is sent (`Connection: close`, or an error).
    close_after_output: bool,
    /// The client shut down its sending side.
    peer_closed: bool,
    /// When the first byte of the request in progress arrived.
    request_started: Option<Instant>,
    /// The last read or write that moved bytes.
    last_progress: Instant,
    /// What epoll watches for.
    interest: EventSet,
}

impl Connection {
    fn new(stream: UnixStream, now: Instant) -> Connection {
        Connection {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            continue_sent: false,
            close_after_output: false,
            peer_closed: false,
            request_started: None,
            last_progress: now,
            interest: EventSet::IN,
        }
    }

    fn output_pending(&self) -> bool {
        self.sent < self.output.len()
    }

    /// When the connection is closed if nothing happens.
    fn deadline(&self, timeouts: &Timeouts) -> Instant {
        if self.output_pending() {
            self.last_progress + timeouts.request
        } else if let Some(started) = self.request_started {
            started + timeouts.request
        } else {
            self.last_progress + timeouts.idle
        }
    }

    /// Reads what the socket has, up to [`MAX_REQUEST_BYTES`] buffered.
    fn read_available(&mut self) -> io::Result<()> {
        while !self.peer_closed && self.input.len() < MAX_REQUEST_BYTES {
            let start = self.input.len();
            let room = READ_CHUNK.min(MAX_REQUEST_BYTES - start);
            self.input.resize(start + room, 0);
            let result = self.stream.read(&mut self.input[start..]);
            let received = match result {
                Ok(received) => received,
                Err(e) => {
                    self.input.truncate(start);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(()),
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(e),
                    }
                }
            };
            self.input.truncate(start + received);
            if received == 0 {
                self.peer_closed = true;
            } else {
                let now = Instant::now();
                self.last_progress = now;
                if start == 0 {
                    self.request_started = Some(now);
                }
            }
        }
        Ok(())
    }

    /// Sends what it can of `output`.
    fn flush(&mut self) -> io::Result<()> {
        while self.output_pending() {
            match petrel_util::send_nosignal(&self.stream, &self.output[self.sent..], 0) {
                Ok(sent) => {
                    self.sent += sent;
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.sent = 0;
        Ok(())
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Handles the request at the front of `input`, if it is complete and nothing is waiting to
    /// be sent. Returns whether it queued anything.
    fn process(&mut self, handler: &mut Handler) -> bool {
        if self.output_pending() || self.close_after_output {
            return false;
        }
        match parse_request(&self.input) {
            ParseOutcome::Complete {
                request,
                consumed,
                keep_alive,
            } => {
                self.input.drain(..consumed);
                self.continue_sent = false;
                let response = catch_unwind(AssertUnwindSafe(|| handler(request)));
                let now = Instant::now();
                // A pipelined request that follows has been arriving since now at the latest.
                self.request_started = (!self.input.is_empty()).then_some(now);
                self.last_progress = now;
                match response {
                    Ok(response) => {
                        self.queue(&response.serialize(keep_alive));
                        self.close_after_output |= !keep_alive;
                    }
                    Err(_) => {
                        let fault = Response::fault_with_status(
                            500,
                            "internal error: the API request handler panicked",
                        );
                        self.queue(&fault.serialize(false));
                        self.close_after_output = true;
                    }
                }
                true
            }
            ParseOutcome::Incomplete { expects_continue } => {
                if expects_continue && !self.continue_sent {
                    self.continue_sent = true;
                    self.queue(CONTINUE_RESPONSE);
                    true
                } else {
                    false
                }
            }
            ParseOutcome::Error(e) => {
                self.input.clear();
                self.queue(&e.to_response().serialize(false));
                self.close_after_output = true;
                true
            }
        }
    }

    /// Reads, answers and writes as far as the socket allows without blocking.
    fn drive(&mut self, handler: &mut Handler) -> Next {
        if !self.output_pending() && !self.close_after_output && self.read_available().is_err() {
            return Next::Close;
        }
        // Flush first: complete requests may be waiting in `input` behind a response that the
        // client has only now made room for.
        loop {
            if self.flush().is_err() {
                return Next::Close;
            }
            if self.output_pending() {
                return Next::Wait(EventSet::OUT);
            }
            if self.close_after_output {
                return Next::Close;
            }
            if !self.process(handler) {
                break;
            }
        }
        // Everything complete is answered; a client that stopped sending gets nothing more.
        // (`input` cannot fill up with an incomplete request: the parser refuses a request
        // longer than MAX_REQUEST_BYTES before that.)
        if self.peer_closed {
            Next::Close
        } else {
            Next::Wait(EventSet::IN)
        }
    }
}

/// The server thread's state.
struct EventLoop {
    epoll: Epoll,
    listener: UnixListener,
    /// The descriptor epoll watches for the stop request, kept open as long as it is watched.
    _stop: EventFd,
    handler: Handler,
    timeouts: Timeouts,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    /// Set while the listener rests after a failed `accept`.
    accept_paused_until: Option<Instant>,
}

impl EventLoop {
    fn new(
        listener: UnixListener,
        stop: EventFd,
        handler: Handler,
        timeouts: Timeouts,
    ) -> Result<EventLoop, ServerError> {
        let epoll = Epoll::new().map_err(ServerError::Setup)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(ServerError::Setup)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(ServerError::Setup)?;
        Ok(EventLoop {
            epoll,
            listener,
            _stop: stop,
            handler,
            timeouts,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION_TOKEN,
            accept_paused_until: None,
        })
    }

    fn run(mut self) -> Result<(), ServerError> {
        // Room for every connection, the listener and the stop event in one wait.
        let mut events = vec![EpollEvent::default(); MAX_CONNECTIONS + 2];
        loop {
            let timeout = self.wait_timeout_ms(Instant::now());
            let count = match self.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::EventLoop(e)),
            };
            let mut listener_ready = false;
            for event in &events[..count] {
                match event.data() {
                    STOP_TOKEN => return Ok(()),
                    LISTENER_TOKEN => listener_ready = true,
                    token => self.serve(token),
                }
            }
            // After the connections, so that those whose clients left are gone first.
            if listener_ready {
                self.accept_all()?;
            }
            self.expire(Instant::now())?;
        }
    }

    /// Milliseconds until the earliest deadline (rounded up), or -1 for none.
    fn wait_timeout_ms(&self, now: Instant) -> i32 {
        let earliest = self
            .connections
            .values()
            .map(|connection| connection.deadline(&self.timeouts))
            .chain(self.accept_paused_until)
            .min();
        match earliest {
            None => -1,
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now);
                let ms = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        }
    }

    fn serve(&mut self, token: u64) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        match connection.drive(&mut self.handler) {
            Next::Close => self.close(token),
            Next::Wait(interest) => {
                if interest != connection.interest {
                    let event = EpollEvent::new(interest, token);
                    let fd = connection.stream.as_raw_fd();
                    if self.epoll.ctl(ControlOperation::Modify, fd, event).is_err() {
                        self.close(token);
                    } else {
                        connection.interest = interest;
                    }
                }
            }
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(connection) = self.connections.remove(&token) {
            // Closing the descriptor (dropping the stream) removes it from epoll anyway.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                connection.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn accept_all(&mut self) -> Result<(), ServerError> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(()),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    // Out of descriptors or memory: rest rather than spin.
                    _ => return self.pause_accepting(),
                },
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                self.reap();
            }
            if self.connections.len() >= MAX_CONNECTIONS {
                refuse(&stream);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let event = EpollEvent::new(EventSet::IN, token);
            if self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), event)
                .is_ok()
            {
                let connection = Connection::new(stream, Instant::now());
                self.connections.insert(token, connection);
            }
        }
    }

    /// Serves every connection once, so that those whose clients have gone are closed.
    fn reap(&mut self) {
        let tokens: Vec<u64> = self.connections.keys().copied().collect();
        for token in tokens {
            self.serve(token);
        }
    }

    fn pause_accepting(&mut self) -> Result<(), ServerError> {
        self.epoll
            .ctl(
                ControlOperation::Modify,
                self.listener.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), LISTENER_TOKEN),
            )
            .map_err(ServerError::EventLoop)?;
        self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
        Ok(())
    }

    /// Closes the connections past their deadline, and wakes the listener after a rest.
    fn expire(&mut self, now: Instant) -> Result<(), ServerError> {
        let expired: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.deadline(&self.timeouts) <= now)
            .map(|(&token, _)| token)
            .collect();
        for token in expired {
            self.close(token);
        }
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
            self.epoll
                .ctl(
                    ControlOperation::Modify,
                    self.listener.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
                )
                .map_err(ServerError::EventLoop)?;
        }
        Ok(())
    }
}

/// Tells a client beyond [`MAX_CONNECTIONS`] why it is turned away (if its socket takes the
/// bytes at once), before the stream is dropped and closed.
fn refuse(stream: &UnixStream) {
    let fault = Response::fault_with_status(
        503,
        format!("too many connections to the API socket (the limit is {MAX_CONNECTIONS})"),
    );
    if stream.set_nonblocking(true).is_ok() {
        // Best effort: the connection is closed either way.
        let _ = petrel_util::send_nosignal(stream, &fault.serialize(false), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::Shutdown;
    use std::thread;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::http::{Method, MAX_PAYLOAD_SIZE};

    /// Generous: only a broken server makes a client wait this long.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The length of the answer to `/large`.
    const LARGE_REPLY: usize = 1 << 20;

    /// Answers with what it received; `/panic` panics; `/large` is answered with a long string.
    fn echo(request: Request) -> Response {
        if request.path == "/panic" {
            panic!("the test handler panics on request");
        }
        if request.path == "/large" {
            // More than a socket's buffer.
            return Response::json(200, format!("\"{}\"", "y".repeat(LARGE_REPLY)));
        }
        let method = match &request.method {
            Method::Get => "GET".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(other) => other.clone(),
        };
        let body = serde_json::json!({
            "method": method,
            "path": request.path,
            "body": String::from_utf8_lossy(&request.body),
        });
        Response::json(200, body.to_string())
    }

    fn temp_dir() -> TempDir {
        TempDir::new_with_prefix(std::env::temp_dir().join("petrel-api-")).unwrap()
    }

    fn start(dir: &TempDir) -> ApiServer {
        ApiServer::spawn(dir.as_path().join("api.sock"), echo).unwrap()
    }

    fn connect(server: &ApiServer) -> UnixStream {
        let stream = UnixStream::connect(server.path()).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        close: bool,
        body: String,
    }

    impl Reply {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    /// A client's buffered reader of responses.
    struct Client {
        stream: UnixStream,
        buf: Vec<u8>,
    }

    impl Client {
        fn new(server: &ApiServer) -> Client {
            Client {
                stream: connect(server),
                buf: Vec::new(),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).unwrap();
        }

        /// The next response, or `None` at end of stream.
        fn reply(&mut self) -> Option<Reply> {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut response = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(head) = response.parse(&self.buf).unwrap() {
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    };
                    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                    let close = header("connection").as_deref() == Some("close");
                    let status = response.code.unwrap();
                    if self.buf.len() >= head + length {
                        let body = String::from_utf8(self.buf[head..head + length].to_vec());
                        self.buf.drain(..head + length);
                        return Some(Reply {
                            status,
                            close,
                            body: body.unwrap(),
                        });
                    }
                }
                let mut chunk = [0u8; 4096];
                let read = self.stream.read(&mut chunk).unwrap();
                if read == 0 {
                    assert!(self.buf.is_empty(), "partial response: {:?}", self.buf);
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..read]);
            }
        }

        fn round_trip(&mut self, request: &[u8]) -> Reply {
            self.send(request);
            self.reply().unwrap()
        }

        /// Asserts that the server has closed the connection (and sent nothing more).
        fn assert_closed(&mut self) {
            assert!(self.reply().is_none());
        }
    }

    fn get(server: &ApiServer, path: &str) -> Reply {
        Client::new(server).round_trip(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
    }

    #[test]
    fn round_trip() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        let reply = client.round_trip(
            b"PUT /drives/rootfs?x=y HTTP/1.1\r\nHost: localhost\r\nContent-Length: 16\r\n\r\n\
              {\"drive_id\":\"a\"}",
        );
        assert_eq!((reply.status, reply.close), (200, false));
        assert_eq!(
            reply.json(),
            serde_json::json!({"method": "PUT", "path": "/drives/rootfs", "body": "{\"drive_id\":\"a\"}"})
        );
        server.shutdown().unwrap();
    }

    #[test]
    fn keep_alive_and_pipelining() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        assert_eq!(
            client.round_trip(b"GET /a HTTP/1.1\r\n\r\n").json()["path"],
            "/a"
        );
        assert_eq!(
            client.round_trip(b"GET /b HTTP/1.1\r\n\r\n").json()["path"],
            "/b"
        );
        // Two requests in one write, then one that asks to close.
        client.send(b"PATCH /c HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /d HTTP/1.1\r\n\r\n");
        assert_eq!(client.reply().unwrap().json()["body"], "{}");
        assert_eq!(client.reply().unwrap().json()["path"], "/d");
        let last = client.round_trip(b"GET /e HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(last.close);
        client.assert_closed();
    }

    #[test]
    fn pipelined_requests_behind_a_slowly_read_response_are_served() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        let count = 20;
        let mut request =
            format!("PUT /big HTTP/1.1\r\nContent-Length: {MAX_PAYLOAD_SIZE}\r\n\r\n").into_bytes();
        request.resize(request.len() + MAX_PAYLOAD_SIZE, b'x');
        // About 2 MiB of requests and as much of responses: more than the sockets buffer, so the
        // server has to wait to write while complete requests wait in its input.
        let mut writer = client.stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            for _ in 0..count {
                writer.write_all(&request).unwrap();
            }
        });
        for _ in 0..count {
            let reply = client.reply().unwrap();
            assert_eq!(
                reply.json()["body"].as_str().map(str::len),
                Some(MAX_PAYLOAD_SIZE)
            );
        }
        sender.join().unwrap();
    }

    #[test]
    fn pipelined_requests_wait_for_a_long_response_to_be_read() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        client.send(&b"GET /large HTTP/1.1\r\n\r\n".repeat(3));
        // Let the server fill the socket and wait to write, with two requests in its input.
        thread::sleep(Duration::from_millis(50));
        for _ in 0..3 {
            assert_eq!(client.reply().unwrap().body.len(), LARGE_REPLY + 2);
        }
    }

    #[test]
    fn answers_then_closes_a_half_closed_client() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        client.send(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        client.stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(client.reply().unwrap().json()["path"], "/a");
        assert_eq!(client.reply().unwrap().json()["path"], "/b");
        client.assert_closed();
    }

    #[test]
    fn sends_100_continue_before_the_body() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        client.send(b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(client.reply().unwrap().status, 100);
        let reply = client.round_trip(b"{}");
        assert_eq!(
            (reply.status, reply.json()["body"].as_str()),
            (200, Some("{}"))
        );
    }

    #[test]
    fn many_connections_opened_and_dropped() {
        let dir = temp_dir();
        let server = start(&dir);
        for i in 0..700 {
            let mut stream = connect(&server);
            match i % 3 {
                0 => {}
                1 => stream.write_all(b"GET /half").unwrap(),
                _ => stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap(),
            }
        }
        // 300 more from several threads, up to 100 open at once (beyond MAX_CONNECTIONS: the
        // extra ones are answered 503 or closed).
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let path = server.path().to_path_buf();
                thread::spawn(move || {
                    for _ in 0..3 {
                        let held: Vec<UnixStream> = (0..25)
                            .map(|_| UnixStream::connect(&path).unwrap())
                            .collect();
                        drop(held);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(get(&server, "/still-here").json()["path"], "/still-here");
        server.shutdown().unwrap();
    }

    #[test]
    fn refuses_connections_beyond_the_limit_then_recovers() {
        let dir = temp_dir();
        let server = start(&dir);
        // Each one answered, so each is registered before the next.
        let mut clients: Vec<Client> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut client = Client::new(&server);
                assert_eq!(client.round_trip(b"GET / HTTP/1.1\r\n\r\n").status, 200);
                client
            })
            .collect();
        let mut extra = Client::new(&server);
        let refused = extra.reply().unwrap();
        assert_eq!(refused.status, 503);
        assert!(refused.json()["fault_message"]
            .as_str()
            .is_some_and(|m| m.contains("64")));
        extra.assert_closed();
        // The held ones still work; once one goes, a new client gets its place.
        assert_eq!(
            clients[0].round_trip(b"GET /0 HTTP/1.1\r\n\r\n").status,
            200
        );
        clients.pop();
        assert_eq!(get(&server, "/new").status, 200);
    }

    #[test]
    fn garbage_closes_that_connection_only() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut bystander = Client::new(&server);
        let mut client = Client::new(&server);
        let reply = client.round_trip(b"\x00\x01\x02 garbage\r\n\r\n");
        assert_eq!((reply.status, reply.close), (400, true));
        assert!(reply.json()["fault_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("malformed request")));
        client.assert_closed();
        assert_eq!(
            bystander.round_trip(b"GET /ok HTTP/1.1\r\n\r\n").status,
            200
        );
        assert_eq!(get(&server, "/next").status, 200);
    }

    #[test]
    fn oversize_body_is_refused_with_a_fault_message() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        let head = format!(
            "PUT /drives/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_PAYLOAD_SIZE + 1
        );
        let reply = client.round_trip(head.as_bytes());
        assert_eq!((reply.status, reply.close), (400, true));
        let message = reply.json()["fault_message"].as_str().map(str::to_string);
        assert!(message.is_some_and(|m| m.contains("51200")));
        client.assert_closed();

        // The largest body allowed goes through.
        let mut request =
            format!("PUT /big HTTP/1.1\r\nContent-Length: {MAX_PAYLOAD_SIZE}\r\n\r\n").into_bytes();
        request.resize(request.len() + MAX_PAYLOAD_SIZE, b'x');
        let reply = Client::new(&server).round_trip(&request);
        assert_eq!(
            reply.json()["body"].as_str().map(str::len),
            Some(MAX_PAYLOAD_SIZE)
        );
    }

    #[test]
    fn a_slow_client_does_not_block_others() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut slow = Client::new(&server);
        let request = b"GET /slow HTTP/1.1\r\n\r\n";
        for (i, byte) in request.iter().enumerate() {
            slow.send(&[*byte]);
            if i % 5 == 0 {
                // Another client is served while the slow request is half sent.
                assert_eq!(get(&server, "/fast").json()["path"], "/fast");
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The slow client was kept, and is answered too.
        assert_eq!(slow.reply().unwrap().json()["path"], "/slow");
    }

    #[test]
    fn slow_and_idle_connections_time_out() {
        let dir = temp_dir();
        let timeouts = Timeouts {
            request: Duration::from_millis(200),
            idle: Duration::from_millis(400),
        };
        let server =
            ApiServer::spawn_with_timeouts(dir.as_path().join("api.sock"), echo, timeouts).unwrap();
        let started = Instant::now();
        let mut slow = Client::new(&server);
        slow.send(b"GET /never-finis");
        let mut idle = Client::new(&server);
        let mut answered = Client::new(&server);
        assert_eq!(answered.round_trip(b"GET / HTTP/1.1\r\n\r\n").status, 200);
        slow.assert_closed();
        assert!(started.elapsed() >= timeouts.request);
        idle.assert_closed();
        answered.assert_closed();
        assert!(started.elapsed() >= timeouts.idle);
        assert_eq!(get(&server, "/after").status, 200);
    }

    #[test]
    fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let dir = temp_dir();
        let server = start(&dir);
        let mut client = Client::new(&server);
        let reply = client.round_trip(b"GET /panic HTTP/1.1\r\n\r\n");
        assert_eq!((reply.status, reply.close), (500, true));
        client.assert_closed();
        assert_eq!(get(&server, "/after").status, 200);
        server.shutdown().unwrap();
    }

    #[test]
    fn the_socket_file_lives_as_long_as_the_server() {
        let dir = temp_dir();
        let path = dir.as_path().join("api.sock");
        let server = ApiServer::spawn(&path, echo).unwrap();
        assert!(path.exists());
        assert!(server.accepting_since() <= Instant::now());
        assert!(!server.is_finished());
        let mut client = Client::new(&server);
        assert_eq!(client.round_trip(b"GET / HTTP/1.1\r\n\r\n").status, 200);
        server.shutdown().unwrap();
        assert!(!path.exists());
        // Open connections are closed with it.
        client.assert_closed();

        let server = ApiServer::spawn(&path, echo).unwrap();
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn binding_to_an_existing_path_fails_naming_it() {
        let dir = temp_dir();
        let path = dir.as_path().join("api.sock");
        let server = ApiServer::spawn(&path, echo).unwrap();
        let e = ApiServer::spawn(&path, echo).unwrap_err();
        assert!(matches!(e, ServerError::PathExists(_)));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        // The running server is not disturbed.
        assert_eq!(get(&server, "/").status, 200);
        drop(server);

        // A file that is not ours is left alone.
        fs::write(&path, b"not a socket").unwrap();
        let e = ApiServer::spawn(&path, echo).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");

        let missing = dir.as_path().join("no-such-dir").join("api.sock");
        let e = ApiServer::spawn(&missing, echo).unwrap_err();
        assert!(matches!(e, ServerError::Bind { .. }));
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn the_thread_is_named_like_firecrackers() {
        let dir = temp_dir();
        let _server = start(&dir);
        // A new thread starts with its parent's name and sets its own once it runs, which on
        // a loaded host can be after `spawn` returned: look until it has, for up to 5 s.
        let api_thread_named = || -> Result<(), Vec<String>> {
            let names: Vec<String> = fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .collect();
            if names.iter().any(|name| name.trim() == API_THREAD_NAME) {
                Ok(())
            } else {
                Err(names)
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut named = api_thread_named();
        while named.is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            named = api_thread_named();
        }
        if let Err(names) = named {
            panic!("no thread named {API_THREAD_NAME}: {names:?}");
        }
    }
}

//! Requests from the API thread to the VMM thread: the API server's thread parses HTTP and
//! hands each request over a channel, with an EventFd to wake the VMM's event loop; the VMM
//! thread answers on the request's own reply channel. A slow client therefore only ever
//! stalls the API thread, never a vCPU or the device loop (Firecracker's design).

use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_api::http::{Request, Response};
use vmm_sys_util::eventfd::EventFd;

/// How long the API thread waits for the VMM thread's answer before it answers 500 itself.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One request in flight, with where its answer goes.
pub type Envelope = (Request, SyncSender<Response>);

/// The API thread's end: blocks until the VMM thread answered.
#[derive(Debug)]
pub struct RequestSender {
    tx: Mutex<Sender<Envelope>>,
    wake: EventFd,
}

impl RequestSender {
    /// Hands `request` to the VMM thread and waits for its answer.
    pub fn call(&self, request: Request) -> Response {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let sent = self
            .tx
            .lock()
            .map(|tx| tx.send((request, reply_tx)).is_ok())
            .unwrap_or(false);
        if !sent || self.wake.write(1).is_err() {
            return Response::fault("the VMM is shutting down");
        }
        reply_rx
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| Response {
                status: 500,
                body: Some(
                    serde_json::json!({"fault_message": "the VMM did not answer in time"})
                        .to_string(),
                ),
            })
    }
}

/// The VMM thread's end: an EventFd to watch and the requests behind it.
#[derive(Debug)]
pub struct RequestQueue {
    rx: Receiver<Envelope>,
    wake: EventFd,
}

/// A connected pair.
pub fn channel() -> std::io::Result<(RequestSender, RequestQueue)> {
    let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        RequestSender {
            tx: Mutex::new(tx),
            wake: wake.try_clone()?,
        },
        RequestQueue { rx, wake },
    ))
}

impl RequestQueue {
    /// The descriptor that becomes readable when requests wait.
    pub fn fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Takes every waiting request (after the EventFd fired).
    pub fn drain(&self) -> Vec<Envelope> {
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

/// The request queue as a subscriber of the VM's event loop, answering with `handler`.
pub struct RequestPump<H: FnMut(&Request) -> Response + Send> {
    queue: RequestQueue,
    handler: H,
}

impl<H: FnMut(&Request) -> Response + Send> std::fmt::Debug for RequestPump<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestPump").finish_non_exhaustive()
    }
}

impl<H: FnMut(&Request) -> Response + Send> RequestPump<H> {
    /// A pump answering `queue`'s requests with `handler`.
    pub fn new(queue: RequestQueue, handler: H) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(RequestPump { queue, handler }))
    }
}

impl<H: FnMut(&Request) -> Response + Send> MutEventSubscriber for RequestPump<H> {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.queue.fd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        for (request, reply) in self.queue.drain() {
            let _ = reply.send((self.handler)(&request));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::http::Method;

    #[test]
    fn a_request_crosses_and_its_answer_comes_back() {
        let (sender, queue) = channel().unwrap();
        let api = std::thread::spawn(move || {
            sender.call(Request {
                method: Method::Get,
                path: "/".into(),
                body: Vec::new(),
            })
        });
        // The VMM thread: wait for the EventFd, then answer.
        let mut pfd = libc::pollfd {
            fd: queue.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own; a bounded timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1);
        for (req, reply) in queue.drain() {
            assert_eq!(req.path, "/");
            reply.send(Response::no_content()).unwrap();
        }
        assert_eq!(api.join().unwrap().status, 204);
    }
}

//! The runtime, the accept loop and everything decided per connection: the
//! connection cap, hyper's head limits and read timeout, graceful shutdown
//! and a lingering close.
//!
//! Nothing here allocates by what a client declares: hyper reads heads into
//! a bounded buffer (431 past `max_header_bytes`), and bodies are read by the
//! handlers under `max_body_bytes` (see `body.rs`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt as _;

use super::{HttpState, ServeConfig, ServeError};
use crate::telemetry::Telemetry;

/// After a response, the client's unread request bytes are read and thrown
/// away for at most this long and this much, so that closing the socket
/// does not reset the connection before the client has read the response
/// (a 413 sent while the client is still uploading, for example).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// A client told "too many connections" gets this long to take the answer.
const REFUSE_LINGER: Duration = Duration::from_millis(500);
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At the cap, how long a new connection waits for an evicted one's slot.
const EVICT_WAIT: Duration = Duration::from_millis(200);

/// Connections that have not sent a request yet, oldest first. At the cap a
/// new connection closes the oldest of these instead of being refused, so
/// thousands of half-open or slow-dripping connections cannot lock real
/// clients out: they only push each other out.
#[derive(Default)]
struct Idle {
    waiting: parking_lot::Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
}

impl Idle {
    fn register(&self) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        self.waiting.lock().push_back((id, Arc::clone(&kill)));
        (id, kill)
    }

    /// The connection sent a request (or ended): it is no longer evictable.
    fn forget(&self, id: u64) {
        let mut waiting = self.waiting.lock();
        if let Some(at) = waiting.iter().position(|(i, _)| *i == id) {
            waiting.remove(at);
        }
    }

    /// Tells the oldest idle connection to close; false when there is none.
    fn evict_oldest(&self) -> bool {
        let oldest = self.waiting.lock().pop_front();
        match oldest {
            Some((_, kill)) => {
                kill.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A running server; dropping it stops it (see [`ServeConfig::shutdown_grace`]).
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    accept: Option<tokio::task::JoinHandle<()>>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    grace: Duration,
}

impl ServerHandle {
    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it only stops when dropped elsewhere).
    pub fn join(mut self) {
        if let (Some(runtime), Some(accept)) = (&self.runtime, self.accept.take())
            && let Err(err) = runtime.block_on(accept)
        {
            tracing::warn!("the HTTP accept loop ended abnormally: {err}");
        }
    }

    /// Stops accepting connections, closes idle ones, and gives requests in
    /// progress up to `grace` to be answered; then cuts off what is left.
    /// Job event streams end at once. Blocks meanwhile.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        // An error only means every receiver is gone already.
        let _ = self.shutdown.send(true);
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped inside some async context, where blocking is not allowed:
            // the connections are told to stop but not waited for.
            runtime.shutdown_background();
            return;
        }
        let accept = self.accept.take();
        let connections = Arc::clone(&self.connections);
        let all = self.max_connections;
        runtime.block_on(async move {
            if let Some(accept) = accept
                && let Err(err) = accept.await
            {
                tracing::warn!("the HTTP accept loop ended abnormally: {err}");
            }
            // Every connection holds a permit until it is closed.
            if tokio::time::timeout(grace, connections.acquire_many(all))
                .await
                .is_err()
            {
                tracing::warn!(
                    "{} HTTP connections were still busy after {} s; closing them",
                    all as usize - connections.available_permits(),
                    grace.as_secs_f64()
                );
            }
        });
        runtime.shutdown_timeout(Duration::from_millis(500));
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop(self.grace);
    }
}

/// Starts the server on `config.bind` with `config.workers` runtime threads.
pub fn serve(config: ServeConfig, state: HttpState) -> Result<ServerHandle, ServeError> {
    let bind_error = |reason: String| ServeError::Bind {
        bind: config.bind.clone(),
        reason,
    };
    let listener =
        std::net::TcpListener::bind(&config.bind).map_err(|e| bind_error(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| bind_error(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| bind_error(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // More async threads than cores only adds preemption to the tail latency.
        .worker_threads(config.workers.clamp(
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ))
        .max_blocking_threads(64)
        .thread_name("orfeas-http")
        .enable_all()
        .build()
        .map_err(ServeError::Thread)?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(listener).map_err(|e| bind_error(e.to_string()))?
    };
    let max_connections = u32::try_from(config.max_connections.clamp(1, 1 << 20)).unwrap_or(1024);
    let connections = Arc::new(Semaphore::new(max_connections as usize));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes.max(1024))
        // The read buffer must hold a whole head; hyper's minimum is 8 KiB.
        .max_buf_size(config.max_header_bytes.max(8192) + 8192)
        .keep_alive(true);
    let router = super::router(state.clone(), &config, shutdown_rx.clone());
    let accept = AcceptLoop {
        listener,
        router,
        builder: Arc::new(builder),
        connections: Arc::clone(&connections),
        idle: Arc::default(),
        shutdown: shutdown_rx,
        telemetry: state.telemetry.clone(),
    };
    let accept = runtime.spawn(accept.run());
    tracing::info!("serving HTTP on http://{addr}");
    Ok(ServerHandle {
        addr,
        shutdown,
        runtime: Some(runtime),
        accept: Some(accept),
        connections,
        max_connections,
        grace: config.shutdown_grace,
    })
}

/// Resolves once shutdown was asked for (or the handle is gone).
pub(super) async fn stopping(rx: &mut watch::Receiver<bool>) {
    // An error means the sender (the handle) was dropped: that is a stop too.
    let _ = rx.wait_for(|stop| *stop).await;
}

struct AcceptLoop {
    listener: TcpListener,
    router: axum::Router,
    builder: Arc<http1::Builder>,
    connections: Arc<Semaphore>,
    idle: Arc<Idle>,
    shutdown: watch::Receiver<bool>,
    telemetry: Telemetry,
}

impl AcceptLoop {
    async fn run(mut self) {
        loop {
            let accepted = tokio::select! {
                () = stopping(&mut self.shutdown) => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!("cannot accept a connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if let Err(err) = stream.set_nodelay(true) {
                // Without it a response written in pieces waits on delayed ACKs.
                tracing::debug!("TCP_NODELAY not set: {err}");
            }
            let permit = match Arc::clone(&self.connections).try_acquire_owned() {
                Ok(permit) => Some(permit),
                // At the cap: push out the oldest connection that never sent a request.
                Err(_) if self.idle.evict_oldest() => {
                    tokio::time::timeout(EVICT_WAIT, Arc::clone(&self.connections).acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
            match permit {
                Some(permit) => {
                    let conn = Connection {
                        router: self.router.clone(),
                        builder: Arc::clone(&self.builder),
                        shutdown: self.shutdown.clone(),
                        telemetry: self.telemetry.clone(),
                        idle: Arc::clone(&self.idle),
                    };
                    tokio::spawn(async move {
                        conn.run(stream, peer).await;
                        drop(permit);
                    });
                }
                None => {
                    self.telemetry
                        .metrics()
                        .record_error("server_error", "other");
                    tokio::spawn(refuse(stream));
                }
            }
        }
        tracing::debug!("HTTP listener closed");
    }
}

struct Connection {
    router: axum::Router,
    builder: Arc<http1::Builder>,
    shutdown: watch::Receiver<bool>,
    telemetry: Telemetry,
    idle: Arc<Idle>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, peer: SocketAddr) {
        let router = self.router.clone();
        let (idle_id, kill) = self.idle.register();
        let active = Arc::new(AtomicBool::new(false));
        let (idle, seen) = (Arc::clone(&self.idle), Arc::clone(&active));
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            if !seen.swap(true, Ordering::Relaxed) {
                idle.forget(idle_id);
            }
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let mut conn = self.builder.serve_connection(TokioIo::new(stream), service);
        let result = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                () = stopping(&mut self.shutdown) => {
                    // Finishes the request in progress, if any, then ends.
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    break std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
                }
                // Evicted before its first request: closed without an answer.
                // (A request that arrived meanwhile is served.)
                () = kill.notified() => {
                    if !active.load(Ordering::Relaxed) {
                        tracing::debug!("closed an idle connection from {peer} to make room");
                        return;
                    }
                }
            }
        };
        self.idle.forget(idle_id);
        if let Err(err) = &result {
            if err.is_parse() {
                // hyper answered it (400/431) before any handler saw it.
                self.telemetry
                    .metrics()
                    .record_error("bad_request", "other");
            }
            tracing::debug!("HTTP connection from {peer} ended: {err}");
        }
        let stream = conn.into_parts().io.into_inner();
        linger(stream, LINGER).await;
    }
}

/// Shuts down the sending side, then reads what the client still sends
/// (bounded) before the socket is closed.
async fn linger(mut stream: TcpStream, limit: Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0usize;
    let drain = async {
        while drained < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    // Either end is fine: the client closed, or it had its time.
    let _ = tokio::time::timeout(limit, drain).await;
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::json!({
        "error": {
            "code": "too_many_connections",
            "message": "the server has too many open connections; retry in a moment",
            "field": null,
        }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = stream.write_all(response.as_bytes());
    match tokio::time::timeout(REFUSE_LINGER, write).await {
        Ok(Ok(())) => linger(stream, REFUSE_LINGER).await,
        _ => tracing::debug!("a refused client did not take its 503"),
    }
}

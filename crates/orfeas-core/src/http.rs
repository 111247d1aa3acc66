//! HTTP server (tiny_http): `/health`, `/metrics`, and later `/api/*`.
//!
//! One accept loop (inside tiny_http) feeds a small pool of named worker
//! threads. Every request goes through [`route`] (method + path → a [`Route`]
//! and its bounded `endpoint` label) and [`handle`], and its metrics are
//! recorded in exactly one place ([`serve_one`]) for all routes. To add an
//! endpoint: a `Route` variant, a line in `route`, an arm in `handle`, and the
//! template in `telemetry::metrics::ROUTES`/`ENDPOINTS`.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::telemetry::Telemetry;

/// Prometheus text exposition content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// `host:port`; port 0 picks a free one (see [`ServerHandle::addr`]).
    pub bind: String,
    /// Worker threads answering requests.
    pub workers: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: "127.0.0.1:5000".to_owned(),
            workers: 4,
        }
    }
}

/// What the handlers share. Later capabilities (the job engine, the API
/// token, the rate limiter) become fields here.
#[derive(Clone)]
pub struct HttpState {
    pub telemetry: Telemetry,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {bind}: {reason}; choose another address with --bind or stop the program using the port"
    )]
    Bind { bind: String, reason: String },
    #[error("cannot start the HTTP worker threads: {0}")]
    Thread(#[source] std::io::Error),
}

/// A matched route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    /// The path is known but not for this method.
    MethodNotAllowed,
    NotFound,
}

/// Maps a request to its route and the bounded `endpoint` label.
pub fn route(method: &str, path: &str) -> (Route, &'static str) {
    let path = path.split('?').next().unwrap_or("");
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match (method, path) {
        ("GET" | "HEAD", "/health") => (Route::Health, "/health"),
        ("GET" | "HEAD", "/metrics") => (Route::Metrics, "/metrics"),
        (_, "/health") => (Route::MethodNotAllowed, "/health"),
        (_, "/metrics") => (Route::MethodNotAllowed, "/metrics"),
        _ => (Route::NotFound, "other"),
    }
}

/// A response before it is written.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra_headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            extra_headers: Vec::new(),
        }
    }

    /// A JSON error with a stable code and a message that says what to do.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({ "error": { "code": code, "message": message } }),
        )
    }
}

/// Answers one routed request.
pub fn handle(route: Route, state: &HttpState) -> Reply {
    match route {
        Route::Health => Reply::json(
            200,
            &serde_json::json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": state.telemetry.metrics().app_uptime_seconds.get(),
            }),
        ),
        Route::Metrics => Reply {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: state.telemetry.encode().into_bytes(),
            extra_headers: Vec::new(),
        },
        Route::MethodNotAllowed => {
            let mut r = Reply::error(405, "method_not_allowed", "this endpoint only answers GET");
            r.extra_headers.push(("Allow", "GET, HEAD".to_owned()));
            r
        }
        Route::NotFound => Reply::error(
            404,
            "not_found",
            "no such endpoint; see GET /health, GET /metrics and /api/*",
        ),
    }
}

/// A running server; dropping it stops the workers.
pub struct ServerHandle {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it only stops when dropped elsewhere).
    pub fn join(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Starts the server on `config.bind` with `config.workers` named threads.
pub fn serve(config: ServeConfig, state: HttpState) -> Result<ServerHandle, ServeError> {
    let server = tiny_http::Server::http(&config.bind).map_err(|e| ServeError::Bind {
        bind: config.bind.clone(),
        reason: e.to_string(),
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| ServeError::Bind {
            bind: config.bind.clone(),
            reason: "not an IP address".to_owned(),
        })?;
    let server = Arc::new(server);
    let mut workers = Vec::new();
    for i in 0..config.workers.max(1) {
        let server = Arc::clone(&server);
        let state = state.clone();
        let w = std::thread::Builder::new()
            .name(format!("orfeas-http-{i}"))
            .spawn(move || {
                // `recv` returns Err when unblocked (shutdown) or on a broken socket.
                while let Ok(request) = server.recv() {
                    serve_one(request, &state);
                }
            })
            .map_err(ServeError::Thread)?;
        workers.push(w);
    }
    tracing::info!("serving /health and /metrics on http://{addr}");
    Ok(ServerHandle {
        addr,
        server,
        workers,
    })
}

/// The one place where every request is routed, answered and counted.
fn serve_one(request: tiny_http::Request, state: &HttpState) {
    let started = Instant::now();
    let metrics = state.telemetry.metrics();
    metrics.request_started();
    let method = request.method().as_str().to_ascii_uppercase();
    let (route, endpoint) = route(&method, request.url());
    let reply = handle(route, state);
    let status = reply.status;
    let mut response = tiny_http::Response::new(
        tiny_http::StatusCode(status),
        Vec::new(),
        Cursor::new(reply.body),
        None,
        None,
    );
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).ok();
    if let Some(h) = header("Content-Type", reply.content_type) {
        response.add_header(h);
    }
    for (k, v) in &reply.extra_headers {
        if let Some(h) = header(k, v) {
            response.add_header(h);
        }
    }
    if let Err(err) = request.respond(response) {
        tracing::debug!("client went away before the response was written: {err}");
    }
    metrics.observe_http(&method, endpoint, status, started.elapsed().as_secs_f64());
    metrics.request_finished();
}

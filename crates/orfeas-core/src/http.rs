//! HTTP server (tiny_http): `/health`, `/metrics`, and later `/api/*`.
//!
//! One accept loop (inside tiny_http) feeds a small pool of named worker
//! threads. Every request goes through [`route`] (method + path → a [`Route`]
//! and its bounded `endpoint` label) and [`handle`], and its metrics are
//! recorded in exactly one place ([`serve_one`]) for all routes. To add an
//! endpoint: a `Route` variant, a line in `route`, an arm in `handle`, and the
//! template in `telemetry::metrics::ROUTES`/`ENDPOINTS`.
//!
//! `/api/*` lives in [`api`] (with its guards: rate limit, token, CORS) and is
//! on when [`HttpState::api`] is set; [`run_server`] is the one call of
//! `orfeas serve`.

pub mod api;
pub mod auth;
pub mod multipart;
pub mod ratelimit;
mod run;
pub mod validate;

pub use ratelimit::{Bucket, RateLimitConfig};
pub use run::{run_server, start, wait_for_signal};
pub use validate::ImageLimits;

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::telemetry::Telemetry;

/// Prometheus text exposition content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Server settings.
#[derive(Clone)]
pub struct ServeConfig {
    /// `host:port`; port 0 picks a free one (see [`ServerHandle::addr`]).
    pub bind: String,
    /// Worker threads answering requests.
    pub workers: usize,
    /// Bearer token for `/api/*`; required unless `bind` is 127.0.0.1 or ::1.
    pub token: Option<String>,
    /// Read the token from the first line of this file (when `token` is unset).
    pub token_file: Option<PathBuf>,
    /// Require the token on `/health` and `/metrics` too.
    pub protect_metrics: bool,
    /// Per-client token buckets; `None` turns rate limiting off.
    pub rate_limit: Option<RateLimitConfig>,
    /// Queued jobs beyond which submissions get 503 + Retry-After (0: the engine's capacity).
    pub queue_limit: usize,
    /// Largest request body accepted (uploads included).
    pub max_body_bytes: u64,
    /// Uploaded image limits, checked before decoding.
    pub image_limits: ImageLimits,
    /// Run jobs a previous process accepted but never started.
    pub requeue_on_start: bool,
    /// On SIGTERM/Ctrl-C, how long running jobs get to finish before they are cancelled.
    pub drain_timeout: Duration,
    /// `Access-Control-Allow-Origin` value; `None` (the default) sends no CORS headers.
    pub cors_origin: Option<String>,
    /// Where uploads, outputs and the history live; `None`: `paths::data_dir()`.
    pub data_dir: Option<PathBuf>,
    /// The compute device shown by `/health` (`cpu`, `cuda:0`...).
    pub device: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: "127.0.0.1:5000".to_owned(),
            workers: 4,
            token: None,
            token_file: None,
            protect_metrics: false,
            rate_limit: Some(RateLimitConfig::default()),
            queue_limit: 32,
            max_body_bytes: 32 * 1024 * 1024,
            image_limits: ImageLimits::default(),
            requeue_on_start: true,
            drain_timeout: Duration::from_secs(30),
            cors_origin: None,
            data_dir: None,
            device: "cpu".to_owned(),
        }
    }
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("bind", &self.bind)
            .field("workers", &self.workers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("protect_metrics", &self.protect_metrics)
            .field("rate_limit", &self.rate_limit)
            .field("queue_limit", &self.queue_limit)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("image_limits", &self.image_limits)
            .field("requeue_on_start", &self.requeue_on_start)
            .field("drain_timeout", &self.drain_timeout)
            .field("cors_origin", &self.cors_origin)
            .field("data_dir", &self.data_dir)
            .field("device", &self.device)
            .finish()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub telemetry: Telemetry,
    /// `/api/*` and its guards; `None` serves only `/health` and `/metrics`.
    pub api: Option<Arc<api::Api>>,
}

impl HttpState {
    /// `/health` and `/metrics` only.
    pub fn new(telemetry: Telemetry) -> HttpState {
        HttpState {
            telemetry,
            api: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {bind}: {reason}; choose another address with --bind or stop the program using the port"
    )]
    Bind { bind: String, reason: String },
    #[error("cannot start the HTTP worker threads: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "refusing to listen on {bind} without an API token: only 127.0.0.1 and ::1 may run open; \
         set ORFEAS_API_TOKEN or pass --token-file, or bind 127.0.0.1"
    )]
    TokenRequired { bind: String },
    #[error(
        "the API token is empty; put a long random string in ORFEAS_API_TOKEN or the token file"
    )]
    EmptyToken,
    #[error("cannot read the token file {path}: {reason}; check the path and its permissions")]
    TokenFile { path: PathBuf, reason: String },
    #[error(
        "cannot prepare the data folder {dir}: {reason}; check permissions or set ORFEAS_DATA_DIR"
    )]
    DataDir { dir: PathBuf, reason: String },
    #[error("cannot re-queue the jobs of the previous run: {0}")]
    Requeue(#[source] crate::jobs::EngineError),
    #[error("cannot install the SIGTERM/Ctrl-C handler: {0}")]
    Signal(String),
}

/// A matched route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    /// The path is known but not for this method.
    MethodNotAllowed,
    NotFound,
    /// Under `/api`; answered by [`api`].
    Api(api::ApiRoute),
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
        (_, p) if p == "/api" || p.starts_with("/api/") => api::route(method, p),
        _ => (Route::NotFound, "other"),
    }
}

/// A response before it is written.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra_headers: Vec<(&'static str, String)>,
    /// Streamed as the body instead of `body` (result downloads).
    pub file: Option<std::fs::File>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            extra_headers: Vec::new(),
            file: None,
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
        Route::Health => {
            let mut health = serde_json::json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": state.telemetry.metrics().app_uptime_seconds.get(),
            });
            if let (Some(api), Some(obj)) = (&state.api, health.as_object_mut()) {
                obj.insert("device".into(), api.device().into());
                obj.insert("queue_depth".into(), api.engine().queue_depth().into());
                obj.insert("active_jobs".into(), api.engine().active_count().into());
                let kinds: Vec<&str> = api
                    .engine()
                    .registered_kinds()
                    .into_iter()
                    .map(|k| k.as_str())
                    .collect();
                obj.insert("job_kinds".into(), kinds.into());
            }
            Reply::json(200, &health)
        }
        Route::Metrics => Reply {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: state.telemetry.scrape().as_ref().clone(),
            extra_headers: Vec::new(),
            file: None,
        },
        Route::MethodNotAllowed => {
            let mut r = Reply::error(405, "method_not_allowed", "this endpoint only answers GET");
            r.extra_headers.push(("Allow", "GET, HEAD".to_owned()));
            r
        }
        Route::NotFound | Route::Api(_) => Reply::error(
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
    let bind_error = |reason: String| ServeError::Bind {
        bind: config.bind.clone(),
        reason,
    };
    let listener =
        std::net::TcpListener::bind(&config.bind).map_err(|e| bind_error(e.to_string()))?;
    // Accepted sockets inherit TCP_NODELAY from the listener. Without it a
    // /metrics body, which tiny_http writes in 8 KiB pieces, waits on the
    // peer's delayed ACK (40 ms on Linux) between pieces.
    if let Err(err) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set on the listener: {err}");
    }
    let server =
        tiny_http::Server::from_listener(listener, None).map_err(|e| bind_error(e.to_string()))?;
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
fn serve_one(mut request: tiny_http::Request, state: &HttpState) {
    let started = Instant::now();
    let metrics = state.telemetry.metrics();
    metrics.request_started();
    let method = request.method().as_str().to_ascii_uppercase();
    let (route, endpoint) = route(&method, request.url());
    let reply = match &state.api {
        Some(api) => api.handle(&mut request, &method, route, endpoint, state),
        None => handle(route, state),
    };
    let status = reply.status;
    let (body, length): (Box<dyn std::io::Read + Send>, Option<usize>) = match reply.file {
        Some(file) => {
            let length = file
                .metadata()
                .ok()
                .and_then(|m| usize::try_from(m.len()).ok());
            (Box::new(file), length)
        }
        None => {
            let length = reply.body.len();
            (Box::new(Cursor::new(reply.body)), Some(length))
        }
    };
    let mut response = tiny_http::Response::new(
        tiny_http::StatusCode(status),
        Vec::new(),
        body,
        length,
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

//! HTTP server (axum on hyper/tokio): `/health`, `/metrics`, `/api/*` and
//! the A1111-compatible `/sdapi/v1/txt2img`.
//!
//! [`server`] owns the runtime, the accept loop and the connection-level
//! limits (connection cap, header size and read timeout, lingering close).
//! Every request then reaches [`dispatch`], the one axum handler: it routes
//! with [`route`] (method + path → a [`Route`] and its bounded `endpoint`
//! label), answers through [`api`] or [`handle`], and records the request's
//! metrics in exactly one place for all routes. Routing stays in [`route`]
//! rather than in axum's router because the label, the 404-versus-405
//! answer and the `Allow` header are decided there together. To add an
//! endpoint: a `Route`/`ApiRoute` variant, a line in `route`, an arm in the
//! handler, and the template in `telemetry::metrics::ROUTES`/`ENDPOINTS`.
//!
//! `/api/*` lives in [`api`] (with its guards: rate limit, token, CORS) and is
//! on when [`HttpState::api`] is set; [`run_server`] is the one call of
//! `orfeas serve`.

mod a1111;
pub mod api;
pub mod auth;
mod body;
mod events;
pub mod multipart;
pub mod ratelimit;
mod run;
mod server;
pub mod validate;

pub use ratelimit::{Bucket, RateLimitConfig};
pub use run::{run_server, start, wait_for_signal};
pub use server::{ServerHandle, serve};
pub use validate::ImageLimits;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Metrics;

/// Prometheus text exposition content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Server settings.
#[derive(Clone)]
pub struct ServeConfig {
    /// `host:port`; port 0 picks a free one (see [`ServerHandle::addr`]).
    pub bind: String,
    /// Runtime threads answering requests (slow work runs on its blocking pool).
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
    /// Largest request body accepted (uploads included). A larger declared
    /// `Content-Length` is refused before any of the body is read.
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Longest request target (path and query); longer gets 414.
    pub max_uri_bytes: usize,
    /// Open connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's head. It also bounds how long an
    /// idle keep-alive connection is kept, since the wait for the next head
    /// starts when the previous response is written.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body once its head arrived (408 after).
    pub body_read_timeout: Duration,
    /// How long `POST /sdapi/v1/txt2img` waits for its job (504 after; the job goes on).
    pub txt2img_timeout: Duration,
    /// When the [`ServerHandle`] is dropped: how long requests in progress get to finish.
    pub shutdown_grace: Duration,
    /// Uploaded image limits, checked before decoding.
    pub image_limits: ImageLimits,
    /// Run jobs a previous process accepted but never started.
    pub requeue_on_start: bool,
    /// On SIGTERM/Ctrl-C, how long requests in progress, then running jobs,
    /// get to finish before they are cut off (jobs: cancelled).
    pub drain_timeout: Duration,
    /// `Access-Control-Allow-Origin` value; `None` (the default) sends no CORS headers.
    pub cors_origin: Option<String>,
    /// Where uploads, outputs and the history live; `None`: `paths::data_dir()`.
    pub data_dir: Option<PathBuf>,
    /// The compute device shown by `/health` (`cpu`, `cuda:0`...).
    pub device: String,
    /// Queue mode: submissions go to the fleet's queue, and job status and
    /// results come from it (see [`crate::fleet`]); `None` runs jobs here.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
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
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            txt2img_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(5),
            image_limits: ImageLimits::default(),
            requeue_on_start: true,
            drain_timeout: Duration::from_secs(30),
            cors_origin: None,
            data_dir: None,
            device: "cpu".to_owned(),
            fleet: None,
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
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_uri_bytes", &self.max_uri_bytes)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("txt2img_timeout", &self.txt2img_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("image_limits", &self.image_limits)
            .field("requeue_on_start", &self.requeue_on_start)
            .field("drain_timeout", &self.drain_timeout)
            .field("cors_origin", &self.cors_origin)
            .field("data_dir", &self.data_dir)
            .field("device", &self.device)
            .field("fleet", &self.fleet.as_ref().map(|f| &f.config().urls))
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
    #[error("cannot start the HTTP runtime threads: {0}")]
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
    /// Under `/api` or `/sdapi`; answered by [`api`].
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
        (_, p) if p == "/api" || p.starts_with("/api/") || p.starts_with("/sdapi/") => {
            api::route(method, p)
        }
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

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = match self.file {
            Some(file) => body::file_body(file),
            None => axum::body::Body::from(self.body),
        };
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.extra_headers {
            add_header(headers, name, &value);
        }
        response
    }
}

/// Appends a header; a value that is not header text is dropped with a log line.
pub(crate) fn add_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(name), Ok(value)) => {
            headers.append(name, value);
        }
        _ => tracing::warn!("dropped the {name} header: its value is not header text"),
    }
}

/// Answers one routed request that needs no body and no API.
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
                if let Some(fleet) = api.fleet() {
                    let connected = fleet.connected();
                    obj.insert(
                        "queue".into(),
                        serde_json::json!({
                            "mode": "fleet",
                            "node": fleet.config().node_name,
                            "connected": connected,
                            "servers": fleet.config().urls,
                        }),
                    );
                    if !connected {
                        // A load balancer or orchestrator should stop sending work here.
                        obj.insert("status".into(), "degraded".into());
                        obj.insert(
                            "message".into(),
                            "lost the connection to the NATS queue; this node takes no fleet \
                             jobs and accepts no submissions until it reconnects"
                                .into(),
                        );
                        return Reply::json(503, &health);
                    }
                }
            }
            Reply::json(200, &health)
        }
        Route::Metrics => metrics_reply(state, Instant::now()),
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

/// The scrape for a request that arrived at `arrived`.
fn metrics_reply(state: &HttpState, arrived: Instant) -> Reply {
    Reply {
        status: 200,
        content_type: METRICS_CONTENT_TYPE,
        body: state.telemetry.scrape_arrived(arrived).as_ref().clone(),
        extra_headers: Vec::new(),
        file: None,
    }
}

/// [`handle`] off the async threads where it may wait: a scrape waits for a
/// concurrent one to finish encoding (see `Telemetry::scrape`).
pub(crate) async fn answer_plain(route: Route, state: &HttpState) -> Response {
    if route != Route::Metrics {
        return handle(route, state).into_response();
    }
    // One encode at a time, waited for here (not on a blocked thread), and
    // the arrival time taken before the wait: the scrapes that queue up
    // behind an encode share the next one.
    static ENCODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let arrived = Instant::now();
    let Ok(_turn) = ENCODING.acquire().await else {
        return Reply::error(500, "internal_error", "the metrics encoder is closed")
            .into_response();
    };
    let state = state.clone();
    match tokio::task::spawn_blocking(move || metrics_reply(&state, arrived)).await {
        Ok(reply) => reply.into_response(),
        Err(err) => {
            tracing::error!("the /metrics task failed: {err}");
            Reply::error(
                500,
                "internal_error",
                "the metrics could not be encoded; see the log",
            )
            .into_response()
        }
    }
}

/// The parts of a request a handler reads besides its body.
pub(crate) struct RequestInfo {
    /// Upper case, as routed.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    pub headers: HeaderMap,
    pub peer: IpAddr,
}

impl RequestInfo {
    /// The value of header `name`, if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The router's state: the handlers' state and the request limits of [`dispatch`].
#[derive(Clone)]
struct Served {
    http: HttpState,
    max_uri_bytes: usize,
    /// Flips to true when the server stops (event streams end then).
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The axum application: one fallback handler, so every path reaches [`dispatch`].
fn router(
    state: HttpState,
    config: &ServeConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(Served {
        http: state,
        max_uri_bytes: config.max_uri_bytes,
        shutdown,
    })
}

/// Keeps `concurrent_requests` right even when a handler is dropped midway
/// (the client went away) or panics.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(metrics: &'a Metrics) -> InFlight<'a> {
        metrics.request_started();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The one handler: every request is routed, answered and counted here.
///
/// A request is counted when its response head is ready: for streamed
/// bodies (downloads, job events) the duration is the time to the first
/// byte, so a long event stream does not read as a slow request.
async fn dispatch(State(served): State<Served>, request: Request) -> Response {
    let started = Instant::now();
    let state = &served.http;
    let metrics = state.telemetry.metrics();
    let in_flight = InFlight::start(metrics);
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_ascii_uppercase();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let (route, endpoint) = route(&method, &target);
    let max_uri = served.max_uri_bytes;
    let response = if target.len() > max_uri {
        validate::ApiError::new(
            414,
            "uri_too_long",
            format!(
                "the request target is longer than {max_uri} bytes; send parameters in the body"
            ),
        )
        .to_reply()
        .into_response()
    } else {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let info = RequestInfo {
            method: method.clone(),
            target,
            headers: parts.headers,
            peer,
        };
        match &state.api {
            Some(api) => {
                let call = api::Call {
                    info,
                    route,
                    endpoint,
                    state,
                    shutdown: served.shutdown.clone(),
                };
                Arc::clone(api).handle(call, body).await
            }
            None => answer_plain(route, state).await,
        }
    };
    metrics.observe_http(
        &method,
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    drop(in_flight);
    response
}

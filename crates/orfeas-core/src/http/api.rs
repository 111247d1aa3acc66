//! `/api/*`: job submission (text→image, image→3D), job status, results,
//! job events, cancellation and the OpenAPI document, plus A1111's
//! `/sdapi/v1/txt2img`; and the guards every request of a server with the
//! API passes (CORS preflight, rate limit, bearer token).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

use super::multipart;
use super::ratelimit::{Class, RateLimiter};
use super::validate::{self, ApiError, ImageLimits};
use super::{HttpState, Reply, RequestInfo, Route, ServeConfig, auth};
use crate::fleet::{Fleet, FleetError, FleetRecord, Priority};
use crate::history::{JobRecord, system_time_ms};
use crate::jobs::{Engine, EngineError, JobId, JobKind, JobSnapshot, JobSpec, JobState};

/// The OpenAPI 3 document of this API (kept true by the integration tests).
pub const OPENAPI_JSON: &str = include_str!("../../../../docs/openapi.json");

/// Folder of the data dir that holds uploaded images.
pub const UPLOADS_DIR: &str = "uploads";
/// Folder of the data dir that holds generated files.
pub const OUTPUTS_DIR: &str = "outputs";

/// A seed for a request that gave none (32-bit, as every seed is).
pub(super) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's hasher keys are random per process and per instance: no extra crate for one number.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & crate::request::MAX_SEED
}

/// How long a client is told to wait when the queue is full.
const QUEUE_FULL_RETRY_SECS: u64 = 5;

/// An `/api/*` route. Ids are parsed here; a non-numeric id is a 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRoute {
    OpenApi,
    TextToImage,
    ImageTo3d,
    Jobs,
    Job(i64),
    CancelJob(i64),
    JobResult(i64),
    /// Server-sent events of one job.
    JobEvents(i64),
    /// A1111's synchronous `POST /sdapi/v1/txt2img`.
    Txt2Img,
    /// Known path, other method: 405 with this `Allow` value.
    MethodNotAllowed(&'static str),
    NotFound,
}

/// Routes a path under `/api` or `/sdapi`. Returns the route and the bounded `endpoint` label.
pub fn route(method: &str, path: &str) -> (Route, &'static str) {
    let get = matches!(method, "GET" | "HEAD");
    let (r, endpoint) = match path {
        "/api/openapi.json" if get => (ApiRoute::OpenApi, "other"),
        "/api/openapi.json" => (ApiRoute::MethodNotAllowed("GET, HEAD"), "other"),
        "/api/text-to-image" if method == "POST" => (ApiRoute::TextToImage, "/api/text-to-image"),
        "/api/text-to-image" => (ApiRoute::MethodNotAllowed("POST"), "/api/text-to-image"),
        "/api/image-to-3d" if method == "POST" => (ApiRoute::ImageTo3d, "/api/image-to-3d"),
        "/api/image-to-3d" => (ApiRoute::MethodNotAllowed("POST"), "/api/image-to-3d"),
        "/api/jobs" if get => (ApiRoute::Jobs, "/api/jobs"),
        "/api/jobs" => (ApiRoute::MethodNotAllowed("GET, HEAD"), "/api/jobs"),
        "/sdapi/v1/txt2img" if method == "POST" => (ApiRoute::Txt2Img, "/sdapi/v1/txt2img"),
        "/sdapi/v1/txt2img" => (ApiRoute::MethodNotAllowed("POST"), "/sdapi/v1/txt2img"),
        _ => match path.strip_prefix("/api/jobs/") {
            Some(rest) => job_route(method, rest),
            None => (ApiRoute::NotFound, "other"),
        },
    };
    (Route::Api(r), endpoint)
}

fn job_route(method: &str, rest: &str) -> (ApiRoute, &'static str) {
    let get = matches!(method, "GET" | "HEAD");
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    let id = id.parse::<i64>().ok().filter(|id| *id > 0);
    match (tail, id) {
        (None, Some(id)) if get => (ApiRoute::Job(id), "/api/jobs/{id}"),
        (None, Some(id)) if method == "DELETE" => (ApiRoute::CancelJob(id), "/api/jobs/{id}"),
        (None, Some(_)) => (
            ApiRoute::MethodNotAllowed("GET, HEAD, DELETE"),
            "/api/jobs/{id}",
        ),
        (None, None) => (ApiRoute::NotFound, "/api/jobs/{id}"),
        (Some("result"), Some(id)) if get => (ApiRoute::JobResult(id), "/api/jobs/{id}/result"),
        (Some("result"), Some(_)) => (
            ApiRoute::MethodNotAllowed("GET, HEAD"),
            "/api/jobs/{id}/result",
        ),
        (Some("result"), None) => (ApiRoute::NotFound, "/api/jobs/{id}/result"),
        (Some("events"), Some(id)) if get => (ApiRoute::JobEvents(id), "/api/jobs/{id}/events"),
        (Some("events"), Some(_)) => (
            ApiRoute::MethodNotAllowed("GET, HEAD"),
            "/api/jobs/{id}/events",
        ),
        (Some("events"), None) => (ApiRoute::NotFound, "/api/jobs/{id}/events"),
        (Some(_), _) => (ApiRoute::NotFound, "other"),
    }
}

/// One request as the API sees it, besides its body.
pub(crate) struct Call<'a> {
    pub info: RequestInfo,
    pub route: Route,
    pub endpoint: &'static str,
    pub state: &'a HttpState,
    /// Becomes true when the server stops.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The API's shared state.
pub struct Api {
    engine: Engine,
    data_dir: PathBuf,
    /// `data_dir` canonicalised once: result files must resolve inside it.
    data_dir_canonical: PathBuf,
    token: Option<String>,
    protect_metrics: bool,
    limiter: Option<RateLimiter>,
    queue_limit: usize,
    max_body_bytes: u64,
    body_read_timeout: Duration,
    txt2img_timeout: Duration,
    image_limits: ImageLimits,
    cors_origin: Option<String>,
    device: String,
    upload_counter: AtomicU64,
    fleet: Option<Arc<Fleet>>,
}

impl Api {
    /// The API over `engine`, storing files under `data_dir` (which must exist).
    pub fn new(
        config: &ServeConfig,
        engine: Engine,
        data_dir: &Path,
        token: Option<String>,
    ) -> std::io::Result<Api> {
        let data_dir_canonical = data_dir.canonicalize()?;
        Ok(Api {
            engine,
            data_dir: data_dir.to_path_buf(),
            data_dir_canonical,
            token,
            protect_metrics: config.protect_metrics,
            limiter: config.rate_limit.map(RateLimiter::new),
            queue_limit: if config.queue_limit == 0 {
                usize::MAX
            } else {
                config.queue_limit
            },
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            txt2img_timeout: config.txt2img_timeout,
            image_limits: config.image_limits,
            cors_origin: config.cors_origin.clone(),
            device: config.device.clone(),
            upload_counter: AtomicU64::new(0),
            fleet: config.fleet.clone(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// The fleet queue in queue mode.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Queues `spec` on the fleet in queue mode, else on the local engine.
    fn submit(&self, spec: JobSpec) -> Result<JobId, ApiError> {
        match &self.fleet {
            Some(fleet) => fleet
                .submit(&spec, Priority::Interactive)
                .map_err(fleet_error),
            None => self.engine.submit(spec).map_err(engine_error),
        }
    }

    pub(super) fn txt2img_timeout(&self) -> Duration {
        self.txt2img_timeout
    }

    /// Guards, then answers. Counts validation and rate-limit rejections.
    pub(crate) async fn handle(self: Arc<Self>, call: Call<'_>, body: Body) -> Response {
        let metrics = call.state.telemetry.metrics();
        if call.info.method == "OPTIONS"
            && let Some(origin) = &self.cors_origin
        {
            // Preflights carry no credentials; they are answered before the checks.
            return preflight(origin).into_response();
        }
        let endpoint = call.endpoint;
        let result = match self.guard(&call.info, call.route) {
            Ok(()) => match call.route {
                Route::Api(r) => Arc::clone(&self).answer(call, r, body).await,
                other => Ok(super::answer_plain(other, call.state).await),
            },
            Err(err) => Err(err),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                if err.is_validation() {
                    metrics.record_validation_error(endpoint, err.field_label());
                }
                if err.status == 429 {
                    metrics.record_rate_limit_rejection(endpoint);
                }
                if err.status >= 500 {
                    tracing::warn!(endpoint, code = err.code, "API error: {}", err.message);
                }
                err.to_reply().into_response()
            }
        };
        if let Some(origin) = &self.cors_origin {
            let headers = response.headers_mut();
            super::add_header(headers, "Access-Control-Allow-Origin", origin);
            super::add_header(headers, "Vary", "Origin");
        }
        response
    }

    fn guard(&self, request: &RequestInfo, route: Route) -> Result<(), ApiError> {
        if let Some(limiter) = &self.limiter {
            let class = if request.method == "POST" {
                Class::Generate
            } else {
                Class::Read
            };
            limiter
                .check(request.peer, class, Instant::now())
                .map_err(|secs| {
                    ApiError::new(
                        429,
                        "rate_limited",
                        format!("too many requests; retry in {secs} s"),
                    )
                    .retry_after(secs)
                })?;
        }
        if let Some(token) = &self.token {
            let open = !self.protect_metrics && matches!(route, Route::Health | Route::Metrics);
            if !open && !auth::authorized(request.header("Authorization"), token) {
                return Err(ApiError::new(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token; send `Authorization: Bearer <token>`",
                ));
            }
        }
        Ok(())
    }

    async fn answer(
        self: Arc<Self>,
        call: Call<'_>,
        route: ApiRoute,
        body: Body,
    ) -> Result<Response, ApiError> {
        let target = call.info.target.clone();
        let reply = match route {
            ApiRoute::OpenApi => Reply {
                status: 200,
                content_type: "application/json",
                body: OPENAPI_JSON.as_bytes().to_vec(),
                extra_headers: Vec::new(),
                file: None,
            },
            ApiRoute::TextToImage => self.text_to_image(&call.info, body).await?,
            ApiRoute::ImageTo3d => self.image_to_3d(&call.info, body).await?,
            ApiRoute::Jobs => self.blocking(move |api| api.list_jobs(&target)).await?,
            ApiRoute::Job(id) => {
                self.blocking(move |api| {
                    api.job_view(JobId(id))?
                        .map(|v| Reply::json(200, &v))
                        .ok_or_else(|| no_job(id))
                })
                .await?
            }
            ApiRoute::CancelJob(id) => self.blocking(move |api| api.cancel(JobId(id))).await?,
            ApiRoute::JobResult(id) => {
                self.blocking(move |api| api.result(JobId(id), &target))
                    .await?
            }
            ApiRoute::JobEvents(id) => {
                return super::events::stream(self, JobId(id), call.shutdown).await;
            }
            ApiRoute::Txt2Img => return super::a1111::txt2img(self, &call.info, body).await,
            ApiRoute::MethodNotAllowed(allow) => {
                let mut reply = ApiError::new(
                    405,
                    "method_not_allowed",
                    format!("this endpoint answers {allow}"),
                )
                .to_reply();
                reply.extra_headers.push(("Allow", allow.to_owned()));
                reply
            }
            ApiRoute::NotFound => {
                return Err(ApiError::new(
                    404,
                    "not_found",
                    "no such endpoint; the API is described at GET /api/openapi.json",
                ));
            }
        };
        Ok(reply.into_response())
    }

    /// Runs `f` on the blocking pool: history queries, file writes, image decoding.
    pub(super) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Api) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let api = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&api))
            .await
            .map_err(|e| internal(format!("a request task failed: {e}")))?
    }

    // ---- submission ---------------------------------------------------

    async fn text_to_image(
        self: &Arc<Self>,
        request: &RequestInfo,
        body: Body,
    ) -> Result<Reply, ApiError> {
        let content_type = request.header("Content-Type").unwrap_or("");
        if !mime_is(content_type, "application/json") {
            return Err(ApiError::invalid(
                415,
                "unsupported_media_type",
                "body",
                "send the parameters as JSON with `Content-Type: application/json`",
            ));
        }
        self.check_queue()?;
        let body = self.read_body(request, body).await?;
        self.blocking(move |api| {
            let request = validate::text_to_image(&body, random_seed)?;
            let id = api.submit_text_to_image(request)?;
            Ok(accepted(id))
        })
        .await
    }

    /// Queues a checked text→image request with its output in `outputs/`.
    pub(super) fn submit_text_to_image(
        &self,
        request: crate::request::TextToImageRequest,
    ) -> Result<JobId, ApiError> {
        let stem = self.new_stem("t2i");
        let output = self.data_dir.join(OUTPUTS_DIR).join(format!("{stem}.png"));
        let spec = JobSpec::from(crate::request::TextToImageJob { request, output });
        self.submit(spec)
    }

    async fn image_to_3d(
        self: &Arc<Self>,
        request: &RequestInfo,
        body: Body,
    ) -> Result<Reply, ApiError> {
        let content_type = request.header("Content-Type").unwrap_or("").to_owned();
        let raw = validate::IMAGE_TYPES
            .iter()
            .any(|t| mime_is(&content_type, t));
        let form = mime_is(&content_type, "multipart/form-data");
        if !raw && !form {
            return Err(ApiError::invalid(
                415,
                "unsupported_media_type",
                "body",
                "send the image as the body (Content-Type image/png, image/jpeg or image/webp) \
                 or as the `image` field of multipart/form-data",
            ));
        }
        let params = validate::query(&request.target)?;
        validate::only_known(&params, &validate::IMAGE_TO_3D_PARAMS)?;
        self.check_queue()?;
        let body = self.read_body(request, body).await?;
        self.blocking(move |api| api.submit_image_to_3d(&content_type, raw, params, body))
            .await
    }

    fn submit_image_to_3d(
        &self,
        content_type: &str,
        raw: bool,
        mut params: std::collections::BTreeMap<String, String>,
        body: Bytes,
    ) -> Result<Reply, ApiError> {
        let mut filename = None;
        let image: Bytes = if raw {
            body
        } else {
            let parts = multipart::parse(content_type, body).map_err(|e| {
                ApiError::invalid(
                    400,
                    "invalid_multipart",
                    "body",
                    format!("{e}; send the image in a form field named `image`"),
                )
            })?;
            let mut image = None;
            let mut form_fields = Vec::new();
            for part in parts {
                if part.name == "image" && image.is_none() {
                    filename = part.filename.clone();
                    image = Some(part.data);
                } else if validate::IMAGE_TO_3D_PARAMS.contains(&part.name.as_str())
                    && !form_fields.contains(&part.name)
                {
                    let text = std::str::from_utf8(&part.data).map_err(|_| {
                        ApiError::invalid(422, "invalid_value", &part.name, "must be UTF-8 text")
                    })?;
                    // A form field overrides the same query parameter.
                    params.insert(part.name.clone(), text.trim().to_owned());
                    form_fields.push(part.name.clone());
                } else {
                    return Err(ApiError::invalid(
                        422,
                        "unknown_field",
                        if part.name == "image" {
                            "image"
                        } else {
                            "other"
                        },
                        "unexpected or repeated form field; send `image` once, and optionally \
                         format, quality, method",
                    ));
                }
            }
            image.ok_or_else(|| {
                ApiError::invalid(
                    422,
                    "missing_image",
                    "image",
                    "the form has no `image` field",
                )
            })?
        };
        let options = validate::image_to_3d_options(&params)?;
        let info = validate::image(&image, self.image_limits)?;
        let stem = self.new_stem("i23d");
        let input = self
            .data_dir
            .join(UPLOADS_DIR)
            .join(format!("{stem}.{}", info.extension));
        crate::paths::write_bytes_atomic(&input, &image).map_err(|e| {
            tracing::error!("cannot store an upload: {e:#}");
            ApiError::new(
                507,
                "storage_unavailable",
                "the server cannot store the upload; check its disk space",
            )
        })?;
        let remove_upload = |input: &Path| {
            if let Err(err) = std::fs::remove_file(input) {
                tracing::warn!("cannot remove a refused upload: {err}");
            }
        };
        let output = self
            .data_dir
            .join(OUTPUTS_DIR)
            .join(format!("{stem}.{}", options.format.extension()));
        let label = filename
            .as_deref()
            .and_then(|f| f.rsplit(['/', '\\']).next())
            .map(|f| {
                f.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| format!("upload.{}", info.extension));
        let request = match options.into_request(input.clone(), output) {
            Ok(request) => request,
            Err(e) => {
                remove_upload(&input);
                return Err(e);
            }
        };
        let spec = JobSpec {
            request: crate::jobs::JobRequest::ImageTo3d(request),
            label,
            batch: false,
        };
        let submitted = self.submit(spec);
        if submitted.is_err() || self.fleet.is_some() {
            // Refused, or in the fleet's store now: the local copy has done its job.
            remove_upload(&input);
        }
        submitted.map(accepted)
    }

    pub(super) fn check_queue(&self) -> Result<(), ApiError> {
        // In queue mode the fleet's stream limit answers (at the submission).
        if self.fleet.is_none() && self.engine.queue_depth() >= self.queue_limit {
            return Err(queue_full());
        }
        Ok(())
    }

    /// The request body under the size and time limits (see `body::read`).
    pub(super) async fn read_body(
        &self,
        request: &RequestInfo,
        body: Body,
    ) -> Result<Bytes, ApiError> {
        super::body::read(
            &request.headers,
            body,
            self.max_body_bytes,
            self.body_read_timeout,
        )
        .await
    }

    /// A file name stem unique in this data dir: time, process and a counter.
    fn new_stem(&self, prefix: &str) -> String {
        let n = self.upload_counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{prefix}-{}-{}-{n}",
            crate::history::now_ms(),
            std::process::id()
        )
    }

    // ---- status -------------------------------------------------------

    fn list_jobs(&self, url: &str) -> Result<Reply, ApiError> {
        let params = validate::query(url)?;
        validate::only_known(&params, &["limit", "offset", "kind"])?;
        let limit = validate::query_int(&params, "limit", (1, 200))?.unwrap_or(50) as usize;
        let offset =
            validate::query_int(&params, "offset", (0, 1_000_000_000))?.unwrap_or(0) as usize;
        let kind = validate::query_choice(&params, "kind", &["image_to_3d", "text_to_image"])?
            .and_then(|k| k.parse::<JobKind>().ok());
        if let Some(fleet) = &self.fleet {
            let all: Vec<FleetRecord> = fleet
                .records()
                .map_err(fleet_error)?
                .into_iter()
                .filter(|r| kind.is_none_or(|k| r.kind == k))
                .collect();
            let jobs: Vec<Value> = all
                .iter()
                .skip(offset)
                .take(limit)
                .map(|r| self.fleet_view(r))
                .collect();
            return Ok(Reply::json(
                200,
                &json!({ "jobs": jobs, "total": all.len(), "limit": limit, "offset": offset }),
            ));
        }
        let (jobs, total) = match self.engine.history() {
            Some(history) => {
                let records = history.list(limit, offset, kind).map_err(internal)?;
                let total = history.count(kind).map_err(internal)?;
                let jobs = records
                    .iter()
                    .map(|r| match self.engine.snapshot(r.id) {
                        Some(s) => self.snapshot_view(&s),
                        None => self.record_view(r),
                    })
                    .collect::<Vec<_>>();
                (jobs, total)
            }
            None => {
                let all: Vec<JobSnapshot> = self
                    .engine
                    .jobs()
                    .into_iter()
                    .rev()
                    .filter(|s| kind.is_none_or(|k| s.kind == k))
                    .collect();
                let total = all.len();
                let jobs = all
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|s| self.snapshot_view(s))
                    .collect();
                (jobs, total)
            }
        };
        Ok(Reply::json(
            200,
            &json!({ "jobs": jobs, "total": total, "limit": limit, "offset": offset }),
        ))
    }

    pub(super) fn job_view(&self, id: JobId) -> Result<Option<Value>, ApiError> {
        if let Some(fleet) = &self.fleet {
            return Ok(fleet
                .record(id)
                .map_err(fleet_error)?
                .map(|r| self.fleet_view(&r)));
        }
        if let Some(s) = self.engine.snapshot(id) {
            return Ok(Some(self.snapshot_view(&s)));
        }
        match self.engine.history() {
            Some(h) => Ok(h.get(id).map_err(internal)?.map(|r| self.record_view(&r))),
            None => Ok(None),
        }
    }

    pub(super) fn snapshot_view(&self, s: &JobSnapshot) -> Value {
        let files = s.output.as_ref().map(|o| o.files.as_slice()).unwrap_or(&[]);
        view(ViewParts {
            id: s.id,
            kind: s.kind,
            label: &s.label,
            state: s.state,
            progress: json!({ "stage": s.stage, "fraction": s.fraction, "message": self.redact(&s.message) }),
            created_at_ms: system_time_ms(s.queued_at),
            started_at_ms: s.started_at.map(system_time_ms),
            finished_at_ms: s.finished_at.map(system_time_ms),
            timings: json!({ "queue_secs": s.queue_secs, "run_secs": s.run_secs, "stages": s.stages }),
            quality: s.output.as_ref().and_then(|o| o.quality),
            summary: s.output.as_ref().map_or(Value::Null, |o| o.summary.clone()),
            error: s
                .failure
                .as_ref()
                .map(|f| json!({ "reason": f.reason, "message": self.redact(&f.message) })),
            files,
        })
    }

    /// A fleet job as `GET /api/jobs/{id}` shows it, with where it ran.
    fn fleet_view(&self, r: &FleetRecord) -> Value {
        let files: Vec<PathBuf> = r.files.iter().map(PathBuf::from).collect();
        let queue_secs = r
            .started_at_ms
            .or(r.finished_at_ms)
            .map(|t| (t - r.created_at_ms).max(0) as f64 / 1000.0);
        let mut v = view(ViewParts {
            id: r.id,
            kind: r.kind,
            label: &r.label,
            state: r.state,
            progress: json!({ "stage": r.stage, "fraction": r.fraction, "message": r.message }),
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            timings: json!({ "queue_secs": queue_secs, "run_secs": r.run_secs, "stages": r.stages }),
            quality: r.quality,
            summary: r.summary.clone(),
            error: r
                .error
                .as_ref()
                .map(|e| json!({ "reason": e.reason, "message": e.message })),
            files: &files,
        });
        v["fleet"] = json!({
            "priority": r.priority,
            "method": r.method,
            "front": r.front,
            "worker": r.worker,
            "attempts": r.attempts,
            "redeliveries": r.redeliveries(),
        });
        v
    }

    fn record_view(&self, r: &JobRecord) -> Value {
        let done = r.state == JobState::Succeeded;
        view(ViewParts {
            id: r.id,
            kind: r.kind,
            label: &r.label,
            state: r.state,
            progress: json!({ "stage": "", "fraction": if done { 1.0 } else { 0.0 }, "message": "" }),
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            timings: json!({ "queue_secs": r.queue_secs, "run_secs": r.duration_secs, "stages": r.stage_secs }),
            quality: r.quality,
            summary: r.summary.clone(),
            error: match (&r.error_reason, &r.error_message, r.state) {
                (None, None, JobState::Interrupted) => Some(json!({
                    "reason": "interrupted",
                    "message": "the server stopped while this job ran; submit it again",
                })),
                (None, None, _) => None,
                (reason, message, _) => Some(json!({
                    "reason": reason.as_deref().unwrap_or("other"),
                    "message": self.redact(message.as_deref().unwrap_or("")),
                })),
            },
            files: &r.outputs,
        })
    }

    /// Job messages may name files; the client gets no local paths.
    pub(super) fn redact(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for dir in [&self.data_dir_canonical, &self.data_dir] {
            let d = dir.to_string_lossy();
            if !d.is_empty() {
                out = out.replace(d.as_ref(), "<data dir>");
            }
        }
        out
    }

    fn cancel(&self, id: JobId) -> Result<Reply, ApiError> {
        if let Some(fleet) = &self.fleet {
            let record = fleet
                .cancel(id)
                .map_err(fleet_error)?
                .ok_or_else(|| no_job(id.0))?;
            return match record.state {
                JobState::Cancelled => Ok(Reply::json(200, &self.fleet_view(&record))),
                JobState::Running => Err(ApiError::new(
                    409,
                    "job_running",
                    "the job is running on a fleet worker and can no longer be cancelled",
                )),
                _ => Err(ApiError::new(
                    409,
                    "job_finished",
                    "the job has already finished and cannot be cancelled",
                )),
            };
        }
        if self.engine.cancel(id) {
            let view = self.job_view(id)?.unwrap_or(Value::Null);
            let done = view.get("state").and_then(Value::as_str) == Some("cancelled");
            return Ok(Reply::json(if done { 200 } else { 202 }, &view));
        }
        match self.job_view(id)? {
            Some(_) => Err(ApiError::new(
                409,
                "job_finished",
                "the job has already finished and cannot be cancelled",
            )),
            None => Err(no_job(id.0)),
        }
    }

    // ---- results ------------------------------------------------------

    fn result(&self, id: JobId, url: &str) -> Result<Reply, ApiError> {
        let params = validate::query(url)?;
        validate::only_known(&params, &["file"])?;
        if let Some(fleet) = &self.fleet {
            return self.fleet_result(fleet, id, params.get("file"));
        }
        let (state, files) = match self.engine.snapshot(id) {
            Some(s) => (s.state, s.output.map(|o| o.files).unwrap_or_default()),
            None => match self.engine.history() {
                Some(h) => match h.get(id).map_err(internal)? {
                    Some(r) => (r.state, r.outputs),
                    None => return Err(no_job(id.0)),
                },
                None => return Err(no_job(id.0)),
            },
        };
        if state != JobState::Succeeded {
            return Err(ApiError::new(
                409,
                "job_not_succeeded",
                format!("the job is {state}; results exist only for succeeded jobs"),
            ));
        }
        let wanted = params.get("file");
        let not_found = || {
            ApiError::new(
                404,
                "result_not_found",
                "the job has no such result file; GET /api/jobs/{id} lists its outputs",
            )
        };
        let path = files
            .iter()
            .find(|p| match wanted {
                Some(name) => p
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy() == name.as_str()),
                None => true,
            })
            .ok_or_else(not_found)?;
        // The recorded path must still resolve inside the data dir: a record
        // (or a symlink) pointing elsewhere is never served.
        let resolved = path.canonicalize().map_err(|_| not_found())?;
        if !resolved.starts_with(&self.data_dir_canonical) || !resolved.is_file() {
            return Err(not_found());
        }
        let file = std::fs::File::open(&resolved).map_err(|_| not_found())?;
        let name = resolved
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = resolved
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(Reply {
            status: 200,
            content_type: content_type_for(&ext),
            body: Vec::new(),
            extra_headers: vec![(
                "Content-Disposition",
                format!(
                    "attachment; filename=\"{}\"",
                    name.replace(['"', '\\', '\r', '\n'], "_")
                ),
            )],
            file: Some(file),
        })
    }
}

impl Api {
    fn fleet_result(
        &self,
        fleet: &Fleet,
        id: JobId,
        wanted: Option<&String>,
    ) -> Result<Reply, ApiError> {
        let record = fleet
            .record(id)
            .map_err(fleet_error)?
            .ok_or_else(|| no_job(id.0))?;
        if record.state != JobState::Succeeded {
            return Err(ApiError::new(
                409,
                "job_not_succeeded",
                format!(
                    "the job is {}; results exist only for succeeded jobs",
                    record.state
                ),
            ));
        }
        let not_found = || {
            ApiError::new(
                404,
                "result_not_found",
                "the job has no such result file; GET /api/jobs/{id} lists its outputs",
            )
        };
        let name = record
            .files
            .iter()
            .find(|f| wanted.is_none_or(|w| *f == w))
            .ok_or_else(not_found)?;
        let body = fleet
            .result_bytes(id, name)
            .map_err(fleet_error)?
            .ok_or_else(not_found)?;
        let ext = Path::new(name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(Reply {
            status: 200,
            content_type: content_type_for(&ext),
            body,
            extra_headers: vec![(
                "Content-Disposition",
                format!(
                    "attachment; filename=\"{}\"",
                    name.replace(['"', '\\', '\r', '\n'], "_")
                ),
            )],
            file: None,
        })
    }
}

/// The content type of a result file by its extension.
pub fn content_type_for(ext: &str) -> &'static str {
    match ext {
        "glb" => "model/gltf-binary",
        "gltf" => "model/gltf+json",
        "obj" => "model/obj",
        "mtl" => "model/mtl",
        "stl" => "model/stl",
        "ply" => "application/octet-stream",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    }
}

struct ViewParts<'a> {
    id: JobId,
    kind: JobKind,
    label: &'a str,
    state: JobState,
    progress: Value,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    timings: Value,
    quality: Option<f32>,
    summary: Value,
    error: Option<Value>,
    files: &'a [PathBuf],
}

fn view(p: ViewParts<'_>) -> Value {
    let base = format!("/api/jobs/{}", p.id);
    let outputs: Vec<Value> = p
        .files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|name| {
            let name = name.to_string_lossy();
            json!({ "file": name, "url": format!("{base}/result?file={}", percent_encode(&name)) })
        })
        .collect();
    let succeeded = p.state == JobState::Succeeded;
    json!({
        "id": p.id,
        "kind": p.kind.as_str(),
        "label": p.label,
        "state": p.state,
        "progress": p.progress,
        "created_at_ms": p.created_at_ms,
        "started_at_ms": p.started_at_ms,
        "finished_at_ms": p.finished_at_ms,
        "timings": p.timings,
        "quality": p.quality,
        "summary": p.summary,
        "error": p.error,
        "outputs": outputs,
        "links": {
            "self": base,
            "result": if succeeded { Some(format!("{base}/result")) } else { None },
        },
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn preflight(origin: &str) -> Reply {
    Reply {
        status: 204,
        content_type: "text/plain",
        body: Vec::new(),
        extra_headers: vec![
            ("Access-Control-Allow-Origin", origin.to_owned()),
            (
                "Access-Control-Allow-Methods",
                "GET, HEAD, POST, DELETE, OPTIONS".to_owned(),
            ),
            (
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type".to_owned(),
            ),
            ("Access-Control-Max-Age", "600".to_owned()),
            ("Vary", "Origin".to_owned()),
        ],
        file: None,
    }
}

fn accepted(id: JobId) -> Reply {
    let location = format!("/api/jobs/{id}");
    let mut reply = Reply::json(
        202,
        &json!({ "id": id, "state": "queued", "location": location }),
    );
    reply.extra_headers.push(("Location", location));
    reply
}

pub(super) fn no_job(id: i64) -> ApiError {
    ApiError::new(
        404,
        "job_not_found",
        format!("there is no job {id}; GET /api/jobs lists the jobs"),
    )
}

fn queue_full() -> ApiError {
    ApiError::new(503, "queue_full", "the job queue is full; retry later")
        .retry_after(QUEUE_FULL_RETRY_SECS)
}

pub(super) fn internal(err: impl std::fmt::Display) -> ApiError {
    tracing::error!("API request failed: {err:#}");
    ApiError::new(
        500,
        "internal_error",
        "the server could not complete the request; see its log",
    )
}

pub(super) fn fleet_error(err: FleetError) -> ApiError {
    match err {
        FleetError::QueueFull { .. } => queue_full(),
        FleetError::NotShippable(_) => ApiError::new(422, "not_shippable", err.to_string()),
        FleetError::Unavailable(_)
        | FleetError::Unreachable { .. }
        | FleetError::NoJetStream { .. } => {
            tracing::warn!("fleet queue: {err}");
            ApiError::new(
                503,
                "queue_unavailable",
                "the fleet queue cannot be reached; retry shortly",
            )
            .retry_after(QUEUE_FULL_RETRY_SECS)
        }
        other => internal(other),
    }
}

pub(super) fn engine_error(err: EngineError) -> ApiError {
    match err {
        EngineError::QueueFull { .. } => queue_full(),
        EngineError::NoRunner(kind) => ApiError::new(
            503,
            "model_unavailable",
            match kind {
                JobKind::TextToImage => {
                    "this server cannot run text-to-image jobs: it was built or started without \
                     a Stable Diffusion model; install one with `orfeas models download sd-turbo` \
                     and restart"
                }
                JobKind::ImageTo3d => "this server cannot run image-to-3D jobs",
            },
        ),
        EngineError::Refused(failure) => match failure.reason {
            "model_missing" | "model_unavailable" | "device" => {
                ApiError::new(503, "model_unavailable", failure.message)
            }
            "invalid_parameter" => ApiError::new(400, "invalid_parameter", failure.message),
            _ => ApiError::new(503, "unavailable", failure.message),
        },
        EngineError::ShuttingDown => ApiError::new(
            503,
            "shutting_down",
            "the server is shutting down; retry shortly",
        )
        .retry_after(10),
        other => internal(other),
    }
}

/// True when a Content-Type value names `mime` (parameters ignored).
pub(super) fn mime_is(content_type: &str, mime: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(mime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_with_bounded_labels() {
        assert_eq!(
            route("GET", "/api/jobs/12/result"),
            (Route::Api(ApiRoute::JobResult(12)), "/api/jobs/{id}/result")
        );
        assert_eq!(
            route("DELETE", "/api/jobs/3"),
            (Route::Api(ApiRoute::CancelJob(3)), "/api/jobs/{id}")
        );
        assert_eq!(
            route("GET", "/api/jobs/abc"),
            (Route::Api(ApiRoute::NotFound), "/api/jobs/{id}")
        );
        assert_eq!(
            route("PUT", "/api/jobs"),
            (
                Route::Api(ApiRoute::MethodNotAllowed("GET, HEAD")),
                "/api/jobs"
            )
        );
        assert_eq!(
            route("GET", "/api/nope/../../etc"),
            (Route::Api(ApiRoute::NotFound), "other")
        );
        assert_eq!(
            route("GET", "/api/jobs/7/events"),
            (Route::Api(ApiRoute::JobEvents(7)), "/api/jobs/{id}/events")
        );
        assert_eq!(
            route("POST", "/api/jobs/7/events"),
            (
                Route::Api(ApiRoute::MethodNotAllowed("GET, HEAD")),
                "/api/jobs/{id}/events"
            )
        );
        assert_eq!(
            route("POST", "/sdapi/v1/txt2img"),
            (Route::Api(ApiRoute::Txt2Img), "/sdapi/v1/txt2img")
        );
        assert_eq!(
            route("POST", "/sdapi/v1/img2img"),
            (Route::Api(ApiRoute::NotFound), "other")
        );
    }

    #[test]
    fn file_names_in_links_are_escaped() {
        assert_eq!(percent_encode("a b&c.glb"), "a%20b%26c.glb");
    }
}

//! The metrics contract of DESIGN.md: 21 metrics in one registry, every known
//! label combination created at start-up, one function per event the app has.

use prometheus::{
    CounterVec, Encoder as _, Gauge, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry,
    TextEncoder,
};

/// What a generation makes; the `kind` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GenerationKind {
    TextToImage,
    ImageTo3d,
}

impl GenerationKind {
    pub const ALL: [GenerationKind; 2] = [GenerationKind::TextToImage, GenerationKind::ImageTo3d];

    /// Same spelling as `jobs::JobKind::as_str`.
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationKind::TextToImage => "text_to_image",
            GenerationKind::ImageTo3d => "image_to_3d",
        }
    }
}

/// How a generation ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    Succeeded {
        duration_secs: f64,
        /// 0..1 when the job computed one.
        quality_score: Option<f64>,
        /// `(format, size_bytes)` of each file written (`png`, `glb`, ...).
        file_sizes: &'a [(&'a str, u64)],
    },
    Failed {
        /// A bounded reason; anything not in [`FAILURE_REASONS`] counts as `other`.
        reason: &'a str,
        duration_secs: f64,
    },
}

/// 3D output formats (`format` label of `model_3d_*`).
pub const MESH_FORMATS: [&str; 4] = ["glb", "obj", "ply", "stl"];
/// Quality presets of image→3D.
pub const QUALITIES: [&str; 3] = ["draft", "standard", "high"];
/// Text→image styles; unknown styles count as `other`.
pub const STYLES: [&str; 7] = [
    "none",
    "photographic",
    "digital-art",
    "anime",
    "3d-model",
    "pixel-art",
    "other",
];
/// Image formats of text→image outputs.
pub const IMAGE_FORMATS: [&str; 1] = ["png"];
/// Failure reasons; the job engine's `JobFailure::reason` values map onto these.
pub const FAILURE_REASONS: [&str; 9] = [
    "invalid_input",
    "invalid_image",
    "model_missing",
    "out_of_memory",
    "timeout",
    "panic",
    "io",
    "cancelled",
    "other",
];
/// `status` label of the per-kind generation counters.
pub const STATUSES: [&str; 2] = ["success", "failure"];
/// HTTP methods the router knows; others count as `OTHER`.
pub const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "OTHER"];
/// `(method, endpoint)` pairs the HTTP API serves. Endpoints are route templates,
/// never raw paths, so the label set stays bounded.
pub const ROUTES: [(&str, &str); 11] = [
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("POST", "/api/text-to-image"),
    ("POST", "/api/image-to-3d"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{id}"),
    ("GET", "/api/jobs/{id}/result"),
    ("GET", "/api/jobs/{id}/events"),
    ("DELETE", "/api/jobs/{id}"),
    ("POST", "/sdapi/v1/txt2img"),
    ("GET", "other"),
];
/// Every `endpoint` label value.
pub const ENDPOINTS: [&str; 10] = [
    "/health",
    "/metrics",
    "/api/text-to-image",
    "/api/image-to-3d",
    "/api/jobs",
    "/api/jobs/{id}",
    "/api/jobs/{id}/result",
    "/api/jobs/{id}/events",
    "/sdapi/v1/txt2img",
    "other",
];
/// `errors_total{type}` values.
pub const ERROR_TYPES: [&str; 7] = [
    "bad_request",
    "validation",
    "not_found",
    "rate_limited",
    "unauthorized",
    "server_error",
    "generation",
];
/// `endpoint` label of errors that do not come from an HTTP request.
pub const NO_ENDPOINT: &str = "none";
/// `validation_errors_total{field}` values; unknown fields count as `other`.
pub const VALIDATION_FIELDS: [&str; 13] = [
    "body",
    "prompt",
    "negative_prompt",
    "image",
    "steps",
    "size",
    "seed",
    "guidance",
    "model",
    "style",
    "format",
    "quality",
    "other",
];

/// Duration buckets (seconds): sub-second HTTP up to two-minute generations,
/// with edges at the alert thresholds 5 s and 30 s.
pub const DURATION_BUCKETS_SECS: [f64; 17] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0,
    120.0,
];
/// Quality score buckets: 0..1 in tenths.
pub const QUALITY_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// File size buckets: 1 KiB to 1 GiB in powers of four.
pub const FILE_SIZE_BUCKETS_BYTES: [f64; 11] = [
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

/// A metric's declared type, for the contract table and its tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// One row of the contract.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// The contract of DESIGN.md, the single place where names, types and labels live.
pub const CONTRACT: [MetricDef; 21] = [
    def(
        "http_requests_total",
        MetricType::Counter,
        &["method", "endpoint", "status"],
        "HTTP requests served, by method, route template and status code.",
    ),
    def(
        "http_request_duration_seconds",
        MetricType::Histogram,
        &["method", "endpoint"],
        "Time from request received to response written, in seconds.",
    ),
    def(
        "errors_total",
        MetricType::Counter,
        &["type", "endpoint"],
        "Errors by type and route template (endpoint=\"none\" outside HTTP).",
    ),
    def(
        "validation_errors_total",
        MetricType::Counter,
        &["endpoint", "field"],
        "Rejected request fields, by route template and field.",
    ),
    def(
        "rate_limit_rejections_total",
        MetricType::Counter,
        &["endpoint"],
        "Requests rejected by the rate limiter (429).",
    ),
    def(
        "text_to_image_generations_total",
        MetricType::Counter,
        &["style", "status"],
        "Finished text-to-image generations by style and status.",
    ),
    def(
        "text_to_image_duration_seconds",
        MetricType::Histogram,
        &["style"],
        "Duration of successful text-to-image generations, in seconds.",
    ),
    def(
        "model_3d_generations_total",
        MetricType::Counter,
        &["format", "quality", "status"],
        "Finished image-to-3D generations by format, quality preset and status.",
    ),
    def(
        "model_3d_duration_seconds",
        MetricType::Histogram,
        &["format", "quality"],
        "Duration of successful image-to-3D generations, in seconds.",
    ),
    def(
        "successful_generations_total",
        MetricType::Counter,
        &["kind"],
        "Generations that succeeded, by kind.",
    ),
    def(
        "failed_generations_total",
        MetricType::Counter,
        &["kind", "reason"],
        "Generations that failed, by kind and bounded reason.",
    ),
    def(
        "cpu_usage_percent",
        MetricType::Gauge,
        &["core"],
        "CPU usage 0-100 per core; core=\"total\" is the average.",
    ),
    def(
        "memory_usage_bytes",
        MetricType::Gauge,
        &["type"],
        "System memory: total, used, available.",
    ),
    def(
        "disk_usage_bytes",
        MetricType::Gauge,
        &["type", "mount"],
        "Disk space of the data directory's mount: total, used, free.",
    ),
    def(
        "gpu_usage_percent",
        MetricType::Gauge,
        &["gpu"],
        "GPU utilisation 0-100 per GPU (NVIDIA, via NVML).",
    ),
    def(
        "gpu_memory_bytes",
        MetricType::Gauge,
        &["gpu", "type"],
        "GPU memory per GPU: total, used, free.",
    ),
    def(
        "app_uptime_seconds",
        MetricType::Gauge,
        &[],
        "Seconds since the studio started.",
    ),
    def(
        "active_jobs",
        MetricType::Gauge,
        &[],
        "Generation jobs currently running.",
    ),
    def(
        "concurrent_requests",
        MetricType::Gauge,
        &[],
        "HTTP requests currently being served.",
    ),
    def(
        "generation_quality_score",
        MetricType::Histogram,
        &["kind"],
        "Quality score 0..1 of successful generations.",
    ),
    def(
        "generated_file_size_bytes",
        MetricType::Histogram,
        &["kind", "format"],
        "Size of generated files in bytes.",
    ),
];

const fn def(
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

/// Creating the registry failed: a programming error in the contract table.
#[derive(Debug, thiserror::Error)]
#[error("metric registry: {0}; the metric contract in telemetry/metrics.rs is inconsistent")]
pub struct MetricsError(#[from] prometheus::Error);

/// All metrics of the contract, registered in one [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests_total: CounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub errors_total: CounterVec,
    pub validation_errors_total: CounterVec,
    pub rate_limit_rejections_total: CounterVec,
    pub text_to_image_generations_total: CounterVec,
    pub text_to_image_duration_seconds: HistogramVec,
    pub model_3d_generations_total: CounterVec,
    pub model_3d_duration_seconds: HistogramVec,
    pub successful_generations_total: CounterVec,
    pub failed_generations_total: CounterVec,
    pub cpu_usage_percent: GaugeVec,
    pub memory_usage_bytes: GaugeVec,
    pub disk_usage_bytes: GaugeVec,
    pub gpu_usage_percent: GaugeVec,
    pub gpu_memory_bytes: GaugeVec,
    pub app_uptime_seconds: Gauge,
    pub active_jobs: Gauge,
    pub concurrent_requests: Gauge,
    pub generation_quality_score: HistogramVec,
    pub generated_file_size_bytes: HistogramVec,
}

fn contract(name: &str) -> &'static MetricDef {
    // Invariant: only called with names from CONTRACT (below, in `Metrics::new`).
    #[allow(clippy::expect_used)]
    CONTRACT
        .iter()
        .find(|d| d.name == name)
        .expect("metric name is in CONTRACT")
}

fn counter(registry: &Registry, name: &str) -> Result<CounterVec, MetricsError> {
    let d = contract(name);
    let m = CounterVec::new(Opts::new(d.name, d.help), d.labels)?;
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

fn gauge_vec(registry: &Registry, name: &str) -> Result<GaugeVec, MetricsError> {
    let d = contract(name);
    let m = GaugeVec::new(Opts::new(d.name, d.help), d.labels)?;
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

fn gauge(registry: &Registry, name: &str) -> Result<Gauge, MetricsError> {
    let d = contract(name);
    let m = Gauge::with_opts(Opts::new(d.name, d.help))?;
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

fn histogram(
    registry: &Registry,
    name: &str,
    buckets: &[f64],
) -> Result<HistogramVec, MetricsError> {
    let d = contract(name);
    let m = HistogramVec::new(
        HistogramOpts::new(d.name, d.help).buckets(buckets.to_vec()),
        d.labels,
    )?;
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

/// Maps a value onto a bounded list, `other` when unknown.
fn bounded<'a>(value: &str, known: &[&'a str]) -> &'a str {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(value))
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    /// Creates the registry and every series of the contract at zero.
    pub fn new() -> Result<Metrics, MetricsError> {
        let r = Registry::new();
        let m = Metrics {
            http_requests_total: counter(&r, "http_requests_total")?,
            http_request_duration_seconds: histogram(
                &r,
                "http_request_duration_seconds",
                &DURATION_BUCKETS_SECS,
            )?,
            errors_total: counter(&r, "errors_total")?,
            validation_errors_total: counter(&r, "validation_errors_total")?,
            rate_limit_rejections_total: counter(&r, "rate_limit_rejections_total")?,
            text_to_image_generations_total: counter(&r, "text_to_image_generations_total")?,
            text_to_image_duration_seconds: histogram(
                &r,
                "text_to_image_duration_seconds",
                &DURATION_BUCKETS_SECS,
            )?,
            model_3d_generations_total: counter(&r, "model_3d_generations_total")?,
            model_3d_duration_seconds: histogram(
                &r,
                "model_3d_duration_seconds",
                &DURATION_BUCKETS_SECS,
            )?,
            successful_generations_total: counter(&r, "successful_generations_total")?,
            failed_generations_total: counter(&r, "failed_generations_total")?,
            cpu_usage_percent: gauge_vec(&r, "cpu_usage_percent")?,
            memory_usage_bytes: gauge_vec(&r, "memory_usage_bytes")?,
            disk_usage_bytes: gauge_vec(&r, "disk_usage_bytes")?,
            gpu_usage_percent: gauge_vec(&r, "gpu_usage_percent")?,
            gpu_memory_bytes: gauge_vec(&r, "gpu_memory_bytes")?,
            app_uptime_seconds: gauge(&r, "app_uptime_seconds")?,
            active_jobs: gauge(&r, "active_jobs")?,
            concurrent_requests: gauge(&r, "concurrent_requests")?,
            generation_quality_score: histogram(&r, "generation_quality_score", &QUALITY_BUCKETS)?,
            generated_file_size_bytes: histogram(
                &r,
                "generated_file_size_bytes",
                &FILE_SIZE_BUCKETS_BYTES,
            )?,
            registry: r,
        };
        m.init_known_series();
        Ok(m)
    }

    /// Touches every known label combination so each series exists (at zero)
    /// before its first event; `rate()` and `increase()` then see the first one.
    fn init_known_series(&self) {
        for (method, endpoint) in ROUTES {
            self.http_requests_total
                .with_label_values(&[method, endpoint, "200"]);
            self.http_request_duration_seconds
                .with_label_values(&[method, endpoint]);
        }
        for endpoint in ENDPOINTS.iter().chain([&NO_ENDPOINT]) {
            for ty in ERROR_TYPES {
                self.errors_total.with_label_values(&[ty, endpoint]);
            }
        }
        for endpoint in ENDPOINTS {
            self.rate_limit_rejections_total
                .with_label_values(&[endpoint]);
            for field in VALIDATION_FIELDS {
                self.validation_errors_total
                    .with_label_values(&[endpoint, field]);
            }
        }
        for style in STYLES {
            self.text_to_image_duration_seconds
                .with_label_values(&[style]);
            for status in STATUSES {
                self.text_to_image_generations_total
                    .with_label_values(&[style, status]);
            }
        }
        for format in MESH_FORMATS {
            for quality in QUALITIES {
                self.model_3d_duration_seconds
                    .with_label_values(&[format, quality]);
                for status in STATUSES {
                    self.model_3d_generations_total
                        .with_label_values(&[format, quality, status]);
                }
            }
        }
        for kind in GenerationKind::ALL {
            let k = kind.as_str();
            self.successful_generations_total.with_label_values(&[k]);
            self.generation_quality_score.with_label_values(&[k]);
            for reason in FAILURE_REASONS {
                self.failed_generations_total
                    .with_label_values(&[k, reason]);
            }
            let formats: &[&str] = match kind {
                GenerationKind::TextToImage => &IMAGE_FORMATS,
                GenerationKind::ImageTo3d => &MESH_FORMATS,
            };
            for format in formats {
                self.generated_file_size_bytes
                    .with_label_values(&[k, format]);
            }
        }
        for ty in ["total", "used", "available"] {
            self.memory_usage_bytes.with_label_values(&[ty]);
        }
        self.cpu_usage_percent.with_label_values(&["total"]);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format 0.0.4 (ends with a newline). Families
    /// without series (GPU metrics on a machine without an NVIDIA driver) are
    /// still declared with HELP and TYPE, so scrapers see the whole contract.
    pub fn encode(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(96 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure would be a
        // malformed family, which `Metrics::new` rules out.
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("encoding metrics failed: {err:#}");
        }
        let mut text = String::from_utf8(out).unwrap_or_default();
        for def in CONTRACT {
            if !families.iter().any(|f| f.name() == def.name) {
                text.push_str(&format!(
                    "# HELP {} {}\n# TYPE {} {}\n",
                    def.name,
                    def.help,
                    def.name,
                    def.kind.as_str()
                ));
            }
        }
        text
    }

    /// A generation finished. `variant` is the 3D format (`glb`...) for image→3D
    /// or the style for text→image; `quality` the image→3D preset (ignored for
    /// text→image). Keeps successful + failed = text-to-image + 3D generations.
    pub fn record_generation(
        &self,
        kind: GenerationKind,
        variant: &str,
        quality: &str,
        outcome: Outcome<'_>,
    ) {
        let k = kind.as_str();
        let status = match outcome {
            Outcome::Succeeded { .. } => "success",
            Outcome::Failed { .. } => "failure",
        };
        match kind {
            GenerationKind::TextToImage => {
                let style = bounded(variant, &STYLES);
                self.text_to_image_generations_total
                    .with_label_values(&[style, status])
                    .inc();
                if let Outcome::Succeeded { duration_secs, .. } = outcome {
                    self.text_to_image_duration_seconds
                        .with_label_values(&[style])
                        .observe(duration_secs.max(0.0));
                }
            }
            GenerationKind::ImageTo3d => {
                // An unknown format or preset is a bug upstream; count it under
                // the defaults rather than growing the label set.
                let format = MESH_FORMATS
                    .iter()
                    .find(|f| f.eq_ignore_ascii_case(variant))
                    .copied()
                    .unwrap_or("glb");
                let quality = QUALITIES
                    .iter()
                    .find(|q| q.eq_ignore_ascii_case(quality))
                    .copied()
                    .unwrap_or("standard");
                self.model_3d_generations_total
                    .with_label_values(&[format, quality, status])
                    .inc();
                if let Outcome::Succeeded { duration_secs, .. } = outcome {
                    self.model_3d_duration_seconds
                        .with_label_values(&[format, quality])
                        .observe(duration_secs.max(0.0));
                }
            }
        }
        match outcome {
            Outcome::Succeeded {
                quality_score,
                file_sizes,
                ..
            } => {
                self.successful_generations_total
                    .with_label_values(&[k])
                    .inc();
                if let Some(score) = quality_score.filter(|s| s.is_finite()) {
                    self.generation_quality_score
                        .with_label_values(&[k])
                        .observe(score.clamp(0.0, 1.0));
                }
                let formats: &[&str] = match kind {
                    GenerationKind::TextToImage => &IMAGE_FORMATS,
                    GenerationKind::ImageTo3d => &MESH_FORMATS,
                };
                for (format, size_bytes) in file_sizes {
                    // Side files (MTL, textures) are not a format of their own.
                    if let Some(f) = formats.iter().find(|f| f.eq_ignore_ascii_case(format)) {
                        self.generated_file_size_bytes
                            .with_label_values(&[k, f])
                            .observe(*size_bytes as f64);
                    }
                }
            }
            Outcome::Failed { reason, .. } => {
                let reason = bounded(reason, &FAILURE_REASONS);
                self.failed_generations_total
                    .with_label_values(&[k, reason])
                    .inc();
                self.errors_total
                    .with_label_values(&["generation", NO_ENDPOINT])
                    .inc();
            }
        }
    }

    pub fn job_started(&self) {
        self.active_jobs.inc();
    }

    pub fn job_finished(&self) {
        self.active_jobs.dec();
    }

    /// An HTTP request was answered. `endpoint` must be a route template from
    /// [`ENDPOINTS`] (anything else counts as `other`).
    pub fn observe_http(&self, method: &str, endpoint: &str, status: u16, duration_secs: f64) {
        let method = METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("OTHER");
        let endpoint = bounded(endpoint, &ENDPOINTS);
        let status_text = status.to_string();
        self.http_requests_total
            .with_label_values(&[method, endpoint, status_text.as_str()])
            .inc();
        self.http_request_duration_seconds
            .with_label_values(&[method, endpoint])
            .observe(duration_secs.max(0.0));
        if let Some(ty) = error_type_for_status(status) {
            self.record_error(ty, endpoint);
        }
    }

    /// Counts an error; `ty` is one of [`ERROR_TYPES`] (else `server_error`).
    pub fn record_error(&self, ty: &str, endpoint: &str) {
        let ty = ERROR_TYPES
            .iter()
            .find(|t| **t == ty)
            .copied()
            .unwrap_or("server_error");
        let endpoint = if endpoint == NO_ENDPOINT {
            NO_ENDPOINT
        } else {
            bounded(endpoint, &ENDPOINTS)
        };
        self.errors_total.with_label_values(&[ty, endpoint]).inc();
    }

    pub fn record_validation_error(&self, endpoint: &str, field: &str) {
        self.validation_errors_total
            .with_label_values(&[
                bounded(endpoint, &ENDPOINTS),
                bounded(field, &VALIDATION_FIELDS),
            ])
            .inc();
    }

    pub fn record_rate_limit_rejection(&self, endpoint: &str) {
        self.rate_limit_rejections_total
            .with_label_values(&[bounded(endpoint, &ENDPOINTS)])
            .inc();
    }

    pub fn request_started(&self) {
        self.concurrent_requests.inc();
    }

    pub fn request_finished(&self) {
        self.concurrent_requests.dec();
    }
}

/// The `errors_total{type}` an HTTP status counts as, if any.
pub fn error_type_for_status(status: u16) -> Option<&'static str> {
    match status {
        400 | 413 | 415 => Some("bad_request"),
        401 | 403 => Some("unauthorized"),
        404 | 405 => Some("not_found"),
        422 => Some("validation"),
        429 => Some("rate_limited"),
        400..=499 => Some("bad_request"),
        500..=599 => Some("server_error"),
        _ => None,
    }
}

//! The dashboard, defined once: the in-app Metrics tab draws these panels from
//! the derived series, and `monitoring` turns the same list into Grafana JSON.

use super::derive::{Agg, Expr, Matcher, sel};
use super::metrics::{ENDPOINTS, ERROR_TYPES, MESH_FORMATS, QUALITY_BUCKETS};

/// The dashboard's five rows, in display order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Row {
    SystemHealth,
    Requests,
    Generation,
    Resources,
    Business,
}

impl Row {
    pub const ALL: [Row; 5] = [
        Row::SystemHealth,
        Row::Requests,
        Row::Generation,
        Row::Resources,
        Row::Business,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Row::SystemHealth => "System health",
            Row::Requests => "Requests",
            Row::Generation => "Generation",
            Row::Resources => "Resources",
            Row::Business => "Business",
        }
    }
}

/// How a panel is drawn (in the app and in Grafana).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelKind {
    /// One big number (the newest value of the first series) plus a sparkline.
    Stat,
    TimeSeries,
    /// Shares of the series' newest values.
    Pie,
    /// One series per bucket band, drawn as cells.
    Heatmap,
    /// Newest values as bars.
    Bars,
}

/// A panel's unit; `grafana_unit` is Grafana's unit id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    PerSecond,
    Percent,
    Bytes,
    Count,
    Ratio,
}

impl Unit {
    pub fn grafana_unit(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::PerSecond => "reqps",
            Unit::Percent => "percent",
            Unit::Bytes => "bytes",
            Unit::Count => "short",
            Unit::Ratio => "percentunit",
        }
    }

    /// Short suffix for the in-app axis and stat text.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::PerSecond => "/s",
            Unit::Percent => "%",
            Unit::Bytes => "B",
            Unit::Count | Unit::Ratio => "",
        }
    }
}

/// One Grafana query of a panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// PromQL; `$__rate_interval`, `$__range` and the `$job`/`$instance`
    /// variables are Grafana's, filled in by it.
    pub promql: String,
    pub legend: String,
    /// Grafana's `format`: `time_series` or `heatmap`.
    pub heatmap: bool,
}

/// One in-app series of a panel.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesDef {
    /// Stable id: the key of [`super::Telemetry::series`] and of the SQLite rows.
    pub id: String,
    pub label: String,
    pub expr: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub id: &'static str,
    pub title: &'static str,
    pub row: Row,
    pub kind: PanelKind,
    pub unit: Unit,
    pub description: &'static str,
    pub targets: Vec<Target>,
    pub series: Vec<SeriesDef>,
}

/// The rate window of the in-app series (Grafana uses `$__rate_interval`).
pub const RATE_WINDOW_SECS: u32 = 60;

/// The label filter every Grafana query carries.
pub const SCOPE: &str = r#"job=~"$job", instance=~"$instance""#;

fn q(promql: &str, legend: &str) -> Target {
    Target {
        promql: promql.replace("SCOPE", SCOPE),
        legend: legend.to_owned(),
        heatmap: false,
    }
}

fn s(id: &str, label: &str, expr: Expr) -> SeriesDef {
    SeriesDef {
        id: id.to_owned(),
        label: label.to_owned(),
        expr,
    }
}

fn rate(metric: &'static str, m: &[Matcher]) -> Expr {
    Expr::Rate(sel(metric, m), RATE_WINDOW_SECS)
}

fn value(metric: &'static str, m: &[Matcher], agg: Agg) -> Expr {
    Expr::Value(sel(metric, m), agg)
}

fn quantile(q: f64, metric: &'static str) -> Expr {
    Expr::Quantile(q, sel(metric, &[]), RATE_WINDOW_SECS)
}

fn ratio_percent(metric: &'static str, part: &'static str, whole: &'static str) -> Expr {
    value(metric, &[Matcher::Eq("type", part)], Agg::Sum)
        .over(value(metric, &[Matcher::Eq("type", whole)], Agg::Sum))
        .scale(100.0)
}

#[allow(clippy::too_many_arguments)]
fn panel(
    id: &'static str,
    title: &'static str,
    row: Row,
    kind: PanelKind,
    unit: Unit,
    description: &'static str,
    targets: Vec<Target>,
    series: Vec<SeriesDef>,
) -> Panel {
    Panel {
        id,
        title,
        row,
        kind,
        unit,
        description,
        targets,
        series,
    }
}

/// Every panel of the dashboard, row by row.
pub fn panels() -> Vec<Panel> {
    use PanelKind::*;
    use Row::*;
    let quality_cells: Vec<SeriesDef> = QUALITY_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, upper)| {
            let lower = if i == 0 { 0.0 } else { QUALITY_BUCKETS[i - 1] };
            s(
                &format!("quality_score_band_{upper:.1}"),
                &format!("{lower:.1}-{upper:.1}"),
                Expr::BucketRate(
                    sel("generation_quality_score", &[]),
                    lower,
                    *upper,
                    RATE_WINDOW_SECS,
                ),
            )
        })
        .collect();
    vec![
        // System health
        panel(
            "uptime",
            "Uptime",
            SystemHealth,
            Stat,
            Unit::Seconds,
            "Seconds since the studio started.",
            vec![q("max(app_uptime_seconds{SCOPE})", "uptime")],
            vec![s(
                "uptime_secs",
                "uptime",
                value("app_uptime_seconds", &[], Agg::Max),
            )],
        ),
        panel(
            "requests_per_sec",
            "Requests/s",
            SystemHealth,
            Stat,
            Unit::PerSecond,
            "HTTP requests per second, all endpoints.",
            vec![q(
                "sum(rate(http_requests_total{SCOPE}[$__rate_interval]))",
                "requests/s",
            )],
            vec![s(
                "requests_per_sec",
                "requests/s",
                rate("http_requests_total", &[]),
            )],
        ),
        panel(
            "error_rate",
            "Error rate",
            SystemHealth,
            Stat,
            Unit::PerSecond,
            "Errors per second (HTTP errors and failed generations).",
            vec![q(
                "sum(rate(errors_total{SCOPE}[$__rate_interval]))",
                "errors/s",
            )],
            vec![s("errors_per_sec", "errors/s", rate("errors_total", &[]))],
        ),
        panel(
            "active_jobs",
            "Active jobs",
            SystemHealth,
            Stat,
            Unit::Count,
            "Generation jobs running now.",
            vec![q("sum(active_jobs{SCOPE})", "active jobs")],
            vec![s(
                "active_jobs",
                "active jobs",
                value("active_jobs", &[], Agg::Sum),
            )],
        ),
        // Requests
        panel(
            "request_rate_by_endpoint",
            "Request rate by endpoint",
            Requests,
            TimeSeries,
            Unit::PerSecond,
            "Requests per second for each route.",
            vec![q(
                "sum by (endpoint) (rate(http_requests_total{SCOPE}[$__rate_interval]))",
                "{{endpoint}}",
            )],
            ENDPOINTS
                .iter()
                .map(|e| {
                    s(
                        &format!("requests_per_sec:{e}"),
                        e,
                        rate("http_requests_total", &[Matcher::Eq("endpoint", e)]),
                    )
                })
                .collect(),
        ),
        panel(
            "request_latency",
            "Request latency p50 / p95",
            Requests,
            TimeSeries,
            Unit::Seconds,
            "HTTP latency quantiles from the duration histogram.",
            vec![
                q(
                    "histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket{SCOPE}[$__rate_interval])))",
                    "p50",
                ),
                q(
                    "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{SCOPE}[$__rate_interval])))",
                    "p95",
                ),
            ],
            vec![
                s(
                    "http_latency_p50_secs",
                    "p50",
                    quantile(0.5, "http_request_duration_seconds"),
                ),
                s(
                    "http_latency_p95_secs",
                    "p95",
                    quantile(0.95, "http_request_duration_seconds"),
                ),
            ],
        ),
        panel(
            "errors_by_type",
            "Errors by type",
            Requests,
            TimeSeries,
            Unit::PerSecond,
            "Errors per second by type.",
            vec![q(
                "sum by (type) (rate(errors_total{SCOPE}[$__rate_interval]))",
                "{{type}}",
            )],
            ERROR_TYPES
                .iter()
                .map(|t| {
                    s(
                        &format!("errors_per_sec:{t}"),
                        t,
                        rate("errors_total", &[Matcher::Eq("type", t)]),
                    )
                })
                .collect(),
        ),
        panel(
            "status_codes",
            "Status codes",
            Requests,
            TimeSeries,
            Unit::PerSecond,
            "Responses per second by status code.",
            vec![q(
                "sum by (status) (rate(http_requests_total{SCOPE}[$__rate_interval]))",
                "{{status}}",
            )],
            ["2", "3", "4", "5"]
                .iter()
                .map(|c| {
                    s(
                        &format!("responses_per_sec:{c}xx"),
                        &format!("{c}xx"),
                        rate("http_requests_total", &[Matcher::Prefix("status", c)]),
                    )
                })
                .collect(),
        ),
        panel(
            "concurrent_requests",
            "Concurrent requests",
            Requests,
            TimeSeries,
            Unit::Count,
            "Requests being served at once.",
            vec![q("sum(concurrent_requests{SCOPE})", "in flight")],
            vec![s(
                "concurrent_requests",
                "in flight",
                value("concurrent_requests", &[], Agg::Sum),
            )],
        ),
        // Generation
        panel(
            "text_to_image_rate",
            "Text-to-image generations",
            Generation,
            TimeSeries,
            Unit::PerSecond,
            "Finished text-to-image generations per second by status.",
            vec![q(
                "sum by (status) (rate(text_to_image_generations_total{SCOPE}[$__rate_interval]))",
                "{{status}}",
            )],
            vec![
                s(
                    "text_to_image_per_sec:success",
                    "success",
                    rate(
                        "text_to_image_generations_total",
                        &[Matcher::Eq("status", "success")],
                    ),
                ),
                s(
                    "text_to_image_per_sec:failure",
                    "failure",
                    rate(
                        "text_to_image_generations_total",
                        &[Matcher::Eq("status", "failure")],
                    ),
                ),
            ],
        ),
        panel(
            "model_3d_rate",
            "Image-to-3D generations",
            Generation,
            TimeSeries,
            Unit::PerSecond,
            "Finished image-to-3D generations per second by status.",
            vec![q(
                "sum by (status) (rate(model_3d_generations_total{SCOPE}[$__rate_interval]))",
                "{{status}}",
            )],
            vec![
                s(
                    "model_3d_per_sec:success",
                    "success",
                    rate(
                        "model_3d_generations_total",
                        &[Matcher::Eq("status", "success")],
                    ),
                ),
                s(
                    "model_3d_per_sec:failure",
                    "failure",
                    rate(
                        "model_3d_generations_total",
                        &[Matcher::Eq("status", "failure")],
                    ),
                ),
            ],
        ),
        panel(
            "generation_durations",
            "Generation duration p50 / p95",
            Generation,
            TimeSeries,
            Unit::Seconds,
            "Duration quantiles of successful generations.",
            vec![
                q(
                    "histogram_quantile(0.5, sum by (le) (rate(text_to_image_duration_seconds_bucket{SCOPE}[$__rate_interval])))",
                    "text-to-image p50",
                ),
                q(
                    "histogram_quantile(0.95, sum by (le) (rate(text_to_image_duration_seconds_bucket{SCOPE}[$__rate_interval])))",
                    "text-to-image p95",
                ),
                q(
                    "histogram_quantile(0.5, sum by (le) (rate(model_3d_duration_seconds_bucket{SCOPE}[$__rate_interval])))",
                    "3D p50",
                ),
                q(
                    "histogram_quantile(0.95, sum by (le) (rate(model_3d_duration_seconds_bucket{SCOPE}[$__rate_interval])))",
                    "3D p95",
                ),
            ],
            vec![
                s(
                    "text_to_image_p50_secs",
                    "text-to-image p50",
                    quantile(0.5, "text_to_image_duration_seconds"),
                ),
                s(
                    "text_to_image_p95_secs",
                    "text-to-image p95",
                    quantile(0.95, "text_to_image_duration_seconds"),
                ),
                s(
                    "model_3d_p50_secs",
                    "3D p50",
                    quantile(0.5, "model_3d_duration_seconds"),
                ),
                s(
                    "model_3d_p95_secs",
                    "3D p95",
                    quantile(0.95, "model_3d_duration_seconds"),
                ),
            ],
        ),
        panel(
            "success_vs_failure",
            "Success vs failure",
            Generation,
            TimeSeries,
            Unit::PerSecond,
            "All generations per second, succeeded and failed.",
            vec![
                q(
                    "sum(rate(successful_generations_total{SCOPE}[$__rate_interval]))",
                    "succeeded",
                ),
                q(
                    "sum(rate(failed_generations_total{SCOPE}[$__rate_interval]))",
                    "failed",
                ),
            ],
            vec![
                s(
                    "generations_per_sec:success",
                    "succeeded",
                    rate("successful_generations_total", &[]),
                ),
                s(
                    "generations_per_sec:failure",
                    "failed",
                    rate("failed_generations_total", &[]),
                ),
            ],
        ),
        // Resources
        panel(
            "cpu",
            "CPU avg and max core",
            Resources,
            TimeSeries,
            Unit::Percent,
            "CPU usage: the average over cores and the busiest core.",
            vec![
                q(r#"avg(cpu_usage_percent{core="total", SCOPE})"#, "average"),
                q(
                    r#"max(cpu_usage_percent{core!="total", SCOPE})"#,
                    "max core",
                ),
            ],
            vec![
                s(
                    "cpu_avg_percent",
                    "average",
                    value(
                        "cpu_usage_percent",
                        &[Matcher::Eq("core", "total")],
                        Agg::Avg,
                    ),
                ),
                s(
                    "cpu_max_percent",
                    "max core",
                    value(
                        "cpu_usage_percent",
                        &[Matcher::Ne("core", "total")],
                        Agg::Max,
                    ),
                ),
            ],
        ),
        panel(
            "memory",
            "Memory used",
            Resources,
            TimeSeries,
            Unit::Percent,
            "System memory in use.",
            vec![q(
                r#"100 * sum(memory_usage_bytes{type="used", SCOPE}) / sum(memory_usage_bytes{type="total", SCOPE})"#,
                "used %",
            )],
            vec![s(
                "memory_used_percent",
                "used %",
                ratio_percent("memory_usage_bytes", "used", "total"),
            )],
        ),
        panel(
            "gpu_utilisation",
            "GPU utilisation",
            Resources,
            TimeSeries,
            Unit::Percent,
            "NVIDIA GPU utilisation (empty without an NVIDIA driver).",
            vec![q("avg by (gpu) (gpu_usage_percent{SCOPE})", "GPU {{gpu}}")],
            vec![
                s(
                    "gpu_avg_percent",
                    "average",
                    value("gpu_usage_percent", &[], Agg::Avg),
                ),
                s(
                    "gpu_max_percent",
                    "busiest",
                    value("gpu_usage_percent", &[], Agg::Max),
                ),
            ],
        ),
        panel(
            "gpu_memory",
            "GPU memory used",
            Resources,
            TimeSeries,
            Unit::Percent,
            "NVIDIA GPU memory in use (empty without an NVIDIA driver).",
            vec![q(
                r#"100 * sum by (gpu) (gpu_memory_bytes{type="used", SCOPE}) / sum by (gpu) (gpu_memory_bytes{type="total", SCOPE})"#,
                "GPU {{gpu}}",
            )],
            vec![s(
                "gpu_memory_used_percent",
                "used %",
                ratio_percent("gpu_memory_bytes", "used", "total"),
            )],
        ),
        panel(
            "disk",
            "Disk used (data directory)",
            Resources,
            TimeSeries,
            Unit::Percent,
            "Space used on the data directory's disk.",
            vec![q(
                r#"100 * sum by (mount) (disk_usage_bytes{type="used", SCOPE}) / sum by (mount) (disk_usage_bytes{type="total", SCOPE})"#,
                "{{mount}}",
            )],
            vec![s(
                "disk_used_percent",
                "used %",
                ratio_percent("disk_usage_bytes", "used", "total"),
            )],
        ),
        // Business
        panel(
            "success_failure_share",
            "Succeeded vs failed",
            Business,
            Pie,
            Unit::Count,
            "Generations that succeeded and failed over the time range.",
            vec![
                q(
                    "sum(increase(successful_generations_total{SCOPE}[$__range]))",
                    "succeeded",
                ),
                q(
                    "sum(increase(failed_generations_total{SCOPE}[$__range]))",
                    "failed",
                ),
            ],
            vec![
                s(
                    "generations_total:success",
                    "succeeded",
                    value("successful_generations_total", &[], Agg::Sum),
                ),
                s(
                    "generations_total:failure",
                    "failed",
                    value("failed_generations_total", &[], Agg::Sum),
                ),
            ],
        ),
        panel(
            "quality_heatmap",
            "Quality score",
            Business,
            Heatmap,
            Unit::Count,
            "Quality scores (0..1) of successful generations per second, by band.",
            vec![Target {
                promql: format!(
                    "sum by (le) (rate(generation_quality_score_bucket{{{SCOPE}}}[$__rate_interval]))"
                ),
                legend: "{{le}}".to_owned(),
                heatmap: true,
            }],
            quality_cells,
        ),
        panel(
            "rate_limit_rejections",
            "Rate-limit rejections",
            Business,
            TimeSeries,
            Unit::PerSecond,
            "Requests rejected with 429 per second.",
            vec![q(
                "sum(rate(rate_limit_rejections_total{SCOPE}[$__rate_interval]))",
                "rejections/s",
            )],
            vec![s(
                "rate_limit_rejections_per_sec",
                "rejections/s",
                rate("rate_limit_rejections_total", &[]),
            )],
        ),
        panel(
            "format_distribution",
            "3D format distribution",
            Business,
            Bars,
            Unit::Count,
            "Successful image-to-3D generations by output format.",
            vec![q(
                r#"sum by (format) (increase(model_3d_generations_total{status="success", SCOPE}[$__range]))"#,
                "{{format}}",
            )],
            MESH_FORMATS
                .iter()
                .map(|f| {
                    s(
                        &format!("model_3d_total:{f}"),
                        f,
                        value(
                            "model_3d_generations_total",
                            &[Matcher::Eq("format", f), Matcher::Eq("status", "success")],
                            Agg::Sum,
                        ),
                    )
                })
                .collect(),
        ),
    ]
}

/// Every in-app series of every panel, in panel order.
pub fn all_series(panels: &[Panel]) -> Vec<&SeriesDef> {
    panels.iter().flat_map(|p| p.series.iter()).collect()
}

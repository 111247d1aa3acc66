//! One integration-test binary for orfeas-core (every file in `tests/` relinks the crate).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod alerts;
mod api;
mod api_durability;
mod api_events;
mod api_props;
mod api_schemathesis;
mod bad_input;
mod export;
mod history;
mod http_hostile;
mod http_limits;
mod http_metrics;
mod image_quality;
mod image_to_3d;
mod import;
mod jobs;
mod marching_cubes;
mod monitoring;
mod monitoring_fleet;
mod telemetry;

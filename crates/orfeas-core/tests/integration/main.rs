//! One integration-test binary for orfeas-core (every file in `tests/` relinks the crate).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod api;
mod api_durability;
mod api_props;
mod api_schemathesis;
mod history;
mod jobs;

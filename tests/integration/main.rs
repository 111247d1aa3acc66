//! One integration-test binary for the app (CLI and GUI).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod api_models;
mod cli;
mod downlevel;
mod fleet;
mod gui;
mod gui_mask;
mod gui_metrics;
mod gui_text;
mod gui_viewer;
mod render;
mod request_contract;
mod viewport;

//! ORFEAS Studio engine. Everything here runs without a window, a GPU or model
//! weights, so `cargo test -p orfeas-core` builds neither eframe, wgpu nor candle.

pub mod export;
pub mod fleet;
pub mod history;
pub mod http;
pub mod image_input;
pub mod image_to_3d;
pub mod import;
pub mod jobs;
pub mod mesh;
pub mod monitoring;
pub mod paths;
pub mod quality;
pub mod request;
pub mod runner;
pub mod telemetry;

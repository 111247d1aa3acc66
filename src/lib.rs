//! ORFEAS Studio app library: the GUI, the viewport and the CLI share these modules,
//! and the integration tests reach them through it.

pub mod about;
pub mod app;
pub mod cli;
pub mod ui;
pub mod viewport;

/// Opens the desktop studio.
pub fn run_gui() -> anyhow::Result<()> {
    app::run_gui(app::AppConfig::from_env())
}

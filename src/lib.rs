//! ORFEAS Studio app library: the GUI, the viewport and the CLI share these modules,
//! and the integration tests reach them through it.

pub mod viewport;
pub mod cli;

/// Opens the desktop studio.
pub fn run_gui() -> anyhow::Result<()> {
    anyhow::bail!("the desktop studio is not part of this build yet")
}

//! ORFEAS Studio app library: the GUI, the viewport and the CLI share these modules,
//! and the integration tests reach them through it.

pub mod cli;
pub mod viewport;

/// How the studio window opens.
#[derive(Clone, Debug, Default)]
pub struct GuiStart {
    /// A mesh to show on the Viewer tab at start (`orfeas view MESH`).
    pub open_mesh: Option<std::path::PathBuf>,
}

/// Opens the desktop studio.
pub fn run_gui() -> anyhow::Result<()> {
    run_gui_with(GuiStart::default())
}

/// Opens the desktop studio with start options.
pub fn run_gui_with(_start: GuiStart) -> anyhow::Result<()> {
    anyhow::bail!("the desktop studio is not part of this build yet")
}

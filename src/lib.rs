//! ORFEAS Studio desktop app: the GUI shell (`app`, `ui`) shared by the binary and its tests.

pub mod app;
pub mod ui;

//! ORFEAS Studio app library: the GUI, the viewport and the CLI share these modules,
//! and the integration tests reach them through it.

pub mod viewport;

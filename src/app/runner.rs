//! Placeholder until the engine and the built-in image→3D method land on main.

/// What an image→3D job stores as its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTo3dJobParams;

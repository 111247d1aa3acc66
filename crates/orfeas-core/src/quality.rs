//! Quality score (0..1) for generated meshes and images.

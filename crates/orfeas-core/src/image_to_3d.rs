//! Weights-free image→3D: mask, crop, silhouette inflation, stitched closed mesh.

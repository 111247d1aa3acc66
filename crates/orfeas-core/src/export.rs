//! Mesh exports: GLB (embedded texture), OBJ + MTL + PNG, PLY, STL. Always atomic.

//! Marching cubes against TripoSR's own mesh of the golden density grid
//! (official code: torchmcubes then trimesh's merge) and skimage's Lewiner.

use std::collections::HashMap;
use std::path::PathBuf;

use orfeas_core::mesh::Mesh;
use orfeas_core::mesh::marching_cubes::extract_isosurface;

const RES: usize = 32;
const RADIUS: f32 = 0.87;
const THRESHOLD: f32 = 25.0;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/triposr-mc")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn i64s(bytes: &[u8], name: &str) -> Vec<i64> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// A mesh from golden `vertices` and `faces`.
fn golden_mesh(file: &str) -> Mesh {
    let bytes = fixture(file);
    let v = f32s(&bytes, "vertices");
    Mesh {
        positions: v.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(),
        indices: i64s(&bytes, "faces").iter().map(|&i| i as u32).collect(),
        ..Mesh::default()
    }
}

/// Ours, scaled as TripoSR scales: index / (res - 1) to [-R, R].
fn ours() -> Mesh {
    let density = f32s(&fixture("density_grid.safetensors"), "density_act");
    let s = extract_isosurface(&density, [RES; 3], THRESHOLD).unwrap();
    let scale = |x: f32| x / (RES - 1) as f32 * 2.0 * RADIUS - RADIUS;
    Mesh {
        positions: s.positions.iter().map(|p| p.map(scale)).collect(),
        indices: s.indices,
        ..Mesh::default()
    }
}

fn area(m: &Mesh) -> f64 {
    m.indices
        .chunks_exact(3)
        .map(|t| {
            let p = |i: u32| m.positions[i as usize].map(f64::from);
            let (a, b, c) = (p(t[0]), p(t[1]), p(t[2]));
            let (u, v) = (
                [b[0] - a[0], b[1] - a[1], b[2] - a[2]],
                [c[0] - a[0], c[1] - a[1], c[2] - a[2]],
            );
            let n = [
                u[1] * v[2] - u[2] * v[1],
                u[2] * v[0] - u[0] * v[2],
                u[0] * v[1] - u[1] * v[0],
            ];
            0.5 * (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
        })
        .sum()
}

/// For each point of `a`, whether a point of `b` lies within `tol`.
fn matched(a: &[[f32; 3]], b: &[[f32; 3]], tol: f32) -> usize {
    let cell = |p: &[f32; 3]| p.map(|x| (x / (4.0 * tol)).floor() as i64);
    let mut buckets: HashMap<[i64; 3], Vec<[f32; 3]>> = HashMap::new();
    for p in b {
        buckets.entry(cell(p)).or_default().push(*p);
    }
    a.iter()
        .filter(|p| {
            let c = cell(p);
            (-1..=1).any(|dx| {
                (-1..=1).any(|dy| {
                    (-1..=1).any(|dz| {
                        buckets
                            .get(&[c[0] + dx, c[1] + dy, c[2] + dz])
                            .is_some_and(|q| {
                                q.iter().any(|q| (0..3).all(|k| (q[k] - p[k]).abs() <= tol))
                            })
                    })
                })
            })
        })
        .count()
}

#[test]
fn the_golden_density_grid_gives_triposrs_surface() {
    let ours = ours();
    let official = golden_mesh("mesh_official_trimesh.safetensors");
    // Every vertex TripoSR has is one of ours (they are the same edge
    // crossings, interpolated the same way), and ours that are not its are
    // only the loop centres of cells whose loop could not be fanned.
    let tol = 1e-5;
    assert_eq!(
        matched(&official.positions, &ours.positions, tol),
        official.positions.len(),
        "every official vertex is ours"
    );
    let extra = ours.positions.len() - matched(&ours.positions, &official.positions, tol);
    assert!(
        extra * 50 < official.positions.len(),
        "{extra} vertices of ours are not TripoSR's (of {})",
        official.positions.len()
    );
    // The same surface: area within 1 %, facing the same way. The surface
    // is open at the grid's border, so its signed volume depends on how the
    // ambiguous cells are split (TripoSR 0.2707, skimage 0.2694): a few %.
    let (a, b) = (area(&ours), area(&official));
    assert!((a - b).abs() / b < 0.01, "area {a} vs {b}");
    let (vo, vt) = (ours.signed_volume(), official.signed_volume());
    assert!(vt > 0.0, "TripoSR's faces point to lower density");
    assert!((vo - vt).abs() / vt < 0.03, "signed volume {vo} vs {vt}");
    let (fo, ft) = (ours.indices.len() / 3, official.indices.len() / 3);
    assert!(
        (fo as f64 - ft as f64).abs() / (ft as f64) < 0.02,
        "{fo} faces vs {ft}"
    );
}

#[test]
fn our_surface_has_no_cracks_where_triposrs_and_skimages_have_holes() {
    let ours = ours().topology();
    let official = golden_mesh("mesh_official_trimesh.safetensors").topology();
    let lewiner = golden_mesh("mesh_skimage.safetensors").topology();
    // The random field reaches the grid's border, so some edges are open
    // there in every mesh; inside, ours has none left and no edge with
    // more than two faces.
    assert_eq!(ours.non_manifold_edges, 0, "{ours:?}");
    assert_eq!(ours.inconsistent_edges, 0, "{ours:?}");
    assert!(
        ours.boundary_edges <= official.boundary_edges,
        "ours {} vs TripoSR {} open edges",
        ours.boundary_edges,
        official.boundary_edges
    );
    let skimage_area = area(&golden_mesh("mesh_skimage.safetensors"));
    let our_area = area(&self::ours());
    assert!(
        (our_area - skimage_area).abs() / skimage_area < 0.01,
        "area {our_area} vs skimage's {skimage_area}"
    );
    assert!(lewiner.faces > 0);
}

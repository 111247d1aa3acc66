//! Connectivity of a triangle mesh: the facts behind "watertight", "manifold"
//! and "consistently wound".

use super::Mesh;

/// What the connectivity of a mesh looks like, after welding vertices that
/// share a position (UV seams split vertices; the surface is still closed).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Topology {
    /// Vertices used by at least one triangle (after welding).
    pub vertices: usize,
    pub edges: usize,
    pub faces: usize,
    /// Edges with exactly one face: holes in the surface.
    pub boundary_edges: usize,
    /// Edges with three or more faces.
    pub non_manifold_edges: usize,
    /// Vertices whose surrounding faces do not form one disc (e.g. two cones
    /// touching at their tips).
    pub non_manifold_vertices: usize,
    /// Two-face edges that both faces walk in the same direction (a flipped face).
    pub inconsistent_edges: usize,
    /// Faces with a repeated index or (near) zero area.
    pub degenerate_faces: usize,
    /// Triangle count of every connected component (sharing a vertex
    /// connects), largest first.
    pub component_faces: Vec<usize>,
    /// V − E + F; 2 per closed sphere-like shell, 0 for a torus.
    pub euler_characteristic: i64,
    pub signed_volume: f64,
}

impl Topology {
    /// Every edge has exactly two faces.
    pub fn is_closed(&self) -> bool {
        self.faces > 0 && self.boundary_edges == 0 && self.non_manifold_edges == 0
    }

    pub fn is_manifold(&self) -> bool {
        self.non_manifold_edges == 0 && self.non_manifold_vertices == 0
    }

    pub fn is_consistently_wound(&self) -> bool {
        self.inconsistent_edges == 0
    }

    /// Closed, consistently wound and enclosing a positive volume: its
    /// triangles face outwards, so back faces can be culled.
    pub fn is_closed_outward(&self) -> bool {
        self.is_closed() && self.is_consistently_wound() && self.signed_volume > 0.0
    }

    pub fn components(&self) -> usize {
        self.component_faces.len()
    }

    /// Genus of a closed orientable mesh with `components` shells, from
    /// χ = 2·(shells − total genus); `None` when the mesh is not closed.
    pub fn genus(&self) -> Option<i64> {
        self.is_closed()
            .then(|| (2 * self.components() as i64 - self.euler_characteristic) / 2)
    }
}

pub(super) fn analyze(mesh: &Mesh) -> Topology {
    let vertex_count = mesh.positions.len();
    let welded = mesh.welded_indices();
    let faces: Vec<[u32; 3]> = welded
        .chunks_exact(3)
        .filter(|t| t.iter().all(|&i| (i as usize) < vertex_count))
        .map(|t| [t[0], t[1], t[2]])
        .collect();

    let diag_sq = mesh
        .bounds()
        .map(|(lo, hi)| {
            (0..3)
                .map(|k| ((hi[k] - lo[k]) as f64).powi(2))
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    let degenerate_faces = faces
        .iter()
        .filter(|t| {
            if t[0] == t[1] || t[1] == t[2] || t[0] == t[2] {
                return true;
            }
            let n = super::triangle_normal(
                mesh.positions[t[0] as usize],
                mesh.positions[t[1] as usize],
                mesh.positions[t[2] as usize],
            );
            let area2 = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            area2 <= 1e-12 * diag_sq
        })
        .count();

    // Sorted half-edge keys: (min, max) and +1/-1 for the walking direction.
    // A face collapsed by the weld (two corners at one position, as at a UV
    // sphere's poles) is no surface: it is counted as degenerate above and
    // takes no part in what follows, or the edges and vertices beside it
    // would look non-manifold.
    let face_count = faces.len();
    let faces: Vec<[u32; 3]> = faces
        .into_iter()
        .filter(|t| t[0] != t[1] && t[1] != t[2] && t[0] != t[2])
        .collect();
    let mut half: Vec<(u64, i8)> = Vec::with_capacity(faces.len() * 3);
    for t in &faces {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            if a == b {
                continue;
            }
            let (lo, hi, dir) = if a < b { (a, b, 1) } else { (b, a, -1) };
            half.push((((lo as u64) << 32) | hi as u64, dir));
        }
    }
    half.sort_unstable_by_key(|h| h.0);
    let (mut edges, mut boundary_edges, mut non_manifold_edges, mut inconsistent_edges) =
        (0, 0, 0, 0);
    let mut i = 0;
    while i < half.len() {
        let mut j = i;
        let mut dir_sum = 0i64;
        while j < half.len() && half[j].0 == half[i].0 {
            dir_sum += half[j].1 as i64;
            j += 1;
        }
        edges += 1;
        match j - i {
            1 => boundary_edges += 1,
            2 if dir_sum != 0 => inconsistent_edges += 1,
            2 => {}
            _ => non_manifold_edges += 1,
        }
        i = j;
    }

    // Faces around each vertex (CSR), for the vertex-link test and components.
    let mut start = vec![0u32; vertex_count + 1];
    for t in &faces {
        for &v in t {
            start[v as usize + 1] += 1;
        }
    }
    for v in 0..vertex_count {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut incident = vec![0u32; faces.len() * 3];
    for (f, t) in faces.iter().enumerate() {
        for &v in t {
            incident[fill[v as usize] as usize] = f as u32;
            fill[v as usize] += 1;
        }
    }
    let mut used_vertices = 0;
    let mut non_manifold_vertices = 0;
    let mut link: Vec<(u32, u32)> = Vec::new();
    for v in 0..vertex_count {
        let around = &incident[start[v] as usize..start[v + 1] as usize];
        if around.is_empty() {
            continue;
        }
        used_vertices += 1;
        link.clear();
        for &f in around {
            let t = faces[f as usize];
            let k = t.iter().position(|&x| x as usize == v).unwrap_or(0);
            link.push((t[(k + 1) % 3], t[(k + 2) % 3]));
        }
        if !link_is_one_disc(&link) {
            non_manifold_vertices += 1;
        }
    }

    // Components: union-find over the vertices of each face.
    let mut parent: Vec<u32> = (0..vertex_count as u32).collect();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    for t in &faces {
        let a = find(&mut parent, t[0]);
        for &other in &t[1..] {
            let b = find(&mut parent, other);
            if a != b {
                parent[b as usize] = a;
            }
        }
    }
    let mut per_root: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for t in &faces {
        *per_root.entry(find(&mut parent, t[0])).or_default() += 1;
    }
    let mut component_faces: Vec<usize> = per_root.into_values().collect();
    component_faces.sort_unstable_by(|a, b| b.cmp(a));

    Topology {
        vertices: used_vertices,
        edges,
        faces: face_count,
        boundary_edges,
        non_manifold_edges,
        non_manifold_vertices,
        inconsistent_edges,
        degenerate_faces,
        component_faces,
        euler_characteristic: used_vertices as i64 - edges as i64 + faces.len() as i64,
        signed_volume: mesh.signed_volume(),
    }
}

/// The opposite edges of the faces around a vertex form a single cycle
/// (interior vertex) or a single path (boundary vertex) — one disc, one fan.
fn link_is_one_disc(link: &[(u32, u32)]) -> bool {
    // Each link vertex may appear at most once as a start and once as an end.
    for (i, &(a, b)) in link.iter().enumerate() {
        for &(c, d) in &link[i + 1..] {
            if a == c || b == d {
                return false;
            }
        }
    }
    // Walk from a vertex that starts a path (no edge ends at it) or anywhere on a cycle.
    let begin = link
        .iter()
        .find(|&&(a, _)| !link.iter().any(|&(_, d)| d == a))
        .or(link.first())
        .map(|&(a, _)| a);
    let Some(mut at) = begin else {
        return true;
    };
    let mut visited = 0;
    while let Some(&(_, next)) = link.iter().find(|&&(a, _)| a == at) {
        visited += 1;
        if visited > link.len() {
            break;
        }
        at = next;
        if Some(at) == begin {
            break;
        }
    }
    visited == link.len()
}

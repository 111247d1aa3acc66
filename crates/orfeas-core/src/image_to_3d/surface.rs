//! Silhouette inflation: coverage field → one closed, manifold, outward-wound
//! triangle mesh.
//!
//! Marching squares on the coverage field (iso 0.5) gives, per cell, a convex
//! polygon of inside corners and contour crossings. Each polygon is fanned
//! from an inside corner twice: once with the corners lifted to the front
//! height field (z = +h) and once, reversed, to the back (z = −h). Crossing
//! vertices (z = 0) are shared by both, and each crossing lies on exactly two
//! contour segments, so the contour loops are simple and the two sheets close
//! into one surface by construction: every edge has exactly two faces,
//! silhouette holes stay holes (an annulus becomes a torus), and separate
//! blobs become separate closed shells.

use crate::mesh::Mesh;

const OUTSIDE: u32 = u32::MAX;

/// Squared Euclidean distance from every sample to the nearest outside
/// sample (exact, Felzenszwalb–Huttenlocher), on a g×g grid.
fn distance_sq(inside: &[bool], g: usize) -> Vec<f32> {
    let inf = 1e20f32;
    let mut grid: Vec<f32> = inside.iter().map(|&i| if i { inf } else { 0.0 }).collect();
    let mut f = vec![0.0f32; g];
    let mut d = vec![0.0f32; g];
    let mut v = vec![0usize; g];
    let mut z = vec![0.0f32; g + 1];
    // Columns, then rows.
    for x in 0..g {
        for y in 0..g {
            f[y] = grid[y * g + x];
        }
        edt_1d(&f, &mut d, &mut v, &mut z);
        for y in 0..g {
            grid[y * g + x] = d[y];
        }
    }
    for y in 0..g {
        f.copy_from_slice(&grid[y * g..(y + 1) * g]);
        edt_1d(&f, &mut d, &mut v, &mut z);
        grid[y * g..(y + 1) * g].copy_from_slice(&d);
    }
    grid
}

fn edt_1d(f: &[f32], d: &mut [f32], v: &mut [usize], z: &mut [f32]) {
    let n = f.len();
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f32::NEG_INFINITY;
    z[1] = f32::INFINITY;
    for q in 1..n {
        loop {
            let p = v[k];
            let s =
                ((f[q] + (q * q) as f32) - (f[p] + (p * p) as f32)) / (2.0 * (q as f32 - p as f32));
            if s <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= z[k] {
                // k == 0: q replaces the only parabola.
                v[0] = q;
                z[1] = f32::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f32::INFINITY;
            break;
        }
    }
    k = 0;
    for (q, out) in d.iter_mut().enumerate().take(n) {
        while z[k + 1] < q as f32 {
            k += 1;
        }
        let p = v[k];
        let dq = q as f32 - p as f32;
        *out = dq * dq + f[p];
    }
}

/// 8-connected components of the inside samples: label per sample (OUTSIDE
/// for outside) and the area of each label.
fn components(inside: &[bool], g: usize) -> (Vec<u32>, Vec<usize>) {
    let mut label = vec![OUTSIDE; inside.len()];
    let mut areas = Vec::new();
    let mut stack = Vec::new();
    for s in 0..inside.len() {
        if !inside[s] || label[s] != OUTSIDE {
            continue;
        }
        let id = areas.len() as u32;
        let mut area = 0;
        label[s] = id;
        stack.push(s);
        while let Some(c) = stack.pop() {
            area += 1;
            let (x, y) = ((c % g) as i64, (c / g) as i64);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= g as i64 || ny >= g as i64 {
                        continue;
                    }
                    let nidx = ny as usize * g + nx as usize;
                    if inside[nidx] && label[nidx] == OUTSIDE {
                        label[nidx] = id;
                        stack.push(nidx);
                    }
                }
            }
        }
        areas.push(area);
    }
    (label, areas)
}

/// Within this many cells of the outline, distances are measured to the
/// sub-cell contour itself rather than taken from the grid transform.
const EXACT_BAND: f32 = 3.0;

/// Where the iso-0.5 contour crosses the grid edge from sample `a` to `b`, in
/// grid units: the mesh's crossing vertices and the rim distances both use it.
fn crossing_point(field: &[f32], a: usize, b: usize, g: usize) -> [f32; 2] {
    let (fa, fb) = (field[a], field[b]);
    let t = if (fa - fb).abs() > 1e-6 {
        (fa - 0.5) / (fa - fb)
    } else {
        0.5
    };
    // Keep crossings off the corners so no edge or face degenerates.
    let t = t.clamp(0.05, 0.95);
    let (ax, ay) = ((a % g) as f32, (a / g) as f32);
    let (bx, by) = ((b % g) as f32, (b / g) as f32);
    [ax + (bx - ax) * t, ay + (by - ay) * t]
}

/// Sample indices of cell (i, j)'s corners in walking order: (i,j) (i+1,j)
/// (i+1,j+1) (i,j+1).
fn cell_corners(i: usize, j: usize, g: usize) -> [usize; 4] {
    [
        j * g + i,
        j * g + i + 1,
        (j + 1) * g + i + 1,
        (j + 1) * g + i,
    ]
}

/// The contour's segments in each cell (marching squares, saddles resolved as
/// in [`build`]), indexed by the cell's top-left sample.
fn contour_segments(field: &[f32], inside: &[bool], g: usize) -> Vec<Vec<[[f32; 2]; 2]>> {
    let mut cells = vec![Vec::new(); g * g];
    for j in 0..g - 1 {
        for i in 0..g - 1 {
            let c = cell_corners(i, j, g);
            let ins = c.map(|s| inside[s]);
            let count = ins.iter().filter(|&&b| b).count();
            if count == 0 || count == 4 {
                continue;
            }
            let edge = |k: usize| crossing_point(field, c[k], c[(k + 1) % 4], g);
            let segments = &mut cells[j * g + i];
            let saddle = count == 2 && ins[0] == ins[2];
            if saddle {
                // Inside corners apart (centre outside) or joined (centre inside):
                // either way each segment cuts off one corner of the pair that is apart.
                let centre = c.iter().map(|&s| field[s]).sum::<f32>() * 0.25;
                let apart = centre <= 0.5;
                for (k, &corner_inside) in ins.iter().enumerate() {
                    if corner_inside == apart {
                        segments.push([edge((k + 3) % 4), edge(k)]);
                    }
                }
            } else {
                let ends: Vec<[f32; 2]> = (0..4)
                    .filter(|&k| ins[k] != ins[(k + 1) % 4])
                    .map(edge)
                    .collect();
                if let [a, b] = ends[..] {
                    segments.push([a, b]);
                }
            }
        }
    }
    cells
}

fn point_segment_distance(p: [f32; 2], [a, b]: [[f32; 2]; 2]) -> f32 {
    let (abx, aby) = (b[0] - a[0], b[1] - a[1]);
    let (apx, apy) = (p[0] - a[0], p[1] - a[1]);
    let len_sq = abx * abx + aby * aby;
    let t = if len_sq > 0.0 {
        ((apx * abx + apy * aby) / len_sq).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((apx - t * abx).powi(2) + (apy - t * aby).powi(2)).sqrt()
}

/// Distance from each inside sample to the outline, in cells. Near the outline
/// it is measured to the sub-cell contour: grid distances jump between 1, √2,
/// 2, … as a smooth outline passes the grid, and under √(d(2R − d)) those jumps
/// become ridges along the sides. Further in, the exact grid transform less the
/// half cell to the contour; the two are blended over one cell.
fn contour_distance(field: &[f32], inside: &[bool], dist_sq: &[f32], g: usize) -> Vec<f32> {
    let segments = contour_segments(field, inside, g);
    let reach = EXACT_BAND.ceil() as i64 + 1;
    (0..g * g)
        .map(|s| {
            if !inside[s] {
                return 0.0;
            }
            let grid = dist_sq[s].sqrt() - 0.5;
            if grid > EXACT_BAND + 0.5 {
                return grid;
            }
            let (x, y) = ((s % g) as i64, (s / g) as i64);
            let p = [x as f32, y as f32];
            let mut exact = f32::INFINITY;
            for cy in (y - reach).max(0)..=(y + reach).min(g as i64 - 2) {
                for cx in (x - reach).max(0)..=(x + reach).min(g as i64 - 2) {
                    for &seg in &segments[cy as usize * g + cx as usize] {
                        exact = exact.min(point_segment_distance(p, seg));
                    }
                }
            }
            if !exact.is_finite() {
                return grid.max(0.1);
            }
            let w = (grid - (EXACT_BAND - 0.5)).clamp(0.0, 1.0);
            (exact * (1.0 - w) + grid * w).max(0.1)
        })
        .collect()
}

/// Builds the closed mesh from the (N+2)² coverage field. Components smaller
/// than `min_component_share` of the largest are dropped as specks (their
/// samples are cleared in `field`, so the scoring mask agrees). Heights
/// follow h = thickness·√(d·(2R − d)), d the distance to the contour and R the
/// largest d of the sample's component: a disc becomes a sphere.
/// Coordinates: x, y ∈ [-1, 1] over the frame (y up), z in the same units.
pub(super) fn build(field: &mut [f32], n: usize, thickness: f32, min_component_share: f32) -> Mesh {
    let g = n + 2;
    let mut inside: Vec<bool> = field.iter().map(|&c| c > 0.5).collect();
    let (label, areas) = components(&inside, g);
    let largest = areas.iter().copied().max().unwrap_or(0);
    let keep: Vec<bool> = areas
        .iter()
        .map(|&a| a as f32 >= min_component_share * largest as f32 && a > 0)
        .collect();
    for s in 0..inside.len() {
        if inside[s] && !keep[label[s] as usize] {
            inside[s] = false;
            field[s] = 0.0;
        }
    }

    let dist_sq = distance_sq(&inside, g);
    let dist = contour_distance(field, &inside, &dist_sq, g);
    let mut radius = vec![0.0f32; areas.len()];
    for s in 0..inside.len() {
        if inside[s] {
            let r = &mut radius[label[s] as usize];
            *r = r.max(dist[s]);
        }
    }

    let unit = 2.0 / n as f32;
    let to_xy = |x: f32, y: f32| [(x - 0.5) * unit - 1.0, 1.0 - (y - 0.5) * unit];
    let mut positions: Vec<[f32; 3]> = Vec::new();
    // Front vertex of each inside sample; its back twin is `front + 1`.
    let mut corner = vec![OUTSIDE; g * g];
    for s in 0..g * g {
        if !inside[s] {
            continue;
        }
        let r = radius[label[s] as usize];
        let d = dist[s].min(r);
        let h = thickness * (d * (2.0 * r - d)).max(0.0).sqrt() * unit;
        let [x, y] = to_xy((s % g) as f32, (s / g) as f32);
        corner[s] = positions.len() as u32;
        positions.push([x, y, h]);
        positions.push([x, y, -h]);
    }
    // Crossing vertices, one per grid edge: horizontal edge (s, s+1) and vertical (s, s+g).
    let mut cross_h = vec![OUTSIDE; g * g];
    let mut cross_v = vec![OUTSIDE; g * g];
    let mut crossing = |a: usize, b: usize, vertical: bool, positions: &mut Vec<[f32; 3]>| -> u32 {
        let slot = if vertical {
            &mut cross_v[a]
        } else {
            &mut cross_h[a]
        };
        if *slot == OUTSIDE {
            let [gx, gy] = crossing_point(field, a, b, g);
            let [x, y] = to_xy(gx, gy);
            *slot = positions.len() as u32;
            positions.push([x, y, 0.0]);
        }
        *slot
    };

    // A polygon vertex: an inside corner (front id) or a crossing.
    #[derive(Clone, Copy)]
    enum V {
        Corner(u32),
        Cross(u32),
    }
    let mut indices: Vec<u32> = Vec::new();
    let emit = |poly: &[V], indices: &mut Vec<u32>| {
        // Rotate so the fan starts at an inside corner.
        let Some(start) = poly.iter().position(|v| matches!(v, V::Corner(_))) else {
            return;
        };
        let m = poly.len();
        let id = |v: V, back: bool| match v {
            V::Corner(f) => f + u32::from(back),
            V::Cross(c) => c,
        };
        for k in 1..m - 1 {
            let (a, b, c) = (
                poly[start],
                poly[(start + k) % m],
                poly[(start + k + 1) % m],
            );
            // Cells are walked clockwise in mesh space (x right, y up), so the
            // front (seen from +z) reverses the walk, the back keeps it.
            indices.extend_from_slice(&[id(a, false), id(c, false), id(b, false)]);
            indices.extend_from_slice(&[id(a, true), id(b, true), id(c, true)]);
        }
    };
    let mut poly: Vec<V> = Vec::with_capacity(8);
    for j in 0..g - 1 {
        for i in 0..g - 1 {
            let c = cell_corners(i, j, g);
            let ins = c.map(|s| inside[s]);
            let count = ins.iter().filter(|&&b| b).count();
            if count == 0 {
                continue;
            }
            // Edge k joins corner k and k+1; vertical for k = 1 and 3.
            let mut edge = |k: usize, positions: &mut Vec<[f32; 3]>| {
                let (a, b) = (c[k], c[(k + 1) % 4]);
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                V::Cross(crossing(lo, hi, k % 2 == 1, positions))
            };
            let saddle = count == 2 && ins[0] == ins[2];
            let centre = c.iter().map(|&s| field[s]).sum::<f32>() * 0.25;
            if saddle && centre <= 0.5 {
                // Two separate corners: one triangle each.
                for k in 0..4 {
                    if ins[k] {
                        let before = edge((k + 3) % 4, &mut positions);
                        let after = edge(k, &mut positions);
                        poly.clear();
                        poly.extend_from_slice(&[before, V::Corner(corner[c[k]]), after]);
                        emit(&poly, &mut indices);
                    }
                }
                continue;
            }
            poly.clear();
            for k in 0..4 {
                if ins[k] {
                    poly.push(V::Corner(corner[c[k]]));
                }
                if ins[k] != ins[(k + 1) % 4] {
                    poly.push(edge(k, &mut positions));
                }
            }
            emit(&poly, &mut indices);
        }
    }
    Mesh {
        positions,
        indices,
        ..Mesh::default()
    }
}

/// The N×N scoring mask (255 = foreground) matching the mesh's framing:
/// pixel (i, j) covers x ∈ [-1 + 2i/N, -1 + 2(i+1)/N], y downwards.
pub(super) fn mask_image(field: &[f32], n: usize) -> image::GrayImage {
    let g = n + 2;
    image::GrayImage::from_fn(n as u32, n as u32, |i, j| {
        let v = field[(j as usize + 1) * g + i as usize + 1];
        image::Luma([if v > 0.5 { 255 } else { 0 }])
    })
}

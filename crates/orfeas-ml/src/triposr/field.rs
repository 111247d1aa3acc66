//! The radiance field a scene code describes: triplane sampling
//! (`grid_sample`, bilinear, align_corners=False, zero padding), the NeRF MLP
//! (`decoder.layers.*`), density and colour activations; on top of them the
//! density grid for marching cubes, vertex colours and a one-view render.
//!
//! Point coordinates, sample indices and weights are computed on the host in
//! f32 with PyTorch's operation order; only the gathers and the MLP run as
//! tensor ops (on the model's device), a bounded chunk of points at a time.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::{
    ColorActivation, DecoderConfig, DensityActivation, FeatureReduction, MlpActivation,
    RendererConfig,
};

/// Points per chunk for grids, colours and renders. At full size (40 channels
/// × 3 planes, 64 neurons) one chunk measured ~155 MB of tensors on the CPU.
pub const DEFAULT_CHUNK_POINTS: usize = 1 << 17;

/// Largest density grid side (1024³ points = 4 GiB of output).
pub const MAX_GRID_RESOLUTION: usize = 1024;

/// Largest render, in pixels.
pub const MAX_RENDER_PIXELS: usize = 4096 * 4096;

/// `decoder`: Linear + activation × n_hidden_layers, then Linear to 4
/// (density, 3 colour features). Layers sit at `layers.{0, 2, 4, …}`.
#[derive(Debug)]
pub struct NerfMlp {
    layers: Vec<Linear>,
    activation: MlpActivation,
}

impl NerfMlp {
    /// `vb` at `decoder`.
    pub fn load(vb: VarBuilder, cfg: &DecoderConfig) -> Result<Self> {
        let mut dims = vec![(cfg.in_channels, cfg.n_neurons)];
        dims.extend((1..cfg.n_hidden_layers).map(|_| (cfg.n_neurons, cfg.n_neurons)));
        dims.push((cfg.n_neurons, 4));
        let layers = dims
            .iter()
            .enumerate()
            .map(|(i, &(din, dout))| {
                candle_nn::linear(din, dout, vb.pp(format!("layers.{}", 2 * i)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            activation: cfg.activation,
        })
    }

    /// Features `(N, in)` → raw outputs `(N, 4)`: density, then 3 colour features.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let last = self.layers.len().saturating_sub(1);
        let mut h = features.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = match self.activation {
                    MlpActivation::Silu => candle_nn::ops::silu(&h)?,
                    MlpActivation::Relu => h.relu()?,
                };
            }
        }
        Ok(h)
    }
}

/// How far a density grid is, reported after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridProgress {
    pub done_points: usize,
    pub total_points: usize,
}

/// What the field says at a set of points (host copies, one row per point).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSamples {
    /// The MLP's raw density output.
    pub density: Vec<f32>,
    /// `density_activation(density + density_bias)`: the volume density.
    pub density_act: Vec<f32>,
    /// The raw colour features.
    pub features: Vec<[f32; 3]>,
    /// `sigmoid(features)`: RGB in [0, 1].
    pub color: Vec<[f32; 3]>,
}

/// One scene code `(3, Co, H, W)` laid out for sampling: each plane as `(H·W, Co)`
/// rows so a gather returns contiguous feature vectors.
#[derive(Debug)]
pub struct Triplane {
    planes: [Tensor; 3],
    height: usize,
    width: usize,
}

impl Triplane {
    /// Accepts `(3, Co, H, W)` or a batch of one `(1, 3, Co, H, W)`.
    pub fn new(scene_code: &Tensor) -> Result<Self> {
        let code = match scene_code.rank() {
            5 if scene_code.dim(0)? == 1 => scene_code.squeeze(0)?,
            4 => scene_code.clone(),
            _ => candle_core::bail!(
                "a scene code is (3, C, H, W) or (1, 3, C, H, W), got {:?}; pass one scene of the batch",
                scene_code.dims()
            ),
        };
        let (np, c, h, w) = code.dims4()?;
        if np != 3 {
            candle_core::bail!("a scene code has 3 planes, got {np}");
        }
        let plane =
            |i: usize| -> Result<Tensor> { code.get(i)?.reshape((c, h * w))?.t()?.contiguous() };
        Ok(Self {
            planes: [plane(0)?, plane(1)?, plane(2)?],
            height: h,
            width: w,
        })
    }

    pub fn channels(&self) -> Result<usize> {
        self.planes[0].dim(1)
    }

    pub fn device(&self) -> &Device {
        self.planes[0].device()
    }

    /// Bilinear samples of the three planes at `coords` (already in [-1, 1]):
    /// plane 0 at (x, y), plane 1 at (x, z), plane 2 at (y, z), the first
    /// coordinate indexing the width. Returns `(N, 3·Co)` for concat (plane-major)
    /// or `(N, Co)` for mean.
    pub fn sample(&self, coords: &[[f32; 3]], reduction: FeatureReduction) -> Result<Tensor> {
        const AXES: [(usize, usize); 3] = [(0, 1), (0, 2), (1, 2)];
        let mut per_plane = Vec::with_capacity(3);
        for (plane, (u_axis, v_axis)) in self.planes.iter().zip(AXES) {
            let taps = BilinearTaps::new(coords, u_axis, v_axis, self.width, self.height);
            per_plane.push(taps.gather(plane)?);
        }
        match reduction {
            FeatureReduction::Concat => Tensor::cat(&per_plane, 1),
            FeatureReduction::Mean => ((&per_plane[0] + &per_plane[1])? + &per_plane[2])? / 3.0,
        }
    }
}

/// The four corner indices and weights of `grid_sample` for N points; a corner
/// outside the plane gets weight 0 (zero padding) and a clamped index.
struct BilinearTaps {
    index: [Vec<u32>; 4],
    weight: [Vec<f32>; 4],
}

impl BilinearTaps {
    fn new(coords: &[[f32; 3]], u_axis: usize, v_axis: usize, width: usize, height: usize) -> Self {
        let n = coords.len();
        let mut index: [Vec<u32>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut weight: [Vec<f32>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
        let (wf, hf) = (width as f32, height as f32);
        for p in coords {
            // PyTorch's unnormalize for align_corners=False: (c + 1) · size/2 − 0.5.
            let x = (p[u_axis] + 1.0) * (wf / 2.0) - 0.5;
            let y = (p[v_axis] + 1.0) * (hf / 2.0) - 0.5;
            let (x0, y0) = (x.floor(), y.floor());
            let (we, wn) = (x - x0, y - y0);
            let (ww, ws) = (1.0 - we, 1.0 - wn);
            // (dx, dy, weight) in PyTorch's summation order: nw, ne, sw, se.
            let corners = [
                (0.0, 0.0, ws * ww),
                (1.0, 0.0, ws * we),
                (0.0, 1.0, wn * ww),
                (1.0, 1.0, wn * we),
            ];
            for (k, (dx, dy, w)) in corners.into_iter().enumerate() {
                let (cx, cy) = (x0 + dx, y0 + dy);
                let inside = cx >= 0.0 && cx < wf && cy >= 0.0 && cy < hf;
                if inside {
                    index[k].push((cy as usize * width + cx as usize) as u32);
                    weight[k].push(w);
                } else {
                    index[k].push(0);
                    weight[k].push(0.0);
                }
            }
        }
        Self { index, weight }
    }

    /// `Σ value(corner) · weight(corner)` for a plane `(H·W, C)` → `(N, C)`.
    fn gather(&self, plane: &Tensor) -> Result<Tensor> {
        let dev = plane.device();
        let n = self.index[0].len();
        let mut acc: Option<Tensor> = None;
        for (idx, w) in self.index.iter().zip(&self.weight) {
            let idx = Tensor::from_slice(idx, n, dev)?;
            let w = Tensor::from_slice(w, (n, 1), dev)?.to_dtype(plane.dtype())?;
            let term = plane.index_select(&idx, 0)?.broadcast_mul(&w)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        acc.ok_or_else(|| candle_core::Error::Msg("no bilinear taps".into()))
    }
}

/// The decoder with the renderer's settings: positions in world units → field values.
#[derive(Debug)]
pub struct RadianceField<'a> {
    pub decoder: &'a NerfMlp,
    pub renderer: &'a RendererConfig,
}

impl RadianceField<'_> {
    /// World positions `[-R, R]³` → grid_sample coordinates `[-1, 1]³`, as
    /// TripoSR's `scale_tensor` computes them in f32.
    pub fn normalize(&self, positions: &[[f32; 3]]) -> Vec<[f32; 3]> {
        let r = self.renderer.radius;
        let (low, span) = ((-r) as f32, (r - (-r)) as f32);
        positions
            .iter()
            .map(|p| p.map(|v| (v - low) / span * 2.0 + -1.0))
            .collect()
    }

    /// Triplane features at world positions (the decoder input), `(N, in_channels)`.
    pub fn triplane_features(&self, triplane: &Triplane, positions: &[[f32; 3]]) -> Result<Tensor> {
        triplane.sample(&self.normalize(positions), self.renderer.feature_reduction)
    }

    /// Raw MLP output, density activation and colour at `positions` (one chunk,
    /// computed at once: callers bound the chunk size).
    pub fn query(&self, triplane: &Triplane, positions: &[[f32; 3]]) -> Result<FieldSamples> {
        if positions.is_empty() {
            return Ok(FieldSamples::default());
        }
        let features = self.triplane_features(triplane, positions)?;
        let raw = self.decoder.forward(&features)?.to_dtype(DType::F32)?;
        let density = raw.narrow(D::Minus1, 0, 1)?;
        let colour_features = raw.narrow(D::Minus1, 1, 3)?;
        let density_act = match self.renderer.density_activation {
            DensityActivation::Exp | DensityActivation::TruncExp => {
                (&density + self.renderer.density_bias)?.exp()?
            }
        };
        let color = match self.renderer.color_activation {
            ColorActivation::Sigmoid => candle_nn::ops::sigmoid(&colour_features)?,
        };
        let rows = |t: &Tensor| -> Result<Vec<[f32; 3]>> {
            Ok(t.to_vec2::<f32>()?
                .into_iter()
                .map(|r| [r[0], r[1], r[2]])
                .collect())
        };
        Ok(FieldSamples {
            density: density.flatten_all()?.to_vec1()?,
            density_act: density_act.flatten_all()?.to_vec1()?,
            features: rows(&colour_features)?,
            color: rows(&color)?,
        })
    }

    /// `query` over any number of points, `chunk_points` at a time.
    pub fn query_chunked(
        &self,
        triplane: &Triplane,
        positions: &[[f32; 3]],
        chunk_points: usize,
    ) -> Result<FieldSamples> {
        let mut all = FieldSamples::default();
        for chunk in positions.chunks(chunk_points.max(1)) {
            let s = self.query(triplane, chunk)?;
            all.density.extend(s.density);
            all.density_act.extend(s.density_act);
            all.features.extend(s.features);
            all.color.extend(s.color);
        }
        Ok(all)
    }

    /// The density (`density_act`) at the `res³` grid points, C order
    /// `[i][j][k]` = (x_i, y_j, z_k), x slowest; coordinates `linspace(0, 1, res)`
    /// scaled to `[-R, R]` (TripoSR's `MarchingCubeHelper` grid). Only
    /// `chunk_points` points are in flight at a time.
    pub fn density_grid(
        &self,
        triplane: &Triplane,
        resolution: usize,
        chunk_points: usize,
    ) -> Result<Vec<f32>> {
        let grid =
            self.density_grid_with_progress(triplane, resolution, chunk_points, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })?;
        grid.ok_or_else(|| candle_core::Error::Msg("density grid stopped without a request".into()))
    }

    /// [`Self::density_grid`] that reports after every chunk; `progress`
    /// returning `Break` stops the work and gives `Ok(None)` (a cancelled job).
    pub fn density_grid_with_progress(
        &self,
        triplane: &Triplane,
        resolution: usize,
        chunk_points: usize,
        progress: &mut dyn FnMut(GridProgress) -> std::ops::ControlFlow<()>,
    ) -> Result<Option<Vec<f32>>> {
        if !(2..=MAX_GRID_RESOLUTION).contains(&resolution) {
            candle_core::bail!(
                "grid resolution {resolution} is outside 2..={MAX_GRID_RESOLUTION}; TripoSR uses 256"
            );
        }
        let total = resolution * resolution * resolution;
        let chunk = chunk_points.max(1);
        let mut out = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(chunk.min(total));
        for start in (0..total).step_by(chunk) {
            positions.clear();
            positions.extend(
                (start..(start + chunk).min(total))
                    .map(|n| grid_point(n, resolution, self.renderer.radius)),
            );
            out.extend(self.density_only(triplane, &positions)?);
            let report = GridProgress {
                done_points: out.len(),
                total_points: total,
            };
            if progress(report).is_break() {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// `density_act` alone (skips the colour outputs' host copies).
    fn density_only(&self, triplane: &Triplane, positions: &[[f32; 3]]) -> Result<Vec<f32>> {
        let features = self.triplane_features(triplane, positions)?;
        let density = self
            .decoder
            .forward(&features)?
            .narrow(D::Minus1, 0, 1)?
            .to_dtype(DType::F32)?;
        (density + self.renderer.density_bias)?
            .exp()?
            .flatten_all()?
            .to_vec1()
    }
}

/// `torch.linspace(0, 1, steps)` element `i` in f32 (first half counted up from
/// 0, second half down from 1, as PyTorch's CPU kernel).
pub fn linspace01(i: usize, steps: usize) -> f32 {
    if steps < 2 {
        return 0.0;
    }
    let step = 1.0f32 / (steps - 1) as f32;
    if i < steps / 2 {
        step * i as f32
    } else {
        1.0 - step * (steps - i - 1) as f32
    }
}

/// Grid point `n` (C order, x slowest) of a `res³` grid, in world units:
/// `v · 2R − R` with `v` from [`linspace01`].
pub fn grid_point(n: usize, resolution: usize, radius: f64) -> [f32; 3] {
    let (scale, offset) = ((radius - (-radius)) as f32, (-radius) as f32);
    let (i, j, k) = (
        n / (resolution * resolution),
        (n / resolution) % resolution,
        n % resolution,
    );
    [i, j, k].map(|a| linspace01(a, resolution) * scale + offset)
}

/// A pinhole camera on a sphere around the origin, looking at it with +z up
/// (TripoSR's `get_spherical_cameras`; azimuth from +x towards +y).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrbitCamera {
    pub azimuth_deg: f32,
    pub elevation_deg: f32,
    pub distance: f32,
    /// Vertical field of view.
    pub fovy_deg: f32,
    pub width: usize,
    pub height: usize,
}

impl OrbitCamera {
    /// `n_views` cameras evenly around the object (`linspace(0, 360, n + 1)[:n]`), as `TSR.render`.
    pub fn orbit(
        n_views: usize,
        elevation_deg: f32,
        distance: f32,
        fovy_deg: f32,
        width: usize,
        height: usize,
    ) -> Vec<Self> {
        (0..n_views)
            .map(|i| Self {
                azimuth_deg: linspace01(i, n_views + 1) * 360.0,
                elevation_deg,
                distance,
                fovy_deg,
                width,
                height,
            })
            .collect()
    }

    /// Ray origins and unit directions, one per pixel, row-major from the top-left.
    pub fn rays(&self) -> (Vec<[f32; 3]>, Vec<[f32; 3]>) {
        use std::f32::consts::PI;
        let (el, az) = (
            self.elevation_deg * PI / 180.0,
            self.azimuth_deg * PI / 180.0,
        );
        let d = self.distance;
        let eye = [
            d * el.cos() * az.cos(),
            d * el.cos() * az.sin(),
            d * el.sin(),
        ];
        let lookat = unit(eye.map(|v| 0.0 - v));
        let right = unit(cross(lookat, [0.0, 0.0, 1.0]));
        let up = unit(cross(right, lookat));
        // Columns of the camera-to-world rotation: right, up, −lookat.
        let cols = [right, up, lookat.map(|v| -v)];
        let fovy = self.fovy_deg * PI / 180.0;
        // PyTorch evaluates `0.5 * H / tan(…)` as `reciprocal(tan(…)) * (0.5 * H)`.
        let focal = (1.0 / (0.5 * fovy).tan()) * (0.5 * self.height as f64) as f32;
        let (cx, cy) = (
            (self.width as f64 / 2.0) as f32,
            (self.height as f64 / 2.0) as f32,
        );
        let mut origins = Vec::with_capacity(self.width * self.height);
        let mut dirs = Vec::with_capacity(self.width * self.height);
        for row in 0..self.height {
            for col in 0..self.width {
                let (i, j) = (col as f32 + 0.5, row as f32 + 0.5);
                let cam = unit([(i - cx) / 1.0, -(j - cy) / 1.0, -1.0]);
                let cam = [cam[0] / focal, cam[1] / focal, cam[2]];
                let world: [f32; 3] = std::array::from_fn(|r| {
                    cam[0] * cols[0][r] + cam[1] * cols[1][r] + cam[2] * cols[2][r]
                });
                origins.push(eye);
                dirs.push(unit(world));
            }
        }
        (origins, dirs)
    }
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// `F.normalize`: `v / max(|v|, 1e-12)`.
fn unit(v: [f32; 3]) -> [f32; 3] {
    let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
    v.map(|c| c / norm)
}

/// Where a ray enters and leaves the `[-R, R]³` box shrunk by 0.1 %, or `None`
/// when it misses or crosses less than 0.01 (TripoSR's `rays_intersect_bbox`).
pub fn ray_box(origin: [f32; 3], dir: [f32; 3], radius: f64) -> Option<(f32, f32)> {
    let r = (1.0 - 1.0e-3) * radius as f32;
    let (mut near, mut far) = (f32::NEG_INFINITY, f32::INFINITY);
    for a in 0..3 {
        let d = if dir[a].abs() < 1e-6 { 1e-6 } else { dir[a] };
        let (t0, t1) = ((r - origin[a]) / d, (-r - origin[a]) / d);
        near = near.max(t0.min(t1));
        far = far.min(t0.max(t1));
    }
    let near = near.max(0.0);
    (far - near > 0.01).then_some((near, far))
}

impl RadianceField<'_> {
    /// Volume-renders one view: `num_samples_per_ray` midpoints between the box
    /// entry and exit, `deltas` of 1/N in normalised ray parameter (upstream's
    /// choice, not world units), alpha compositing, white background. Returns
    /// RGB per pixel, row-major.
    pub fn render(
        &self,
        triplane: &Triplane,
        camera: &OrbitCamera,
        chunk_points: usize,
    ) -> Result<Vec<[f32; 3]>> {
        let samples = self.renderer.num_samples_per_ray;
        let t_vals: Vec<f32> = (0..=samples).map(|i| linspace01(i, samples + 1)).collect();
        let t_mid: Vec<f32> = t_vals.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let deltas: Vec<f32> = t_vals.windows(2).map(|w| w[1] - w[0]).collect();
        let (origins, dirs) = camera.rays();
        let mut rgb = vec![[1.0f32; 3]; origins.len()];
        let hits: Vec<(usize, f32, f32)> = origins
            .iter()
            .zip(&dirs)
            .enumerate()
            .filter_map(|(i, (o, d))| ray_box(*o, *d, self.renderer.radius).map(|(n, f)| (i, n, f)))
            .collect();
        let rays_per_chunk = (chunk_points / samples).max(1);
        let mut positions = Vec::with_capacity(rays_per_chunk * samples);
        for group in hits.chunks(rays_per_chunk) {
            positions.clear();
            for &(i, near, far) in group {
                let (o, d) = (origins[i], dirs[i]);
                positions.extend(t_mid.iter().map(|&t| {
                    let z = near * (1.0 - t) + far * t;
                    std::array::from_fn(|a| o[a] + z * d[a])
                }));
            }
            let field = self.query(triplane, &positions)?;
            for (ray, &(i, _, _)) in group.iter().enumerate() {
                let span = ray * samples..(ray + 1) * samples;
                rgb[i] = composite(
                    &field.density_act[span.clone()],
                    &field.color[span],
                    &deltas,
                );
            }
        }
        Ok(rgb)
    }
}

/// Front-to-back alpha compositing of one ray onto white.
fn composite(density: &[f32], color: &[[f32; 3]], deltas: &[f32]) -> [f32; 3] {
    let mut transmittance = 1.0f32;
    let (mut rgb, mut opacity) = ([0.0f32; 3], 0.0f32);
    for ((&sigma, c), &delta) in density.iter().zip(color).zip(deltas) {
        let alpha = 1.0 - (-delta * sigma).exp();
        let w = alpha * transmittance;
        for k in 0..3 {
            rgb[k] += w * c[k];
        }
        opacity += w;
        transmittance *= 1.0 - alpha + 1e-10;
    }
    rgb.map(|v| v + (1.0 - opacity))
}

/// A render as an 8-bit picture: `(rgb · 255)` truncated, as TripoSR saves it.
pub fn render_to_image(rgb: &[[f32; 3]], width: usize, height: usize) -> Option<image::RgbImage> {
    let raw: Vec<u8> = rgb
        .iter()
        .flat_map(|p| p.map(|v| (v * 255.0) as u8))
        .collect();
    image::RgbImage::from_raw(u32::try_from(width).ok()?, u32::try_from(height).ok()?, raw)
}

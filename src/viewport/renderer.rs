//! The scene renderer: pipelines, per-mesh GPU buffers and offscreen frame
//! targets. It knows nothing of egui; the paint callback and the headless
//! renderer both drive it with a command encoder and a [`FrameTarget`].

use eframe::egui_wgpu::wgpu;
use glam::{Vec3, Vec4};
use orfeas_core::mesh::Mesh;
use wgpu::util::DeviceExt as _;

use super::camera::{Bounds, OrbitCamera};
use super::gpu::RenderCaps;

/// Colour format of the offscreen image (sRGB-encoded, shaders write linear).
pub const COLOR_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8UnormSrgb;
/// The same texels read without decoding, for blitting into a non-sRGB egui target.
pub const COLOR_FORMAT_RAW: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;
pub const DEPTH_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Depth32Float;

/// Triangles per chunk. Each chunk has its own vertex and index buffers, so
/// even a chunk of unshared corners (3 × 2²⁰ vertices × 28 B = 84 MiB) stays
/// under wgpu's default 128 MiB storage-binding and 256 MiB buffer limits.
const TRIANGLES_PER_CHUNK: usize = 1 << 20;

/// u32 words per [`GpuVertex`], as `vs_mesh_wire` reads them from storage.
const VERTEX_WORDS: usize = 7;

/// How the mesh surface is coloured.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ShadingMode {
    /// Texture × vertex colour, lit by key + fill + ambient light, smooth normals.
    #[default]
    Lit,
    /// As `Lit`, with one normal per face (faceted).
    Flat,
    /// Uniform grey clay, lit: shows the shape alone.
    Clay,
    /// Texture × vertex colour without lighting.
    Textured,
    /// Vertex colours without lighting (grey where the mesh has none).
    VertexColor,
    /// World-space normals as colours.
    Normals,
}

impl ShadingMode {
    pub const ALL: [Self; 6] = [
        Self::Lit,
        Self::Flat,
        Self::Clay,
        Self::Textured,
        Self::VertexColor,
        Self::Normals,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Lit => "lit",
            Self::Flat => "flat",
            Self::Clay => "clay",
            Self::Textured => "textured",
            Self::VertexColor => "vertex-color",
            Self::Normals => "normals",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The `MODE_*` constant of `shaders/scene.wgsl`.
    fn shader_code(self) -> u32 {
        match self {
            Self::Lit => 0,
            Self::Flat => 1,
            Self::Clay => 2,
            Self::Textured => 3,
            Self::VertexColor => 4,
            Self::Normals => 5,
        }
    }
}

/// What fills the image behind the mesh; colours are sRGB bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Background {
    Solid([u8; 3]),
    Gradient { top: [u8; 3], bottom: [u8; 3] },
}

impl Default for Background {
    fn default() -> Self {
        Self::Gradient {
            top: [58, 62, 72],
            bottom: [22, 23, 27],
        }
    }
}

/// Everything about a frame except the mesh and the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SceneSettings {
    pub camera: OrbitCamera,
    pub mode: ShadingMode,
    pub wireframe: bool,
    pub grid: bool,
    pub background: Background,
}

/// One vertex as the GPU reads it (28 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GpuVertex {
    position: [f32; 3],
    normal: [i8; 4],
    uv: [f32; 2],
    color: [u8; 4],
}

// `vs_mesh_wire` reads a vertex as VERTEX_WORDS u32 words.
const _: () = assert!(std::mem::size_of::<GpuVertex>() == VERTEX_WORDS * 4);

const VERTEX_ATTRIBUTES: [wgpu::VertexAttribute; 4] = wgpu::vertex_attr_array![
    0 => Float32x3,
    1 => Snorm8x4,
    2 => Float32x2,
    3 => Unorm8x4,
];

/// One chunk of a mesh: its vertices and the triangles over them.
#[derive(Clone, Debug, Default)]
struct VertexChunk {
    vertices: Vec<GpuVertex>,
    indices: Vec<u32>,
}

/// A mesh converted into GPU vertices and indices on the CPU: the slow part of
/// an upload, done on a background thread for large meshes. Vertices are shared
/// between triangles (indexed drawing, about 6× fewer vertex-shader runs on a
/// closed mesh) except where a mesh without normals gets crease normals per corner.
#[derive(Clone, Debug)]
pub struct MeshVertices {
    chunks: Vec<VertexChunk>,
    /// Closed and consistently wound outwards: back faces are never visible from
    /// outside, so they are culled (about half the triangles of a closed mesh).
    pub closed_outward: bool,
    texture: Option<image::RgbaImage>,
    has_colors: bool,
    pub triangle_count: usize,
    pub bounds: Option<Bounds>,
}

impl MeshVertices {
    pub fn from_mesh(mesh: &Mesh) -> Self {
        let has_normals = mesh.normals.len() == mesh.positions.len();
        let creased = if has_normals {
            Vec::new()
        } else {
            crease_normals(mesh)
        };
        let has_uvs = mesh.uvs.len() == mesh.positions.len();
        let has_colors = mesh.colors.len() == mesh.positions.len();
        let vertex = |corner: usize, index: u32| -> GpuVertex {
            let i = index as usize;
            let normal = if has_normals {
                mesh.normals.get(i)
            } else {
                creased.get(corner)
            };
            let normal = normal.copied().unwrap_or_default();
            GpuVertex {
                position: mesh.positions.get(i).copied().unwrap_or_default(),
                // Clamped to -1..1 first, so the scaled value fits in i8.
                normal: [
                    (normal[0].clamp(-1.0, 1.0) * 127.0).round() as i8,
                    (normal[1].clamp(-1.0, 1.0) * 127.0).round() as i8,
                    (normal[2].clamp(-1.0, 1.0) * 127.0).round() as i8,
                    0,
                ],
                uv: if has_uvs {
                    mesh.uvs.get(i).copied().unwrap_or_default()
                } else {
                    [0.0; 2]
                },
                color: if has_colors {
                    mesh.colors.get(i).copied().unwrap_or([255; 4])
                } else {
                    [255; 4]
                },
            }
        };
        // A trailing partial triangle (a malformed mesh) is dropped, and so are
        // triangles with an index past the vertex array.
        let vertex_count = mesh.positions.len();
        let whole_triangles = &mesh.indices[..mesh.indices.len() / 3 * 3];
        // Chunk-local number of each mesh vertex (u32::MAX: not in this chunk yet).
        let mut local = vec![u32::MAX; if has_normals { vertex_count } else { 0 }];
        let chunks = whole_triangles
            .chunks(TRIANGLES_PER_CHUNK * 3)
            .enumerate()
            .map(|(chunk_index, chunk)| {
                let first_corner = chunk_index * TRIANGLES_PER_CHUNK * 3;
                let mut out = VertexChunk::default();
                for (t, triangle) in chunk.chunks_exact(3).enumerate() {
                    if triangle.iter().any(|&i| i as usize >= vertex_count) {
                        continue;
                    }
                    for (k, &index) in triangle.iter().enumerate() {
                        let corner = first_corner + 3 * t + k;
                        if has_normals {
                            let slot = &mut local[index as usize];
                            if *slot == u32::MAX {
                                // At most 3 × TRIANGLES_PER_CHUNK vertices per chunk.
                                *slot = out.vertices.len() as u32;
                                out.vertices.push(vertex(corner, index));
                            }
                            out.indices.push(*slot);
                        } else {
                            out.indices.push(out.vertices.len() as u32);
                            out.vertices.push(vertex(corner, index));
                        }
                    }
                }
                if has_normals {
                    for &index in chunk {
                        if let Some(slot) = local.get_mut(index as usize) {
                            *slot = u32::MAX;
                        }
                    }
                }
                out
            })
            .collect();
        Self {
            chunks,
            closed_outward: mesh.topology().is_closed_outward(),
            texture: mesh.texture.clone().filter(|_| has_uvs),
            has_colors,
            triangle_count: mesh.triangle_count(),
            bounds: mesh
                .bounds()
                .map(|(min, max)| Bounds::from_min_max(min, max)),
        }
    }
}

/// Faces meeting at a vertex at an angle above this are shaded with a hard edge.
const CREASE_COS: f32 = 0.707; // 45°

/// Per-corner normals for meshes that come without any: area-weighted averages
/// of the faces around each vertex, but only over faces within the crease angle,
/// so a box keeps sharp edges while a scanned or generated surface stays smooth.
/// Returns one normal per entry of `mesh.indices`.
pub fn crease_normals(mesh: &Mesh) -> Vec<[f32; 3]> {
    let vertex_count = mesh.positions.len();
    let position = |i: u32| {
        mesh.positions
            .get(i as usize)
            .copied()
            .map(Vec3::from)
            .unwrap_or(Vec3::ZERO)
    };
    // The cross product's length is twice the area: larger faces weigh more.
    let face_normals: Vec<Vec3> = mesh
        .indices
        .chunks_exact(3)
        .map(|t| (position(t[1]) - position(t[0])).cross(position(t[2]) - position(t[0])))
        .collect();
    // Faces around each vertex, as compressed rows (offsets into one list).
    let mut offsets = vec![0usize; vertex_count + 1];
    // Out-of-range indices (unvalidated meshes) are skipped, never indexed.
    let in_range = |i: u32| (i as usize) < vertex_count;
    for &i in mesh.indices.iter().filter(|&&i| in_range(i)) {
        offsets[i as usize + 1] += 1;
    }
    for v in 0..vertex_count {
        offsets[v + 1] += offsets[v];
    }
    let mut fill = offsets.clone();
    let mut faces_of = vec![0u32; offsets[vertex_count]];
    for (corner, &i) in mesh
        .indices
        .iter()
        .enumerate()
        .filter(|(_, i)| in_range(**i))
    {
        let slot = &mut fill[i as usize];
        // Face numbers fit in u32: indices are u32, so there are fewer than 2³² faces.
        faces_of[*slot] = (corner / 3) as u32;
        *slot += 1;
    }
    mesh.indices
        .iter()
        .enumerate()
        .map(|(corner, &i)| {
            let own = face_normals.get(corner / 3).copied().unwrap_or(Vec3::ZERO);
            let own_unit = own.normalize_or_zero();
            let neighbours = offsets
                .get(i as usize..=i as usize + 1)
                .map_or(&[][..], |r| &faces_of[r[0]..r[1]]);
            let sum: Vec3 = neighbours
                .iter()
                .map(|&f| face_normals[f as usize])
                .filter(|n| n.normalize_or_zero().dot(own_unit) >= CREASE_COS)
                .sum();
            let sum = if sum == Vec3::ZERO { own } else { sum };
            sum.normalize_or_zero().to_array()
        })
        .collect()
}

/// One chunk on the GPU: drawn indexed; the wireframe needs each corner to
/// know its place in the triangle, see [`ChunkWire`].
struct GpuChunk {
    vertices: wgpu::Buffer,
    indices: wgpu::Buffer,
    index_count: u32,
    wire: ChunkWire,
}

/// How a chunk's wireframe is drawn, chosen from the device's [`RenderCaps`].
enum ChunkWire {
    /// The shared vertex and index buffers read as storage in an unindexed draw.
    Pulled(wgpu::BindGroup),
    /// Downlevel: a vertex buffer with one vertex per corner, the corner number
    /// in the spare fourth normal byte (3× the vertex memory of the mesh).
    Corners(wgpu::Buffer),
}

/// Spare normal byte of a corner vertex: corners 0, 1, 2 as snorm -1, 0, 1
/// (`vs_mesh_corner` turns it back into barycentrics).
const CORNER_CODES: [i8; 3] = [-127, 0, 127];

/// One vertex per corner of `chunk`, each tagged with its corner number.
fn corner_vertices(chunk: &VertexChunk) -> Vec<GpuVertex> {
    chunk
        .indices
        .iter()
        .enumerate()
        .map(|(corner, &index)| {
            // Chunk indices point into the chunk's vertices by construction; a
            // zeroed vertex keeps the corner count equal to the index count anyway.
            let mut vertex = chunk
                .vertices
                .get(index as usize)
                .copied()
                .unwrap_or_else(bytemuck::Zeroable::zeroed);
            vertex.normal[3] = CORNER_CODES[corner % 3];
            vertex
        })
        .collect()
}

/// A mesh resident on the GPU.
pub struct GpuMesh {
    chunks: Vec<GpuChunk>,
    closed_outward: bool,
    bind_group: wgpu::BindGroup,
    has_texture: bool,
    has_colors: bool,
    pub triangle_count: usize,
    pub bounds: Option<Bounds>,
}

impl GpuMesh {
    pub fn upload(
        renderer: &SceneRenderer,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        vertices: &MeshVertices,
    ) -> Self {
        let chunks = vertices
            .chunks
            .iter()
            .filter(|chunk| !chunk.indices.is_empty())
            .map(|chunk| {
                let storage = if renderer.pull_layout.is_some() {
                    wgpu::BufferUsages::STORAGE
                } else {
                    wgpu::BufferUsages::empty()
                };
                let vertex_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("viewport mesh vertices"),
                    contents: bytemuck::cast_slice(&chunk.vertices),
                    usage: wgpu::BufferUsages::VERTEX | storage,
                });
                let index_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("viewport mesh indices"),
                    contents: bytemuck::cast_slice(&chunk.indices),
                    usage: wgpu::BufferUsages::INDEX | storage,
                });
                let wire = match &renderer.pull_layout {
                    Some(layout) => {
                        ChunkWire::Pulled(device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("viewport mesh (pulled)"),
                            layout,
                            entries: &[
                                wgpu::BindGroupEntry {
                                    binding: 0,
                                    resource: vertex_buffer.as_entire_binding(),
                                },
                                wgpu::BindGroupEntry {
                                    binding: 1,
                                    resource: index_buffer.as_entire_binding(),
                                },
                            ],
                        }))
                    }
                    None => ChunkWire::Corners(device.create_buffer_init(
                        &wgpu::util::BufferInitDescriptor {
                            label: Some("viewport mesh corners"),
                            contents: bytemuck::cast_slice(&corner_vertices(chunk)),
                            usage: wgpu::BufferUsages::VERTEX,
                        },
                    )),
                };
                GpuChunk {
                    vertices: vertex_buffer,
                    indices: index_buffer,
                    // At most 3 × TRIANGLES_PER_CHUNK indices, far below u32::MAX.
                    index_count: chunk.indices.len() as u32,
                    wire,
                }
            })
            .collect();
        let bind_group = match &vertices.texture {
            Some(texture) => renderer.texture_bind_group(device, queue, texture),
            None => renderer.white_bind_group.clone(),
        };
        Self {
            chunks,
            closed_outward: vertices.closed_outward,
            bind_group,
            has_texture: vertices.texture.is_some(),
            has_colors: vertices.has_colors,
            triangle_count: vertices.triangle_count,
            bounds: vertices.bounds,
        }
    }
}

/// The per-frame uniform block; the layout mirrors `Frame` in `shaders/scene.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct FrameUniforms {
    clip_from_world: [[f32; 4]; 4],
    eye_world: [f32; 4],
    key_light: [f32; 4],
    fill_light: [f32; 4],
    wire_color: [f32; 4],
    background_top: [f32; 4],
    background_bottom: [f32; 4],
    grid: [f32; 4],
    misc: [f32; 4],
    mode: u32,
    flags: u32,
    _pad: [u32; 2],
}

const FLAG_HAS_TEXTURE: u32 = 1;
const FLAG_HAS_COLORS: u32 = 2;
const FLAG_WIREFRAME: u32 = 4;

fn srgb_to_linear(byte: u8) -> f32 {
    let c = f32::from(byte) / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_rgba(rgb: [u8; 3]) -> [f32; 4] {
    let [r, g, b] = rgb.map(srgb_to_linear);
    [r, g, b, 1.0]
}

/// Pipelines and layouts, created once per device and target sample count.
pub struct SceneRenderer {
    background_pipeline: wgpu::RenderPipeline,
    mesh_pipeline: wgpu::RenderPipeline,
    /// `mesh_pipeline` with back faces culled, for closed outward-wound meshes.
    mesh_pipeline_culled: wgpu::RenderPipeline,
    /// The mesh with barycentric wireframe: vertices pulled from storage
    /// buffers, or (downlevel) read from per-corner vertex buffers.
    wire_pipeline: wgpu::RenderPipeline,
    /// `wire_pipeline` with back faces culled, for closed outward-wound meshes.
    wire_pipeline_culled: wgpu::RenderPipeline,
    /// The storage buffers of the pulled wireframe; `None` on the downlevel path.
    pull_layout: Option<wgpu::BindGroupLayout>,
    caps: RenderCaps,
    grid_pipeline: wgpu::RenderPipeline,
    frame_layout: wgpu::BindGroupLayout,
    texture_layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    white_bind_group: wgpu::BindGroup,
    sample_count: u32,
}

/// The MSAA level to use: 4× where the adapter supports it for both the colour
/// and the depth format (WebGPU guarantees it, but downlevel GL may not).
pub fn pick_sample_count(adapter: &wgpu::Adapter) -> u32 {
    let supports = |format| {
        adapter
            .get_texture_format_features(format)
            .flags
            .sample_count_supported(4)
    };
    if supports(COLOR_FORMAT) && supports(DEPTH_FORMAT) {
        4
    } else {
        1
    }
}

impl SceneRenderer {
    /// Pipelines for `device`, using only what `caps` says it has.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        sample_count: u32,
        caps: RenderCaps,
    ) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("viewport scene"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/scene.wgsl").into()),
        });
        let frame_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("viewport frame"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(
                        std::mem::size_of::<FrameUniforms>() as u64
                    ),
                },
                count: None,
            }],
        });
        let texture_layout = texture_bind_group_layout(device, "viewport base colour");
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("viewport scene"),
            bind_group_layouts: &[Some(&frame_layout), Some(&texture_layout)],
            immediate_size: 0,
        });
        let storage_entry = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::VERTEX,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        // A storage binding in the vertex stage is a validation error where the
        // device has none (WebGL2-class GL), so the layout exists only when used.
        let pull_layout = caps.vertex_storage.then(|| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("viewport mesh (pulled)"),
                entries: &[storage_entry(0), storage_entry(1)],
            })
        });
        let wire_layout = pull_layout.as_ref().map(|pull_layout| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("viewport wireframe"),
                bind_group_layouts: &[
                    Some(&frame_layout),
                    Some(&texture_layout),
                    Some(pull_layout),
                ],
                immediate_size: 0,
            })
        });
        let multisample = wgpu::MultisampleState {
            count: sample_count,
            ..Default::default()
        };
        let pipeline = |layout: &wgpu::PipelineLayout,
                        cull_mode: Option<wgpu::Face>,
                        label: &str,
                        vs: &str,
                        fs: &str,
                        buffers: &[Option<wgpu::VertexBufferLayout<'_>>],
                        depth_write: bool,
                        blend: Option<wgpu::BlendState>| {
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some(label),
                layout: Some(layout),
                vertex: wgpu::VertexState {
                    module: &shader,
                    entry_point: Some(vs),
                    compilation_options: Default::default(),
                    buffers,
                },
                primitive: wgpu::PrimitiveState {
                    // Both sides are drawn unless the mesh is closed and outward-wound:
                    // open or inconsistently wound meshes would show holes.
                    cull_mode,
                    ..Default::default()
                },
                depth_stencil: Some(wgpu::DepthStencilState {
                    format: DEPTH_FORMAT,
                    depth_write_enabled: Some(depth_write),
                    depth_compare: Some(if depth_write {
                        wgpu::CompareFunction::Less
                    } else {
                        wgpu::CompareFunction::LessEqual
                    }),
                    stencil: Default::default(),
                    bias: Default::default(),
                }),
                multisample,
                fragment: Some(wgpu::FragmentState {
                    module: &shader,
                    entry_point: Some(fs),
                    compilation_options: Default::default(),
                    targets: &[Some(wgpu::ColorTargetState {
                        format: COLOR_FORMAT,
                        blend,
                        write_mask: wgpu::ColorWrites::ALL,
                    })],
                }),
                multiview_mask: None,
                cache: None,
            })
        };
        let background_pipeline = pipeline(
            &layout,
            None,
            "viewport background",
            "vs_background",
            "fs_background",
            &[],
            false,
            None,
        );
        let vertex_layout = [Some(wgpu::VertexBufferLayout {
            array_stride: std::mem::size_of::<GpuVertex>() as u64,
            step_mode: wgpu::VertexStepMode::Vertex,
            attributes: &VERTEX_ATTRIBUTES,
        })];
        let mesh_pipeline = pipeline(
            &layout,
            None,
            "viewport mesh",
            "vs_mesh",
            "fs_mesh",
            &vertex_layout,
            true,
            None,
        );
        let mesh_pipeline_culled = pipeline(
            &layout,
            Some(wgpu::Face::Back),
            "viewport mesh (closed)",
            "vs_mesh",
            "fs_mesh",
            &vertex_layout,
            true,
            None,
        );
        let (wire_layout, wire_vs, wire_buffers): (_, _, &[_]) = match &wire_layout {
            Some(layout) => (layout, "vs_mesh_wire", &[]),
            None => (&layout, "vs_mesh_corner", &vertex_layout),
        };
        let wire_pipeline = pipeline(
            wire_layout,
            None,
            "viewport mesh wireframe",
            wire_vs,
            "fs_mesh",
            wire_buffers,
            true,
            None,
        );
        let wire_pipeline_culled = pipeline(
            wire_layout,
            Some(wgpu::Face::Back),
            "viewport mesh wireframe (closed)",
            wire_vs,
            "fs_mesh",
            wire_buffers,
            true,
            None,
        );
        let grid_pipeline = pipeline(
            &layout,
            None,
            "viewport grid",
            "vs_grid",
            "fs_grid",
            &[],
            false,
            Some(wgpu::BlendState::ALPHA_BLENDING),
        );
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("viewport base colour"),
            address_mode_u: wgpu::AddressMode::Repeat,
            address_mode_v: wgpu::AddressMode::Repeat,
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        let white_bind_group = texture_bind_group(
            device,
            "viewport white",
            &texture_layout,
            &sampler,
            &white_texture(device, queue).create_view(&Default::default()),
        );
        Self {
            background_pipeline,
            mesh_pipeline,
            mesh_pipeline_culled,
            wire_pipeline,
            wire_pipeline_culled,
            pull_layout,
            caps,
            grid_pipeline,
            white_bind_group,
            frame_layout,
            texture_layout,
            sampler,
            sample_count,
        }
    }

    pub fn sample_count(&self) -> u32 {
        self.sample_count
    }

    /// The device abilities the pipelines were built for.
    pub fn caps(&self) -> RenderCaps {
        self.caps
    }

    fn texture_bind_group(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        image: &image::RgbaImage,
    ) -> wgpu::BindGroup {
        let size = wgpu::Extent3d {
            width: image.width().max(1),
            height: image.height().max(1),
            depth_or_array_layers: 1,
        };
        let texture = device.create_texture_with_data(
            queue,
            &wgpu::TextureDescriptor {
                label: Some("viewport base colour"),
                size,
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: COLOR_FORMAT,
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            },
            wgpu::util::TextureDataOrder::LayerMajor,
            if image.width() == 0 || image.height() == 0 {
                &[255; 4]
            } else {
                image.as_raw()
            },
        );
        texture_bind_group(
            device,
            "viewport base colour",
            &self.texture_layout,
            &self.sampler,
            &texture.create_view(&Default::default()),
        )
    }

    /// Records one frame of the scene into `target`.
    pub fn render(
        &self,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        target: &FrameTarget,
        mesh: Option<&GpuMesh>,
        settings: &SceneSettings,
    ) {
        queue.write_buffer(
            &target.frame_buffer,
            0,
            bytemuck::bytes_of(&self.uniforms(target, mesh, settings)),
        );
        let (view, resolve_target) = match &target.msaa_view {
            Some(msaa) => (msaa, Some(&target.color_view)),
            None => (&target.color_view, None),
        };
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("viewport scene"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view,
                depth_slice: None,
                resolve_target,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    // The resolved image is what is kept; the multisampled one is scratch.
                    store: if resolve_target.is_some() {
                        wgpu::StoreOp::Discard
                    } else {
                        wgpu::StoreOp::Store
                    },
                },
            })],
            depth_stencil_attachment: Some(wgpu::RenderPassDepthStencilAttachment {
                view: &target.depth_view,
                depth_ops: Some(wgpu::Operations {
                    load: wgpu::LoadOp::Clear(1.0),
                    store: wgpu::StoreOp::Discard,
                }),
                stencil_ops: None,
            }),
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        pass.set_bind_group(0, &target.frame_bind_group, &[]);
        pass.set_bind_group(1, &self.white_bind_group, &[]);
        pass.set_pipeline(&self.background_pipeline);
        pass.draw(0..3, 0..1);
        if let Some(mesh) = mesh {
            pass.set_bind_group(1, &mesh.bind_group, &[]);
            if settings.wireframe {
                pass.set_pipeline(if mesh.closed_outward {
                    &self.wire_pipeline_culled
                } else {
                    &self.wire_pipeline
                });
                for chunk in &mesh.chunks {
                    match &chunk.wire {
                        ChunkWire::Pulled(bind_group) => pass.set_bind_group(2, bind_group, &[]),
                        ChunkWire::Corners(corners) => pass.set_vertex_buffer(0, corners.slice(..)),
                    }
                    pass.draw(0..chunk.index_count, 0..1);
                }
            } else {
                pass.set_pipeline(if mesh.closed_outward {
                    &self.mesh_pipeline_culled
                } else {
                    &self.mesh_pipeline
                });
                for chunk in &mesh.chunks {
                    pass.set_vertex_buffer(0, chunk.vertices.slice(..));
                    pass.set_index_buffer(chunk.indices.slice(..), wgpu::IndexFormat::Uint32);
                    pass.draw_indexed(0..chunk.index_count, 0, 0..1);
                }
            }
        }
        if settings.grid {
            pass.set_pipeline(&self.grid_pipeline);
            pass.draw(0..6, 0..1);
        }
    }

    fn uniforms(
        &self,
        target: &FrameTarget,
        mesh: Option<&GpuMesh>,
        settings: &SceneSettings,
    ) -> FrameUniforms {
        let camera = &settings.camera;
        let aspect = target.width as f32 / target.height.max(1) as f32;
        // Lights ride with the camera (a studio rig): key from upper left, fill from the right.
        let light = |right: f32, up: f32, back: f32, intensity: f32| {
            let dir =
                (camera.right() * right + camera.up() * up + camera.backward() * back).normalize();
            Vec4::from((dir, intensity)).to_array()
        };
        let (top, bottom) = match settings.background {
            Background::Solid(rgb) => (rgb, rgb),
            Background::Gradient { top, bottom } => (top, bottom),
        };
        let bounds = mesh
            .and_then(|m| m.bounds)
            .unwrap_or(Bounds::from_min_max([-0.5; 3], [0.5; 3]));
        let radius = bounds.radius();
        // Grid cells of a power of ten near a tenth of the mesh size.
        let cell = 10f32.powf((radius * 0.2).log10().round());
        let mut flags = 0;
        if let Some(mesh) = mesh {
            if mesh.has_texture {
                flags |= FLAG_HAS_TEXTURE;
            }
            if mesh.has_colors {
                flags |= FLAG_HAS_COLORS;
            }
        }
        if settings.wireframe {
            flags |= FLAG_WIREFRAME;
        }
        FrameUniforms {
            clip_from_world: camera.clip_from_world(aspect).to_cols_array_2d(),
            eye_world: Vec4::from((camera.eye(), 1.0)).to_array(),
            key_light: light(-0.5, 0.7, 0.6, 0.75),
            fill_light: light(0.8, -0.1, 0.4, 0.3),
            wire_color: [0.02, 0.02, 0.02, 0.85],
            background_top: linear_rgba(top),
            background_bottom: linear_rgba(bottom),
            grid: [
                bounds.center().x,
                bounds.min.y,
                bounds.center().z,
                radius * 4.0,
            ],
            misc: [cell, 1.2 * target.pixels_per_point, 0.0, 0.0],
            mode: settings.mode.shader_code(),
            flags,
            _pad: [0; 2],
        }
    }
}

/// A filterable 2D texture (binding 0) and its sampler (binding 1), for fragment shaders.
pub(super) fn texture_bind_group_layout(
    device: &wgpu::Device,
    label: &str,
) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: true },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                count: None,
            },
        ],
    })
}

/// Binds `view` and `sampler` to a [`texture_bind_group_layout`] layout.
pub(super) fn texture_bind_group(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    sampler: &wgpu::Sampler,
    view: &wgpu::TextureView,
) -> wgpu::BindGroup {
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::TextureView(view),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::Sampler(sampler),
            },
        ],
    })
}

/// Bound where a mesh has no texture; the shader multiplies by it.
fn white_texture(device: &wgpu::Device, queue: &wgpu::Queue) -> wgpu::Texture {
    device.create_texture_with_data(
        queue,
        &wgpu::TextureDescriptor {
            label: Some("viewport white"),
            size: wgpu::Extent3d {
                width: 1,
                height: 1,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: COLOR_FORMAT,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        },
        wgpu::util::TextureDataOrder::LayerMajor,
        &[255; 4],
    )
}

/// Where a frame is drawn: the resolved colour image (sampled by the egui blit
/// or copied out by the headless renderer), MSAA colour and depth, and the
/// frame's uniform buffer.
pub struct FrameTarget {
    pub width: u32,
    pub height: u32,
    /// Scales pixel-sized features (wire width) on high-DPI screens.
    pub pixels_per_point: f32,
    pub color: wgpu::Texture,
    color_view: wgpu::TextureView,
    msaa_view: Option<wgpu::TextureView>,
    depth_view: wgpu::TextureView,
    frame_buffer: wgpu::Buffer,
    frame_bind_group: wgpu::BindGroup,
}

impl FrameTarget {
    /// `width` and `height` must be at least 1 (callers clamp).
    pub fn new(
        renderer: &SceneRenderer,
        device: &wgpu::Device,
        width: u32,
        height: u32,
        pixels_per_point: f32,
    ) -> Self {
        let size = wgpu::Extent3d {
            width: width.max(1),
            height: height.max(1),
            depth_or_array_layers: 1,
        };
        let texture = |label, format, sample_count, usage, view_formats: &[wgpu::TextureFormat]| {
            device.create_texture(&wgpu::TextureDescriptor {
                label: Some(label),
                size,
                mip_level_count: 1,
                sample_count,
                dimension: wgpu::TextureDimension::D2,
                format,
                usage,
                view_formats,
            })
        };
        // The raw view needs VIEW_FORMATS; without it the blit re-encodes instead.
        let raw_view: &[wgpu::TextureFormat] = if renderer.caps.view_formats {
            &[COLOR_FORMAT_RAW]
        } else {
            &[]
        };
        let color = texture(
            "viewport colour",
            COLOR_FORMAT,
            1,
            wgpu::TextureUsages::RENDER_ATTACHMENT
                | wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::COPY_SRC,
            raw_view,
        );
        let msaa_view = (renderer.sample_count > 1).then(|| {
            texture(
                "viewport colour (MSAA)",
                COLOR_FORMAT,
                renderer.sample_count,
                wgpu::TextureUsages::RENDER_ATTACHMENT,
                &[],
            )
            .create_view(&Default::default())
        });
        let depth = texture(
            "viewport depth",
            DEPTH_FORMAT,
            renderer.sample_count,
            wgpu::TextureUsages::RENDER_ATTACHMENT,
            &[],
        );
        let frame_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("viewport frame"),
            size: std::mem::size_of::<FrameUniforms>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let frame_bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("viewport frame"),
            layout: &renderer.frame_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: frame_buffer.as_entire_binding(),
            }],
        });
        Self {
            width: size.width,
            height: size.height,
            pixels_per_point,
            color_view: color.create_view(&Default::default()),
            color,
            msaa_view,
            depth_view: depth.create_view(&Default::default()),
            frame_buffer,
            frame_bind_group,
        }
    }

    /// A view of the resolved colour image in `format` (`COLOR_FORMAT` decodes
    /// to linear when sampled, `COLOR_FORMAT_RAW` returns the sRGB bytes and
    /// needs [`RenderCaps::view_formats`]).
    pub fn color_view_as(&self, format: wgpu::TextureFormat) -> wgpu::TextureView {
        self.color.create_view(&wgpu::TextureViewDescriptor {
            format: Some(format),
            ..Default::default()
        })
    }
}

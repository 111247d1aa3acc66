// The 3D scene of the viewport: background gradient, mesh (shading modes and
// barycentric wireframe), ground grid with axes. One module so the per-frame
// uniform block is declared once. Colours are linear; the target is sRGB.

struct Frame {
    clip_from_world: mat4x4<f32>,
    eye_world: vec4<f32>,
    // xyz: unit direction towards the light (world space), w: intensity.
    key_light: vec4<f32>,
    fill_light: vec4<f32>,
    wire_color: vec4<f32>,
    background_top: vec4<f32>,
    background_bottom: vec4<f32>,
    // x, z: grid centre; y: ground height; w: half extent.
    grid: vec4<f32>,
    // x: grid cell size; y: wireframe width in pixels.
    misc: vec4<f32>,
    mode: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
}

// Shading modes, the same numbers as `ShadingMode::shader_code`.
const MODE_LIT: u32 = 0u;
const MODE_FLAT: u32 = 1u;
const MODE_CLAY: u32 = 2u;
const MODE_TEXTURED: u32 = 3u;
const MODE_VERTEX_COLOR: u32 = 4u;
const MODE_NORMALS: u32 = 5u;

const FLAG_HAS_TEXTURE: u32 = 1u;
const FLAG_HAS_COLORS: u32 = 2u;
const FLAG_WIREFRAME: u32 = 4u;

const CLAY: vec3<f32> = vec3<f32>(0.62, 0.60, 0.57);

@group(0) @binding(0) var<uniform> frame: Frame;
@group(1) @binding(0) var base_color_texture: texture_2d<f32>;
@group(1) @binding(1) var base_color_sampler: sampler;

// ---------------------------------------------------------------- background

struct BackgroundOut {
    @builtin(position) position: vec4<f32>,
    @location(0) height: f32,
}

// One triangle that covers the screen; height 0 at the bottom, 1 at the top.
@vertex
fn vs_background(@builtin(vertex_index) index: u32) -> BackgroundOut {
    let uv = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    var out: BackgroundOut;
    out.position = vec4<f32>(uv * 2.0 - 1.0, 1.0, 1.0);
    out.height = uv.y;
    return out;
}

@fragment
fn fs_background(in: BackgroundOut) -> @location(0) vec4<f32> {
    let t = clamp(in.height, 0.0, 1.0);
    return vec4<f32>(mix(frame.background_bottom.rgb, frame.background_top.rgb, t), 1.0);
}

// ---------------------------------------------------------------- mesh

struct MeshIn {
    @location(0) position: vec3<f32>,
    @location(1) normal: vec4<f32>,
    @location(2) uv: vec2<f32>,
    // sRGB-encoded bytes, decoded below.
    @location(3) color: vec4<f32>,
}

struct MeshOut {
    @builtin(position) position: vec4<f32>,
    @location(0) world: vec3<f32>,
    @location(1) normal: vec3<f32>,
    @location(2) uv: vec2<f32>,
    @location(3) color: vec4<f32>,
    @location(4) barycentric: vec3<f32>,
}

fn srgb_to_linear(c: vec3<f32>) -> vec3<f32> {
    let low = c / 12.92;
    let high = pow((c + 0.055) / 1.055, vec3<f32>(2.4));
    return select(high, low, c <= vec3<f32>(0.04045));
}

fn shade_vertex(position: vec3<f32>, normal: vec4<f32>, uv: vec2<f32>, color: vec4<f32>) -> MeshOut {
    var out: MeshOut;
    out.position = frame.clip_from_world * vec4<f32>(position, 1.0);
    out.world = position;
    out.normal = normal.xyz;
    out.uv = uv;
    out.color = vec4<f32>(srgb_to_linear(color.rgb), color.a);
    // No edges: the wireframe is drawn by `vs_mesh_wire`.
    out.barycentric = vec3<f32>(1.0);
    return out;
}

// Indexed drawing: vertices shared between triangles.
@vertex
fn vs_mesh(in: MeshIn) -> MeshOut {
    return shade_vertex(in.position, in.normal, in.uv, in.color);
}

// The same buffers read as storage (7 words per vertex, laid out like the
// vertex buffer) in an unindexed draw, so each corner knows its place in the
// triangle: the barycentrics of the single-pass wireframe.
@group(2) @binding(0) var<storage, read> pulled_vertices: array<u32>;
@group(2) @binding(1) var<storage, read> pulled_indices: array<u32>;

@vertex
fn vs_mesh_wire(@builtin(vertex_index) corner_index: u32) -> MeshOut {
    let v = pulled_indices[corner_index] * 7u;
    let position = vec3<f32>(
        bitcast<f32>(pulled_vertices[v]),
        bitcast<f32>(pulled_vertices[v + 1u]),
        bitcast<f32>(pulled_vertices[v + 2u]),
    );
    let normal = unpack4x8snorm(pulled_vertices[v + 3u]);
    let uv = vec2<f32>(bitcast<f32>(pulled_vertices[v + 4u]), bitcast<f32>(pulled_vertices[v + 5u]));
    let color = unpack4x8unorm(pulled_vertices[v + 6u]);
    var out = shade_vertex(position, normal, uv, color);
    let corner = corner_index % 3u;
    out.barycentric = vec3<f32>(f32(corner == 0u), f32(corner == 1u), f32(corner == 2u));
    return out;
}

// Downlevel wireframe (no storage buffers in the vertex stage): every corner
// is its own vertex and the spare fourth normal byte holds its corner number
// as snorm -1, 0, 1 (`CORNER_CODES` in renderer.rs).
@vertex
fn vs_mesh_corner(in: MeshIn) -> MeshOut {
    var out = shade_vertex(in.position, in.normal, in.uv, in.color);
    let corner = u32(round(in.normal.w) + 1.0);
    out.barycentric = vec3<f32>(f32(corner == 0u), f32(corner == 1u), f32(corner == 2u));
    return out;
}

fn lighting(n: vec3<f32>) -> vec3<f32> {
    let key = max(dot(n, frame.key_light.xyz), 0.0) * frame.key_light.w;
    let fill = max(dot(n, frame.fill_light.xyz), 0.0) * frame.fill_light.w;
    // Hemispherical ambient: a little brighter from the sky than from the ground.
    let ambient = mix(0.16, 0.26, n.y * 0.5 + 0.5);
    return vec3<f32>(key + fill + ambient);
}

@fragment
fn fs_mesh(in: MeshOut, @builtin(front_facing) front: bool) -> @location(0) vec4<f32> {
    var albedo = vec3<f32>(1.0);
    let has_colors = (frame.flags & FLAG_HAS_COLORS) != 0u;
    let has_texture = (frame.flags & FLAG_HAS_TEXTURE) != 0u;
    // Sampled outside any branch: derivatives need uniform control flow.
    let texel = textureSample(base_color_texture, base_color_sampler, in.uv);
    if has_colors {
        albedo = in.color.rgb;
    }
    if has_texture {
        albedo = albedo * texel.rgb;
    }
    if !has_colors && !has_texture {
        albedo = CLAY;
    }

    // Facet normal from screen-space derivatives, for flat shading and for
    // meshes whose vertex normals are degenerate.
    let facet = normalize(cross(dpdx(in.world), dpdy(in.world)));
    var n = in.normal;
    if dot(n, n) < 1e-6 {
        n = facet;
    }
    n = normalize(n);
    // Two-sided: open or inconsistently wound meshes still look solid.
    if !front {
        n = -n;
    }
    var flat_n = facet;
    if dot(flat_n, frame.eye_world.xyz - in.world) < 0.0 {
        flat_n = -flat_n;
    }

    var color: vec3<f32>;
    switch frame.mode {
        case MODE_FLAT: {
            color = albedo * lighting(flat_n);
        }
        case MODE_CLAY: {
            color = CLAY * lighting(n);
        }
        case MODE_TEXTURED: {
            color = albedo;
        }
        case MODE_VERTEX_COLOR: {
            color = select(CLAY, in.color.rgb, has_colors);
        }
        case MODE_NORMALS: {
            color = srgb_to_linear(n * 0.5 + 0.5);
        }
        default: {
            color = albedo * lighting(n);
        }
    }

    if (frame.flags & FLAG_WIREFRAME) != 0u {
        // Distance to the nearest edge in pixels, from the barycentrics' screen rate.
        let pixels = in.barycentric / max(fwidth(in.barycentric), vec3<f32>(1e-6));
        let edge = min(pixels.x, min(pixels.y, pixels.z));
        let half_width = frame.misc.y * 0.5;
        let coverage = 1.0 - smoothstep(half_width - 0.5, half_width + 0.5, edge);
        color = mix(color, frame.wire_color.rgb, coverage * frame.wire_color.a);
    }
    return vec4<f32>(color, 1.0);
}

// ---------------------------------------------------------------- grid

struct GridOut {
    @builtin(position) position: vec4<f32>,
    @location(0) world: vec3<f32>,
}

// A square on the ground plane, two triangles from six vertex indices.
@vertex
fn vs_grid(@builtin(vertex_index) index: u32) -> GridOut {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(-1.0, -1.0), vec2<f32>(1.0, -1.0), vec2<f32>(1.0, 1.0),
        vec2<f32>(-1.0, -1.0), vec2<f32>(1.0, 1.0), vec2<f32>(-1.0, 1.0),
    );
    let corner = corners[index % 6u] * frame.grid.w;
    let world = vec3<f32>(frame.grid.x + corner.x, frame.grid.y, frame.grid.z + corner.y);
    var out: GridOut;
    out.position = frame.clip_from_world * vec4<f32>(world, 1.0);
    out.world = world;
    return out;
}

// Anti-aliased line coverage of the nearest line of a 1-unit lattice.
fn line_coverage(coord: vec2<f32>) -> vec2<f32> {
    let distance = abs(fract(coord - 0.5) - 0.5) / max(fwidth(coord), vec2<f32>(1e-6));
    return 1.0 - clamp(distance, vec2<f32>(0.0), vec2<f32>(1.0));
}

@fragment
fn fs_grid(in: GridOut) -> @location(0) vec4<f32> {
    let cell = frame.misc.x;
    let minor = line_coverage(in.world.xz / cell);
    let major = line_coverage(in.world.xz / (cell * 10.0));
    let minor_alpha = max(minor.x, minor.y) * 0.18;
    let major_alpha = max(major.x, major.y) * 0.35;
    var color = vec3<f32>(0.5);
    var alpha = max(minor_alpha, major_alpha);
    // World axes through the origin: X red (where z = 0), Z blue (where x = 0).
    let axis_width = fwidth(in.world.xz) * 1.5;
    let on_x_axis = 1.0 - smoothstep(axis_width.y * 0.5, axis_width.y, abs(in.world.z));
    let on_z_axis = 1.0 - smoothstep(axis_width.x * 0.5, axis_width.x, abs(in.world.x));
    color = mix(color, vec3<f32>(0.85, 0.12, 0.10), on_x_axis);
    color = mix(color, vec3<f32>(0.10, 0.25, 0.90), on_z_axis);
    alpha = max(alpha, max(on_x_axis, on_z_axis) * 0.9);
    // Fade out towards the edge of the square so it has no hard border.
    let radial = length(in.world.xz - frame.grid.xz) / frame.grid.w;
    alpha = alpha * (1.0 - smoothstep(0.6, 1.0, radial));
    return vec4<f32>(color, alpha);
}

//! GLB / glTF import through the `gltf` crate: every triangle primitive of the
//! default scene, node transforms applied, merged into one mesh.

use std::path::Path;

use gltf::mesh::Mode;

use super::unit_to_u8;

/// glTF colours (COLOR_0, baseColorFactor) are linear; [`Mesh`] colours are sRGB.
fn linear_to_srgb_u8(value: f32) -> u8 {
    let v = value.clamp(0.0, 1.0);
    let srgb = if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    unit_to_u8(srgb)
}

fn linear_rgba_to_srgb(c: [f32; 4]) -> [u8; 4] {
    [
        linear_to_srgb_u8(c[0]),
        linear_to_srgb_u8(c[1]),
        linear_to_srgb_u8(c[2]),
        unit_to_u8(c[3]),
    ]
}
use crate::mesh::Mesh;

pub(super) fn import_path(path: &Path) -> Result<Mesh, String> {
    let (document, buffers, images) = gltf::import(path).map_err(|err| err.to_string())?;
    convert(&document, &buffers, &images)
}

pub(super) fn import_slice(bytes: &[u8]) -> Result<Mesh, String> {
    let (document, buffers, images) = gltf::import_slice(bytes).map_err(|err| err.to_string())?;
    convert(&document, &buffers, &images)
}

/// Column-major 4×4 matrix, as glTF stores it.
type Mat4 = [[f32; 4]; 4];

const IDENTITY: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

fn mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut out = [[0.0; 4]; 4];
    for (col, out_col) in out.iter_mut().enumerate() {
        for (row, value) in out_col.iter_mut().enumerate() {
            *value = (0..4).map(|k| a[k][row] * b[col][k]).sum();
        }
    }
    out
}

fn transform_point(m: &Mat4, p: [f32; 3]) -> [f32; 3] {
    let mut out = [0.0; 3];
    for (row, value) in out.iter_mut().enumerate() {
        *value = m[0][row] * p[0] + m[1][row] * p[1] + m[2][row] * p[2] + m[3][row];
    }
    out
}

/// Normals transform with the inverse transpose; for the rotations and
/// (non-uniform) scales of typical scenes, dividing by the squared scale per
/// axis and renormalising gives the same direction without a full inverse.
fn transform_normal(m: &Mat4, n: [f32; 3]) -> [f32; 3] {
    let mut scaled = [0.0; 3];
    for (axis, value) in scaled.iter_mut().enumerate() {
        let column = m[axis];
        let length_sq = column[0] * column[0] + column[1] * column[1] + column[2] * column[2];
        *value = if length_sq > 0.0 {
            n[axis] / length_sq
        } else {
            0.0
        };
    }
    let mut out = [0.0; 3];
    for (row, value) in out.iter_mut().enumerate() {
        *value = m[0][row] * scaled[0] + m[1][row] * scaled[1] + m[2][row] * scaled[2];
    }
    let length = (out[0] * out[0] + out[1] * out[1] + out[2] * out[2]).sqrt();
    if length > 0.0 {
        out.map(|c| c / length)
    } else {
        out
    }
}

/// One primitive's data before merging.
struct Part {
    positions: Vec<[f32; 3]>,
    normals: Option<Vec<[f32; 3]>>,
    uvs: Option<Vec<[f32; 2]>>,
    colors: Option<Vec<[u8; 4]>>,
    indices: Vec<u32>,
    /// Index into the document's images of the base-colour texture.
    texture_image: Option<usize>,
}

fn convert(
    document: &gltf::Document,
    buffers: &[gltf::buffer::Data],
    images: &[gltf::image::Data],
) -> Result<Mesh, String> {
    let mut parts = Vec::new();
    let roots: Vec<gltf::Node<'_>> = match document
        .default_scene()
        .or_else(|| document.scenes().next())
    {
        Some(scene) => scene.nodes().collect(),
        None => document.nodes().collect(),
    };
    let mut stack: Vec<(gltf::Node<'_>, Mat4)> = roots.into_iter().map(|n| (n, IDENTITY)).collect();
    // glTF node graphs are trees, but a malformed file may contain a cycle; the
    // visit budget turns that into an error instead of an endless loop.
    let mut visits_left = document.nodes().count().saturating_mul(4).max(16);
    while let Some((node, parent)) = stack.pop() {
        visits_left = visits_left
            .checked_sub(1)
            .ok_or("the node hierarchy contains a cycle")?;
        let world_from_node = mul(&parent, &node.transform().matrix());
        if let Some(mesh) = node.mesh() {
            for primitive in mesh.primitives() {
                if primitive.mode() != Mode::Triangles {
                    tracing::warn!(
                        "glTF primitive with mode {:?} skipped: only triangles are shown",
                        primitive.mode()
                    );
                    continue;
                }
                parts.push(read_primitive(&primitive, buffers, &world_from_node)?);
            }
        }
        stack.extend(node.children().map(|child| (child, world_from_node)));
    }
    merge(parts, images)
}

fn read_primitive(
    primitive: &gltf::Primitive<'_>,
    buffers: &[gltf::buffer::Data],
    world_from_node: &Mat4,
) -> Result<Part, String> {
    let reader = primitive.reader(|buffer| buffers.get(buffer.index()).map(|data| &data.0[..]));
    let positions: Vec<[f32; 3]> = reader
        .read_positions()
        .ok_or("a triangle primitive has no readable POSITION attribute")?
        .map(|p| transform_point(world_from_node, p))
        .collect();
    let normals = reader.read_normals().map(|normals| {
        normals
            .map(|n| transform_normal(world_from_node, n))
            .collect()
    });
    let uvs = reader
        .read_tex_coords(0)
        .map(|uvs| uvs.into_f32().collect());
    let material = primitive.material();
    let pbr = material.pbr_metallic_roughness();
    let factor = pbr.base_color_factor();
    let colors = match reader.read_colors(0) {
        Some(colors) => Some(
            colors
                .into_rgba_f32()
                .map(|c| linear_rgba_to_srgb(std::array::from_fn(|i| c[i] * factor[i])))
                .collect(),
        ),
        // A plain coloured material without a texture is kept as vertex colours,
        // the only per-part colour the merged mesh can hold.
        None if pbr.base_color_texture().is_none() && factor != [1.0; 4] => {
            Some(vec![linear_rgba_to_srgb(factor); positions.len()])
        }
        None => None,
    };
    let indices = match reader.read_indices() {
        Some(indices) => indices.into_u32().collect(),
        None => (0..u32::try_from(positions.len()).map_err(|_| "too many vertices")?).collect(),
    };
    let texture_image = pbr
        .base_color_texture()
        .map(|info| info.texture().source().index());
    Ok(Part {
        positions,
        normals,
        uvs,
        colors,
        indices,
        texture_image,
    })
}

fn merge(parts: Vec<Part>, images: &[gltf::image::Data]) -> Result<Mesh, String> {
    let all_have_normals = parts.iter().all(|p| p.normals.is_some());
    let all_have_uvs = parts.iter().all(|p| p.uvs.is_some());
    let any_colors = parts.iter().any(|p| p.colors.is_some());
    // The mesh holds one texture: the first primitive's; others keep their UVs
    // and show that texture, which is right for the single-material files we export.
    let texture_image = parts.iter().find_map(|p| p.texture_image);
    if parts
        .iter()
        .filter_map(|p| p.texture_image)
        .any(|i| Some(i) != texture_image)
    {
        tracing::warn!("glTF file uses several textures; the viewer shows only the first");
    }

    let mut mesh = Mesh::default();
    for part in parts {
        let base = u32::try_from(mesh.positions.len()).map_err(|_| "too many vertices")?;
        let count = part.positions.len();
        if part.indices.iter().any(|&i| i as usize >= count) {
            return Err("a primitive's index refers to a vertex that does not exist".into());
        }
        mesh.indices.extend(part.indices.iter().map(|&i| base + i));
        mesh.positions.extend(part.positions);
        if all_have_normals {
            mesh.normals.extend(part.normals.unwrap_or_default());
        }
        if all_have_uvs {
            mesh.uvs.extend(part.uvs.unwrap_or_default());
        }
        if any_colors {
            mesh.colors
                .extend(part.colors.unwrap_or_else(|| vec![[255; 4]; count]));
        }
    }
    if let Some(index) = texture_image {
        mesh.texture = images.get(index).and_then(to_rgba);
    }
    Ok(mesh)
}

fn to_rgba(data: &gltf::image::Data) -> Option<image::RgbaImage> {
    use gltf::image::Format;
    let pixel_count = (data.width as usize).checked_mul(data.height as usize)?;
    let rgba: Vec<u8> = match data.format {
        Format::R8G8B8A8 => data.pixels.clone(),
        Format::R8G8B8 => data
            .pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        Format::R8G8 => data
            .pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        Format::R8 => data.pixels.iter().flat_map(|&v| [v, v, v, 255]).collect(),
        other => {
            tracing::warn!("glTF texture format {other:?} is not shown; the mesh opens untextured");
            return None;
        }
    };
    if rgba.len() != pixel_count * 4 {
        return None;
    }
    image::RgbaImage::from_raw(data.width, data.height, rgba)
}

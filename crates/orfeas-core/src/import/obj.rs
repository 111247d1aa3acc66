//! OBJ (+ MTL + diffuse texture) import through `tobj`.

use std::io::BufReader;
use std::path::Path;

use super::{load_texture, unit_to_u8};
use crate::mesh::Mesh;

/// One index for position, normal and UV (as the GPU and `Mesh` want), triangulated.
const LOAD_OPTIONS: tobj::LoadOptions = tobj::GPU_LOAD_OPTIONS;

pub(super) fn import_path(path: &Path) -> Result<Mesh, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("cannot open: {err}"))?;
    let dir = path.parent();
    let (models, materials) = tobj::load_obj_buf(&mut BufReader::new(file), &LOAD_OPTIONS, |mtl| {
        let mtl_path = dir.map_or_else(|| mtl.to_owned(), |dir| dir.join(mtl));
        tobj::load_mtl(mtl_path)
    })
    .map_err(|err| err.to_string())?;
    let materials = materials.unwrap_or_else(|err| {
        tracing::warn!("OBJ materials of {} skipped: {err}", path.display());
        Vec::new()
    });
    convert(&models, &materials, dir)
}

pub(super) fn import_bytes(bytes: &[u8]) -> Result<Mesh, String> {
    let (models, _) = tobj::load_obj_buf(&mut BufReader::new(bytes), &LOAD_OPTIONS, |_| {
        Err(tobj::LoadError::OpenFileFailed)
    })
    .map_err(|err| err.to_string())?;
    convert(&models, &[], None)
}

fn convert(
    models: &[tobj::Model],
    materials: &[tobj::Material],
    dir: Option<&Path>,
) -> Result<Mesh, String> {
    let all_have_normals = models.iter().all(|m| !m.mesh.normals.is_empty());
    let all_have_uvs = models.iter().all(|m| !m.mesh.texcoords.is_empty());
    let any_colors = models
        .iter()
        .any(|m| !m.mesh.vertex_color.is_empty() || diffuse(m, materials).is_some());

    let mut mesh = Mesh::default();
    let mut texture_name = None;
    for model in models {
        let part = &model.mesh;
        let base = u32::try_from(mesh.positions.len()).map_err(|_| "too many vertices")?;
        let count = part.positions.len() / 3;
        mesh.positions
            .extend(part.positions.chunks_exact(3).map(|p| [p[0], p[1], p[2]]));
        mesh.indices.extend(part.indices.iter().map(|&i| base + i));
        if all_have_normals {
            if part.normals.len() != count * 3 {
                return Err("the normal count does not match the vertex count".into());
            }
            mesh.normals
                .extend(part.normals.chunks_exact(3).map(|n| [n[0], n[1], n[2]]));
        }
        if all_have_uvs {
            if part.texcoords.len() != count * 2 {
                return Err("the texture coordinate count does not match the vertex count".into());
            }
            // OBJ's V axis points up from the bottom of the image; `Mesh` UVs start top-left.
            mesh.uvs
                .extend(part.texcoords.chunks_exact(2).map(|t| [t[0], 1.0 - t[1]]));
        }
        if any_colors {
            if part.vertex_color.len() == count * 3 {
                mesh.colors.extend(
                    part.vertex_color
                        .chunks_exact(3)
                        .map(|c| [unit_to_u8(c[0]), unit_to_u8(c[1]), unit_to_u8(c[2]), 255]),
                );
            } else {
                let colour = diffuse(model, materials).unwrap_or([255; 4]);
                mesh.colors.extend(std::iter::repeat_n(colour, count));
            }
        }
        if texture_name.is_none() {
            texture_name = model
                .mesh
                .material_id
                .and_then(|id| materials.get(id))
                .and_then(|m| m.diffuse_texture.clone());
        }
    }
    if let Some(name) = texture_name {
        mesh.texture = load_texture(dir, &name);
    }
    Ok(mesh)
}

/// The MTL diffuse colour (`Kd`) of a model, if its material sets one.
fn diffuse(model: &tobj::Model, materials: &[tobj::Material]) -> Option<[u8; 4]> {
    let material = materials.get(model.mesh.material_id?)?;
    // A textured material shows the texture; its Kd usually just tints it white.
    if material.diffuse_texture.is_some() {
        return None;
    }
    let [r, g, b] = material.diffuse?;
    let alpha = material.dissolve.unwrap_or(1.0);
    Some([
        unit_to_u8(r),
        unit_to_u8(g),
        unit_to_u8(b),
        unit_to_u8(alpha),
    ])
}

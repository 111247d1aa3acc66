//! Binary glTF 2.0 (GLB) with the texture embedded in the binary chunk.

use serde_json::{Value, json};

use super::ExportError;
use crate::mesh::Mesh;

const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const FLOAT: u32 = 5126;
const UNSIGNED_BYTE: u32 = 5121;
const UNSIGNED_INT: u32 = 5125;

struct Builder {
    bin: Vec<u8>,
    views: Vec<Value>,
    accessors: Vec<Value>,
}

impl Builder {
    /// Appends a buffer view (4-byte aligned, as accessors require) and returns its index.
    fn view(&mut self, bytes: &[u8], target: Option<u32>) -> usize {
        while !self.bin.len().is_multiple_of(4) {
            self.bin.push(0);
        }
        let mut view =
            json!({ "buffer": 0, "byteOffset": self.bin.len(), "byteLength": bytes.len() });
        if let Some(t) = target {
            view["target"] = json!(t);
        }
        self.bin.extend_from_slice(bytes);
        self.views.push(view);
        self.views.len() - 1
    }

    fn accessor(
        &mut self,
        view: usize,
        component: u32,
        count: usize,
        kind: &str,
        extra: Value,
    ) -> usize {
        let mut acc =
            json!({ "bufferView": view, "componentType": component, "count": count, "type": kind });
        if let (Some(obj), Value::Object(more)) = (acc.as_object_mut(), extra) {
            obj.extend(more);
        }
        self.accessors.push(acc);
        self.accessors.len() - 1
    }
}

fn f32_bytes<const N: usize>(items: &[[f32; N]]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

/// sRGB → linear, because glTF vertex colours are linear.
fn srgb_to_linear(c: u8) -> u8 {
    let s = c as f32 / 255.0;
    let l = if s <= 0.04045 {
        s / 12.92
    } else {
        ((s + 0.055) / 1.055).powf(2.4)
    };
    (l * 255.0).round() as u8
}

pub(super) fn glb_bytes(mesh: &Mesh) -> Result<Vec<u8>, ExportError> {
    let n = mesh.positions.len();
    let mut b = Builder {
        bin: Vec::new(),
        views: Vec::new(),
        accessors: Vec::new(),
    };
    let (lo, hi) = mesh.bounds().ok_or(ExportError::EmptyMesh)?;
    let view = b.view(&f32_bytes(&mesh.positions), Some(ARRAY_BUFFER));
    let position = b.accessor(view, FLOAT, n, "VEC3", json!({ "min": lo, "max": hi }));
    let mut attributes = json!({ "POSITION": position });

    let normals = if mesh.normals.len() == n {
        mesh.normals.clone()
    } else {
        let mut with = mesh.clone();
        with.compute_normals();
        with.normals
    };
    let view = b.view(&f32_bytes(&normals), Some(ARRAY_BUFFER));
    attributes["NORMAL"] = json!(b.accessor(view, FLOAT, n, "VEC3", json!({})));

    let textured = mesh.texture.is_some() && mesh.uvs.len() == n;
    if textured {
        let view = b.view(&f32_bytes(&mesh.uvs), Some(ARRAY_BUFFER));
        attributes["TEXCOORD_0"] = json!(b.accessor(view, FLOAT, n, "VEC2", json!({})));
    } else if mesh.colors.len() == n {
        // Only without a texture: COLOR_0 multiplies the base colour texture.
        let bytes: Vec<u8> = mesh
            .colors
            .iter()
            .flat_map(|c| {
                [
                    srgb_to_linear(c[0]),
                    srgb_to_linear(c[1]),
                    srgb_to_linear(c[2]),
                    c[3],
                ]
            })
            .collect();
        let view = b.view(&bytes, Some(ARRAY_BUFFER));
        attributes["COLOR_0"] = json!(b.accessor(
            view,
            UNSIGNED_BYTE,
            n,
            "VEC4",
            json!({ "normalized": true })
        ));
    }

    let index_bytes: Vec<u8> = mesh.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
    let view = b.view(&index_bytes, Some(ELEMENT_ARRAY_BUFFER));
    let indices = b.accessor(view, UNSIGNED_INT, mesh.indices.len(), "SCALAR", json!({}));

    let mut pbr = json!({ "metallicFactor": 0.0, "roughnessFactor": 1.0 });
    let mut doc = json!({
        "asset": { "version": "2.0", "generator": "ORFEAS Studio" },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0, "name": "orfeas-mesh" }],
        "meshes": [{ "primitives": [{ "attributes": attributes, "indices": indices, "material": 0, "mode": 4 }] }],
    });
    if let (true, Some(texture)) = (textured, mesh.texture.as_ref()) {
        let png = super::png_bytes(texture)?;
        let view = b.view(&png, None);
        pbr["baseColorTexture"] = json!({ "index": 0 });
        doc["images"] = json!([{ "bufferView": view, "mimeType": "image/png" }]);
        doc["samplers"] =
            json!([{ "magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071 }]);
        doc["textures"] = json!([{ "source": 0, "sampler": 0 }]);
    }
    doc["materials"] = json!([{ "name": "orfeas-material", "pbrMetallicRoughness": pbr }]);
    while !b.bin.len().is_multiple_of(4) {
        b.bin.push(0);
    }
    doc["accessors"] = Value::Array(b.accessors);
    doc["bufferViews"] = Value::Array(b.views);
    doc["buffers"] = json!([{ "byteLength": b.bin.len() }]);

    let mut json_bytes = serde_json::to_vec(&doc).map_err(|e| ExportError::Encode {
        what: "glTF JSON",
        detail: e.to_string(),
    })?;
    while !json_bytes.len().is_multiple_of(4) {
        json_bytes.push(b' ');
    }
    let total = 12 + 8 + json_bytes.len() + 8 + b.bin.len();
    let total_u32 = u32::try_from(total).map_err(|_| ExportError::Encode {
        what: "GLB",
        detail: format!("{total} bytes exceeds the 4 GiB GLB limit; decimate the mesh"),
    })?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&total_u32.to_le_bytes());
    out.extend_from_slice(&(json_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&json_bytes);
    out.extend_from_slice(&(b.bin.len() as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(&b.bin);
    Ok(out)
}

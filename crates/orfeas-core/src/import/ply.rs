//! PLY import (ASCII, binary little- and big-endian), hand-written: the format is
//! small and a parser of our own bounds every allocation by the file's size.
//!
//! Reads vertex `x y z`, optional `nx ny nz`, colours (`red green blue [alpha]`,
//! integer or 0..1 float), texture coordinates (`s t`, `u v`, `texture_u
//! texture_v`; bottom-left origin as MeshLab writes them) and `vertex_indices` /
//! `vertex_index` face lists (polygons are fan-triangulated). Other elements and
//! properties are skipped. A `comment TextureFile NAME` line names the texture.

use std::path::Path;

use super::load_texture;
use crate::mesh::Mesh;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    Ascii,
    BinaryLittleEndian,
    BinaryBigEndian,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Scalar {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "char" | "int8" => Self::I8,
            "uchar" | "uint8" => Self::U8,
            "short" | "int16" => Self::I16,
            "ushort" | "uint16" => Self::U16,
            "int" | "int32" => Self::I32,
            "uint" | "uint32" => Self::U32,
            "float" | "float32" => Self::F32,
            "double" | "float64" => Self::F64,
            other => return Err(format!("unknown property type '{other}'")),
        })
    }

    fn size_bytes(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }

    /// The largest value of an integer type, to map integer colours to 0..1.
    fn max_value(self) -> f64 {
        match self {
            Self::I8 => 127.0,
            Self::U8 => 255.0,
            Self::I16 => 32767.0,
            Self::U16 => 65535.0,
            Self::I32 => 2_147_483_647.0,
            Self::U32 => 4_294_967_295.0,
            Self::F32 | Self::F64 => 1.0,
        }
    }
}

#[derive(Clone, Debug)]
enum Property {
    Scalar {
        name: String,
        ty: Scalar,
    },
    List {
        name: String,
        count_ty: Scalar,
        item_ty: Scalar,
    },
}

#[derive(Debug)]
struct Element {
    name: String,
    count: usize,
    properties: Vec<Property>,
}

#[derive(Debug)]
struct Header {
    encoding: Encoding,
    elements: Vec<Element>,
    texture_file: Option<String>,
    body_offset: usize,
}

fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    if !bytes.starts_with(b"ply") {
        return Err("it does not start with 'ply'".into());
    }
    let end_marker = b"end_header";
    let end = bytes
        .windows(end_marker.len())
        .position(|w| w == end_marker)
        .ok_or("the header has no 'end_header' line")?;
    // The body starts after the end_header line's newline (\n or \r\n).
    let mut body_offset = end + end_marker.len();
    if bytes.get(body_offset) == Some(&b'\r') {
        body_offset += 1;
    }
    if bytes.get(body_offset) == Some(&b'\n') {
        body_offset += 1;
    }
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| "the header is not text")?;

    let mut encoding = None;
    let mut elements: Vec<Element> = Vec::new();
    let mut texture_file = None;
    for line in text.lines().skip(1) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("format") => {
                encoding = Some(match words.next() {
                    Some("ascii") => Encoding::Ascii,
                    Some("binary_little_endian") => Encoding::BinaryLittleEndian,
                    Some("binary_big_endian") => Encoding::BinaryBigEndian,
                    other => return Err(format!("unknown format {other:?}")),
                });
            }
            Some("element") => {
                let name = words.next().ok_or("an element has no name")?.to_owned();
                let count = words
                    .next()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("element '{name}' has no valid count"))?;
                elements.push(Element {
                    name,
                    count,
                    properties: Vec::new(),
                });
            }
            Some("property") => {
                let element = elements
                    .last_mut()
                    .ok_or("a property comes before any element")?;
                let ty = words.next().ok_or("a property has no type")?;
                let property = if ty == "list" {
                    let count_ty =
                        Scalar::parse(words.next().ok_or("a list property has no count type")?)?;
                    let item_ty =
                        Scalar::parse(words.next().ok_or("a list property has no item type")?)?;
                    if count_ty.is_float() {
                        return Err("a list property has a floating-point count".into());
                    }
                    let name = words
                        .next()
                        .ok_or("a list property has no name")?
                        .to_owned();
                    Property::List {
                        name,
                        count_ty,
                        item_ty,
                    }
                } else {
                    let ty = Scalar::parse(ty)?;
                    let name = words.next().ok_or("a property has no name")?.to_owned();
                    Property::Scalar { name, ty }
                };
                element.properties.push(property);
            }
            Some("comment") => {
                let mut rest = words;
                if rest.next() == Some("TextureFile") {
                    let name: Vec<&str> = rest.collect();
                    if !name.is_empty() {
                        texture_file = Some(name.join(" "));
                    }
                }
            }
            Some("obj_info") | None => {}
            Some(other) => return Err(format!("unknown header keyword '{other}'")),
        }
    }
    Ok(Header {
        encoding: encoding.ok_or("the header has no 'format' line")?,
        elements,
        texture_file,
        body_offset,
    })
}

/// Reads scalar values one after another from the body, in any encoding.
struct Body<'a> {
    bytes: &'a [u8],
    position: usize,
    encoding: Encoding,
}

impl Body<'_> {
    fn read(&mut self, ty: Scalar) -> Result<f64, String> {
        match self.encoding {
            Encoding::Ascii => self.read_ascii(),
            Encoding::BinaryLittleEndian | Encoding::BinaryBigEndian => self.read_binary(ty),
        }
    }

    fn read_ascii(&mut self) -> Result<f64, String> {
        let rest = self.bytes.get(self.position..).unwrap_or_default();
        let start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or("the file ends before all elements were read")?;
        let len = rest[start..]
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + len];
        self.position += start + len;
        std::str::from_utf8(word)
            .ok()
            .and_then(|w| w.parse::<f64>().ok())
            .ok_or_else(|| format!("'{}' is not a number", String::from_utf8_lossy(word)))
    }

    fn read_binary(&mut self, ty: Scalar) -> Result<f64, String> {
        let size = ty.size_bytes();
        let raw = self
            .bytes
            .get(self.position..self.position + size)
            .ok_or("the file ends before all elements were read (truncated?)")?;
        self.position += size;
        let mut buf = [0u8; 8];
        buf[..size].copy_from_slice(raw);
        if self.encoding == Encoding::BinaryBigEndian {
            buf[..size].reverse();
        }
        let [b0, b1, b2, b3, ..] = buf;
        Ok(match ty {
            Scalar::I8 => f64::from(i8::from_le_bytes([b0])),
            Scalar::U8 => f64::from(b0),
            Scalar::I16 => f64::from(i16::from_le_bytes([b0, b1])),
            Scalar::U16 => f64::from(u16::from_le_bytes([b0, b1])),
            Scalar::I32 => f64::from(i32::from_le_bytes([b0, b1, b2, b3])),
            Scalar::U32 => f64::from(u32::from_le_bytes([b0, b1, b2, b3])),
            Scalar::F32 => f64::from(f32::from_le_bytes([b0, b1, b2, b3])),
            Scalar::F64 => f64::from_le_bytes(buf),
        })
    }

    fn remaining_bytes(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }
}

/// Where each vertex attribute sits among the vertex element's properties.
#[derive(Default)]
struct VertexLayout {
    position: [Option<usize>; 3],
    normal: [Option<usize>; 3],
    color: [Option<(usize, Scalar)>; 4],
    uv: [Option<usize>; 2],
}

impl VertexLayout {
    fn new(properties: &[Property]) -> Self {
        let mut layout = Self::default();
        for (i, property) in properties.iter().enumerate() {
            let Property::Scalar { name, ty } = property else {
                continue;
            };
            match name.as_str() {
                "x" => layout.position[0] = Some(i),
                "y" => layout.position[1] = Some(i),
                "z" => layout.position[2] = Some(i),
                "nx" => layout.normal[0] = Some(i),
                "ny" => layout.normal[1] = Some(i),
                "nz" => layout.normal[2] = Some(i),
                "red" | "r" | "diffuse_red" => layout.color[0] = Some((i, *ty)),
                "green" | "g" | "diffuse_green" => layout.color[1] = Some((i, *ty)),
                "blue" | "b" | "diffuse_blue" => layout.color[2] = Some((i, *ty)),
                "alpha" | "a" | "diffuse_alpha" => layout.color[3] = Some((i, *ty)),
                "s" | "u" | "texture_u" | "texture_s" => layout.uv[0] = Some(i),
                "t" | "v" | "texture_v" | "texture_t" => layout.uv[1] = Some(i),
                _ => {}
            }
        }
        layout
    }
}

pub(super) fn parse(bytes: &[u8], dir: Option<&Path>) -> Result<Mesh, String> {
    let header = parse_header(bytes)?;
    let mut body = Body {
        bytes: bytes.get(header.body_offset..).unwrap_or_default(),
        position: 0,
        encoding: header.encoding,
    };
    let mut mesh = Mesh::default();
    let mut saw_vertices = false;
    for element in &header.elements {
        // Every value takes at least one byte, so a count beyond the remaining
        // bytes is a lie; checking first keeps a hostile header from allocating.
        let min_size_bytes = element.properties.len().max(1);
        if element.count.saturating_mul(min_size_bytes) > body.remaining_bytes() {
            return Err(format!(
                "element '{}' claims {} entries but the file is too short for them",
                element.name, element.count
            ));
        }
        match element.name.as_str() {
            "vertex" => {
                read_vertices(&mut body, element, &mut mesh)?;
                saw_vertices = true;
            }
            "face" => {
                if !saw_vertices {
                    return Err("faces come before vertices".into());
                }
                read_faces(&mut body, element, &mut mesh)?;
            }
            _ => skip_element(&mut body, element)?,
        }
    }
    if !saw_vertices {
        return Err("there is no 'vertex' element".into());
    }
    if let Some(name) = &header.texture_file
        && !mesh.uvs.is_empty()
    {
        mesh.texture = load_texture(dir, name);
    }
    Ok(mesh)
}

fn read_row(
    body: &mut Body<'_>,
    properties: &[Property],
    row: &mut Vec<f64>,
) -> Result<(), String> {
    row.clear();
    for property in properties {
        match property {
            Property::Scalar { ty, .. } => row.push(body.read(*ty)?),
            Property::List {
                count_ty, item_ty, ..
            } => {
                // Lists inside vertices are skipped; their place holds a NaN.
                let count = list_count(body.read(*count_ty)?)?;
                for _ in 0..count {
                    body.read(*item_ty)?;
                }
                row.push(f64::NAN);
            }
        }
    }
    Ok(())
}

fn list_count(value: f64) -> Result<usize, String> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX) {
        // Checked above: a non-negative whole number within u32.
        Ok(value as usize)
    } else {
        Err(format!("a list length {value} is not a valid count"))
    }
}

fn read_vertices(body: &mut Body<'_>, element: &Element, mesh: &mut Mesh) -> Result<(), String> {
    let layout = VertexLayout::new(&element.properties);
    let [Some(x), Some(y), Some(z)] = layout.position else {
        return Err("vertices lack an x, y or z property".into());
    };
    let normal = match layout.normal {
        [Some(a), Some(b), Some(c)] => Some([a, b, c]),
        _ => None,
    };
    let uv = match layout.uv {
        [Some(a), Some(b)] => Some([a, b]),
        _ => None,
    };
    let color = match layout.color {
        [Some(r), Some(g), Some(b), alpha] => Some(([r, g, b], alpha)),
        _ => None,
    };
    let mut row = Vec::with_capacity(element.properties.len());
    mesh.positions.reserve(element.count);
    for _ in 0..element.count {
        read_row(body, &element.properties, &mut row)?;
        let at = |i: usize| row.get(i).copied().unwrap_or(f64::NAN);
        // PLY stores f64 or f32 values; the mesh works in f32.
        mesh.positions
            .push([at(x) as f32, at(y) as f32, at(z) as f32]);
        if let Some([a, b, c]) = normal {
            mesh.normals
                .push([at(a) as f32, at(b) as f32, at(c) as f32]);
        }
        if let Some([u, v]) = uv {
            mesh.uvs.push([at(u) as f32, 1.0 - at(v) as f32]);
        }
        if let Some((rgb, alpha)) = color {
            let channel = |(i, ty): (usize, Scalar)| {
                let unit = (at(i) / ty.max_value()).clamp(0.0, 1.0);
                // Clamped to 0..1, so the product fits in u8.
                (unit * 255.0).round() as u8
            };
            mesh.colors.push([
                channel(rgb[0]),
                channel(rgb[1]),
                channel(rgb[2]),
                alpha.map_or(255, channel),
            ]);
        }
    }
    Ok(())
}

fn read_faces(body: &mut Body<'_>, element: &Element, mesh: &mut Mesh) -> Result<(), String> {
    let list_index = element
        .properties
        .iter()
        .position(|p| matches!(p, Property::List { name, .. } if name == "vertex_indices" || name == "vertex_index"))
        .ok_or("faces have no 'vertex_indices' list")?;
    let vertex_count = mesh.positions.len();
    let mut polygon = Vec::new();
    mesh.indices.reserve(element.count.saturating_mul(3));
    for _ in 0..element.count {
        for (i, property) in element.properties.iter().enumerate() {
            match property {
                Property::Scalar { ty, .. } => {
                    body.read(*ty)?;
                }
                Property::List {
                    count_ty, item_ty, ..
                } => {
                    let count = list_count(body.read(*count_ty)?)?;
                    if i != list_index {
                        for _ in 0..count {
                            body.read(*item_ty)?;
                        }
                        continue;
                    }
                    polygon.clear();
                    for _ in 0..count {
                        let value = body.read(*item_ty)?;
                        if !(value >= 0.0 && value < vertex_count as f64 && value.fract() == 0.0) {
                            return Err(format!(
                                "a face refers to vertex {value}, which does not exist"
                            ));
                        }
                        // Checked above: a whole number below the vertex count.
                        polygon.push(value as u32);
                    }
                    for k in 1..polygon.len().saturating_sub(1) {
                        mesh.indices
                            .extend([polygon[0], polygon[k], polygon[k + 1]]);
                    }
                }
            }
        }
    }
    Ok(())
}

fn skip_element(body: &mut Body<'_>, element: &Element) -> Result<(), String> {
    let mut row = Vec::new();
    for _ in 0..element.count {
        read_row(body, &element.properties, &mut row)?;
    }
    Ok(())
}

//! STL (binary and ASCII) import through `stl_io`; shared corners are merged by the reader.

use std::io::Cursor;

use crate::mesh::Mesh;

pub(super) fn parse(bytes: &[u8]) -> Result<Mesh, String> {
    let stl = stl_io::read_stl(&mut Cursor::new(bytes)).map_err(|err| err.to_string())?;
    let vertex_count = stl.vertices.len();
    let mut indices = Vec::with_capacity(stl.faces.len() * 3);
    for face in &stl.faces {
        for &index in &face.vertices {
            if index >= vertex_count {
                return Err("a triangle refers to a vertex that does not exist".into());
            }
            indices.push(u32::try_from(index).map_err(|_| "too many vertices")?);
        }
    }
    Ok(Mesh {
        positions: stl.vertices.iter().map(|v| [v[0], v[1], v[2]]).collect(),
        indices,
        ..Mesh::default()
    })
}

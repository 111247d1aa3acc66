//! Mesh import: small hand-written files in every format, and malformed ones.

use std::path::{Path, PathBuf};

use orfeas_core::import::{ImportError, MeshFormat, import_bytes, import_mesh};
use orfeas_core::mesh::Mesh;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sorted_positions(mesh: &Mesh) -> Vec<[i32; 3]> {
    // Compare positions as millimetre integers, order-independent.
    let mut out: Vec<[i32; 3]> = mesh
        .positions
        .iter()
        .map(|p| p.map(|c| (c * 1000.0).round() as i32))
        .collect();
    out.sort_unstable();
    out
}

/// The triangles as sets of corner positions, order- and rotation-independent.
fn triangle_set(mesh: &Mesh) -> Vec<[[i32; 3]; 3]> {
    let mut out: Vec<[[i32; 3]; 3]> = mesh
        .indices
        .chunks_exact(3)
        .map(|t| {
            let mut corners = [t[0], t[1], t[2]]
                .map(|i| mesh.positions[i as usize].map(|c| (c * 1000.0).round() as i32));
            corners.sort_unstable();
            corners
        })
        .collect();
    out.sort_unstable();
    out
}

const QUAD_OBJ: &str = "\
# a unit quad in the XY plane, textured
mtllib quad.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vn 0 0 1
usemtl painted
f 1/1/1 2/2/1 3/3/1 4/4/1
";

#[test]
fn obj_with_mtl_and_texture_opens_textured_with_top_left_uvs() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "quad.mtl",
        b"newmtl painted\nKd 1 1 1\nmap_Kd checker.png\n",
    );
    let texture = image::RgbaImage::from_fn(4, 4, |x, y| {
        if (x + y) % 2 == 0 {
            image::Rgba([255, 0, 0, 255])
        } else {
            image::Rgba([0, 0, 255, 255])
        }
    });
    texture.save(dir.path().join("checker.png")).unwrap();
    let path = write(dir.path(), "quad.obj", QUAD_OBJ.as_bytes());

    let mesh = import_mesh(&path).unwrap();
    assert_eq!(
        mesh.triangle_count(),
        2,
        "the quad is split into two triangles"
    );
    assert_eq!(mesh.uvs.len(), mesh.vertex_count());
    assert_eq!(mesh.normals.len(), mesh.vertex_count());
    let texture = mesh.texture.as_ref().expect("map_Kd texture is loaded");
    assert_eq!(texture.dimensions(), (4, 4));
    // OBJ's vt (0,0) is the image's bottom-left; Mesh UVs start top-left.
    let origin = mesh
        .positions
        .iter()
        .position(|p| *p == [0.0, 0.0, 0.0])
        .unwrap();
    assert_eq!(mesh.uvs[origin], [0.0, 1.0]);
    let top_right = mesh
        .positions
        .iter()
        .position(|p| *p == [1.0, 1.0, 0.0])
        .unwrap();
    assert_eq!(mesh.uvs[top_right], [1.0, 0.0]);
}

#[test]
fn obj_missing_texture_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "quad.mtl",
        b"newmtl painted\nmap_Kd nowhere.png\n",
    );
    let path = write(dir.path(), "quad.obj", QUAD_OBJ.as_bytes());
    let mesh = import_mesh(&path).unwrap();
    assert_eq!(mesh.triangle_count(), 2);
    assert!(mesh.texture.is_none());
}

#[test]
fn obj_vertex_colours_and_material_colours() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "tri.obj",
        b"v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0 0 0 1\nf 1 2 3\n",
    );
    let mesh = import_mesh(&path).unwrap();
    let red = mesh
        .positions
        .iter()
        .position(|p| *p == [0.0, 0.0, 0.0])
        .unwrap();
    assert_eq!(mesh.colors[red], [255, 0, 0, 255]);

    write(dir.path(), "green.mtl", b"newmtl g\nKd 0 1 0\n");
    let path = write(
        dir.path(),
        "mat.obj",
        b"mtllib green.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl g\nf 1 2 3\n",
    );
    let mesh = import_mesh(&path).unwrap();
    assert!(
        mesh.colors.iter().all(|c| *c == [0, 255, 0, 255]),
        "{:?}",
        mesh.colors
    );
}

const TETRA_ASCII_PLY: &str = "\
ply
format ascii 1.0
comment a tetrahedron with one quad-shaped extra face list
element vertex 4
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
element face 4
property list uchar int vertex_indices
end_header
0 0 0 255 0 0
1 0 0 0 255 0
0 1 0 0 0 255
0 0 1 255 255 255
3 0 2 1
3 0 1 3
3 0 3 2
3 1 2 3
";

#[test]
fn ascii_ply_with_colours() {
    let mesh = import_bytes(TETRA_ASCII_PLY.as_bytes(), MeshFormat::Ply, "tetra.ply").unwrap();
    assert_eq!(mesh.vertex_count(), 4);
    assert_eq!(mesh.triangle_count(), 4);
    assert_eq!(mesh.colors[1], [0, 255, 0, 255]);
    assert!(mesh.normals.is_empty());
}

fn tetra_binary_ply(big_endian: bool) -> Vec<u8> {
    let format = if big_endian {
        "binary_big_endian"
    } else {
        "binary_little_endian"
    };
    let mut out = format!(
        "ply\nformat {format} 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n\
         property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 3\n\
         property list uchar int vertex_indices\nproperty uchar flags\nend_header\n"
    )
    .into_bytes();
    let f = |v: f32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i = |v: i32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let vertices = [
        ([0.0, 0.0, 0.0], [255, 0, 0]),
        ([1.0, 0.0, 0.0], [0, 255, 0]),
        ([0.0, 1.0, 0.0], [0, 0, 255]),
        ([0.0, 0.0, 1.0], [9, 9, 9]),
    ];
    for (p, c) in vertices {
        for v in p {
            out.extend(f(v));
        }
        out.extend(c);
    }
    // A triangle, a quad (two triangles) and a flags byte after each list.
    out.push(3);
    for v in [0, 2, 1] {
        out.extend(i(v));
    }
    out.push(7);
    out.push(4);
    for v in [0, 1, 3, 2] {
        out.extend(i(v));
    }
    out.push(7);
    out.push(3);
    for v in [1, 2, 3] {
        out.extend(i(v));
    }
    out.push(7);
    out
}

#[test]
fn binary_ply_both_endiannesses() {
    for big_endian in [false, true] {
        let mesh =
            import_bytes(&tetra_binary_ply(big_endian), MeshFormat::Ply, "tetra.ply").unwrap();
        assert_eq!(mesh.vertex_count(), 4, "big endian: {big_endian}");
        assert_eq!(mesh.triangle_count(), 4, "the quad is fan-triangulated");
        assert_eq!(mesh.positions[3], [0.0, 0.0, 1.0]);
        assert_eq!(mesh.colors[2], [0, 0, 255, 255]);
    }
}

#[test]
fn stl_ascii_and_binary_merge_shared_corners() {
    let ascii = "solid t\n\
        facet normal 0 0 -1\n outer loop\n  vertex 0 0 0\n  vertex 0 1 0\n  vertex 1 0 0\n endloop\nendfacet\n\
        facet normal 0 -1 0\n outer loop\n  vertex 0 0 0\n  vertex 1 0 0\n  vertex 0 0 1\n endloop\nendfacet\n\
        endsolid t\n";
    let mesh = import_bytes(ascii.as_bytes(), MeshFormat::Stl, "t.stl").unwrap();
    assert_eq!(mesh.triangle_count(), 2);
    assert_eq!(
        mesh.vertex_count(),
        4,
        "the two shared corners are one vertex each"
    );

    let mut binary = vec![0u8; 80];
    binary.extend(2u32.to_le_bytes());
    for triangle in [
        [[0.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    ] {
        binary.extend([0u8; 12]);
        for corner in triangle {
            for c in corner {
                binary.extend(c.to_le_bytes());
            }
        }
        binary.extend([0u8; 2]);
    }
    let from_binary = import_bytes(&binary, MeshFormat::Stl, "t.stl").unwrap();
    assert_eq!(triangle_set(&from_binary), triangle_set(&mesh));
    assert_eq!(sorted_positions(&from_binary), sorted_positions(&mesh));
}

/// A minimal GLB: one triangle with COLOR_0 (linear floats) under a translated node.
fn triangle_glb() -> Vec<u8> {
    let mut bin = Vec::new();
    for p in [[0.0f32, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] {
        for c in p {
            bin.extend(c.to_le_bytes());
        }
    }
    // Linear 0.2159 is sRGB 128 (((128/255 + 0.055) / 1.055)^2.4).
    for c in [
        [1.0f32, 0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0, 1.0],
        [0.2159, 0.2159, 0.2159, 1.0],
    ] {
        for v in c {
            bin.extend(v.to_le_bytes());
        }
    }
    for i in [0u16, 1, 2] {
        bin.extend(i.to_le_bytes());
    }
    bin.extend([0u8; 2]); // pad to 4 bytes
    let json = format!(
        r#"{{"asset":{{"version":"2.0"}},"scene":0,"scenes":[{{"nodes":[0]}}],
        "nodes":[{{"mesh":0,"translation":[10,0,0]}}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0,"COLOR_0":1}},"indices":2}}]}}],
        "buffers":[{{"byteLength":{len}}}],
        "bufferViews":[{{"buffer":0,"byteOffset":0,"byteLength":36}},{{"buffer":0,"byteOffset":36,"byteLength":48}},{{"buffer":0,"byteOffset":84,"byteLength":6}}],
        "accessors":[{{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3","min":[0,0,0],"max":[1,1,0]}},
                     {{"bufferView":1,"componentType":5126,"count":3,"type":"VEC4"}},
                     {{"bufferView":2,"componentType":5123,"count":3,"type":"SCALAR"}}]}}"#,
        len = bin.len()
    );
    let mut json = json.into_bytes();
    while json.len() % 4 != 0 {
        json.push(b' ');
    }
    let total = 12 + 8 + json.len() + 8 + bin.len();
    let mut glb = Vec::new();
    glb.extend(b"glTF");
    glb.extend(2u32.to_le_bytes());
    glb.extend((total as u32).to_le_bytes());
    glb.extend((json.len() as u32).to_le_bytes());
    glb.extend(b"JSON");
    glb.extend(&json);
    glb.extend((bin.len() as u32).to_le_bytes());
    glb.extend(b"BIN\0");
    glb.extend(&bin);
    glb
}

#[test]
fn glb_applies_node_transform_and_decodes_linear_colours() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tri.glb", &triangle_glb());
    let mesh = import_mesh(&path).unwrap();
    assert_eq!(mesh.triangle_count(), 1);
    assert_eq!(
        mesh.positions[1],
        [11.0, 0.0, 0.0],
        "the node's translation is applied"
    );
    assert_eq!(mesh.colors[0], [255, 0, 0, 255]);
    assert_eq!(
        mesh.colors[2][0], 128,
        "linear COLOR_0 becomes sRGB: {:?}",
        mesh.colors[2]
    );
}

fn malformed_reason(result: Result<Mesh, ImportError>) -> String {
    match result {
        Err(err @ ImportError::Malformed { .. }) => err.to_string(),
        other => panic!("expected a Malformed error, got {other:?}"),
    }
}

#[test]
fn malformed_files_are_clear_errors() {
    // Truncated binary PLY.
    let mut ply = tetra_binary_ply(false);
    ply.truncate(ply.len() - 10);
    let message = malformed_reason(import_bytes(&ply, MeshFormat::Ply, "cut.ply"));
    assert!(
        message.contains("cut.ply") && message.contains("PLY"),
        "{message}"
    );

    // A face that points past the vertex list.
    let bad_index = TETRA_ASCII_PLY.replace("3 1 2 3\n", "3 1 2 9\n");
    let message = malformed_reason(import_bytes(
        bad_index.as_bytes(),
        MeshFormat::Ply,
        "bad.ply",
    ));
    assert!(message.contains("vertex 9"), "{message}");

    // A header that claims a billion vertices must fail fast, not allocate.
    let liar = TETRA_ASCII_PLY.replace("element vertex 4", "element vertex 1000000000");
    malformed_reason(import_bytes(liar.as_bytes(), MeshFormat::Ply, "liar.ply"));

    // Not a PLY at all.
    malformed_reason(import_bytes(b"hello", MeshFormat::Ply, "x.ply"));

    // OBJ face that refers to a vertex that does not exist.
    malformed_reason(import_bytes(
        b"v 0 0 0\nv 1 0 0\nf 1 2 7\n",
        MeshFormat::Obj,
        "x.obj",
    ));

    // Binary STL whose triangle count promises more than the file holds.
    let mut stl = vec![0u8; 80];
    stl.extend(5u32.to_le_bytes());
    stl.extend([0u8; 50]);
    assert!(import_bytes(&stl, MeshFormat::Stl, "x.stl").is_err());

    // Garbage and truncated GLB.
    malformed_reason(import_bytes(
        b"glTF\x02\0\0\0garbage",
        MeshFormat::Glb,
        "x.glb",
    ));
    let glb = triangle_glb();
    malformed_reason(import_bytes(
        &glb[..glb.len() - 20],
        MeshFormat::Glb,
        "x.glb",
    ));
}

#[test]
fn points_only_unknown_extension_and_missing_file() {
    assert!(matches!(
        import_bytes(b"v 0 0 0\nv 1 0 0\np 1 2\n", MeshFormat::Obj, "points.obj"),
        Err(ImportError::NoTriangles { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mesh.fbx", b"whatever");
    let err = import_mesh(&path).unwrap_err();
    assert!(matches!(err, ImportError::UnsupportedFormat { .. }));
    assert!(
        err.to_string().contains(".glb"),
        "the message lists what works: {err}"
    );
    assert!(matches!(
        import_mesh(&dir.path().join("gone.stl")),
        Err(ImportError::Io { .. })
    ));
}

/// A closed box with per-vertex colours and UVs, as the generators produce.
fn coloured_box() -> Mesh {
    let corner = |i: u32| {
        [
            (i & 1) as f32,
            ((i >> 1) & 1) as f32 * 2.0,
            ((i >> 2) & 1) as f32 * 0.5,
        ]
    };
    let faces: [[u32; 4]; 6] = [
        [0, 2, 3, 1],
        [4, 5, 7, 6],
        [0, 1, 5, 4],
        [2, 6, 7, 3],
        [0, 4, 6, 2],
        [1, 3, 7, 5],
    ];
    Mesh {
        positions: (0..8).map(corner).collect(),
        uvs: (0..8)
            .map(|i| [(i & 1) as f32, ((i >> 1) & 1) as f32])
            .collect(),
        colors: (0..8u8).map(|i| [i * 30, 255 - i * 30, 100, 255]).collect(),
        indices: faces
            .iter()
            .flat_map(|f| [f[0], f[1], f[2], f[0], f[2], f[3]])
            .collect(),
        ..Mesh::default()
    }
}

/// Colour of the vertex at `position` (positions are unique in `coloured_box`).
fn colour_at(mesh: &Mesh, position: [f32; 3]) -> [u8; 4] {
    let i = mesh.positions.iter().position(|p| *p == position).unwrap();
    mesh.colors[i]
}

#[test]
fn round_trip_through_the_exporters() {
    use orfeas_core::export::{ExportFormat, export_mesh};
    let dir = tempfile::tempdir().unwrap();
    let original = coloured_box();
    for format in ExportFormat::ALL {
        let path = dir.path().join(format!("box.{}", format.extension()));
        export_mesh(&original, &path, format).unwrap();
        let back = import_mesh(&path).unwrap_or_else(|err| panic!("{format:?}: {err}"));
        assert_eq!(
            triangle_set(&back),
            triangle_set(&original),
            "{format:?}: same triangles"
        );
        if matches!(format, ExportFormat::Glb | ExportFormat::Ply) {
            for p in &original.positions {
                let (want, got) = (colour_at(&original, *p), colour_at(&back, *p));
                // GLB stores linear 8-bit colours, so dark sRGB values lose a little.
                let tolerance = if format == ExportFormat::Glb { 6 } else { 0 };
                assert!(
                    want.iter()
                        .zip(got)
                        .all(|(w, g)| w.abs_diff(g) <= tolerance),
                    "{format:?} at {p:?}: {want:?} → {got:?}"
                );
            }
        }
    }

    // A textured mesh keeps its texture and UV orientation through GLB and OBJ.
    let mut textured = coloured_box();
    textured.colors.clear();
    textured.texture = Some(image::RgbaImage::from_fn(4, 2, |x, y| {
        image::Rgba([x as u8 * 60, y as u8 * 200, 7, 255])
    }));
    for format in [ExportFormat::Glb, ExportFormat::Obj] {
        let path = dir.path().join(format!("textured.{}", format.extension()));
        export_mesh(&textured, &path, format).unwrap();
        let back = import_mesh(&path).unwrap();
        assert_eq!(
            back.texture.as_ref(),
            textured.texture.as_ref(),
            "{format:?}: the texture survives"
        );
        for (i, p) in textured.positions.iter().enumerate() {
            let j = back.positions.iter().position(|q| q == p).unwrap();
            assert_eq!(back.uvs[j], textured.uvs[i], "{format:?}: UV at {p:?}");
        }
    }
}

//! Renders a mesh file to a PNG through the headless renderer (until `orfeas
//! render` is wired in the CLI):
//! `cargo run --example render_shot -- MESH OUT.png [view] [mode] [WIDTHxHEIGHT] [--wireframe]`

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mesh_path, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: render_shot MESH OUT.png [view] [mode] [WIDTHxHEIGHT] [--wireframe]");
    };
    let mut options = orfeas::viewport::RenderOptions::default();
    for arg in rest {
        if arg == "--wireframe" {
            options.wireframe = true;
        } else if let Some(view) = orfeas::viewport::View::from_name(arg) {
            options.view = view;
        } else if let Some(mode) = orfeas::viewport::ShadingMode::from_name(arg) {
            options.mode = mode;
        } else if let Some((w, h)) = arg.split_once('x') {
            options.width = w.parse()?;
            options.height = h.parse()?;
        } else {
            anyhow::bail!("unknown argument {arg}");
        }
    }
    let mesh = orfeas::viewport::open_mesh_file(std::path::Path::new(mesh_path))?;
    let image = orfeas::viewport::render_mesh_to_image(&mesh, &options)?;
    image.save(out)?;
    println!(
        "{} triangles → {out} ({}x{})",
        mesh.triangle_count(),
        options.width,
        options.height
    );
    Ok(())
}

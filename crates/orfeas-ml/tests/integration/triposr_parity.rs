//! TripoSR parity with the official code's goldens (tests/fixtures/triposr-tiny,
//! README there): every stage fed the golden input of the stage before, plus
//! the whole chain from the PNG. Tolerances are the README's (max |a-b| / max |golden|).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use orfeas_ml::triposr::field::{OrbitCamera, Triplane, grid_point, render_to_image};
use orfeas_ml::triposr::{TripoSr, image_tokenizer, preprocess};

use crate::common::{assert_close, dev, get, pixel_diff, rel_err};

/// The README's tolerance for preprocess, ViT, backbone, scene codes, decoder outputs, colours, rgb.
const TOL: f32 = 1e-5;

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/triposr-tiny")
}

pub fn golden(name: &str) -> HashMap<String, Tensor> {
    let path = fixture().join("golden").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &dev())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tiny model from `model.safetensors`, loaded once.
pub fn tiny() -> &'static TripoSr {
    static MODEL: OnceLock<TripoSr> = OnceLock::new();
    MODEL.get_or_init(|| TripoSr::from_dir(&fixture(), DType::F32, &dev()).unwrap())
}

fn png(name: &str) -> image::DynamicImage {
    let path = fixture().join("golden").join(name);
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rows3(t: &Tensor) -> Vec<[f32; 3]> {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| [r[0], r[1], r[2]])
        .collect()
}

fn tensor_of_rows(rows: &[[f32; 3]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 3), &candle_core::Device::Cpu).unwrap()
}

fn tensor_of(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &candle_core::Device::Cpu).unwrap()
}

/// max over elements of |a - b| / |b| (for exp-activated densities, all > 0).
fn max_elementwise_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(f32::MIN_POSITIVE))
        .fold(0f32, f32::max)
}

fn cpu(t: &Tensor) -> Tensor {
    t.to_device(&candle_core::Device::Cpu).unwrap()
}

#[test]
fn resize_foreground_and_grey_composite_match_the_official_pngs_exactly() {
    let input = png("input_rgba.png").to_rgba8();
    let resized = preprocess::resize_foreground(&input, 0.85).unwrap();
    let want = png("resized_foreground_rgba.png").to_rgba8();
    assert_eq!(
        resized.dimensions(),
        (196, 196),
        "floor(167 / 0.85) with the upstream crop"
    );
    assert!(
        resized == want,
        "resize_foreground differs from the official output"
    );

    let composited = preprocess::composite_grey(&resized);
    let want = png("composited_input.png").to_rgb8();
    let (differ, max) = pixel_diff(&composited, &want);
    assert_eq!(
        (differ, max),
        (0, 0),
        "grey composite (truncation, not rounding)"
    );
}

#[test]
fn rgb_cond_and_pixel_values_match_from_the_png() {
    let g = golden("preprocess");
    let prepared = preprocess::prepare_image(&png("input_rgba.png"), 0.85).unwrap();
    let rgb = preprocess::resize_antialiased(&prepared, 144).unwrap();
    assert_close(
        "rgb_cond",
        &tensor_of(&rgb, &[1, 144, 144, 3]),
        &cpu(get(&g, "rgb_cond")),
        TOL,
    );

    let pixels = tiny()
        .preprocess(&png("input_rgba.png"), 0.85, &dev())
        .unwrap();
    assert_close("pixel_values", &pixels, get(&g, "pixel_values"), TOL);
}

#[test]
fn vit_patch_and_position_embeddings_match() {
    let pre = golden("preprocess");
    let g = golden("image_tokenizer");
    let vit = tiny().image_tokenizer();
    let pixels = get(&pre, "pixel_values");
    assert_close(
        "patch_embeddings",
        &vit.patch_embeddings(pixels).unwrap(),
        get(&g, "patch_embeddings"),
        TOL,
    );

    let pos = vit.position_embeddings(144, 144).unwrap();
    assert_close(
        "pos_embed_interpolated",
        &pos,
        get(&g, "pos_embed_interpolated"),
        TOL,
    );
    // transformers 5's size=(n, n) form is far off: the port must not be using it.
    let variant = rel_err(
        "pos vs size= variant",
        &pos,
        get(&g, "pos_embed_interpolated_size_variant"),
    );
    assert!(
        variant > 1e-2,
        "position embeddings look like the size= variant ({variant:.2e})"
    );
}

#[test]
fn pos_interpolation_keeps_a_matching_grid_and_refuses_a_non_square_table() {
    let table = Tensor::arange(0f32, 17.0 * 2.0, &candle_core::Device::Cpu)
        .unwrap()
        .reshape((1, 17, 2))
        .unwrap();
    let same = image_tokenizer::interpolate_pos_encoding(&table, 4, 4).unwrap();
    assert_eq!(
        same.to_vec3::<f32>().unwrap(),
        table.to_vec3::<f32>().unwrap()
    );
    let bad = Tensor::zeros((1, 11, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(image_tokenizer::interpolate_pos_encoding(&bad, 4, 4).is_err());
}

#[test]
fn vit_layers_and_image_tokens_match() {
    let pre = golden("preprocess");
    let g = golden("image_tokenizer");
    let vit = tiny().image_tokenizer();
    let hidden = get(&g, "vit_hidden_states");
    let emb = vit.embeddings(get(&pre, "pixel_values")).unwrap();
    assert_close("vit_hidden_states[0]", &emb, &hidden.get(0).unwrap(), TOL);
    for (l, layer) in vit.layers().iter().enumerate() {
        let out = layer.forward(&hidden.get(l).unwrap()).unwrap();
        assert_close(
            &format!("vit_hidden_states[{}]", l + 1),
            &out,
            &hidden.get(l + 1).unwrap(),
            TOL,
        );
    }
    let last = hidden.get(vit.layers().len()).unwrap();
    assert_close(
        "image_tokens (final layernorm)",
        &vit.final_layernorm(&last).unwrap(),
        get(&g, "image_tokens"),
        TOL,
    );
    let tokens = tiny().image_tokens(get(&pre, "pixel_values")).unwrap();
    assert_close("image_tokens", &tokens, get(&g, "image_tokens"), TOL);
}

#[test]
fn backbone_stages_match() {
    let g = golden("backbone");
    let image_tokens = get(&golden("image_tokenizer"), "image_tokens").clone();
    let model = tiny();
    let tokens = model.tokenizer().forward(1).unwrap();
    assert_close(
        "triplane_tokens_in",
        &tokens,
        get(&g, "triplane_tokens_in"),
        0.0,
    );

    let bb = model.backbone();
    let tokens_in = get(&g, "triplane_tokens_in");
    assert_close(
        "backbone_groupnorm_out",
        &bb.group_norm(tokens_in).unwrap(),
        get(&g, "backbone_groupnorm_out"),
        TOL,
    );
    let proj = bb.proj_in(get(&g, "backbone_groupnorm_out")).unwrap();
    assert_close(
        "backbone_proj_in_out",
        &proj,
        get(&g, "backbone_proj_in_out"),
        TOL,
    );
    let inputs = ["backbone_proj_in_out", "backbone_block0_out"];
    for (i, (block, input)) in bb.blocks().iter().zip(inputs).enumerate() {
        let out = block.forward(get(&g, input), &image_tokens).unwrap();
        let want = format!("backbone_block{i}_out");
        assert_close(&want, &out, get(&g, &want), TOL);
    }
    let out = bb
        .proj_out(get(&g, "backbone_block1_out"), tokens_in)
        .unwrap();
    assert_close("backbone_out", &out, get(&g, "backbone_out"), TOL);
    let whole = model.triplane_tokens(&image_tokens).unwrap();
    assert_close("backbone (whole)", &whole, get(&g, "backbone_out"), TOL);
}

#[test]
fn detokenize_and_post_processor_give_the_scene_codes() {
    let g = golden("scene_codes");
    let model = tiny();
    let backbone_out = get(&golden("backbone"), "backbone_out").clone();
    let planes = model.tokenizer().detokenize(&backbone_out).unwrap();
    assert_close(
        "triplanes_detokenized",
        &planes,
        get(&g, "triplanes_detokenized"),
        0.0,
    );
    let codes = model
        .post_processor()
        .forward(get(&g, "triplanes_detokenized"))
        .unwrap();
    assert_close(
        "scene_codes (ConvTranspose2d)",
        &codes,
        get(&g, "scene_codes"),
        TOL,
    );
}

#[test]
fn whole_forward_from_the_png_gives_the_scene_codes() {
    let model = tiny();
    let pixels = model
        .preprocess(&png("input_rgba.png"), 0.85, &dev())
        .unwrap();
    let codes = model.forward(&pixels).unwrap();
    assert_close(
        "scene_codes (from PNG)",
        &codes,
        get(&golden("scene_codes"), "scene_codes"),
        TOL,
    );
}

#[test]
fn decoder_queries_match_including_points_on_the_cube_faces() {
    let g = golden("decoder_queries");
    let codes = get(&golden("scene_codes"), "scene_codes").clone();
    let triplane = Triplane::new(&codes).unwrap();
    let field = tiny().field();
    let points = rows3(get(&g, "points"));
    let features = field.triplane_features(&triplane, &points).unwrap();
    assert_close(
        "triplane_features",
        &features,
        get(&g, "triplane_features"),
        TOL,
    );

    let s = field.query(&triplane, &points).unwrap();
    assert_close(
        "density",
        &tensor_of(&s.density, &[1000, 1]),
        &cpu(get(&g, "density")),
        TOL,
    );
    assert_close(
        "features",
        &tensor_of_rows(&s.features),
        &cpu(get(&g, "features")),
        TOL,
    );
    assert_close(
        "color",
        &tensor_of_rows(&s.color),
        &cpu(get(&g, "color")),
        TOL,
    );
    let want: Vec<f32> = get(&g, "density_act")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let rel = max_elementwise_rel(&s.density_act, &want);
    eprintln!("parity density_act: max elementwise rel = {rel:.3e}");
    assert!(rel <= TOL, "density_act relative error {rel:.3e}");

    // Chunking does not change the answer.
    let chunked = field.query_chunked(&triplane, &points, 7).unwrap();
    let rel = max_elementwise_rel(&chunked.density_act, &s.density_act);
    assert!(rel <= 1e-6, "chunked density differs by {rel:.3e}");
}

#[test]
fn density_grid_matches_in_c_order_with_x_slowest() {
    let g = golden("density_grid");
    let want_points = rows3(get(&g, "grid_points"));
    let radius = tiny().config().renderer.radius;
    let max_point_err = want_points
        .iter()
        .enumerate()
        .flat_map(|(n, w)| {
            let p = grid_point(n, 32, radius);
            (0..3).map(move |a| (p[a] - w[a]).abs())
        })
        .fold(0f32, f32::max);
    assert!(
        max_point_err <= 1e-6,
        "grid points off by {max_point_err:.2e}"
    );

    let codes = get(&golden("scene_codes"), "scene_codes").clone();
    let grid = tiny().density_grid(&codes, 32).unwrap();
    let want: Vec<f32> = get(&g, "density_act")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let rel = max_elementwise_rel(&grid, &want);
    eprintln!("parity density_grid: max elementwise rel = {rel:.3e}");
    assert!(rel <= TOL, "density grid relative error {rel:.3e}");
    let occupied = grid.iter().filter(|&&d| d > 25.0).count() as f64 / grid.len() as f64;
    let want_occupied = want.iter().filter(|&&d| d > 25.0).count() as f64 / want.len() as f64;
    assert_eq!(
        occupied, want_occupied,
        "cells above the marching-cubes threshold"
    );

    let small_chunks = tiny().density_grid_chunked(&codes, 32, 1000).unwrap();
    let rel = max_elementwise_rel(&small_chunks, &grid);
    assert!(rel <= 1e-6, "chunk size changed the grid by {rel:.3e}");
}

#[test]
fn vertex_colours_match_at_the_official_mesh_vertices() {
    let g = golden("mesh_torchmcubes_raw");
    let codes = get(&golden("scene_codes"), "scene_codes").clone();
    let vertices = rows3(get(&g, "vertices"));
    let colors = tiny().query_colors(&codes, &vertices).unwrap();
    assert_eq!(colors.len(), vertices.len());
    assert_close(
        "vertex_colors",
        &tensor_of_rows(&colors),
        &cpu(get(&g, "vertex_colors")),
        TOL,
    );
}

#[test]
fn one_view_render_matches_rays_rgb_and_png() {
    let g = golden("render");
    let camera = OrbitCamera::orbit(1, 0.0, 1.9, 40.0, 32, 32)[0];
    let (origins, dirs) = camera.rays();
    assert_close(
        "rays_o",
        &tensor_of_rows(&origins),
        &cpu(&get(&g, "rays_o").reshape((1024, 3)).unwrap()),
        TOL,
    );
    assert_close(
        "rays_d",
        &tensor_of_rows(&dirs),
        &cpu(&get(&g, "rays_d").reshape((1024, 3)).unwrap()),
        TOL,
    );

    let codes = get(&golden("scene_codes"), "scene_codes").clone();
    let rgb = tiny().render_view(&codes, &camera).unwrap();
    assert_close(
        "render rgb",
        &tensor_of_rows(&rgb),
        &cpu(&get(&g, "rgb").reshape((1024, 3)).unwrap()),
        TOL,
    );
    let picture = render_to_image(&rgb, 32, 32).unwrap();
    let (differ, max) = pixel_diff(&picture, &png("render_view0.png").to_rgb8());
    eprintln!("parity render png: {differ} values differ, max {max}");
    assert!(max <= 1, "render PNG differs by {max}");
}

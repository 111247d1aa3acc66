//! BiRefNet parity with the official code's goldens (tests/fixtures/birefnet-tiny,
//! README there): preprocessing, the Swin backbone (both calls), the encoder,
//! the squeeze block, every decoder block fed its stored input, the chained
//! decoder, torchvision's `deform_conv2d` cases and the masks from the PNG.
//! Tolerances are the README's max-abs values, read from `golden/meta.json`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Module, Tensor};
use orfeas_ml::birefnet::decoder::image_to_patches;
use orfeas_ml::birefnet::deform::deform_conv2d;
use orfeas_ml::birefnet::{BiRefNet, Trace, preprocess, swin};

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/birefnet-tiny")
}

pub fn golden(name: &str) -> HashMap<String, Tensor> {
    let path = fixture().join("golden").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    map.get(key)
        .unwrap_or_else(|| panic!("golden tensor {key} missing"))
}

/// The tiny model from `model.safetensors`, loaded once.
pub fn tiny() -> &'static BiRefNet {
    static MODEL: OnceLock<BiRefNet> = OnceLock::new();
    MODEL.get_or_init(|| BiRefNet::from_dir(&fixture(), DType::F32, &Device::Cpu).unwrap())
}

fn meta() -> &'static serde_json::Value {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    META.get_or_init(|| {
        let text = std::fs::read_to_string(fixture().join("golden/meta.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// A block of meta.json.
fn meta_dict(key: &str) -> serde_json::Value {
    let v = meta()[key].clone();
    assert!(v.is_object(), "meta.json has no {key} block");
    v
}

/// The README's tolerance for a golden tensor.
fn tol(key: &str) -> f32 {
    static TOLS: OnceLock<serde_json::Value> = OnceLock::new();
    TOLS.get_or_init(|| meta_dict("recommended_tol_abs"))[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no tolerance for {key}")) as f32
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

pub fn max_abs(label: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{label}: shape");
    let d = values(got)
        .iter()
        .zip(values(want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d.is_finite(), "{label}: non-finite");
    eprintln!("parity {label}: max|diff| = {d:.3e}");
    d
}

fn assert_golden(key: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs(key, got, want);
    let t = tol(key);
    assert!(
        d <= t,
        "{key}: max |diff| {d:.3e} exceeds the README's {t:.0e}"
    );
}

fn png(name: &str) -> image::DynamicImage {
    let path = fixture().join("golden").join(name);
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (values that differ, largest difference) of two 8-bit buffers.
fn byte_diff(got: &[u8], want: &[u8]) -> (usize, u8) {
    assert_eq!(got.len(), want.len(), "sizes differ");
    got.iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .filter(|&d| d > 0)
        .fold((0, 0), |(n, m), d| (n + 1, m.max(d)))
}

fn model_size() -> (usize, usize) {
    let hw = &meta()["tiny_params"]["model_hw"];
    (
        hw[0].as_u64().unwrap() as usize,
        hw[1].as_u64().unwrap() as usize,
    )
}

#[test]
fn preprocessing_resizes_like_pil_and_normalises_like_torchvision() {
    let g = golden("input");
    let image = png("input.png");
    let (h, w) = model_size();
    let resized = preprocess::resize_rgb(&image.to_rgb8(), (h, w));
    let want: Vec<u8> = get(&g, "resized_u8_hwc")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let (differ, max) = byte_diff(resized.as_raw(), &want);
    eprintln!("parity resized_u8_hwc: {differ} values differ, max {max}");
    assert_eq!((differ, max), (0, 0), "PIL bilinear resize differs");

    let x = BiRefNet::preprocess(&image, (h, w), &Device::Cpu).unwrap();
    assert_golden("input", &x, get(&g, "input"));
}

#[test]
fn swin_backbone_matches_every_stored_stage_of_the_full_resolution_call() {
    let g = golden("backbone");
    let x = get(&golden("input"), "input").clone();
    let bb = tiny().backbone();
    let pe = bb.patch_embed.forward(&x).unwrap();
    assert_golden("bb.full.patch_embed", &pe, get(&g, "bb.full.patch_embed"));
    let outs = bb.forward(&x).unwrap();
    for (i, out) in outs.iter().enumerate() {
        let key = format!("bb.full.out{i}");
        assert_golden(&key, out, get(&g, &key));
    }

    // Stage by stage, each fed the stored output of the step before.
    let (_, _, mut h, mut w) = pe.dims4().unwrap();
    let mut tokens = get(&g, "bb.full.patch_embed")
        .flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    for (i, stage) in bb.stages.iter().enumerate() {
        let mask = stage.mask(h, w, &Device::Cpu).unwrap();
        for (j, block) in stage.blocks.iter().enumerate() {
            let key = format!("bb.full.layers.{i}.blocks.{j}");
            if i == 0 {
                let attn = block.attention_windows(&tokens, h, w, Some(&mask)).unwrap();
                let akey = format!("{key}.attn");
                assert_golden(&akey, &attn, get(&g, &akey));
            }
            let out = block.forward(&tokens, h, w, Some(&mask)).unwrap();
            assert_golden(&key, &out, get(&g, &key));
            tokens = get(&g, &key).clone();
        }
        if let Some(down) = &stage.downsample {
            let key = format!("bb.full.layers.{i}.downsample");
            let out = down.forward(&tokens, h, w).unwrap();
            assert_golden(&key, &out, get(&g, &key));
            tokens = get(&g, &key).clone();
            h /= 2;
            w /= 2;
        }
    }
}

#[test]
fn swin_backbone_matches_the_pyramid_call() {
    let g = golden("backbone");
    let x = get(&golden("encoder"), "enc.x_pyramid").clone();
    let bb = tiny().backbone();
    let pe = bb.patch_embed.forward(&x).unwrap();
    assert_golden("bb.pyr.patch_embed", &pe, get(&g, "bb.pyr.patch_embed"));
    for (i, out) in bb.forward(&x).unwrap().iter().enumerate() {
        let key = format!("bb.pyr.out{i}");
        assert_golden(&key, out, get(&g, &key));
    }
    // The merging of each stage fed the stored tokens of the stage before it
    // (the 12×16 map pads to 14×21 and is one window wide in stage 3).
    let (_, _, mut h, mut w) = pe.dims4().unwrap();
    let mut tokens = pe
        .flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    for (i, stage) in bb.stages.iter().enumerate().take(3) {
        let (_, down) = stage.forward(&tokens, h, w).unwrap();
        let key = format!("bb.pyr.layers.{i}.downsample");
        assert_golden(&key, &down.unwrap(), get(&g, &key));
        tokens = get(&g, &key).clone();
        h = h.div_ceil(2);
        w = w.div_ceil(2);
    }
}

#[test]
fn relative_position_index_equals_the_official_buffer() {
    let weights =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let stored: Vec<i64> = weights["bb.layers.0.blocks.0.attn.relative_position_index"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ours: Vec<i64> = swin::relative_position_index(7)
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ours, stored);
}

#[test]
fn encoder_joins_both_calls_and_the_context_levels() {
    let g = golden("encoder");
    let x = get(&golden("input"), "input").clone();
    let mut trace = Trace::recording();
    tiny().encode(&x, &mut trace).unwrap();
    let entries = trace.into_entries();
    assert_eq!(entries.len(), 5);
    for (key, t) in &entries {
        assert_golden(key, t, get(&g, key));
    }
}

/// Runs a traced stage and compares every recorded tensor that has a golden.
fn check_trace(entries: &[(String, Tensor)], g: &HashMap<String, Tensor>) -> usize {
    let mut checked = 0;
    for (key, t) in entries {
        if let Some(want) = g.get(key) {
            assert_golden(key, t, want);
            checked += 1;
        }
    }
    checked
}

#[test]
fn squeeze_block_and_its_deformable_branches_match() {
    let g = golden("decoder");
    let x4 = get(&golden("encoder"), "enc.x4").clone();
    let sq = tiny().squeeze_module();
    assert_golden(
        "squeeze_module.0.conv_in",
        &sq.conv_in(&x4).unwrap(),
        get(&g, "squeeze_module.0.conv_in"),
    );
    let mut trace = Trace::recording();
    let out = sq
        .forward_traced(&x4, "squeeze_module.0", &mut trace)
        .unwrap();
    assert_golden("squeeze_module", &out, get(&g, "squeeze_module"));
    // conv_in, 4 branches × (offset, modulator, deform out), the pool, dec_att.
    assert_eq!(check_trace(&trace.into_entries(), &g), 1 + 12 + 1 + 1);
}

#[test]
fn every_decoder_block_fed_its_stored_input_matches() {
    let g = golden("decoder");
    for (i, block) in tiny().decoder().blocks.iter().enumerate() {
        let name = format!("decoder.decoder_block{}", 4 - i);
        let input = get(&g, &format!("{name}.input"));
        let mut trace = Trace::recording();
        block.forward_traced(input, &name, &mut trace).unwrap();
        let checked = check_trace(&trace.into_entries(), &g);
        // Block 4 has its branch internals stored; the others their dec_att and output.
        assert_eq!(checked, if i == 0 { 15 } else { 2 }, "{name}");
    }
}

#[test]
fn decoder_chained_from_the_stored_encoder_outputs_matches() {
    let enc = golden("encoder");
    let g = golden("decoder");
    let x = get(&golden("input"), "input").clone();
    let feats = [
        get(&enc, "enc.x1").clone(),
        get(&enc, "enc.x2").clone(),
        get(&enc, "enc.x3").clone(),
        get(&g, "squeeze_module").clone(),
    ];
    let mut trace = Trace::recording();
    let logits = tiny()
        .decoder()
        .forward_traced(&x, &feats, &mut trace)
        .unwrap();
    let checked = check_trace(&trace.into_entries(), &g);
    // ipt 5..2, 4 block inputs + 4 outputs, 4 dec_att, 4 block-4 branches' 13, gdt 3+3, laterals 3.
    assert_eq!(checked, 4 + 4 + 4 + 4 + 13 + 6 + 3);
    assert_golden("logits", &logits, get(&golden("output"), "logits"));
}

#[test]
fn whole_model_from_the_stored_input_matches_logits_and_mask() {
    let out = golden("output");
    let x = get(&golden("input"), "input").clone();
    let logits = tiny().forward(&x).unwrap();
    assert_golden("logits", &logits, get(&out, "logits"));
    let mask = candle_nn::ops::sigmoid(&logits).unwrap();
    assert_golden("mask_sigmoid", &mask, get(&out, "mask_sigmoid"));
    let (_, _, ih, iw) = get(&out, "mask_orig_bilinear_ac").dims4().unwrap();
    let resized = preprocess::mask_to_size_bilinear(&mask, (ih, iw)).unwrap();
    assert_golden(
        "mask_orig_bilinear_ac",
        &resized,
        get(&out, "mask_orig_bilinear_ac"),
    );
}

#[test]
fn mask_of_the_png_matches_the_model_card_masks() {
    let image = png("input.png");
    let out = golden("output");
    let model = tiny();
    let small = preprocess::mask_to_u8(&model.predict(&image, model_size()).unwrap()).unwrap();
    let want = get(&out, "mask_model_res_u8")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let (differ, max) = byte_diff(small.as_raw(), &want);
    eprintln!("parity mask_model_res_u8: {differ} values differ, max {max}");
    assert!(max <= 1, "model-resolution mask off by {max}");
    let png_small = png("mask_model_res.png").to_luma8();
    assert_eq!(
        png_small.as_raw(),
        &want,
        "mask_model_res.png is the stored tensor"
    );

    let mask = model.mask(&image, model_size()).unwrap();
    assert_eq!(mask.dimensions(), (image.width(), image.height()));
    let want = png("mask.png").to_luma8();
    let (differ, max) = byte_diff(mask.as_raw(), want.as_raw());
    eprintln!("parity mask.png: {differ} values differ, max {max}");
    assert!(max <= 1, "picture-size mask off by {max}");
}

#[test]
fn pil_bicubic_resize_of_the_stored_mask_gives_mask_png_exactly() {
    let out = golden("output");
    let small = png("mask_model_res.png").to_luma8();
    let want = get(&out, "mask_orig_hf_pil_u8");
    let (h, w) = want.dims2().unwrap();
    let got = preprocess::resize_mask_u8(&small, (h, w));
    let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(byte_diff(got.as_raw(), &want), (0, 0));
}

/// The README's rule for the stand-alone cases: max(1e-5, 10 × torchvision's f32-vs-f64 error).
fn deform_tol(case: &str) -> f32 {
    let errs = meta_dict("deform_unit_errors");
    let e = errs[case]["torchvision_f32_vs_f64"].as_f64().unwrap() as f32;
    (10.0 * e).max(1e-5)
}

#[test]
fn deform_conv2d_matches_torchvision_for_k1_k3_k7() {
    let g = golden("deform_conv2d_unit");
    for (case, k) in [("k1", 1), ("k3", 3), ("k7", 7)] {
        let t = |name: &str| get(&g, &format!("{case}.{name}")).clone();
        let bias = g.get(&format!("{case}.bias"));
        let out = deform_conv2d(
            &t("input"),
            &t("offset"),
            &t("mask"),
            &t("weight"),
            bias,
            k / 2,
        )
        .unwrap();
        let d = max_abs(case, &out, &t("output"));
        let tol = deform_tol(case);
        assert!(d <= tol, "{case}: {d:.3e} > {tol:.1e}");
    }
}

#[test]
fn deform_conv2d_uses_the_offsets_and_the_mask() {
    let g = golden("deform_conv2d_unit");
    let t = |name: &str| get(&g, &format!("k3.{name}")).clone();
    let bias = get(&g, "k3.bias");
    let want = t("output");
    let zero_off = t("offset").zeros_like().unwrap();
    let no_offsets = deform_conv2d(
        &t("input"),
        &zero_off,
        &t("mask"),
        &t("weight"),
        Some(bias),
        1,
    )
    .unwrap();
    let d = max_abs("k3 with offsets zeroed", &no_offsets, &want);
    assert!(
        d > 0.1,
        "zeroing the offsets changed the output by only {d:.3e}"
    );
    let ones = t("mask").ones_like().unwrap();
    let unit_mask = deform_conv2d(
        &t("input"),
        &t("offset"),
        &ones,
        &t("weight"),
        Some(bias),
        1,
    )
    .unwrap();
    let d = max_abs("k3 with mask 1", &unit_mask, &want);
    assert!(d > 0.1, "a unit mask changed the output by only {d:.3e}");

    // Zero offsets and a unit mask: an ordinary zero-padded convolution.
    let plain = deform_conv2d(&t("input"), &zero_off, &ones, &t("weight"), Some(bias), 1).unwrap();
    let conv = t("input")
        .conv2d(&t("weight"), 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    assert!(max_abs("k3 plain vs conv2d", &plain, &conv) < 1e-5);
}

#[test]
fn image_to_patches_orders_channels_c_then_row_then_column() {
    // 1 channel, 4×4 picture, grid 2: patch (hg, wg) holds pixels (hg·2 + h, wg·2 + w).
    let x = Tensor::arange(0f32, 16.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 4, 4))
        .unwrap();
    let p = image_to_patches(&x, 2, 2).unwrap();
    assert_eq!(p.dims(), [1, 4, 2, 2]);
    let v = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(
        v,
        [
            0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.
        ]
    );
    // And the ipt block fed these patches reproduces the stored ipt_blk5 output.
    let g = golden("decoder");
    let img = get(&golden("input"), "input").clone();
    let ipt5 = &tiny().decoder().ipt_blks[0];
    let out = ipt5
        .forward(&image_to_patches(&img, 3, 4).unwrap())
        .unwrap();
    assert_golden("decoder.ipt_blk5", &out, get(&g, "decoder.ipt_blk5"));
}

//! One request, every front end: CLI arguments, the GUI's fields, the HTTP
//! JSON body, A1111's `/sdapi/v1/txt2img` body and a generated PNG's text
//! chunks all become the same `TextToImageRequest`. Renaming a field on one
//! side breaks the build or this test.

use clap::Parser as _;
use orfeas::app::state::{DecoderChoice, TextParams};
use orfeas::cli::{Cli, Command};
use orfeas_core::request::{
    A1111Txt2Img, Decoder, SchedulerKind, TextToImageRequest, text_to_image_from_png,
};

/// The request every front end below describes.
fn expected() -> TextToImageRequest {
    TextToImageRequest {
        negative_prompt: "blurry, low contrast".into(),
        model: "sd-1.5".into(),
        steps: Some(12),
        guidance: Some(6.5),
        width: Some(640),
        height: Some(384),
        seed: 4_242,
        batch: 2,
        scheduler: Some(SchedulerKind::EulerAncestral),
        ..TextToImageRequest::new("a red fox in fresh snow, morning light")
    }
}

fn from_cli(args: &[&str]) -> TextToImageRequest {
    let cli = Cli::try_parse_from(args).unwrap();
    let Some(Command::TextToImage(args)) = cli.command else {
        panic!("not a text-to-image command");
    };
    orfeas::cli::text_to_image_request(&args).unwrap()
}

#[test]
fn the_cli_arguments_become_the_request() {
    let got = from_cli(&[
        "orfeas",
        "text-to-image",
        "a red fox in fresh snow, morning light",
        "-o",
        "fox.png",
        "--negative",
        "blurry, low contrast",
        "--model",
        "sd-1.5",
        "--steps",
        "12",
        "--guidance",
        "6.5",
        "--size",
        "640x384",
        "--seed",
        "4242",
        "--batch",
        "2",
        "--scheduler",
        "euler-a",
    ]);
    assert_eq!(got, expected());
    // The one set of names: A1111's spelling is not a CLI scheduler name.
    let cli = Cli::try_parse_from([
        "orfeas",
        "text-to-image",
        "x",
        "-o",
        "x.png",
        "--scheduler",
        "euler_a",
    ])
    .unwrap();
    let Some(Command::TextToImage(args)) = cli.command else {
        panic!()
    };
    let e = orfeas::cli::text_to_image_request(&args).unwrap_err();
    assert!(e.to_string().contains("euler-a"), "{e}");
}

#[test]
fn the_gui_fields_become_the_request() {
    let fields = TextParams {
        prompt: "a red fox in fresh snow, morning light".into(),
        negative: "blurry, low contrast".into(),
        model: "sd-1.5".into(),
        model_path: None,
        style: "none".into(),
        steps: 12,
        guidance: 6.5,
        seed: 4_242,
        seed_locked: true,
        width: 640,
        height: 384,
        batch: 2,
        scheduler: Some(SchedulerKind::EulerAncestral),
        decoder: DecoderChoice::Vae,
        init_image: None,
        strength: 0.6,
    };
    assert_eq!(fields.to_request(), expected());
    // ...and back: a request (a dropped PNG, a re-run) fills the same fields.
    assert_eq!(TextParams::from_request(&expected()).unwrap(), fields);
    let tiled = TextParams {
        decoder: DecoderChoice::TiledVae,
        ..fields
    };
    assert_eq!(tiled.to_request().decoder, Decoder::VaeTiled);
}

#[test]
fn the_http_json_body_becomes_the_request() {
    let body = serde_json::json!({
        "prompt": "a red fox in fresh snow, morning light",
        "negative_prompt": "blurry, low contrast",
        "model": "sd-1.5",
        "steps": 12,
        "guidance": 6.5,
        "width": 640,
        "height": 384,
        "seed": 4242,
        "batch": 2,
        "scheduler": "euler-a",
    });
    let got = orfeas_core::http::validate::text_to_image(body.to_string().as_bytes(), || {
        unreachable!("the seed is given")
    })
    .unwrap();
    assert_eq!(got, expected());
}

#[test]
fn the_a1111_txt2img_body_becomes_the_request() {
    let body = serde_json::json!({
        "prompt": "a red fox in fresh snow, morning light",
        "negative_prompt": "blurry, low contrast",
        "steps": 12,
        "cfg_scale": 6.5,
        "width": 640,
        "height": 384,
        "seed": 4242,
        "batch_size": 1,
        "n_iter": 2,
        "sampler_name": "Euler a",
    });
    let got = A1111Txt2Img::from_json(body.to_string().as_bytes())
        .unwrap()
        .into_request(|| unreachable!("the seed is given"))
        .unwrap();
    // A1111's body names no model: the default one.
    assert_eq!(
        got,
        TextToImageRequest {
            model: orfeas_core::request::DEFAULT_MODEL.into(),
            ..expected()
        }
    );
}

#[test]
fn a_generated_pngs_text_chunks_become_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let request = TextToImageRequest {
        style: "anime".into(),
        decoder: Decoder::Taesd,
        ..expected()
    };
    let params = orfeas_ml::text_to_image::TextToImageParams::from_request(&request).unwrap();
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([200, 30, 30]));
    let out = tmp.path().join("fox.png");
    orfeas_ml::text_to_image::write_png_with_params(&img, &params, 0, &out).unwrap();
    let info = text_to_image_from_png(&out).unwrap();
    // A PNG is one picture of the batch: batch 1, with that picture's seed.
    assert_eq!(
        info.request,
        TextToImageRequest {
            batch: 1,
            ..request.clone()
        }
    );
    orfeas_ml::text_to_image::write_png_with_params(&img, &params, 1, &out).unwrap();
    let second = text_to_image_from_png(&out).unwrap();
    assert_eq!(second.request.seed, request.seed + 1);
    // The CLI's --from-png reads the same request, and a flag changes one field.
    let from_png = from_cli(&[
        "orfeas",
        "text-to-image",
        "--from-png",
        out.to_str().unwrap(),
        "-o",
        "again.png",
        "--steps",
        "20",
    ]);
    assert_eq!(
        from_png,
        TextToImageRequest {
            batch: 1,
            seed: request.seed + 1,
            steps: Some(20),
            ..request
        }
    );
}

//! `orfeas remove-background`: the segmenter's cut-out of a picture as a PNG
//! whose alpha channel is the mask (the picture's own pixels and size).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use image::ImageEncoder as _;

use super::{absolute, ensure_png, parse_size};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SegmenterArg {
    /// BiRefNet_lite (Swin-T, ~177 MB): the default.
    Lite,
    /// BiRefNet (Swin-L, ~881 MB): finer edges, about 5× slower.
    Full,
}

#[derive(Debug, Args)]
pub struct RemoveBackgroundArgs {
    /// The picture: PNG, JPEG or WebP.
    pub input: PathBuf,
    /// Where to write the cut-out (a PNG with the mask in its alpha channel).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Which registry segmenter (`orfeas models download birefnet-lite` or `birefnet`).
    #[arg(long, value_enum, default_value = "lite")]
    pub model: SegmenterArg,
    /// A BiRefNet folder (config.json + model.safetensors) instead of the registry's.
    #[arg(long, visible_alias = "model-dir", value_name = "DIR")]
    pub model_path: Option<PathBuf>,
    /// The model's inference size HxW, multiples of 32 (default: the folder
    /// config's `input_size_hw`, else 1024x1024).
    #[arg(long, value_name = "HxW")]
    pub size: Option<String>,
}

pub(super) fn remove_background(args: &RemoveBackgroundArgs) -> anyhow::Result<ExitCode> {
    use orfeas_ml::birefnet::default_input_size;
    use orfeas_ml::image_to_3d::{load_segmenter, with_mask_as_alpha};
    ensure_png(&args.output)?;
    let dir = match &args.model_path {
        Some(dir) => absolute(dir),
        None => orfeas_ml::models::SearchRoots::from_env().resolve(match args.model {
            SegmenterArg::Lite => "birefnet-lite",
            SegmenterArg::Full => "birefnet",
        })?,
    };
    let size = match &args.size {
        // The flag reads as height x width, as the model's input_size_hw does.
        Some(text) => parse_size(text).map(|(h, w)| (h as usize, w as usize))?,
        None => default_input_size(&dir)?,
    };
    let picture = orfeas_core::image_input::load_image(
        &absolute(&args.input),
        &orfeas_core::image_input::ImageLimits::default(),
    )?;
    let started = Instant::now();
    let model = load_segmenter(&dir, orfeas_ml::sd::pipeline::DevicePref::Auto)?;
    let mask = model.mask(&image::DynamicImage::ImageRgba8(picture.clone()), size)?;
    let cut = with_mask_as_alpha(&picture, &mask);
    let output = absolute(&args.output);
    orfeas_core::paths::write_atomic(&output, |out| {
        image::codecs::png::PngEncoder::new(out)
            .write_image(
                cut.as_raw(),
                cut.width(),
                cut.height(),
                image::ExtendedColorType::Rgba8,
            )
            .map_err(std::io::Error::other)
    })
    .with_context(|| format!("cannot write {}", output.display()))?;
    let kept = mask.pixels().filter(|p| p.0[0] >= 128).count() as f64
        / (mask.width() as f64 * mask.height() as f64).max(1.0);
    println!(
        "wrote {} ({}x{}): {:.0} % foreground, model {} at {}x{}, {:.0} ms",
        output.display(),
        cut.width(),
        cut.height(),
        kept * 100.0,
        dir.display(),
        size.0,
        size.1,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}

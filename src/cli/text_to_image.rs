//! `orfeas text-to-image`: the command line's one conversion into a
//! `TextToImageRequest` (with `--from-png`, a PNG's own request), run as one job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use orfeas_core::jobs::{Engine, EngineConfig, JobSpec};
use orfeas_core::request::TextToImageRequest;

use super::{absolute, ensure_png, open_history, parse_size, report_job, run_job};

#[derive(Debug, Args)]
pub struct TextToImageArgs {
    /// What to draw. Must not be empty (optional with --from-png).
    #[arg(required_unless_present = "from_png")]
    pub prompt: Option<String>,
    /// Where to write the PNG (with --batch N: NAME-0.png … NAME-(N-1).png).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Re-create a PNG that ORFEAS or A1111 generated from its own text chunks
    /// (prompt, seed, model, scheduler, size, strength); any other flag given
    /// changes that one field.
    #[arg(long, value_name = "PIC")]
    pub from_png: Option<PathBuf>,
    /// Model name from `orfeas models list` (default: sd-turbo).
    #[arg(long)]
    pub model: Option<String>,
    /// A diffusers-format model folder, or an SD 1.x or SDXL single-file .safetensors
    /// checkpoint, to use instead of a registry model.
    #[arg(long, visible_aliases = ["model-dir", "checkpoint"], value_name = "DIR|FILE")]
    pub model_path: Option<PathBuf>,
    /// What not to draw (used with guidance > 1).
    #[arg(long)]
    pub negative: Option<String>,
    /// Denoising steps (default: the model's, e.g. 1 for SD-Turbo).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (default: the model's; 0 turns it off).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Random seed; the same seed and parameters give the same image (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image size as WIDTHxHEIGHT, multiples of 8 (default: the model's).
    #[arg(long)]
    pub size: Option<String>,
    /// Images to generate (default 1).
    #[arg(long)]
    pub batch: Option<u32>,
    /// Scheduler: euler, euler-a, ddim or dpm++2m (default: the model's scheduler config).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Image→image: start from this picture (cropped to the output's aspect and
    /// resized) instead of pure noise.
    #[arg(long, value_name = "IMAGE")]
    pub init_image: Option<PathBuf>,
    /// With --init-image: how much of the schedule runs over the picture (0-1;
    /// 0.3 keeps most of it, 0.8 little). Steps run = steps x strength.
    #[arg(long)]
    pub strength: Option<f64>,
    /// A safetensors file with the initial noise tensor `latents` (reproducibility tests).
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Decode the image in tiles (less memory for large sizes).
    #[arg(long, conflicts_with_all = ["tiny_decoder", "tiny_decoder_dir"])]
    pub tiled_decode: bool,
    /// Decode with the tiny decoder (TAESD; `orfeas models download taesd`, or
    /// taesdxl for SDXL) instead of the VAE: much faster, a little less detail.
    #[arg(long)]
    pub tiny_decoder: bool,
    /// A TAESD folder (diffusers AutoencoderTiny) to decode with; implies --tiny-decoder.
    #[arg(long, value_name = "DIR")]
    pub tiny_decoder_dir: Option<PathBuf>,
    /// Style preset: none, photographic, digital-art, anime, 3d-model, pixel-art
    /// (adds its words to the prompt and the negative prompt; default none).
    #[arg(long)]
    pub style: Option<String>,
    /// Run the job on a fleet instead of here: its NATS URLs (nats://HOST:4222,…;
    /// the workers run `orfeas serve --queue`). The PNG still lands at --output.
    #[arg(long, value_name = "URLS")]
    pub queue: Option<String>,
}

/// The one conversion from the command line to a request: the PNG's request
/// (with `--from-png`) or the defaults, then every flag given.
pub fn text_to_image_request(args: &TextToImageArgs) -> anyhow::Result<TextToImageRequest> {
    use orfeas_core::request::{Decoder, text_to_image_from_png};
    let mut r = match &args.from_png {
        Some(pic) => {
            let info = text_to_image_from_png(pic)?;
            if let Some(name) = &info.model_name
                && orfeas_ml::models::known(name).is_err()
                && args.model.is_none()
                && args.model_path.is_none()
            {
                anyhow::bail!(
                    "{} was made with the model {name:?}, which is not a registry model; \
                     pass the same model with --model-dir (or choose one with --model)",
                    pic.display()
                );
            }
            if let Some(name) = &info.init_image_name
                && args.init_image.is_none()
            {
                anyhow::bail!(
                    "{} was made from the start picture {name:?}, which a PNG does not hold; \
                     pass it with --init-image",
                    pic.display()
                );
            }
            info.request
        }
        None => TextToImageRequest::default(),
    };
    if let Some(prompt) = &args.prompt {
        r.prompt = prompt.clone();
    }
    if let Some(model) = &args.model {
        r.model = model.clone();
        r.model_path = None;
    }
    if let Some(dir) = &args.model_path {
        r.model_path = Some(absolute(dir));
        if orfeas_ml::models::known(&r.model).is_err() {
            // A PNG's folder name: the model comes from the path.
            r.model = orfeas_core::request::DEFAULT_MODEL.to_owned();
        }
    }
    if let Some(negative) = &args.negative {
        r.negative_prompt = negative.clone();
    }
    if let Some(style) = &args.style {
        r.style = style.trim().to_ascii_lowercase();
    }
    r.steps = args.steps.or(r.steps);
    r.guidance = args.guidance.or(r.guidance);
    if let Some(seed) = args.seed {
        r.seed = seed;
    }
    if let Some(size) = &args.size {
        let (w, h) = parse_size(size)?;
        (r.width, r.height) = (Some(w), Some(h));
    }
    if let Some(batch) = args.batch {
        r.batch = batch;
    }
    if let Some(name) = &args.scheduler {
        r.scheduler = Some(name.parse()?);
    }
    if let Some(init) = &args.init_image {
        r.init_image = Some(absolute(init));
    }
    r.strength = args.strength.or(r.strength);
    if let Some(latents) = &args.init_latents {
        r.init_latents = Some(absolute(latents));
    }
    if args.tiled_decode {
        r.decoder = Decoder::VaeTiled;
    }
    if args.tiny_decoder || args.tiny_decoder_dir.is_some() {
        r.decoder = Decoder::Taesd;
    }
    r.tiny_decoder_path = args.tiny_decoder_dir.as_deref().map(absolute);
    r.device = args.device.clone();
    r.check()?;
    Ok(r)
}

pub(super) fn text_to_image(args: TextToImageArgs) -> anyhow::Result<ExitCode> {
    use orfeas_core::request::TextToImageJob;
    use orfeas_ml::text_to_image::TextToImageParams;
    // Refuse bad parameters before a job or a model load.
    let request = text_to_image_request(&args)?;
    TextToImageParams::from_request(&request)?;
    ensure_png(&args.output)?;
    let job = TextToImageJob {
        request,
        output: absolute(&args.output),
    };
    let history = open_history()?;
    let engine = Engine::new(
        EngineConfig {
            concurrency: 1,
            ..EngineConfig::default()
        },
        Some(history),
    )?;
    orfeas_ml::register_runners(&engine, orfeas_ml::models::SearchRoots::from_env(), None);
    let _fleet = super::use_fleet(&engine, args.queue.as_deref())?;
    let (id, outcome, elapsed_ms) = run_job(&engine, JobSpec::from(job))?;
    Ok(report_job(id, outcome, |output| {
        for file in &output.files {
            println!("wrote {}", file.display());
        }
        println!(
            "seed {}, {} step(s), {elapsed_ms:.0} ms (job {id})",
            output.summary["seed"], output.summary["steps"]
        );
    }))
}

//! Models on candle: Stable Diffusion text→image, TripoSR image→3D and the weights registry.
//!
//! - [`text_to_image`]: the one-call API (`run`, `Engine`, `write_png_with_params`).
//! - [`sd`]: the pipeline stages (tokenizer, CLIP, UNet, schedulers, VAE).
//! - [`triposr`]: TripoSR's stages (preprocess, DINO ViT, backbone, triplane field).
//! - [`image_to_3d`]: the image→3D runner for every method.
//! - [`models`]: known models, discovery, `list` / `verify` / `download`.
//! - [`fixture`]: completes the small test fixture kept in git.
//! - [`memory`]: keeps freed activations in the heap for reuse (`main` opts in).
//! - [`kernels`]: CPU kernels (conv, group norm + SiLU, upsampling) the models share.

pub mod birefnet;
pub mod error;
pub mod fixture;
pub mod image_to_3d;
pub mod kernels;
pub mod mask_score;
pub mod memory;
pub mod models;
pub mod sd;
pub mod text_to_image;
pub mod triposr;

pub use error::SdError;

use std::sync::Arc;

use orfeas_core::jobs::{Engine, JobKind};

/// Registers every runner this build has on `engine`, in the one place the
/// GUI, the CLI and `serve` share: text→image (models are found per job; a
/// job whose model is not installed is refused when submitted) and image→3D
/// (inflate always; TripoSR when its weights are found). Registry models are
/// looked for in `roots`; `previews` receives each denoising step's preview
/// (the GUI shows them). Returns the kinds now registered.
pub fn register_runners(
    engine: &Engine,
    roots: models::SearchRoots,
    previews: Option<text_to_image::PreviewSink>,
) -> Vec<JobKind> {
    engine.register(
        JobKind::TextToImage,
        Arc::new(text_to_image::TextToImageRunner::new(
            roots.clone(),
            previews,
        )),
    );
    engine.register(
        JobKind::ImageTo3d,
        Arc::new(image_to_3d::ImageTo3dRunner::new(
            roots,
            sd::pipeline::DevicePref::Auto,
        )),
    );
    engine.registered_kinds()
}

//! Models on candle: Stable Diffusion text→image and the weights registry.
//!
//! - [`text_to_image`]: the one-call API (`run`, `Engine`, `write_png_with_params`).
//! - [`sd`]: the pipeline stages (tokenizer, CLIP, UNet, schedulers, VAE).
//! - [`models`]: known models, discovery, `list` / `verify` / `download`.
//! - [`fixture`]: completes the small test fixture kept in git.

pub mod error;
pub mod fixture;
pub mod models;
pub mod sd;
pub mod text_to_image;

pub use error::SdError;

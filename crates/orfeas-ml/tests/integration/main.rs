//! Integration tests for orfeas-ml: parity with the diffusers goldens, the
//! one-call API, bad input, and the model registry.

// Test helpers outside #[test] fns panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod birefnet_inputs;
mod birefnet_parity;
mod birefnet_weights;
mod common;
mod kernels;
mod memory;
mod sd_errors;
mod sd_full_configs;
mod sd_img2img;
mod sd_models;
mod sd_parity;
mod sd_pipeline;
mod sd_single_file;
mod sd_taesd;
mod sd_xl;
mod triposr_half;
mod triposr_inputs;
mod triposr_parity;
mod triposr_runner;
mod triposr_weights;

// The binaries' allocator, so weights load over their mapped files here too
// (`memory::MappedFile`) and every parity test runs on such weights.
#[global_allocator]
static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;

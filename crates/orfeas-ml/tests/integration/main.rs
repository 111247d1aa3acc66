//! Integration tests for orfeas-ml: parity with the diffusers goldens, the
//! one-call API, bad input, and the model registry.

mod common;
mod sd_errors;
mod sd_models;
mod sd_parity;
mod sd_pipeline;

//! Metrics registry (the contract), system sampler, alert engine.

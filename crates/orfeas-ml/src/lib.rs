//! Models on candle: Stable Diffusion text→image and the weights registry.

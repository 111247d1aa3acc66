//! Job engine: typed jobs on tokio with a concurrency limit, progress, cancellation.

//! HTTP server (tiny_http): `/health`, `/metrics`, `/api/*`.

//! What this build is: version, commit, compiled-in accelerators and the
//! licences of the models it can run. One source for `orfeas --version` and
//! the About box in Settings.

use std::sync::LazyLock;

/// The crate version, e.g. "0.1.0".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit of the build ("-dirty" with uncommitted changes, "unknown"
/// without git), recorded by `build.rs`.
pub const COMMIT: &str = env!("ORFEAS_GIT_COMMIT");

/// The optional GPU features compiled in (cargo features `cuda`, `cudnn`, `metal`).
pub fn features() -> Vec<&'static str> {
    [
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("metal", cfg!(feature = "metal")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// "cuda, metal", or a note that inference runs on the CPU only.
pub fn features_line() -> String {
    let features = features();
    if features.is_empty() {
        "none (CPU inference only)".to_owned()
    } else {
        features.join(", ")
    }
}

/// (model, licence) for every model the registry can download. Weights are
/// never shipped with the app; each model's licence applies once installed.
pub fn model_licences() -> Vec<(&'static str, &'static str)> {
    orfeas_ml::models::KNOWN_MODELS
        .iter()
        .map(|m| (m.name, m.licence))
        .collect()
}

/// `-V`: "0.1.0 (commit abc123)".
pub fn short_version() -> &'static str {
    static SHORT: LazyLock<String> = LazyLock::new(|| format!("{VERSION} (commit {COMMIT})"));
    SHORT.as_str()
}

/// `--version`: every line of the About box.
pub fn long_version() -> &'static str {
    static LONG: LazyLock<String> = LazyLock::new(|| {
        let mut text = format!(
            "{VERSION}\ncommit:   {COMMIT}\nfeatures: {}\nlicence:  {} (ORFEAS Studio)\n\
             model licences (weights are downloaded separately, never bundled):",
            features_line(),
            env!("CARGO_PKG_LICENSE"),
        );
        for (name, licence) in model_licences() {
            text.push_str(&format!("\n  {name}: {licence}"));
        }
        text
    });
    LONG.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_names_commit_features_and_every_model() {
        let text = long_version();
        assert!(text.starts_with(VERSION), "{text}");
        assert!(text.contains(&format!("commit:   {COMMIT}")), "{text}");
        assert!(text.contains("features: "), "{text}");
        for model in orfeas_ml::models::KNOWN_MODELS {
            assert!(text.contains(model.name), "{} missing: {text}", model.name);
        }
        assert!(!COMMIT.is_empty());
    }
}

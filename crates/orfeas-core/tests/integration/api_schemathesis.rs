//! Schemathesis (PyPI) against the live server and its own OpenAPI document:
//! a bounded number of generated requests per operation, no 5xx, every
//! response conforming to the document, schema-violating requests rejected.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use orfeas_core::jobs::JobKind;

use super::api::{start, test_config, writer};

fn schemathesis() -> Option<PathBuf> {
    let from_tools = std::env::var_os("ORFEAS_TOOLS")
        .map(|t| PathBuf::from(t).join("venv/bin/schemathesis"))
        .filter(|p| p.is_file());
    from_tools.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("schemathesis"))
                .find(|p| p.is_file())
        })
    })
}

#[test]
fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let Some(tool) = schemathesis() else {
        if std::env::var("ORFEAS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("schemathesis missing: run `eval \"$(scripts/install-tools.sh)\"`");
        }
        eprintln!("skipped: schemathesis missing (run scripts/install-tools.sh)");
        return;
    };
    let s = start(
        test_config(),
        vec![
            (JobKind::ImageTo3d, writer(b"mesh", Duration::ZERO)),
            (JobKind::TextToImage, writer(b"png", Duration::ZERO)),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(tool)
        .current_dir(work.path())
        .args(["run", &s.url("/api/openapi.json"), "--url", &s.base])
        .args(["--max-examples", "20", "--seed", "20261126"])
        .args(["--generation-database", "none", "--request-timeout", "20"])
        // positive_data_acceptance is left out: a schema cannot say which
        // bytes are a decodable PNG, so generated "images" are rightly refused.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance,negative_data_rejection",
        ])
        // Warnings (e.g. few ids that DELETE finds) are not failures.
        .args(["--warnings", "off"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAILURES"), "{stdout}");
    let cases = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or("");
    eprintln!("schemathesis: {}", cases.trim());
    assert!(
        cases.contains("generated") && cases.contains("passed"),
        "{stdout}"
    );
    // It really exercised the API (jobs were accepted and recorded).
    assert!(s.history.count(None).unwrap() > 0);
}

//! Property tests (proptest, run in CI) of the request parsing and image
//! decoding entry points: arbitrary input never panics, and what is accepted
//! is within the documented limits.

use orfeas_core::http::{api, multipart, validate};
use proptest::prelude::*;

const CASES: u32 = 2000;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("prompt".to_owned()),
                    Just("steps".to_owned()),
                    Just("width".to_owned()),
                    Just("guidance".to_owned()),
                    Just("seed".to_owned()),
                    Just("batch".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn small_png() -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(9, 7, image::Rgba([1, 2, 3, 255]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn text_to_image_bodies_never_panic_and_accepted_ones_are_in_range(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        match validate::text_to_image(&body, || 0) {
            Ok(p) => {
                prop_assert!(!p.prompt.trim().is_empty());
                prop_assert!(p.steps.is_none_or(|s| (1..=150).contains(&s)));
                prop_assert!(p.width.is_none_or(|w| w % 8 == 0 && (64..=2048).contains(&w)));
                prop_assert!(p.guidance.is_none_or(|g| (0.0..=30.0).contains(&g)));
                prop_assert!((1..=8).contains(&p.batch));
            }
            Err(e) => {
                prop_assert!(e.is_validation());
                prop_assert!(e.field.as_deref().is_some_and(|f| f.chars().count() <= 64));
            }
        }
    }

    #[test]
    fn raw_bytes_as_json_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = validate::text_to_image(&bytes, || 0);
    }

    #[test]
    fn multipart_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), boundary in "[A-Za-z0-9]{1,20}") {
        let ct = format!("multipart/form-data; boundary={boundary}");
        let mut body = format!("--{boundary}\r\n").into_bytes();
        body.extend_from_slice(&bytes);
        let _ = multipart::parse(&ct, body.into());
        let _ = multipart::parse(&ct, bytes.into());
    }

    #[test]
    fn multipart_round_trips_generated_forms(parts in prop::collection::vec(("[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..64)), 1..5)) {
        let boundary = "b0undary-Zz9";
        let mut body = Vec::new();
        for (name, data) in &parts {
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let parsed = multipart::parse(&format!("multipart/form-data; boundary={boundary}"), body.into());
        // Data containing the delimiter is the only legal way to fail.
        let delim = format!("\r\n--{boundary}");
        let clash = parts.iter().any(|(_, d)| d.windows(delim.len()).any(|w| w == delim.as_bytes())
            || d.ends_with(b"\r") );
        if !clash {
            let parsed = parsed.unwrap();
            prop_assert_eq!(parsed.len(), parts.len());
            for (p, (name, data)) in parsed.iter().zip(&parts) {
                prop_assert_eq!(&p.name, name);
                prop_assert_eq!(p.data.as_ref(), data.as_slice());
            }
        }
    }

    #[test]
    fn image_checks_never_panic_on_mutated_images(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = small_png();
        for (i, b) in &flips {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        let limits = validate::ImageLimits { max_side_px: 64, max_pixels: 64 * 64 };
        if let Ok(info) = validate::image(&bytes, limits) {
            prop_assert!(info.width <= 64 && info.height <= 64);
        }
        let len = cut.index(bytes.len());
        let _ = validate::image(&bytes[..len], limits);
    }

    #[test]
    fn image_checks_never_panic_on_random_bytes(prefix in prop_oneof![Just(b"\x89PNG\r\n\x1a\n".to_vec()), Just(vec![0xFF, 0xD8, 0xFF]), Just(b"RIFF\0\0\0\0WEBP".to_vec()), Just(Vec::new())], bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut all = prefix;
        all.extend_from_slice(&bytes);
        let _ = validate::image(&all, validate::ImageLimits::default());
    }

    #[test]
    fn routing_and_queries_never_panic_and_labels_stay_bounded(path in "/[ -~]{0,60}", method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("PUT"), Just("OPTIONS")]) {
        let (_, endpoint) = orfeas_core::http::route(method, &path);
        let _ = validate::query(&path);
        prop_assert!(orfeas_core::telemetry::metrics::ENDPOINTS.contains(&endpoint));
        if path.starts_with("/api/") {
            let (_, e) = api::route(method, path.split('?').next().unwrap());
            prop_assert!(orfeas_core::telemetry::metrics::ENDPOINTS.contains(&e));
        }
    }
}

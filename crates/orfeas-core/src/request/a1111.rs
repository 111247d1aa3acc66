//! `POST /sdapi/v1/txt2img` bodies in the shape A1111's web UI API takes,
//! so existing clients and scripts (e.g. the `webuiapi` package) work unchanged.
//!
//! Such clients send every field of A1111's request with its default value,
//! so unknown fields are accepted; the ones listed in [`A1111_HONOURED_FIELDS`]
//! are used, and the few that would change the picture in a way ORFEAS
//! cannot reproduce (hires fix, face restoration, tiling, variation seeds)
//! are refused when set rather than silently ignored.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{MAX_SEED, RequestError, SchedulerKind, TextToImageRequest};

/// The fields of an A1111 txt2img body that ORFEAS honours.
pub const A1111_HONOURED_FIELDS: [&str; 11] = [
    "prompt",
    "negative_prompt",
    "steps",
    "cfg_scale",
    "seed",
    "width",
    "height",
    "sampler_name",
    "sampler_index",
    "batch_size",
    "n_iter",
];

/// The body as A1111 defines it (its defaults where a field is absent).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct A1111Txt2Img {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f64>,
    /// -1: a random seed.
    pub seed: i64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sampler_name: Option<String>,
    pub sampler_index: Option<String>,
    pub batch_size: u32,
    pub n_iter: u32,
    /// Everything else the client sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for A1111Txt2Img {
    fn default() -> A1111Txt2Img {
        A1111Txt2Img {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: None,
            cfg_scale: None,
            seed: -1,
            width: None,
            height: None,
            sampler_name: None,
            sampler_index: None,
            batch_size: 1,
            n_iter: 1,
            other: Map::new(),
        }
    }
}

/// Fields that change the picture in ways ORFEAS does not do, with the value
/// that means "off" (what A1111 clients send by default).
const REFUSED_WHEN_SET: [(&str, &str); 5] = [
    (
        "enable_hr",
        "the hires fix is not supported; generate at the final size instead",
    ),
    ("restore_faces", "face restoration is not supported"),
    ("tiling", "tileable pictures are not supported"),
    ("subseed_strength", "variation seeds are not supported"),
    (
        "init_images",
        "send image-to-image requests to /sdapi/v1/img2img's equivalent, POST /api/text-to-image with init_image, instead",
    ),
];

/// A1111's sampler names → ours. Karras and other sigma schedules map to the
/// plain sampler (the schedule is the model's).
pub fn sampler_from_a1111(name: &str) -> Option<SchedulerKind> {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_suffix(" karras").unwrap_or(&n);
    match n {
        "euler" => Some(SchedulerKind::Euler),
        "euler a" | "euler_a" | "euler ancestral" => Some(SchedulerKind::EulerAncestral),
        "ddim" => Some(SchedulerKind::Ddim),
        "dpm++ 2m" | "dpmpp_2m" => Some(SchedulerKind::DpmSolverPp2m),
        _ => None,
    }
}

/// Our scheduler → the A1111 sampler name reported back in `info`.
pub fn sampler_to_a1111(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Euler => "Euler",
        SchedulerKind::EulerAncestral => "Euler a",
        SchedulerKind::Ddim => "DDIM",
        SchedulerKind::DpmSolverPp2m => "DPM++ 2M",
    }
}

impl A1111Txt2Img {
    /// Parses a JSON body.
    pub fn from_json(body: &[u8]) -> Result<A1111Txt2Img, RequestError> {
        serde_json::from_slice(body).map_err(|e| {
            RequestError::new(
                "body",
                format!(
                    "not an A1111 txt2img body ({e}); send a JSON object with at least \"prompt\""
                ),
            )
        })
    }

    /// The one conversion into a [`TextToImageRequest`]. `random_seed` is
    /// called for seed -1 (A1111's "random").
    pub fn into_request(
        self,
        random_seed: impl FnOnce() -> u64,
    ) -> Result<TextToImageRequest, RequestError> {
        for (field, why) in REFUSED_WHEN_SET {
            if let Some(v) = self.other.get(field)
                && is_set(v)
            {
                return Err(RequestError::new(
                    "other",
                    format!(
                        "`{field}`: {why}; honoured fields: {}",
                        A1111_HONOURED_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let scheduler = match self
            .sampler_name
            .as_deref()
            .or(self.sampler_index.as_deref())
        {
            None | Some("") => None,
            Some(name) => Some(sampler_from_a1111(name).ok_or_else(|| {
                RequestError::new(
                    "scheduler",
                    format!(
                        "sampler '{name}' is not available; use Euler, Euler a, DDIM or DPM++ 2M"
                    ),
                )
            })?),
        };
        let seed = match self.seed {
            -1 => random_seed(),
            s if (0..=MAX_SEED as i64).contains(&s) => s as u64,
            s => {
                return Err(RequestError::new(
                    "seed",
                    format!("{s} must be -1 (random) or between 0 and {MAX_SEED}"),
                ));
            }
        };
        let batch = self
            .batch_size
            .checked_mul(self.n_iter)
            .ok_or_else(|| RequestError::new("batch", "batch_size × n_iter is too large"))?;
        let request = TextToImageRequest {
            negative_prompt: self.negative_prompt,
            steps: self.steps,
            guidance: self.cfg_scale,
            seed,
            width: self.width,
            height: self.height,
            batch,
            scheduler,
            ..TextToImageRequest::new(self.prompt)
        };
        request.check()?;
        Ok(request)
    }
}

/// True when an A1111 option is switched on (`true`, a non-zero number, a non-empty list).
fn is_set(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Null => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webuiapi_style_body_becomes_a_request() {
        // The shape `webuiapi.WebUIApi().txt2img(...)` posts, defaults included.
        let body = br#"{"enable_hr":false,"denoising_strength":0.7,"firstphase_width":0,
            "prompt":"a red fox","styles":[],"seed":42,"subseed":-1,"subseed_strength":0.0,
            "sampler_name":"Euler a","batch_size":2,"n_iter":1,"steps":4,"cfg_scale":7.0,
            "width":512,"height":768,"restore_faces":false,"tiling":false,
            "negative_prompt":"blur","eta":1.0,"override_settings":{},"script_args":[],
            "sampler_index":"Euler a","alwayson_scripts":{}}"#;
        let r = A1111Txt2Img::from_json(body)
            .unwrap()
            .into_request(|| unreachable!("the seed is given"))
            .unwrap();
        assert_eq!(r.prompt, "a red fox");
        assert_eq!(r.negative_prompt, "blur");
        assert_eq!((r.steps, r.guidance, r.seed), (Some(4), Some(7.0), 42));
        assert_eq!((r.width, r.height, r.batch), (Some(512), Some(768), 2));
        assert_eq!(r.scheduler, Some(SchedulerKind::EulerAncestral));
    }

    #[test]
    fn seed_minus_one_is_random_and_unsupported_options_are_refused() {
        let r = A1111Txt2Img::from_json(br#"{"prompt":"x"}"#)
            .unwrap()
            .into_request(|| 7)
            .unwrap();
        assert_eq!(r.seed, 7);
        let err = A1111Txt2Img::from_json(br#"{"prompt":"x","enable_hr":true}"#)
            .unwrap()
            .into_request(|| 7)
            .unwrap_err();
        assert!(err.message.contains("hires"), "{err}");
        let err = A1111Txt2Img::from_json(br#"{"prompt":"x","sampler_name":"LMS"}"#)
            .unwrap()
            .into_request(|| 7)
            .unwrap_err();
        assert_eq!(err.field, "scheduler");
        let err = A1111Txt2Img::from_json(br#"{"prompt":"x","batch_size":4,"n_iter":4}"#)
            .unwrap()
            .into_request(|| 7)
            .unwrap_err();
        assert_eq!(err.field, "batch");
    }
}

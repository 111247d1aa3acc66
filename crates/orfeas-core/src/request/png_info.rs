//! A generated PNG's text chunks → the request that made it ("PNG Info").
//!
//! ORFEAS writes one chunk per field (`prompt`, `negative_prompt`, `style`,
//! `model`, `steps`, `guidance`, `seed`, `size`, `scheduler`, `decoder`,
//! `strength`) plus A1111's `parameters` summary. Our own chunks win; a PNG
//! from A1111 or another tool with only `parameters` is read from that.

use std::io::Read;
use std::path::Path;

use super::{Decoder, RequestError, SchedulerKind, TextToImageRequest, sampler_from_a1111};

/// What a PNG says about how it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct PngInfo {
    /// The request, with `model` set only when the PNG names a model (see `model_name`).
    pub request: TextToImageRequest,
    /// The model the PNG names: a registry name, or the folder/file name of a
    /// model chosen by path (front ends match it against what they know).
    pub model_name: Option<String>,
    /// The start picture's file name, for image→image PNGs (the path is not stored).
    pub init_image_name: Option<String>,
}

/// Largest PNG read for its chunks; the pixels are never decoded.
const MAX_PNG_BYTES: u64 = 256 << 20;

/// Reads the text chunks (tEXt, zTXt, iTXt) of a PNG file, in file order.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>, RequestError> {
    let bad = |why: String| RequestError::new("png", why);
    let file = std::fs::File::open(path)
        .map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_PNG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    png_text_from_bytes(&bytes).map_err(|why| {
        bad(format!(
            "{} is not a readable PNG ({why}); choose a PNG that ORFEAS or A1111 generated",
            path.display()
        ))
    })
}

fn png_text_from_bytes(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let reader = decoder.read_info().map_err(|e| e.to_string())?;
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.uncompressed_latin1_text {
        out.push((t.keyword.clone(), t.text.clone()));
    }
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    Ok(out)
}

/// The request a generated PNG file records (see [`text_to_image_from_png_text`]).
pub fn text_to_image_from_png(path: &Path) -> Result<PngInfo, RequestError> {
    text_to_image_from_png_text(&read_png_text(path)?)
}

/// The request recorded in a PNG's text chunks. Refuses a PNG that records
/// no prompt, and any recorded value outside the request's limits.
pub fn text_to_image_from_png_text(chunks: &[(String, String)]) -> Result<PngInfo, RequestError> {
    let get = |key: &str| {
        chunks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let mut info = match get("parameters") {
        Some(summary) => from_a1111_summary(summary)?,
        None => PngInfo {
            request: TextToImageRequest::default(),
            model_name: None,
            init_image_name: None,
        },
    };
    let r = &mut info.request;
    if let Some(p) = get("prompt") {
        r.prompt = p.to_owned();
    }
    if let Some(n) = get("negative_prompt") {
        r.negative_prompt = n.to_owned();
    }
    if let Some(s) = get("style") {
        r.style = s.to_owned();
    }
    if let Some(v) = get("steps") {
        r.steps = Some(number(v, "steps")?);
    }
    if let Some(v) = get("guidance") {
        r.guidance = Some(number(v, "guidance")?);
    }
    if let Some(v) = get("seed") {
        r.seed = number(v, "seed")?;
    }
    if let Some(v) = get("size") {
        let (w, h) = size(v)?;
        (r.width, r.height) = (Some(w), Some(h));
    }
    if let Some(v) = get("scheduler") {
        r.scheduler = scheduler(v)?;
    }
    if let Some(v) = get("decoder") {
        r.decoder = v.parse::<Decoder>()?;
    }
    if let Some(m) = get("model") {
        info.model_name = Some(m.to_owned());
    }
    if let Some(name) = get("init_image") {
        info.init_image_name = Some(name.to_owned());
        if let Some(v) = get("strength") {
            r.strength = Some(number(v, "strength")?);
        }
    }
    if let Some(name) = &info.model_name
        && is_model_name(name)
    {
        info.request.model = name.clone();
    }
    if info.request.prompt.trim().is_empty() {
        return Err(RequestError::new(
            "png",
            "this PNG records no prompt; it was not made by ORFEAS or A1111 (or its text chunks were stripped)",
        ));
    }
    // The start picture is not in the PNG: the request checks as text→image.
    let mut check = info.request.clone();
    check.strength = None;
    check.check()?;
    Ok(info)
}

fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn number<T: std::str::FromStr>(v: &str, field: &'static str) -> Result<T, RequestError> {
    v.trim()
        .parse()
        .map_err(|_| RequestError::new(field, format!("the PNG records '{v}', not a number")))
}

fn size(v: &str) -> Result<(u32, u32), RequestError> {
    let bad = || {
        RequestError::new(
            "size",
            format!("the PNG records size '{v}', not WIDTHxHEIGHT"),
        )
    };
    let (w, h) = v.trim().split_once(['x', 'X', '×']).ok_or_else(bad)?;
    Ok((
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

/// `model default` (what ORFEAS writes when the model's scheduler ran) is `None`.
fn scheduler(v: &str) -> Result<Option<SchedulerKind>, RequestError> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("model default") {
        return Ok(None);
    }
    match v.parse::<SchedulerKind>() {
        Ok(k) => Ok(Some(k)),
        Err(err) => sampler_from_a1111(v).map(Some).ok_or(err),
    }
}

/// A1111's `parameters` block: the prompt, an optional `Negative prompt:` line,
/// then one line of `Key: value` pairs separated by commas.
fn from_a1111_summary(summary: &str) -> Result<PngInfo, RequestError> {
    let mut lines: Vec<&str> = summary.lines().collect();
    let settings = match lines.last() {
        Some(last) if last.starts_with("Steps:") => lines.pop().unwrap_or_default(),
        _ => "",
    };
    let mut prompt = Vec::new();
    let mut negative: Vec<&str> = Vec::new();
    let mut in_negative = false;
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    let mut info = PngInfo {
        request: TextToImageRequest::new(prompt.join("\n")),
        model_name: None,
        init_image_name: None,
    };
    info.request.negative_prompt = negative.join("\n");
    let r = &mut info.request;
    for pair in settings.split(", ") {
        let Some((key, value)) = pair.split_once(": ") else {
            continue;
        };
        match key.trim() {
            "Steps" => r.steps = Some(number(value, "steps")?),
            "CFG scale" => r.guidance = Some(number(value, "guidance")?),
            "Seed" => r.seed = number(value, "seed")?,
            "Size" => {
                let (w, h) = size(value)?;
                (r.width, r.height) = (Some(w), Some(h));
            }
            "Sampler" => r.scheduler = scheduler(value)?,
            "Model" => info.model_name = Some(value.trim().to_owned()),
            // Hashes, VAE names, clip skip and the like do not map onto a request.
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_a1111_parameters_block_is_read() {
        let info = text_to_image_from_png_text(&chunks(&[(
            "parameters",
            "a castle, sunset\nwith fog\nNegative prompt: blurry, low quality\n\
             Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 512x768, Model hash: abc, Model: sd-1.5",
        )]))
        .unwrap();
        let r = &info.request;
        assert_eq!(r.prompt, "a castle, sunset\nwith fog");
        assert_eq!(r.negative_prompt, "blurry, low quality");
        assert_eq!(
            (r.steps, r.guidance, r.seed, r.width, r.height),
            (Some(20), Some(7.5), 1234, Some(512), Some(768))
        );
        assert_eq!(r.scheduler, Some(SchedulerKind::EulerAncestral));
        assert_eq!(r.model, "sd-1.5");
    }

    #[test]
    fn our_own_chunks_win_over_the_summary() {
        let info = text_to_image_from_png_text(&chunks(&[
            ("parameters", "a fox, anime artwork\nSteps: 4, Sampler: euler, CFG scale: 0, Seed: 1, Size: 64x64, Model: tiny"),
            ("prompt", "a fox"),
            ("style", "anime"),
            ("scheduler", "model default"),
            ("seed", "77"),
            ("model", "my-folder"),
        ]))
        .unwrap();
        assert_eq!(info.request.prompt, "a fox");
        assert_eq!(info.request.style, "anime");
        assert_eq!(info.request.scheduler, None);
        assert_eq!(info.request.seed, 77);
        assert_eq!(info.model_name.as_deref(), Some("my-folder"));
    }

    #[test]
    fn a_png_without_a_prompt_or_with_bad_values_is_refused() {
        assert_eq!(
            text_to_image_from_png_text(&chunks(&[("Software", "GIMP")]))
                .unwrap_err()
                .field,
            "png"
        );
        assert_eq!(
            text_to_image_from_png_text(&chunks(&[("prompt", "x"), ("steps", "9999")]))
                .unwrap_err()
                .field,
            "steps"
        );
        assert_eq!(
            text_to_image_from_png_text(&chunks(&[("prompt", "x"), ("size", "big")]))
                .unwrap_err()
                .field,
            "size"
        );
    }
}

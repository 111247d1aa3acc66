//! The no-reference image score: what a person would call a poor picture
//! (flat, blurred, blown out, grey) scores below a detailed, colourful one.

use image::{Rgb, RgbImage};
use orfeas_core::quality::score_image;

/// Coloured checker squares with a diagonal gradient: detail, colour, spread of tones.
fn detailed() -> RgbImage {
    RgbImage::from_fn(128, 128, |x, y| {
        let check = ((x / 8) + (y / 8)) % 2 == 0;
        let t = ((x + y) * 255 / 254) as u8;
        if check {
            Rgb([t, 255 - t, 90])
        } else {
            Rgb([40, t / 2 + 60, 255 - t / 3])
        }
    })
}

/// A 9×9 box blur.
fn blurred(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 3];
        let mut n = 0;
        for dy in -4i32..=4 {
            for dx in -4i32..=4 {
                let (sx, sy) = (x as i32 + dx, y as i32 + dy);
                if sx >= 0 && sy >= 0 && sx < w as i32 && sy < h as i32 {
                    let p = img.get_pixel(sx as u32, sy as u32);
                    for c in 0..3 {
                        acc[c] += u32::from(p[c]);
                    }
                    n += 1;
                }
            }
        }
        Rgb(acc.map(|a| (a / n) as u8))
    })
}

#[test]
fn a_flat_grey_image_scores_low_and_has_no_detail_or_colour() {
    let r = score_image(&RgbImage::from_pixel(64, 64, Rgb([128, 128, 128])));
    assert_eq!(r.sharpness, 0.0);
    assert_eq!(r.entropy, 0.0);
    assert_eq!(r.colourfulness, 0.0);
    assert_eq!(r.clipped_share, 0.0);
    // Only the exposure term (0.25) is earned.
    assert!((r.score - 0.25).abs() < 1e-6, "{r:?}");
}

#[test]
fn a_detailed_colourful_image_scores_high() {
    let r = score_image(&detailed());
    assert!(r.score > 0.7, "{r:?}");
    assert!(
        r.sharpness > 0.75 && r.colourfulness > 0.5 && r.entropy > 0.6,
        "{r:?}"
    );
}

#[test]
fn blurring_lowers_sharpness_and_the_score() {
    let sharp = score_image(&detailed());
    let soft = score_image(&blurred(&detailed()));
    assert!(
        soft.sharpness < sharp.sharpness * 0.8,
        "{sharp:?} vs {soft:?}"
    );
    assert!(soft.score < sharp.score, "{sharp:?} vs {soft:?}");
}

#[test]
fn a_blown_out_image_loses_the_exposure_term() {
    // Half pure white, half pure black: every pixel clipped.
    let img = RgbImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            Rgb([255, 255, 255])
        } else {
            Rgb([0, 0, 0])
        }
    });
    let r = score_image(&img);
    assert_eq!(r.clipped_share, 1.0);
    // Two tones: entropy 1 bit of 8.
    assert!((r.entropy - 0.125).abs() < 1e-6, "{r:?}");
    let greyed = score_image(&RgbImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            Rgb([200, 200, 200])
        } else {
            Rgb([60, 60, 60])
        }
    }));
    assert!(r.score < greyed.score, "{r:?} vs {greyed:?}");
}

#[test]
fn per_pixel_noise_scores_low_however_sharp_and_colourful_it_is() {
    // A fixed-seed xorshift: independent random colours per pixel.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 56) as u8
    };
    let noise = RgbImage::from_fn(128, 128, |_, _| Rgb([next(), next(), next()]));
    let r = score_image(&noise);
    assert!(r.noise > 0.8, "{r:?}");
    assert!(r.score < 0.2, "{r:?}");
    // A picture with structure is barely touched by the noise term.
    let d = score_image(&detailed());
    assert!(d.noise < 0.2, "{d:?}");
    assert!(d.score > r.score + 0.5);
}

#[test]
fn an_empty_image_scores_zero_without_panicking() {
    assert_eq!(score_image(&RgbImage::new(0, 0)).score, 0.0);
    assert!(score_image(&RgbImage::new(1, 1)).score <= 0.25);
}

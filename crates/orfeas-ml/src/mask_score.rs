//! How far a foreground mask agrees with the segmenter's saliency: the check
//! that notices a wrong mask. The mesh score compares a mesh with the very
//! mask it was built from, so a mesh of the background scores well; this
//! compares the mask with an independent opinion of what the object is.

use image::GrayImage;

/// Intersection over union of `mask` and `saliency`, both thresholded at
/// 128 (`saliency` is resized to the mask's size when they differ). 1.0 when
/// both are empty: nothing to disagree about.
pub fn mask_agreement(mask: &GrayImage, saliency: &GrayImage) -> f32 {
    let resized;
    let saliency = if saliency.dimensions() == mask.dimensions() {
        saliency
    } else {
        resized = image::imageops::resize(
            saliency,
            mask.width(),
            mask.height(),
            image::imageops::FilterType::Triangle,
        );
        &resized
    };
    orfeas_core::quality::mask_iou(mask, saliency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(w: u32, h: u32, cx: f32, cy: f32, r: f32) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
            image::Luma([if d < r { 255 } else { 0 }])
        })
    }

    #[test]
    fn the_right_object_agrees_and_the_background_does_not() {
        let object = disc(200, 100, 100.0, 50.0, 30.0);
        assert!((mask_agreement(&object, &object) - 1.0).abs() < 1e-6);
        // A border flood fill that kept the table: the object plus everything below it.
        let with_table = GrayImage::from_fn(200, 100, |x, y| {
            image::Luma([if y > 60 || object.get_pixel(x, y).0[0] > 0 {
                255
            } else {
                0
            }])
        });
        let a = mask_agreement(&with_table, &object);
        assert!(a < 0.5, "{a}");
        // The background itself as the mask: almost no agreement.
        let inverted = GrayImage::from_fn(200, 100, |x, y| {
            image::Luma([255 - object.get_pixel(x, y).0[0]])
        });
        assert!(mask_agreement(&inverted, &object) < 0.01);
        // Saliency at the model's resolution is resized to the mask's.
        let small = disc(100, 50, 50.0, 25.0, 15.0);
        assert!(mask_agreement(&object, &small) > 0.9);
    }
}

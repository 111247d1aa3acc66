//! Image decoding with limits: PNG, JPEG, WebP; everything else rejected clearly.

// Copies the viewport's resolved offscreen image into egui's render pass. The
// callback's viewport is the widget rectangle, so one full-viewport triangle
// covers exactly the widget.

@group(0) @binding(0) var source: texture_2d<f32>;
@group(0) @binding(1) var source_sampler: sampler;

struct BlitOut {
    @builtin(position) position: vec4<f32>,
    @location(0) uv: vec2<f32>,
}

@vertex
fn vs_blit(@builtin(vertex_index) index: u32) -> BlitOut {
    let corner = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    var out: BlitOut;
    out.position = vec4<f32>(corner * 2.0 - 1.0, 0.0, 1.0);
    // Texture rows run top to bottom, clip space y bottom to top.
    out.uv = vec2<f32>(corner.x, 1.0 - corner.y);
    return out;
}

@fragment
fn fs_blit(in: BlitOut) -> @location(0) vec4<f32> {
    return textureSample(source, source_sampler, in.uv);
}

fn linear_to_srgb(c: vec3<f32>) -> vec3<f32> {
    let low = c * 12.92;
    let high = 1.055 * pow(c, vec3<f32>(1.0 / 2.4)) - 0.055;
    return select(high, low, c <= vec3<f32>(0.0031308));
}

// For a non-sRGB target on a device without texture view formats: the sRGB
// image is sampled decoded (the only view there is) and encoded again here.
@fragment
fn fs_blit_encode(in: BlitOut) -> @location(0) vec4<f32> {
    let texel = textureSample(source, source_sampler, in.uv);
    return vec4<f32>(linear_to_srgb(texel.rgb), texel.a);
}

//! Viewport frame time for 10k, 100k and 1M triangles, rendered offscreen.
//! `cargo bench --bench viewport [-- FRAMES [WIDTHxHEIGHT]]`; `WGPU_BACKEND=vulkan` picks the backend.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let frames: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let (width, height) = match args.next() {
        Some(size) => {
            let (w, h) = size
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("size must look like 1280x720"))?;
            (w.parse()?, h.parse()?)
        }
        None => (1280, 720),
    };
    let (adapter, timings) =
        orfeas::viewport::bench::frame_times(&[10_000, 100_000, 1_000_000], width, height, frames)?;
    println!("viewport frame time on {adapter}, {frames} frames each");
    println!("  triangles   size        waited  pipelined  wireframe (ms/frame)");
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    for timing in timings {
        println!(
            "  {:>9}  {}x{}  {:8.2}  {:9.2}  {:9.2}",
            timing.triangles,
            timing.width,
            timing.height,
            ms(timing.mean_frame),
            ms(timing.pipelined_frame),
            ms(timing.wireframe_frame)
        );
    }
    Ok(())
}

use rtserve_core::kernels::frame::epilogue::Epilogue;
use rtserve_core::kernels::frame::gemm::{gemm, mat, BSource};
use std::time::Instant;
fn main() {
    rtserve_core::kernels::set_num_threads(
        std::env::var("T")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
    )
    .unwrap();
    for (m, k, n) in [
        (1usize, 768usize, 3072usize),
        (1, 576, 1536),
        (4, 768, 3072),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let mut best = f64::MAX;
        for _ in 0..300 {
            let t = Instant::now();
            gemm(
                mat(&a, m, k, k as isize, 1),
                BSource::F32(mat(&b, k, n, n as isize, 1)),
                &mut c,
                n,
                &Epilogue::default(),
            )
            .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        print!(
            "  {m}x{k}x{n}: {:.1}",
            2.0 * (m * n * k) as f64 / best / 1e9
        );
    }
    println!();
}

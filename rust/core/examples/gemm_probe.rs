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
    let n: usize = std::env::var("N").unwrap().parse().unwrap();
    {
        let a = vec![0.5f32; n * n];
        let b = vec![0.25f32; n * n];
        let mut c = vec![0f32; n * n];
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            gemm(
                mat(&a, n, n, n as isize, 1),
                BSource::F32(mat(&b, n, n, n as isize, 1)),
                &mut c,
                n,
                &Epilogue::default(),
            )
            .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        print!("  {n}: {:.1}", 2.0 * (n * n * n) as f64 / best / 1e9);
    }
    println!();
}

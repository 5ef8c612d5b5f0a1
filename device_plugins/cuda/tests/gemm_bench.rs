//! GEMM throughput on the GPU (ignored by default; a benchmark, not a test):
//! `cargo test --release -p rtserve-cuda --test gemm_bench -- --ignored --nocapture`

use rtserve_core::device::Device;
use rtserve_core::DType;
use rtserve_cuda::bench::linear_gemm;
use rtserve_cuda::CudaDevice;

#[test]
#[ignore = "benchmark: needs an NVIDIA GPU"]
fn gemm_4096_cubed() {
    let dev = CudaDevice::new();
    if let Some(why) = dev.unavailable_reason() {
        eprintln!("skipped: the cuda device is unavailable here ({why})");
        return;
    }
    println!("device: {}", dev.info().description);
    println!("| m=n=k | weight | activations | ms/product | TFLOP/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (weight, f32_acts) in [
        (DType::BF16, false),
        (DType::BF16, true),
        (DType::F16, false),
        (DType::F32, true),
    ] {
        let t = linear_gemm(&dev, (4096, 4096, 4096), weight, f32_acts, 20, 5).unwrap();
        let acts = if f32_acts {
            "f32 (rounded per call)"
        } else {
            "same as weight"
        };
        println!(
            "| 4096 | {weight} | {acts} | {:.3} | {:.1} |",
            t.seconds * 1e3,
            t.tflops
        );
    }
}

//! GEMM throughput on the GPU (ignored by default; a benchmark, not a test):
//! `cargo test --release -p rtserve-cuda --test gemm_bench -- --ignored --nocapture`

use rtserve_core::device::Device;
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::DType;
use rtserve_cuda::bench::{linear_gemm, round_to_bf16_gbps, LinearCase};
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
    println!("linear: {}", dev.gemm_path().unwrap());
    println!("| m=n=k | weight | activations | epilogue | path | ms/product | TFLOP/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let case = |weight, f32_activations, bias_activation, cublaslt| LinearCase {
        weight,
        f32_activations,
        bias_activation,
        cublaslt,
    };
    let gelu = Some(Activation::GeluTanh);
    for c in [
        case(DType::BF16, false, None, true),
        case(DType::BF16, false, None, false),
        case(DType::BF16, true, None, true),
        case(DType::BF16, true, None, false),
        case(DType::BF16, true, gelu, true),
        case(DType::BF16, true, gelu, false),
        case(DType::F16, false, None, true),
        case(DType::F32, true, None, true),
        case(DType::F32, true, gelu, true),
        case(DType::F32, true, gelu, false),
    ] {
        let iters = if c.weight == DType::F32 { 5 } else { 20 };
        let t = linear_gemm(&dev, (4096, 4096, 4096), c, iters, 5).unwrap();
        let acts = match (c.f32_activations, c.weight) {
            (true, DType::F32) => "f32",
            (true, _) => "f32, rounded per call",
            (false, _) => "same as weight",
        };
        let epilogue = match c.bias_activation {
            Some(a) => format!("bias + {a:?}"),
            None => "none".to_owned(),
        };
        let path = if c.cublaslt {
            "cuBLASLt"
        } else {
            "GemmEx + kernel"
        };
        println!(
            "| 4096 | {} | {acts} | {epilogue} | {path} | {:.3} | {:.1} |",
            c.weight,
            t.seconds * 1e3,
            t.tflops
        );
    }
    let n = 4096 * 4096;
    for vectorized in [false, true] {
        let gbps = round_to_bf16_gbps(&dev, n, vectorized, 20, 5).unwrap();
        let kernel = if vectorized {
            "f32_to_half4 (4 per thread)"
        } else {
            "f32_to_half (1 per thread)"
        };
        println!("round 4096x4096 f32 -> bf16, {kernel}: {gbps:.0} GB/s");
    }
}

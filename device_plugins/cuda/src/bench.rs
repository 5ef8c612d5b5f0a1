//! Device-side timing of the GEMM behind `linear`, for benchmarks: operands
//! stay on the GPU, so the figure is the product's, not the host transfers'.

use std::time::Instant;

use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::{DType, Result, Tensor};

use crate::gpu::Gpu;
use crate::ops::{temp, DVal};
use crate::CudaDevice;

/// What [`linear_gemm`] measured.
#[derive(Clone, Copy, Debug)]
pub struct GemmTiming {
    pub seconds: f64,
    pub tflops: f64,
}

/// One `linear` to time: `y[m, n] = act(x[m, k] · w[n, k]ᵀ + bias)`.
#[derive(Clone, Copy, Debug)]
pub struct LinearCase {
    pub weight: DType,
    /// x is f32 and is rounded to the weight's type on each call (what a graph's
    /// `linear` does); else x is already in the weight's type (the bare product).
    pub f32_activations: bool,
    /// A bias and this activation after the product (None: neither).
    pub bias_activation: Option<Activation>,
    /// false: cuBLAS GemmEx and the epilogue kernel even where cuBLASLt is there.
    pub cublaslt: bool,
}

pub(crate) fn values(gpu: &Gpu, shape: &[usize], seed: u64, dtype: DType) -> Result<DVal> {
    let count = shape.iter().product();
    let data = rtserve_core::kernels::testing::uniform(count, seed, -1.0, 1.0);
    let t = Tensor::from_slice(&data, &[count])?.cast(dtype)?;
    let buf = gpu.upload(&t.to_bytes()?)?;
    Ok(DVal {
        address: buf.address,
        dtype,
        shape: shape.to_vec(),
        owner: Some(std::sync::Arc::new(buf)),
    })
}

/// Median seconds per call of `f` over `rounds` rounds of `iters` calls, after 3 warm-ups.
fn time(gpu: &Gpu, iters: usize, rounds: usize, f: impl Fn() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        for _ in 0..iters.max(1) {
            f()?;
        }
        gpu.synchronize()?;
        times.push(start.elapsed().as_secs_f64() / iters.max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times `case` at `(m, n, k)`: median of `rounds` rounds of `iters` products each.
pub fn linear_gemm(
    dev: &CudaDevice,
    (m, n, k): (usize, usize, usize),
    case: LinearCase,
    iters: usize,
    rounds: usize,
) -> Result<GemmTiming> {
    let gpu = dev.gpu()?;
    let _guard = gpu.lock()?;
    let x_dtype = if case.f32_activations {
        DType::F32
    } else {
        case.weight
    };
    let x = values(&gpu, &[m, k], 1, x_dtype)?;
    let w = values(&gpu, &[n, k], 2, case.weight)?;
    let bias = values(&gpu, &[n], 3, DType::F32)?;
    let out = temp(&gpu, DType::F32, &[m, n])?;
    let activation = case.bias_activation.unwrap_or(Activation::None);
    let bias = case.bias_activation.map(|_| &bias);
    let seconds = time(&gpu, iters, rounds, || {
        crate::gemm::linear_on(&gpu, &x, &w, bias, activation, None, &out, case.cublaslt)
            .map(|_| ())
    })?;
    Ok(GemmTiming {
        seconds,
        tflops: 2.0 * (m * n * k) as f64 / seconds / 1e12,
    })
}

/// Memory throughput (GB/s, bytes read + written) of rounding `n` f32 values to
/// bf16 the way `linear` does, with the four-per-thread kernel or (`vectorized`
/// false) the one-per-thread kernel; the scratch allocation is outside the timing.
pub fn round_to_bf16_gbps(
    dev: &CudaDevice,
    n: usize,
    vectorized: bool,
    iters: usize,
    rounds: usize,
) -> Result<f64> {
    use crate::gpu::grid_for;
    use crate::kernels::Arg;
    let gpu = dev.gpu()?;
    let _guard = gpu.lock()?;
    let src = values(&gpu, &[n], 4, DType::F32)?;
    let dst = temp(&gpu, DType::BF16, &[n])?;
    let (name, items) = if vectorized {
        ("f32_to_half4", n / 4)
    } else {
        ("f32_to_half", n)
    };
    let seconds = time(&gpu, iters, rounds, || {
        gpu.launch(
            name,
            grid_for(items, 256),
            256,
            0,
            &[
                Arg::Ptr(src.address),
                Arg::Ptr(dst.address),
                Arg::I32(1),
                Arg::I64(items as i64),
            ],
        )
    })?;
    Ok((n * 6) as f64 / seconds / 1e9)
}

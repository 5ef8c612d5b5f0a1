//! Device-side timing of the GEMM behind `linear`, for benchmarks: operands
//! stay on the GPU, so the figure is the product's, not the host transfers'.

use std::time::Instant;

use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::{DType, Result, Tensor};

use crate::ops::{temp, DVal};
use crate::CudaDevice;

/// What [`linear_gemm`] measured.
#[derive(Clone, Copy, Debug)]
pub struct GemmTiming {
    pub seconds: f64,
    pub tflops: f64,
}

/// Times `y[m, n] = x[m, k] · w[n, k]ᵀ` with `w` in `weight` dtype. With
/// `f32_activations` x is f32 and is rounded to the weight's type on each call
/// (what a graph's `linear` does); else x is already in the weight's type (the
/// bare cuBLAS product). Median of `rounds` rounds of `iters` products each.
pub fn linear_gemm(
    dev: &CudaDevice,
    (m, n, k): (usize, usize, usize),
    weight: DType,
    f32_activations: bool,
    iters: usize,
    rounds: usize,
) -> Result<GemmTiming> {
    let gpu = dev.gpu()?;
    let _guard = gpu.lock()?;
    let values = |count: usize, seed: u64, dtype: DType| -> Result<DVal> {
        let data = rtserve_core::kernels::testing::uniform(count, seed, -1.0, 1.0);
        let t = Tensor::from_slice(&data, &[count])?.cast(dtype)?;
        let buf = gpu.upload(&t.to_bytes()?)?;
        Ok(DVal {
            address: buf.address,
            dtype,
            shape: vec![count],
            owner: Some(std::sync::Arc::new(buf)),
        })
    };
    let x_dtype = if f32_activations { DType::F32 } else { weight };
    let mut x = values(m * k, 1, x_dtype)?;
    x.shape = vec![m, k];
    let mut w = values(n * k, 2, weight)?;
    w.shape = vec![n, k];
    let out = temp(&gpu, DType::F32, &[m, n])?;
    let product = || crate::gemm::linear(&gpu, &x, &w, None, Activation::None, None, &out);
    for _ in 0..3 {
        product()?;
    }
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        for _ in 0..iters.max(1) {
            product()?;
        }
        gpu.synchronize()?;
        times.push(start.elapsed().as_secs_f64() / iters.max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    Ok(GemmTiming {
        seconds,
        tflops: 2.0 * (m * n * k) as f64 / seconds / 1e12,
    })
}

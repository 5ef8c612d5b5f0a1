//! `matmul` and `linear` on cuBLAS. Activations are f32 and the result is f32,
//! like the CPU's GEMM; a weight may be f32 (an f32 product, no TF32), or bf16
//! or f16: then the activations are rounded to the weight's type and cuBLAS
//! multiplies in that type with f32 accumulation (the tensor-core path).
//! `linear` runs on cuBLASLt where it can, with the bias, activation and
//! residual fused into the product as far as cuBLASLt's epilogues go (lt.rs);
//! the epilogue kernel does the rest, and all of it on the GemmEx path.
//!
//! cuBLAS is column-major: a row-major [r, c] matrix is its column-major
//! transpose, so row-major `C = A·B` is column-major `Cᵀ = Bᵀ·Aᵀ`, and
//! `linear`'s `x·Wᵀ` reads W [out, in] with the transpose flag.

use std::ffi::{c_int, c_longlong, c_void};

use cudarc::cublas::result::{gemm_ex, gemm_strided_batched_ex};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::{DType, Error, Result};

use crate::gpu::{device_error, grid_for, Gpu};
use crate::kernels::Arg;
use crate::lt::{Fused, LinearProblem};
use crate::ops::{temp, DVal};

/// The activations in the weight's type: f32 as they are for an f32 weight,
/// else rounded to bf16/f16 (activations already in the weight's type, which
/// only benchmarks pass, are used as they are).
fn operands(gpu: &Gpu, a: &DVal, weight: DType) -> Result<DVal> {
    match weight {
        DType::F32 => Ok(a.clone()),
        DType::BF16 | DType::F16 if a.dtype == weight => Ok(a.clone()),
        DType::BF16 | DType::F16 => round_to_half(gpu, a, weight),
        d => Err(Error::dtype(
            "matmul",
            format!("weights of dtype {d} are not supported (f32, bf16 or f16)"),
        )),
    }
}

/// `a` (f32) rounded to `half` (bf16 or f16) in fresh memory: four elements per
/// thread where the addresses allow 16-byte loads, the tail one by one.
fn round_to_half(gpu: &Gpu, a: &DVal, half: DType) -> Result<DVal> {
    let out = temp(gpu, half, &a.shape)?;
    let n = a.numel();
    let bf16 = Arg::I32((half == DType::BF16).into());
    let vector = if a.address.is_multiple_of(16) && out.address.is_multiple_of(8) {
        n / 4 * 4
    } else {
        0
    };
    if vector > 0 {
        gpu.launch(
            "f32_to_half4",
            grid_for(vector / 4, 256),
            256,
            0,
            &[
                Arg::Ptr(a.address),
                Arg::Ptr(out.address),
                bf16,
                Arg::I64((vector / 4) as i64),
            ],
        )?;
    }
    if n > vector {
        gpu.launch(
            "f32_to_half",
            grid_for(n - vector, 256),
            256,
            0,
            &[
                Arg::Ptr(a.address + vector as u64 * 4),
                Arg::Ptr(out.address + vector as u64 * 2),
                bf16,
                Arg::I64((n - vector) as i64),
            ],
        )?;
    }
    Ok(out)
}

/// cuBLAS's name for the element type of a GEMM operand.
fn blas_type(d: DType) -> cudaDataType_t {
    match d {
        DType::BF16 => cudaDataType_t::CUDA_R_16BF,
        DType::F16 => cudaDataType_t::CUDA_R_16F,
        _ => cudaDataType_t::CUDA_R_32F,
    }
}

fn int(op: &str, v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| {
        Error::Unsupported(format!(
            "cuda {op}: dimension {v} exceeds cuBLAS's 32-bit sizes"
        ))
    })
}

/// One column-major GEMM `C[m', n'] = op(A)·op(B)` (batched when `batch > 1`
/// with element strides), f32 output, f32 accumulation.
struct Gemm {
    trans_a: bool,
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    lda: usize,
    stride_a: usize,
    b: u64,
    ldb: usize,
    stride_b: usize,
    c: u64,
    ldc: usize,
    stride_c: usize,
    batch: usize,
}

fn run(gpu: &Gpu, op: &str, ty: cudaDataType_t, g: &Gemm) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    let trans = if g.trans_a {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    };
    let (m, n, k) = (int(op, g.m)?, int(op, g.n)?, int(op, g.k)?);
    let (lda, ldb, ldc) = (
        int(op, g.lda.max(1))?,
        int(op, g.ldb.max(1))?,
        int(op, g.ldc.max(1))?,
    );
    let handle = *gpu.blas.handle();
    let compute = cublasComputeType_t::CUBLAS_COMPUTE_32F;
    let algo = cublasGemmAlgo_t::CUBLAS_GEMM_DFALT;
    let f32_type = cudaDataType_t::CUDA_R_32F;
    // SAFETY: the handle is bound to the GPU's stream; a, b and c address live
    // device buffers holding at least the elements the sizes, leading dimensions
    // and batch strides describe (the callers derive them from the tensors'
    // shapes); alpha and beta are host scalars (cuBLAS's default pointer mode).
    let result = unsafe {
        if g.batch == 1 {
            gemm_ex(
                handle,
                trans,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                ty,
                lda,
                g.b as *const c_void,
                ty,
                ldb,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                f32_type,
                ldc,
                compute,
                algo,
            )
        } else {
            gemm_strided_batched_ex(
                handle,
                trans,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                ty,
                lda,
                g.stride_a as c_longlong,
                g.b as *const c_void,
                ty,
                ldb,
                g.stride_b as c_longlong,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                f32_type,
                ldc,
                g.stride_c as c_longlong,
                int(op, g.batch)?,
                compute,
                algo,
            )
        }
    };
    result.map_err(|e| device_error(format!("cuBLAS {op}: {e}")))
}

/// `a @ b` (numpy semantics, broadcast batch dims) into `out` (f32).
pub fn matmul(gpu: &Gpu, a: &DVal, b: &DVal, out: &DVal) -> Result<()> {
    const OP: &str = "matmul";
    let a_shape: Vec<usize> = if a.shape.len() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b_shape: Vec<usize> = if b.shape.len() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]);
    let n = b_shape[b_shape.len() - 1];
    if b_shape[b_shape.len() - 2] != k {
        return Err(Error::shape(
            OP,
            format!("inner dims differ: {:?} @ {:?}", a.shape, b.shape),
        ));
    }
    let esize = b.dtype.size() as u64;
    let a16 = operands(gpu, a, b.dtype)?;
    let (ty, a_esize) = (blas_type(b.dtype), b.dtype.size());
    let a_batch = &a_shape[..a_shape.len() - 2];
    let b_batch = &b_shape[..b_shape.len() - 2];
    let a_count: usize = a_batch.iter().product();
    let b_count: usize = b_batch.iter().product();
    let out_count = out.numel() / (m * n).max(1);
    let gemm = |a_off: usize, b_off: usize, c_off: usize, batch: usize, shared_b: bool| Gemm {
        trans_a: false,
        m: n,
        n: m,
        k,
        a: b.address + b_off as u64 * esize,
        lda: n,
        stride_a: if shared_b { 0 } else { k * n },
        b: a16.address + (a_off * a_esize) as u64,
        ldb: k,
        stride_b: m * k,
        c: out.address + c_off as u64 * 4,
        ldc: n,
        stride_c: m * n,
        batch,
    };
    if b_count == 1 && a_count == out_count {
        // One product: every batch of a is rows of one [batch·m, k] matrix.
        let mut g = gemm(0, 0, 0, 1, true);
        g.n = a_count * m;
        return run(gpu, OP, ty, &g);
    }
    if a_batch == b_batch && a_count == out_count {
        return run(gpu, OP, ty, &gemm(0, 0, 0, out_count, false));
    }
    // Broadcast batch dims: one product per output batch.
    let out_batch: Vec<usize> = out.shape[..out.shape.len().saturating_sub(2)].to_vec();
    let index_of = |batch_dims: &[usize], mut flat: usize| -> usize {
        let mut idx = 0;
        let mut scale = 1;
        for d in (0..out_batch.len()).rev() {
            let i = flat % out_batch[d];
            flat /= out_batch[d];
            let lead = out_batch.len() - batch_dims.len();
            if d >= lead && batch_dims[d - lead] != 1 {
                idx += i * scale;
            }
            if d >= lead {
                scale *= batch_dims[d - lead];
            }
        }
        idx
    };
    for o in 0..out_count {
        let (ai, bi) = (index_of(a_batch, o), index_of(b_batch, o));
        run(
            gpu,
            OP,
            ty,
            &gemm(ai * m * k, bi * k * n, o * m * n, 1, true),
        )?;
    }
    Ok(())
}

/// `act(x·Wᵀ + bias) + residual` into `out` (f32).
pub fn linear(
    gpu: &Gpu,
    x: &DVal,
    w: &DVal,
    bias: Option<&DVal>,
    activation: Activation,
    residual: Option<&DVal>,
    out: &DVal,
) -> Result<()> {
    linear_on(gpu, x, w, bias, activation, residual, out, true).map(|_| ())
}

/// [`linear`], on cuBLASLt when `allow_lt` and it can run the product (then its
/// epilogue computes what it can), else on cuBLAS GemmEx. Whatever the product
/// did not fuse, the epilogue kernel does. Returns what cuBLASLt fused (None:
/// GemmEx ran).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_on(
    gpu: &Gpu,
    x: &DVal,
    w: &DVal,
    bias: Option<&DVal>,
    activation: Activation,
    residual: Option<&DVal>,
    out: &DVal,
    allow_lt: bool,
) -> Result<Option<Fused>> {
    const OP: &str = "linear";
    let (&[n, k], Some(&kx)) = (w.shape.as_slice(), x.shape.last()) else {
        return Err(Error::shape(
            OP,
            format!("weight must be [out, in], got {:?}", w.shape),
        ));
    };
    if kx != k {
        return Err(Error::shape(
            OP,
            format!("x {:?} does not match weight {:?}", x.shape, w.shape),
        ));
    }
    let rows = x.numel() / k.max(1);
    let x16 = operands(gpu, x, w.dtype)?;
    let problem = LinearProblem {
        dtype: w.dtype,
        rows,
        n,
        k,
        x: x16.address,
        w: w.address,
        out: out.address,
        bias: bias.map(|b| b.address),
        residual: residual.map(|r| r.address),
        activation,
    };
    // cuBLASLt needs k > 0 (an empty sum is GemmEx's zero fill) and rows, n > 0.
    let lt = gpu
        .lt
        .as_ref()
        .filter(|_| allow_lt && rows > 0 && n > 0 && k > 0);
    // A cuBLASLt failure leaves nothing queued: GemmEx then computes the same.
    let fused = lt.and_then(|lt| lt.linear(&problem).ok().flatten());
    if fused.is_none() {
        run(
            gpu,
            OP,
            blas_type(w.dtype),
            &Gemm {
                trans_a: true,
                m: n,
                n: rows,
                k,
                a: w.address,
                lda: k,
                stride_a: 0,
                b: x16.address,
                ldb: k,
                stride_b: 0,
                c: out.address,
                ldc: n,
                stride_c: 0,
                batch: 1,
            },
        )?;
    }
    let done = fused.unwrap_or(Fused {
        bias: false,
        activation: false,
        residual: false,
    });
    let bias = bias.filter(|_| !done.bias);
    let residual = residual.filter(|_| !done.residual);
    let act = match activation {
        _ if done.activation => 0,
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::Gelu => 2,
        Activation::GeluTanh => 3,
        Activation::Silu => 4,
    };
    if bias.is_some() || residual.is_some() || act != 0 {
        let total = rows * n;
        gpu.launch(
            "bias_act_residual",
            grid_for(total, 256),
            256,
            0,
            &[
                Arg::Ptr(out.address),
                Arg::Ptr(bias.map_or(0, |b| b.address)),
                Arg::Ptr(residual.map_or(0, |r| r.address)),
                Arg::I32(act),
                Arg::I64(n as i64),
                Arg::I64(total as i64),
            ],
        )?;
    }
    Ok(fused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::values;
    use crate::CudaDevice;

    fn download(gpu: &Gpu, v: &DVal) -> Vec<f32> {
        let mut bytes = vec![0u8; v.bytes()];
        gpu.download(v.address, &mut bytes).unwrap();
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// On a GPU with cuBLASLt: every bias/activation/residual combination of
    /// `linear` gives the GemmEx path's values (up to summation order), and
    /// cuBLASLt ran wherever the operands are 16-byte aligned.
    #[test]
    fn cublaslt_epilogues_match_the_gemmex_path() {
        let dev = CudaDevice::new();
        if let Some(why) = dev.unavailable_reason() {
            eprintln!("skipped: the cuda device is unavailable here ({why})");
            return;
        }
        let gpu = dev.gpu().unwrap();
        let _guard = gpu.lock().unwrap();
        eprintln!("linear: {}", gpu.gemm_path);
        if gpu.lt.is_none() {
            eprintln!("skipped: no cuBLASLt here");
            return;
        }
        let activations = [
            Activation::None,
            Activation::Relu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
        ];
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let mut worst = 0f64;
            for &(rows, k, n) in &[(1, 7, 5), (9, 33, 17), (33, 128, 64), (300, 384, 1536)] {
                let x = values(&gpu, &[rows, k], 11, DType::F32).unwrap();
                let w = values(&gpu, &[n, k], 12, dtype).unwrap();
                let b = values(&gpu, &[n], 13, DType::F32).unwrap();
                let r = values(&gpu, &[rows, n], 14, DType::F32).unwrap();
                for act in activations {
                    for (bias, residual) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let (bias, residual) = (bias.then_some(&b), residual.then_some(&r));
                        let lt_out = temp(&gpu, DType::F32, &[rows, n]).unwrap();
                        let ex_out = temp(&gpu, DType::F32, &[rows, n]).unwrap();
                        let fused =
                            linear_on(&gpu, &x, &w, bias, act, residual, &lt_out, true).unwrap();
                        let plain =
                            linear_on(&gpu, &x, &w, bias, act, residual, &ex_out, false).unwrap();
                        assert!(plain.is_none());
                        let aligned = k % 8 == 0 && n % 8 == 0;
                        let what = format!(
                            "{dtype} {rows}x{k}x{n} {act:?} bias {} residual {}",
                            bias.is_some(),
                            residual.is_some()
                        );
                        assert!(fused.is_some() || !aligned, "cuBLASLt did not run: {what}");
                        let (got, want) = (download(&gpu, &lt_out), download(&gpu, &ex_out));
                        for (g, e) in got.iter().zip(&want) {
                            let err = (g - e).abs() as f64 / (1.0 + e.abs() as f64);
                            worst = worst.max(err);
                            assert!(err <= 5e-5, "{what}: {g} vs {e}");
                        }
                    }
                }
            }
            eprintln!("{dtype}: cuBLASLt vs GemmEx + kernel, largest |diff| / (1 + |value|) = {worst:.2e}");
        }
    }
}

//! Measured peak arithmetic throughput of this machine (GFLOP/s, or GOP/s for
//! int8), per thread count, for f32 FMA, bf16 dot and int8 dot products.

// The probes are x86 code; on other targets `measure` only reports that.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use std::time::Instant;

use crate::error::{Error, Result};
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::kernels::dispatch::{cpu, Isa};
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::kernels::frame::threads::parallel_for;

/// Which probe to run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PeakKind {
    F32Fma,
    Bf16Dot,
    /// u8 × i8 dot products into i32 (`vpdpbusd`, AVX512_VNNI); counted as 2 ops per multiply-add.
    I8Dot,
}

/// Runs the probe on `threads` threads of the pool at ISA `isa`; returns GFLOP/s (GOP/s for int8).
pub fn peak_gflops(kind: PeakKind, isa: Isa) -> Result<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::x86_64::peak;
        let (flops_per_iter, run): (f64, fn(u64) -> f32) = match (kind, isa) {
            (PeakKind::F32Fma, Isa::Avx512) if cpu().avx512 => {
                // SAFETY: the guard checked AVX-512 on this CPU.
                (24.0 * 16.0 * 2.0, |n| unsafe { peak::avx512_fma_f32(n) })
            }
            (PeakKind::F32Fma, Isa::Avx2) if cpu().avx2_fma => {
                // SAFETY: the guard checked AVX2 + FMA on this CPU.
                (12.0 * 8.0 * 2.0, |n| unsafe { peak::avx2_fma_f32(n) })
            }
            (PeakKind::Bf16Dot, Isa::Avx512) if cpu().avx512_bf16 => {
                // SAFETY: the guard checked AVX512_BF16 on this CPU.
                (24.0 * 16.0 * 4.0, |n| unsafe { peak::avx512_dot_bf16(n) })
            }
            (PeakKind::I8Dot, Isa::Avx512) if cpu().avx512_vnni => {
                // SAFETY: the guard checked AVX512_VNNI on this CPU.
                (24.0 * 16.0 * 8.0, |n| unsafe { peak::avx512_dot_i8(n) })
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "peak probe {kind:?} at ISA {} is not available on this CPU",
                    isa.name()
                )))
            }
        };
        let threads = crate::kernels::num_threads();
        run(1_000_000); // warm up clocks
        let iters = 20_000_000u64;
        let start = Instant::now();
        let sink = std::sync::atomic::AtomicU32::new(0);
        parallel_for(threads, |_| {
            let v = run(iters);
            sink.fetch_add(v.to_bits() & 1, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = start.elapsed().as_secs_f64();
        Ok(flops_per_iter * iters as f64 * threads as f64 / secs / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, isa);
        Err(Error::Unsupported(
            "peak probes exist for x86_64 only".into(),
        ))
    }
}

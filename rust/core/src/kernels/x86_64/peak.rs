//! Throughput probes: independent FMA (or `vdpbf16ps`) chains that keep both
//! vector pipes busy, so benchmarks can report "% of this machine's peak"
//! from a measurement rather than a datasheet.

use std::arch::x86_64::*;

/// Runs `iters` rounds of 24 independent 16-wide FMAs; returns a value that
/// depends on all of them (so nothing is optimised away).
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn avx512_fma_f32(iters: u64) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

/// As `avx512_fma_f32` with 12 chains of 8-wide FMAs.
///
/// # Safety
/// The CPU supports AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_fma_f32(iters: u64) -> f32 {
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

/// 24 independent `vdpbf16ps` chains (each: 16 lanes × 2 multiply-adds).
///
/// # Safety
/// The CPU supports AVX-512F + AVX512_BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn avx512_dot_bf16(iters: u64) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let a: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

/// 24 independent `vpdpbusd` chains (each: 16 lanes × 4 u8·i8 multiply-adds into i32).
///
/// # Safety
/// The CPU supports AVX-512F + AVX512_VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
pub unsafe fn avx512_dot_i8(iters: u64) -> f32 {
    let mut acc = [_mm512_setzero_si512(); 24];
    let a = _mm512_set1_epi8(3);
    let b = _mm512_set1_epi8(-2);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_si512();
    for x in acc {
        s = _mm512_add_epi32(s, x);
    }
    _mm512_reduce_add_epi32(s) as f32
}

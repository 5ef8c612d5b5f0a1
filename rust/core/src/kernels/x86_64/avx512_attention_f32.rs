//! AVX-512 attention: the tiled body of `frame::attention` with 16-lane zmm
//! vectors. Scores in 4 query rows × 64 keys (16 accumulators), P·V in 8 rows ×
//! 32 output columns (16 accumulators).

use std::arch::x86_64::*;

use crate::kernels::frame::attention::{
    attention_block, AttentionProblem, Lanes, OutRows, QueryBlock, EXP2_BIAS_BITS,
};

/// Sixteen f32 lanes in a zmm register.
#[derive(Copy, Clone)]
pub struct F32x16(__m512);

// Edition 2021: the body of an `unsafe fn` may call the intrinsics; the trait's
// contract (AVX-512 F/BW/DQ/VL present, pointers valid for 16 floats) covers them.
impl Lanes for F32x16 {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        F32x16(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F32x16(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F32x16(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F32x16(_mm512_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F32x16(_mm512_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        F32x16(_mm512_min_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        F32x16(_mm512_max_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        F32x16(_mm512_fmadd_ps(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        _mm512_reduce_max_ps(self.0)
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        _mm512_reduce_add_ps(self.0)
    }
    #[inline(always)]
    unsafe fn pow2_from_magic(t: Self) -> Self {
        let biased = _mm512_sub_epi32(_mm512_castps_si512(t.0), _mm512_set1_epi32(EXP2_BIAS_BITS));
        F32x16(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased)))
    }
}

/// One query block of attention with AVX-512.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/DQ/VL and FMA; no other task writes the rows of `blk`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
pub unsafe fn avx512_attention_f32_4x64(p: &AttentionProblem<'_>, blk: &QueryBlock, out: &OutRows) {
    // SAFETY: this fn's contract (ISA present, rows owned) is attention_block's.
    unsafe { attention_block::<F32x16, 4, 4, 8, 2>(p, blk, out) }
}

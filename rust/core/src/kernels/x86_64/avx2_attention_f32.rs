//! AVX2 attention: the tiled body of `frame::attention` with 8-lane ymm
//! vectors. Scores and P·V both in 6 rows × 16 columns (12 accumulators of the
//! 16 ymm registers).

use std::arch::x86_64::*;

use crate::kernels::frame::attention::{
    attention_block, AttentionProblem, Lanes, OutRows, QueryBlock, EXP2_BIAS_BITS,
};

/// Eight f32 lanes in a ymm register.
#[derive(Copy, Clone)]
pub struct F32x8(__m256);

// Edition 2021: the body of an `unsafe fn` may call the intrinsics; the trait's
// contract (AVX2 + FMA present, pointers valid for 8 floats) covers them.
impl Lanes for F32x8 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        F32x8(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F32x8(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F32x8(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F32x8(_mm256_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F32x8(_mm256_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        F32x8(_mm256_min_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        F32x8(_mm256_max_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        F32x8(_mm256_fmadd_ps(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        let half = _mm_max_ps(
            _mm256_castps256_ps128(self.0),
            _mm256_extractf128_ps::<1>(self.0),
        );
        let quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_max_ss(quarter, _mm_shuffle_ps::<1>(quarter, quarter)))
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        let half = _mm_add_ps(
            _mm256_castps256_ps128(self.0),
            _mm256_extractf128_ps::<1>(self.0),
        );
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps::<1>(quarter, quarter)))
    }
    #[inline(always)]
    unsafe fn pow2_from_magic(t: Self) -> Self {
        let biased = _mm256_sub_epi32(_mm256_castps_si256(t.0), _mm256_set1_epi32(EXP2_BIAS_BITS));
        F32x8(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
    }
}

/// One query block of attention with AVX2.
///
/// # Safety
/// The CPU supports AVX2 and FMA; no other task writes the rows of `blk`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_attention_f32_6x16(p: &AttentionProblem<'_>, blk: &QueryBlock, out: &OutRows) {
    // SAFETY: this fn's contract (ISA present, rows owned) is attention_block's.
    unsafe { attention_block::<F32x8, 6, 2, 6, 2>(p, blk, out) }
}

//! Attention, portable: the straightforward reference (one query row at a time,
//! two-pass softmax in f64) that the tiled kernels are tested against, and the
//! tiled driver instantiated with scalar "vectors" of one lane (the generic tier).

use crate::kernels::frame::attention::{
    attention_block, AttentionProblem, Lanes, OutRows, QueryBlock, EXP2_BIAS_BITS,
};

/// One f32 lane: the tiled body compiled for any CPU.
impl Lanes for f32 {
    const N: usize = 1;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the trait's contract: p points to one readable f32.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the trait's contract: p points to one writable f32.
        unsafe { *p = self }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        // Like x86 `minps`: the second operand when either is NaN.
        if self < o {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        if self > o {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // Not `mul_add`: without FMA hardware that is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn pow2_from_magic(t: Self) -> Self {
        f32::from_bits(((t.to_bits() as i32).wrapping_sub(EXP2_BIAS_BITS) as u32) << 23)
    }
}

/// The generic tier: the tiled attention body with one-lane vectors, 4×4 tiles.
///
/// # Safety
/// No other task writes the rows of `blk` (see [`OutRows::row_mut`]).
pub unsafe fn generic_attention_f32(p: &AttentionProblem<'_>, blk: &QueryBlock, out: &OutRows) {
    // SAFETY: f32 lanes need no CPU feature; row ownership is this fn's contract.
    unsafe { attention_block::<f32, 4, 4, 4, 4>(p, blk, out) }
}

/// The reference: for every query row, scores against all keys in f64, masked,
/// max-subtracted softmax, weighted sum of V. Rows with no key attended are 0.
/// Output is [batch, seq_q, heads_q, head_dim_v], contiguous.
pub fn attention_reference_f32(p: &AttentionProblem<'_>) -> Vec<f32> {
    let dv = p.v.dim;
    let mut out = vec![0.0f32; p.batch * p.seq_q * p.heads_q * dv];
    let mut scores = vec![0.0f64; p.keys()];
    let mut acc = vec![0.0f64; dv];
    for b in 0..p.batch {
        for i in 0..p.seq_q {
            for h in 0..p.heads_q {
                let kvh = h / p.group();
                let q = p.q.row(b, i, h);
                let mut max = f64::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = if p.allowed(b, i, j) {
                        let k = p.key_row(b, j, kvh);
                        let dot: f64 = q.iter().zip(k).map(|(&x, &y)| x as f64 * y as f64).sum();
                        dot * p.scale as f64
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = max.max(*s);
                }
                let at = ((b * p.seq_q + i) * p.heads_q + h) * dv;
                if max == f64::NEG_INFINITY {
                    continue;
                }
                acc.fill(0.0);
                let mut sum = 0.0;
                for (j, &s) in scores.iter().enumerate() {
                    if s == f64::NEG_INFINITY {
                        continue;
                    }
                    let w = (s - max).exp();
                    sum += w;
                    for (a, &x) in acc.iter_mut().zip(p.value_row(b, j, kvh)) {
                        *a += w * x as f64;
                    }
                }
                for (o, a) in out[at..at + dv].iter_mut().zip(&acc) {
                    *o = (a / sum) as f32;
                }
            }
        }
    }
    out
}

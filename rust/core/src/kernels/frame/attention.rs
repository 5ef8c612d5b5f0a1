//! Fused attention driver (flash-attention style), written once over a vector
//! type [`Lanes`] and instantiated per ISA (`generic/attention.rs`,
//! `x86_64/{avx2,avx512}_attention_f32.rs`).
//!
//! One task is a block of query rows of one (batch, kv head): the rows of every
//! query head sharing that kv head (grouped-query attention) over `q_start..q_end`.
//! The task walks the keys in blocks of [`BLOCK_K`], keeping per row the running
//! max `m`, running sum `l` and an f32 output accumulator (online softmax), so
//! no seq_q × seq_k matrix ever exists: a task's scratch is
//! O(rows × BLOCK_K + rows × head_dim_v + head_dim × BLOCK_K).
//!
//! Scores are computed in base 2: the packed queries are pre-scaled by
//! `scale * log2(e)` and probabilities are `exp2(s - m)`, which is one
//! polynomial ([`exp2`]) with no libm call.

use crate::kernels::frame::prefetch;
use crate::kernels::frame::threads::parallel_for;
use crate::kernels::Isa;

/// Keys per block: a multiple of every ISA's key tile (`SNV * N`).
pub const BLOCK_K: usize = 128;

/// Query rows a task aims for (all heads of a group together).
pub const TARGET_ROWS: usize = 128;

/// Tasks with at most this many query rows (decode) read K and V in place.
const DIRECT_MAX_ROWS: usize = 8;

/// Key rows ahead of the one in use that reading K in place prefetches.
const KEYS_AHEAD: usize = 8;

/// A register of `N` f32 lanes and the few operations the kernels need.
///
/// # Safety
/// Every method may use instructions of the implementing ISA: call them only
/// from code that runs after dispatch confirmed the CPU supports that ISA.
/// `load`/`store` access `N` floats at the pointer.
#[allow(clippy::missing_safety_doc)] // the contract above covers every method
pub trait Lanes: Copy {
    const N: usize;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn min(self, o: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    /// `a * b + c` (fused where the ISA has FMA).
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn reduce_max(self) -> f32;
    unsafe fn reduce_sum(self) -> f32;
    /// `2^round(x)` given `t = x + EXP2_MAGIC` with `round(x)` in -127..=127:
    /// the integer in `t`'s low mantissa bits moved into the exponent field.
    unsafe fn pow2_from_magic(t: Self) -> Self;
}

/// 1.5 × 2^23: adding it to |x| < 2^22 rounds x to an integer held in the low mantissa bits.
pub const EXP2_MAGIC: f32 = 12_582_912.0;
/// `bits(EXP2_MAGIC)` minus the f32 exponent bias: `bits(t) - EXP2_BIAS_BITS` is
/// `round(x) + 127`, the biased exponent of `2^round(x)`.
pub const EXP2_BIAS_BITS: i32 = 0x4B40_0000 - 127;

/// Cephes `exp2f` minimax coefficients of `(2^f - 1) / f` on |f| <= 0.5 (relative error ~2e-7).
const EXP2_POLY: [f32; 6] = [
    1.535_336_2e-4,
    1.339_887_4e-3,
    9.618_437e-3,
    5.550_332_5e-2,
    2.402_264_8e-1,
    6.931_472e-1,
];

/// `2^x` for x <= 0, branch-free; `-inf` and anything below -127 give 0.
///
/// # Safety
/// As for [`Lanes`].
#[inline(always)]
pub unsafe fn exp2<V: Lanes>(x: V) -> V {
    // SAFETY: the caller runs on V's ISA (this fn's contract).
    unsafe {
        let x = x.max(V::splat(-127.0)).min(V::splat(0.0));
        let t = x.add(V::splat(EXP2_MAGIC));
        let whole = t.sub(V::splat(EXP2_MAGIC));
        let f = x.sub(whole);
        let mut p = V::splat(EXP2_POLY[0]);
        for &c in &EXP2_POLY[1..] {
            p = V::fmadd(p, f, V::splat(c));
        }
        let p = V::fmadd(p, f, V::splat(1.0));
        // 2^-127 has a zero exponent field, so the scale (and the result) is 0 there.
        let scale = V::pow2_from_magic(t);
        p.mul(scale)
    }
}

/// A [batch, seq, heads, dim] f32 input whose last dimension is contiguous.
#[derive(Clone, Copy, Debug)]
pub struct StridedRows<'a> {
    /// The whole storage as f32.
    pub data: &'a [f32],
    pub offset: usize,
    /// Element strides of (batch, seq, heads); the dim stride is 1.
    pub strides: [isize; 3],
    pub dim: usize,
}

impl<'a> StridedRows<'a> {
    /// The same rows starting at sequence position `start` (packed sequences).
    pub fn from_seq(self, start: usize) -> Self {
        if self.dim == 0 {
            return self; // an empty tensor's strides may point anywhere
        }
        StridedRows {
            offset: (self.offset as isize + start as isize * self.strides[1]) as usize,
            ..self
        }
    }

    /// Where rows (b, s..s+n, h) start, `strides[1]` apart; panics (a bug) unless all
    /// n rows lie inside the storage.
    pub fn rows_ptr(&self, b: usize, s: usize, h: usize, n: usize) -> *const f32 {
        if n > 0 {
            let _ = self.row(b, s + n - 1, h); // bounds-checks the last row
        }
        self.data[self.at(b, s, h)..].as_ptr()
    }

    /// The `dim` floats of row (b, s, h). Panics (a bug) if the layout was not bounds-checked.
    #[inline]
    pub fn row(&self, b: usize, s: usize, h: usize) -> &'a [f32] {
        if self.dim == 0 {
            // An empty tensor's strides may point anywhere.
            return &[];
        }
        let at = self.at(b, s, h);
        &self.data[at..at + self.dim]
    }

    /// The storage index of row (b, s, h)'s first element.
    #[inline]
    fn at(&self, b: usize, s: usize, h: usize) -> usize {
        (self.offset as isize
            + b as isize * self.strides[0]
            + s as isize * self.strides[1]
            + h as isize * self.strides[2]) as usize
    }
}

/// Everything a task needs to know about one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionProblem<'a> {
    pub q: StridedRows<'a>,
    pub k: StridedRows<'a>,
    pub v: StridedRows<'a>,
    pub batch: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub scale: f32,
    pub causal: bool,
    /// `batch * seq_k` bytes, nonzero = the key may be attended.
    pub key_valid: Option<&'a [u8]>,
    /// Packed sequences ("varlen"): offsets `0 = o[0] <= o[1] <= ... <= o[n] = seq_q`
    /// with `batch == 1` and `seq_q == seq_k`. The rows `o[s]..o[s+1]` are one sequence:
    /// their queries attend only their own keys (causal counts from `o[s]`), so
    /// inputs of different lengths run in one call with no padding.
    pub segments: Option<&'a [usize]>,
    /// Keys and values after k and v along the sequence (keys seq_k..seq_k + len), read
    /// where they are: a decoder's new tokens beside its cache, with no copy of the
    /// cache to join them. Never masked by `key_valid` (which covers k); causal
    /// alignment counts them. Not combined with `segments`.
    pub append: Option<Appended<'a>>,
}

/// Keys and values appended after a problem's k and v ([batch, len, heads_kv, dim]).
#[derive(Clone, Copy, Debug)]
pub struct Appended<'a> {
    pub k: StridedRows<'a>,
    pub v: StridedRows<'a>,
    pub len: usize,
}

impl<'a> AttentionProblem<'a> {
    pub fn group(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// All keys: k's, then the appended ones.
    #[inline]
    pub fn keys(&self) -> usize {
        self.seq_k + self.append.map_or(0, |a| a.len)
    }

    /// Key `j` (of all keys) of batch b, kv head h.
    #[inline]
    pub fn key_row(&self, b: usize, j: usize, h: usize) -> &'a [f32] {
        match self.append {
            Some(a) if j >= self.seq_k => a.k.row(b, j - self.seq_k, h),
            _ => self.k.row(b, j, h),
        }
    }

    /// Value `j` (of all keys) of batch b, kv head h.
    #[inline]
    pub fn value_row(&self, b: usize, j: usize, h: usize) -> &'a [f32] {
        match self.append {
            Some(a) if j >= self.seq_k => a.v.row(b, j - self.seq_k, h),
            _ => self.v.row(b, j, h),
        }
    }

    /// Whether query `i` of batch `b` may attend key `j` (causal is bottom-right aligned).
    #[inline]
    pub fn allowed(&self, b: usize, i: usize, j: usize) -> bool {
        let causal_ok = !self.causal || j as isize <= i as isize + self.causal_offset();
        let pad_ok = j >= self.seq_k || self.key_valid.is_none_or(|m| m[b * self.seq_k + j] != 0);
        causal_ok && pad_ok
    }

    /// keys - seq_q: query i may attend key j iff j <= i + this (causal).
    #[inline]
    pub fn causal_offset(&self) -> isize {
        self.keys() as isize - self.seq_q as isize
    }

    /// Query rows per task along the sequence (the group's heads multiply it).
    pub fn block_q(&self) -> usize {
        (TARGET_ROWS / self.group().max(1)).max(1)
    }
}

/// One task: query rows `q_start..q_end` of every head sharing kv head `kv_head`.
#[derive(Clone, Copy, Debug)]
pub struct QueryBlock {
    pub batch: usize,
    pub kv_head: usize,
    pub q_start: usize,
    pub q_end: usize,
}

/// The contiguous f32 output [batch, seq_q, heads_q, head_dim_v], written by
/// several tasks at once through a raw pointer: each task writes only the rows
/// of its own [`QueryBlock`], and the blocks partition the output.
pub struct OutRows {
    ptr: *mut f32,
    len: usize,
    seq_q: usize,
    heads_q: usize,
    dim: usize,
}

// SAFETY: OutRows is only a pointer into a buffer that outlives the parallel
// section; tasks write disjoint rows (see `row_mut`), so sharing it is sound.
unsafe impl Send for OutRows {}
// SAFETY: as above: concurrent tasks never touch the same row.
unsafe impl Sync for OutRows {}

impl OutRows {
    /// The output of problem `p`, [batch, seq_q, heads_q, head_dim_v] in `out`.
    fn whole(out: &mut [f32], p: &AttentionProblem<'_>) -> OutRows {
        OutRows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            seq_q: p.seq_q,
            heads_q: p.heads_q,
            dim: p.v.dim,
        }
    }

    /// Sequence rows `start..start + n` of batch 0 as an output of their own
    /// (packed sequences); panics if they are out of range.
    fn window(&self, start: usize, n: usize) -> OutRows {
        let row = self.heads_q * self.dim;
        assert!(
            (start + n) * row <= self.len,
            "attention output window out of range"
        );
        OutRows {
            ptr: self.ptr.wrapping_add(start * row),
            len: n * row,
            seq_q: n,
            heads_q: self.heads_q,
            dim: self.dim,
        }
    }

    /// Row (b, i, h) of the output.
    ///
    /// # Safety
    /// No other live reference to this row may exist: each row belongs to
    /// exactly one task, which takes it once.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_mut(&self, b: usize, i: usize, h: usize) -> &mut [f32] {
        let at = ((b * self.seq_q + i) * self.heads_q + h) * self.dim;
        assert!(
            at + self.dim <= self.len,
            "attention output row out of range"
        );
        // SAFETY: in bounds (asserted), and exclusive by this fn's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), self.dim) }
    }
}

/// Runs the whole attention on the thread pool with the kernels of `isa`,
/// writing every element of `out` ([batch, seq_q, heads_q, head_dim_v], contiguous).
pub fn attention_f32(p: &AttentionProblem<'_>, out: &mut [f32], isa: Isa) {
    let dv = p.v.dim;
    assert_eq!(out.len(), p.batch * p.seq_q * p.heads_q * dv);
    if out.is_empty() {
        return;
    }
    if let Some(offsets) = p.segments {
        attention_segments_f32(p, offsets, out, isa);
        return;
    }
    let block_q = p.block_q();
    let q_blocks = p.seq_q.div_ceil(block_q);
    let tasks = p.batch * p.heads_kv * q_blocks;
    let rows = OutRows::whole(out, p);
    let run = |t: usize| {
        let qb = t % q_blocks;
        let kv_head = (t / q_blocks) % p.heads_kv;
        let batch = t / (q_blocks * p.heads_kv);
        let blk = QueryBlock {
            batch,
            kv_head,
            q_start: qb * block_q,
            q_end: ((qb + 1) * block_q).min(p.seq_q),
        };
        run_block(p, &blk, &rows, isa);
    };
    parallel_for(tasks, run);
}

/// Packed sequences: each segment is its own one-sequence problem over a window of
/// the rows (the ISA kernels are unchanged); tasks are (segment, kv head, query block).
fn attention_segments_f32(p: &AttentionProblem<'_>, offsets: &[usize], out: &mut [f32], isa: Isa) {
    assert!(
        p.batch == 1 && p.seq_q == p.seq_k && offsets.first() == Some(&0) && p.append.is_none(),
        "attention segments need batch 1, seq_q == seq_k, offsets from 0 and no appended keys"
    );
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]) && offsets.last() == Some(&p.seq_q),
        "attention segment offsets must be non-decreasing and end at seq"
    );
    let block_q = p.block_q();
    // One task per (segment, query block of it, kv head): `(segment, block * heads_kv + kv_head)`.
    let mut tasks: Vec<(usize, usize)> = Vec::new();
    for (s, w) in offsets.windows(2).enumerate() {
        let blocks = (w[1] - w[0]).div_ceil(block_q);
        for qb in 0..blocks {
            for kv_head in 0..p.heads_kv {
                tasks.push((s, qb * p.heads_kv + kv_head));
            }
        }
    }
    let out_rows = OutRows::whole(out, p);
    let run = |t: usize| {
        let (s, unit) = tasks[t];
        let (start, end) = (offsets[s], offsets[s + 1]);
        let n = end - start;
        let sub = AttentionProblem {
            q: p.q.from_seq(start),
            k: p.k.from_seq(start),
            v: p.v.from_seq(start),
            seq_q: n,
            seq_k: n,
            key_valid: p.key_valid.map(|m| &m[start..end]),
            segments: None,
            append: None,
            ..*p
        };
        let rows = out_rows.window(start, n);
        let blk = QueryBlock {
            batch: 0,
            kv_head: unit % p.heads_kv,
            q_start: (unit / p.heads_kv) * block_q,
            q_end: ((unit / p.heads_kv + 1) * block_q).min(n),
        };
        run_block(&sub, &blk, &rows, isa);
    };
    parallel_for(tasks.len(), run);
}

fn run_block(p: &AttentionProblem<'_>, blk: &QueryBlock, out: &OutRows, isa: Isa) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx512 tier is only produced after detection found AVX-512 F/BW/DQ/VL + FMA;
        // blocks partition the output (one task per block).
        Isa::Avx512 => unsafe {
            crate::kernels::x86_64::avx512_attention_f32::avx512_attention_f32_4x64(p, blk, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx2 tier is only produced after detection found AVX2 + FMA; blocks are disjoint.
        Isa::Avx2 => unsafe {
            crate::kernels::x86_64::avx2_attention_f32::avx2_attention_f32_6x16(p, blk, out)
        },
        // SAFETY: blocks partition the output (one task per block).
        _ => unsafe { crate::kernels::generic::attention::generic_attention_f32(p, blk, out) },
    }
}

/// Per-task scratch, allocated once per task (O(rows × (BLOCK_K + head_dims))).
struct Scratch {
    /// Queries × scale × log2(e), [rows][d].
    q: Vec<f32>,
    /// K block transposed, [d][BLOCK_K] (keys along the vector lanes).
    kt: Vec<f32>,
    /// V block, [BLOCK_K][dv_pad], padded with zeros.
    v: Vec<f32>,
    /// Scores, then probabilities, [rows][BLOCK_K].
    s: Vec<f32>,
    /// Output accumulators, [rows][dv_pad].
    acc: Vec<f32>,
    /// 0 for keys that may be attended, -inf otherwise (padding mask, block tail).
    key_bias: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

/// Attention for one [`QueryBlock`]: the body every ISA instantiates.
/// `SMR × SNV` is the score tile (query rows × vectors of keys), `PMR × PNV` the
/// P·V tile (rows × vectors of output columns).
///
/// # Safety
/// The CPU supports `V`'s ISA, and no other task writes the rows of `blk`.
#[inline(always)]
pub unsafe fn attention_block<
    V: Lanes,
    const SMR: usize,
    const SNV: usize,
    const PMR: usize,
    const PNV: usize,
>(
    p: &AttentionProblem<'_>,
    blk: &QueryBlock,
    out: &OutRows,
) {
    let key_tile = SNV * V::N;
    let col_tile = PNV * V::N;
    assert!(
        BLOCK_K.is_multiple_of(key_tile),
        "BLOCK_K must hold whole key tiles"
    );
    let group = p.group();
    let (d, dv) = (p.q.dim, p.v.dim);
    let dv_pad = dv.div_ceil(col_tile) * col_tile;
    let nq = blk.q_end - blk.q_start;
    let rows = group * nq;
    let b = blk.batch;
    // A few rows (decode: one query per head of a GQA group): scores and P·V read the
    // K and V rows where they are. Packing a block (K transposed, V padded, 64 KiB of
    // zeroed scratch) costs more than so few rows save: on Zen 5, 1 query x 9 heads
    // (3 kv heads) over 160 keys took 20.4 us packed and 7.4 us direct at 1 thread,
    // 52.7 and 20.0 us over 512 keys.
    let direct = rows <= DIRECT_MAX_ROWS
        && d > 0
        && dv > 0
        && d.is_multiple_of(V::N)
        && dv == dv_pad
        && p.k.strides[1] >= 0
        && p.v.strides[1] >= 0
        && p.append
            .is_none_or(|a| a.k.strides[1] >= 0 && a.v.strides[1] >= 0);
    let packed_len = |n: usize| if direct { 0 } else { n };
    let mut sc = Scratch {
        q: vec![0.0; rows * d],
        kt: vec![0.0; packed_len(d * BLOCK_K)],
        v: vec![0.0; packed_len(BLOCK_K * dv_pad)],
        s: vec![0.0; rows * BLOCK_K],
        acc: vec![0.0; rows * dv_pad],
        key_bias: vec![0.0; BLOCK_K],
        m: vec![f32::NEG_INFINITY; rows],
        l: vec![0.0; rows],
    };
    // Row r is query head kv_head*group + r/nq at position q_start + r%nq.
    let head_of = |r: usize| blk.kv_head * group + r / nq;
    let pos_of = |r: usize| blk.q_start + r % nq;
    let q_scale = p.scale * std::f32::consts::LOG2_E;
    for r in 0..rows {
        let src = p.q.row(b, pos_of(r), head_of(r));
        for (dst, &x) in sc.q[r * d..(r + 1) * d].iter_mut().zip(src) {
            *dst = x * q_scale;
        }
    }
    let offset = p.causal_offset();
    let key_end = if p.causal {
        (blk.q_end as isize + offset).clamp(0, p.keys() as isize) as usize
    } else {
        p.keys()
    };
    // Blocks never straddle k and the appended keys: each reads one source.
    let main = (0..key_end.min(p.seq_k)).step_by(BLOCK_K);
    let appended = (p.seq_k..key_end.max(p.seq_k)).step_by(BLOCK_K);
    for j0 in main.chain(appended) {
        let end = if j0 < p.seq_k {
            key_end.min(p.seq_k)
        } else {
            key_end
        };
        let nk = BLOCK_K.min(end - j0);
        let nk_pad = nk.div_ceil(key_tile) * key_tile;
        let kb = KeyBlock {
            b,
            kv_head: blk.kv_head,
            j0,
            nk,
            nk_pad,
        };
        if direct {
            key_bias(p, kb, &mut sc.key_bias);
            // SAFETY: q is rows×d and s rows×BLOCK_K; keys j0..j0+nk of this kv head are
            // rows of d floats inside K (d a multiple of N); the ISA is the caller's contract.
            unsafe { scores_direct::<V>(p, kb, rows, &sc.q, &mut sc.s) };
        } else {
            pack_keys(p, kb, &mut sc);
            // SAFETY: scratch sizes: q is rows×d, kt is d×BLOCK_K, s is rows×BLOCK_K and
            // nk_pad <= BLOCK_K is a multiple of SNV*N; the ISA is the caller's contract.
            unsafe {
                let full = rows / SMR * SMR;
                for r0 in (0..full).step_by(SMR) {
                    scores_tile::<V, SMR, SNV>(&sc.q, &sc.kt, &mut sc.s, r0, d, nk_pad);
                }
                for r0 in full..rows {
                    scores_tile::<V, 1, SNV>(&sc.q, &sc.kt, &mut sc.s, r0, d, nk_pad);
                }
            }
        }
        if p.causal && (j0 + nk) as isize - 1 > blk.q_start as isize + offset {
            // The block crosses the diagonal: row r sees keys j0 + j with j < limit.
            for r in 0..rows {
                let limit = (pos_of(r) as isize + offset + 1 - j0 as isize).max(0) as usize;
                if limit < nk_pad {
                    sc.s[r * BLOCK_K + limit..r * BLOCK_K + nk_pad].fill(f32::NEG_INFINITY);
                }
            }
        }
        for r in 0..rows {
            let row = &mut sc.s[r * BLOCK_K..r * BLOCK_K + nk_pad];
            // SAFETY: row and key_bias hold nk_pad floats, a multiple of N; the ISA is the contract.
            let block_max = unsafe { masked_row_max::<V>(row, &sc.key_bias[..nk_pad]) };
            let m_new = sc.m[r].max(block_max);
            if m_new == f32::NEG_INFINITY {
                // Nothing attended yet: probabilities 0, accumulator untouched (still 0).
                row.fill(0.0);
                continue;
            }
            let alpha = (sc.m[r] - m_new).exp2();
            // SAFETY: as above.
            let sum = unsafe { exp2_row::<V>(row, m_new) };
            sc.l[r] = sc.l[r] * alpha + sum;
            sc.m[r] = m_new;
            if alpha != 1.0 {
                for a in &mut sc.acc[r * dv_pad..(r + 1) * dv_pad] {
                    *a *= alpha;
                }
            }
        }
        // SAFETY: s is rows×BLOCK_K (P, columns < nk valid); V rows 0..nk at vp, v_stride
        // apart, hold dv_pad floats (the packed block, or V's own rows when direct);
        // acc is rows×dv_pad with dv_pad a multiple of PNV*N; the ISA is the contract.
        // (Direct: V's rows j0.. of this kv head, `strides[1]` apart, dv == dv_pad floats each.)
        let (vp, v_stride) = if direct {
            (
                kb.values(p).rows_ptr(b, kb.local(p), blk.kv_head, nk),
                kb.values(p).strides[1] as usize,
            )
        } else {
            (sc.v.as_ptr(), dv_pad)
        };
        // SAFETY: see above (s, V's rows at vp, acc; the ISA is the contract).
        unsafe {
            let full = rows / PMR * PMR;
            for r0 in (0..full).step_by(PMR) {
                pv_tile::<V, PMR, PNV>(&sc.s, vp, v_stride, &mut sc.acc, r0, nk, dv_pad);
            }
            match rows - full {
                0 => {}
                1 => pv_tile::<V, 1, PNV>(&sc.s, vp, v_stride, &mut sc.acc, full, nk, dv_pad),
                2 => pv_tile::<V, 2, PNV>(&sc.s, vp, v_stride, &mut sc.acc, full, nk, dv_pad),
                3 => pv_tile::<V, 3, PNV>(&sc.s, vp, v_stride, &mut sc.acc, full, nk, dv_pad),
                4 => pv_tile::<V, 4, PNV>(&sc.s, vp, v_stride, &mut sc.acc, full, nk, dv_pad),
                5 => pv_tile::<V, 5, PNV>(&sc.s, vp, v_stride, &mut sc.acc, full, nk, dv_pad),
                _ => {
                    for r0 in full..rows {
                        pv_tile::<V, 1, PNV>(&sc.s, vp, v_stride, &mut sc.acc, r0, nk, dv_pad);
                    }
                }
            }
        }
    }
    for r in 0..rows {
        // A row that attended nothing (all keys masked) has l == 0: zeros, not NaN.
        let inv = if sc.l[r] > 0.0 { 1.0 / sc.l[r] } else { 0.0 };
        // SAFETY: this task owns the rows of its block (this fn's contract).
        let dst = unsafe { out.row_mut(b, pos_of(r), head_of(r)) };
        for (o, &a) in dst.iter_mut().zip(&sc.acc[r * dv_pad..r * dv_pad + dv]) {
            *o = a * inv;
        }
    }
}

/// Keys j0..j0+nk of batch b's kv head, processed as a block of nk_pad (a whole
/// number of key tiles).
#[derive(Clone, Copy)]
struct KeyBlock {
    b: usize,
    kv_head: usize,
    j0: usize,
    nk: usize,
    nk_pad: usize,
}

impl KeyBlock {
    /// Whether the block lies in the appended keys (else in k).
    fn appended(&self, p: &AttentionProblem<'_>) -> bool {
        self.j0 >= p.seq_k
    }

    /// The block's first key within its source.
    fn local(&self, p: &AttentionProblem<'_>) -> usize {
        if self.appended(p) {
            self.j0 - p.seq_k
        } else {
            self.j0
        }
    }

    /// The rows the block's values come from.
    fn values<'a>(&self, p: &AttentionProblem<'a>) -> StridedRows<'a> {
        match p.append {
            Some(a) if self.appended(p) => a.v,
            _ => p.v,
        }
    }
}

/// Copies the block's keys transposed into `kt`, values into `v`, and sets the key bias.
#[inline(always)]
fn pack_keys(p: &AttentionProblem<'_>, kb: KeyBlock, sc: &mut Scratch) {
    let KeyBlock {
        b,
        kv_head,
        j0,
        nk,
        nk_pad,
    } = kb;
    let (d, dv) = (p.k.dim, p.v.dim);
    let dv_pad = sc.v.len() / BLOCK_K;
    for j in 0..nk {
        let key = p.key_row(b, j0 + j, kv_head);
        for (c, &x) in key.iter().enumerate() {
            sc.kt[c * BLOCK_K + j] = x;
        }
        sc.v[j * dv_pad..j * dv_pad + dv].copy_from_slice(p.value_row(b, j0 + j, kv_head));
    }
    for j in nk..nk_pad {
        for c in 0..d {
            sc.kt[c * BLOCK_K + j] = 0.0;
        }
    }
    key_bias(p, kb, &mut sc.key_bias);
}

/// bias[j] = 0 for keys j0+j that may be attended, -inf for padding and the block tail.
#[inline(always)]
fn key_bias(p: &AttentionProblem<'_>, kb: KeyBlock, bias: &mut [f32]) {
    for (j, x) in bias[..kb.nk_pad].iter_mut().enumerate() {
        let valid = j < kb.nk
            && (kb.j0 + j >= p.seq_k
                || p.key_valid
                    .is_none_or(|m| m[kb.b * p.seq_k + kb.j0 + j] != 0));
        *x = if valid { 0.0 } else { f32::NEG_INFINITY };
    }
}

/// S[r][0..nk] = Q[r] · K[j0 + j] for the few rows of a direct block, reading each key
/// row where it is (no transposed copy); S[r][nk..nk_pad] = 0 (the bias masks them).
///
/// # Safety
/// `q` holds rows×d and `s` rows×BLOCK_K floats; d is a multiple of N; keys j0..j0+nk of
/// `kv_head` are inside K; the CPU supports V's ISA.
#[inline(always)]
unsafe fn scores_direct<V: Lanes>(
    p: &AttentionProblem<'_>,
    kb: KeyBlock,
    rows: usize,
    q: &[f32],
    s: &mut [f32],
) {
    let d = p.k.dim;
    debug_assert!(q.len() >= rows * d && s.len() >= rows * BLOCK_K && d.is_multiple_of(V::N));
    // A decoder's cache comes from DRAM (the weights streamed through every cache level
    // since the last step read it), one short strided row at a time: fetch the key rows
    // KEYS_AHEAD on, and this block's value rows for the P·V pass that follows.
    // (Zen 5, 1 query x 9 heads (3 kv heads) over cold keys, alternating in one process,
    // µs per call: 160 keys 21.4-22.1 vs 25.6-25.9 at 1 thread, 17.5-17.6 vs 20.3-20.6 at
    // 2; 250 keys 30.1-30.6 vs 36.1-36.3 and 18.8-19.1 vs 23.3-23.6. Rows 4 or 16
    // ahead: the same within 3%.)
    let keys = match p.append {
        Some(a) if kb.appended(p) => a.k,
        _ => p.k,
    };
    let first_key = p.key_row(kb.b, kb.j0, kb.kv_head).as_ptr();
    let key_step = keys.strides[1] as usize; // >= 0 for direct blocks
    let values = kb.values(p);
    let first_value = values.rows_ptr(kb.b, kb.local(p), kb.kv_head, kb.nk);
    let value_step = values.strides[1] as usize;
    for j in 0..kb.nk {
        let ahead = first_key.wrapping_add((j + KEYS_AHEAD) * key_step);
        let value = first_value.wrapping_add(j * value_step);
        for c in (0..d).step_by(16) {
            prefetch::line_at(ahead.wrapping_add(c).cast());
        }
        for c in (0..p.v.dim).step_by(16) {
            prefetch::line_at(value.wrapping_add(c).cast());
        }
        let key = p.key_row(kb.b, kb.j0 + j, kb.kv_head).as_ptr();
        for r in 0..rows {
            // SAFETY: c + N <= d for the key row (d floats) and query row r (contract).
            unsafe {
                let qr = q.as_ptr().add(r * d);
                let mut acc = V::splat(0.0);
                for c in (0..d).step_by(V::N) {
                    acc = V::fmadd(V::load(qr.add(c)), V::load(key.add(c)), acc);
                }
                s[r * BLOCK_K + j] = acc.reduce_sum();
            }
        }
    }
    for r in 0..rows {
        s[r * BLOCK_K + kb.nk..r * BLOCK_K + kb.nk_pad].fill(0.0);
    }
}

/// S[r0..r0+MR][0..nk_pad] = Q[r0..r0+MR] · Kt[.., 0..nk_pad], MR rows × SNV vectors at a time.
///
/// # Safety
/// `q` holds (r0+MR)×d, `kt` d×BLOCK_K, `s` (r0+MR)×BLOCK_K floats; `nk_pad` <= BLOCK_K
/// is a multiple of SNV×N; the CPU supports V's ISA.
#[inline(always)]
unsafe fn scores_tile<V: Lanes, const MR: usize, const SNV: usize>(
    q: &[f32],
    kt: &[f32],
    s: &mut [f32],
    r0: usize,
    d: usize,
    nk_pad: usize,
) {
    debug_assert!(q.len() >= (r0 + MR) * d && kt.len() >= d * BLOCK_K);
    debug_assert!(s.len() >= (r0 + MR) * BLOCK_K && nk_pad <= BLOCK_K);
    let (qp, kp, sp) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for c0 in (0..nk_pad).step_by(SNV * V::N) {
        // SAFETY: every offset below is inside the sizes of this fn's contract.
        unsafe {
            let zero = V::splat(0.0);
            let mut acc = [[zero; SNV]; MR];
            for c in 0..d {
                let krow = kp.add(c * BLOCK_K + c0);
                let mut kv = [zero; SNV];
                for (x, k) in kv.iter_mut().enumerate() {
                    *k = V::load(krow.add(x * V::N));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let qb = V::splat(*qp.add((r0 + r) * d + c));
                    for x in 0..SNV {
                        acc_r[x] = V::fmadd(qb, kv[x], acc_r[x]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let dst = sp.add((r0 + r) * BLOCK_K + c0);
                for (x, a) in acc_r.iter().enumerate() {
                    a.store(dst.add(x * V::N));
                }
            }
        }
    }
}

/// acc[r0..r0+MR] += P[r0..r0+MR][0..nk] · V[0..nk], MR rows × PNV vectors of columns at
/// a time; V's row j is the dv_pad floats at `vp + j * v_stride`.
///
/// # Safety
/// `p` holds (r0+MR)×BLOCK_K and `acc` (r0+MR)×dv_pad floats; V's rows 0..nk are
/// readable for dv_pad floats each; dv_pad is a multiple of PNV×N; the CPU supports V's ISA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_tile<V: Lanes, const MR: usize, const PNV: usize>(
    p: &[f32],
    vp: *const f32,
    v_stride: usize,
    acc: &mut [f32],
    r0: usize,
    nk: usize,
    dv_pad: usize,
) {
    debug_assert!(p.len() >= (r0 + MR) * BLOCK_K);
    debug_assert!(acc.len() >= (r0 + MR) * dv_pad && dv_pad.is_multiple_of(PNV * V::N));
    let (pp, ap) = (p.as_ptr(), acc.as_mut_ptr());
    for c0 in (0..dv_pad).step_by(PNV * V::N) {
        // SAFETY: every offset below is inside the sizes of this fn's contract.
        unsafe {
            let zero = V::splat(0.0);
            let mut tile = [[zero; PNV]; MR];
            for (r, tile_r) in tile.iter_mut().enumerate() {
                for (x, t) in tile_r.iter_mut().enumerate() {
                    *t = V::load(ap.add((r0 + r) * dv_pad + c0 + x * V::N));
                }
            }
            for j in 0..nk {
                let vrow = vp.add(j * v_stride + c0);
                let mut vv = [zero; PNV];
                for (x, v) in vv.iter_mut().enumerate() {
                    *v = V::load(vrow.add(x * V::N));
                }
                for (r, tile_r) in tile.iter_mut().enumerate() {
                    let pb = V::splat(*pp.add((r0 + r) * BLOCK_K + j));
                    for x in 0..PNV {
                        tile_r[x] = V::fmadd(pb, vv[x], tile_r[x]);
                    }
                }
            }
            for (r, tile_r) in tile.iter().enumerate() {
                let dst = ap.add((r0 + r) * dv_pad + c0);
                for (x, t) in tile_r.iter().enumerate() {
                    t.store(dst.add(x * V::N));
                }
            }
        }
    }
}

/// Applies the key bias to a row of scores in place (clamping +inf so that a
/// huge score cannot turn into inf - inf = NaN later) and returns the row max.
///
/// # Safety
/// `row.len() == bias.len()`, a multiple of N; the CPU supports V's ISA.
#[inline(always)]
unsafe fn masked_row_max<V: Lanes>(row: &mut [f32], bias: &[f32]) -> f32 {
    debug_assert!(row.len() == bias.len() && row.len().is_multiple_of(V::N));
    // SAFETY: offsets stay below row.len() == bias.len() (contract).
    unsafe {
        let mut mx = V::splat(f32::NEG_INFINITY);
        let big = V::splat(f32::MAX);
        for j in (0..row.len()).step_by(V::N) {
            let x = V::load(row.as_ptr().add(j))
                .min(big)
                .add(V::load(bias.as_ptr().add(j)));
            x.store(row.as_mut_ptr().add(j));
            mx = mx.max(x);
        }
        mx.reduce_max()
    }
}

/// Replaces a row of base-2 scores by `exp2(s - m)` and returns their sum.
///
/// # Safety
/// `row.len()` is a multiple of N; the CPU supports V's ISA.
#[inline(always)]
unsafe fn exp2_row<V: Lanes>(row: &mut [f32], m: f32) -> f32 {
    debug_assert!(row.len().is_multiple_of(V::N));
    // SAFETY: offsets stay below row.len() (contract).
    unsafe {
        let mv = V::splat(m);
        let mut sum = V::splat(0.0);
        for j in (0..row.len()).step_by(V::N) {
            let e = exp2(V::load(row.as_ptr().add(j)).sub(mv));
            e.store(row.as_mut_ptr().add(j));
            sum = sum.add(e);
        }
        sum.reduce_sum()
    }
}

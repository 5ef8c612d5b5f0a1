//! AVX-512 small-M GEMM (M ≤ 8 rows: the memory-bound decode case), one kernel per
//! layout of B, each reading B exactly once:
//! - `avx512_gemv_kn_f32`: row-major f32 B (numpy's `x @ W`). Rows of B are consumed per
//!   sweep across a column range, accumulating into C (kept in L1/L2), so B is read as
//!   that many sequential streams ([`KnStreams`]: eight from memory, one, in storage
//!   order, for one row of A over a B in the last-level cache).
//! - `avx512_gemv_packed`: pre-packed f32 or bf16 panels (a model's weights), read in
//!   storage order with software prefetch ahead of the stream.
//! - `avx512_gemv_nk`: weights as stored by Hugging Face (N × K, f32 or bf16): dot
//!   products along the weight rows.

use std::arch::x86_64::*;

use crate::kernels::frame::prefetch::{line_at, stream_lines};

/// What a small-M kernel reads and writes: A (m × k, row-major, lda = k), B or the
/// weights at `b` with `ldb` elements between rows (of B, or of W for the N × K form),
/// and C (row stride ldc).
pub struct StreamArgs {
    pub m: usize,
    pub k: usize,
    pub a: *const f32,
    pub b: *const u8,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

/// Runs `$body::<M>($args)` for the row count `$m` (1..=8; 0 does nothing).
macro_rules! by_rows {
    ($m:expr, $body:ident, $($arg:expr),*) => {
        match $m {
            0 => {}
            1 => $body::<1>($($arg),*),
            2 => $body::<2>($($arg),*),
            3 => $body::<3>($($arg),*),
            4 => $body::<4>($($arg),*),
            5 => $body::<5>($($arg),*),
            6 => $body::<6>($($arg),*),
            7 => $body::<7>($($arg),*),
            _ => $body::<8>($($arg),*),
        }
    };
}

/// Rows of B that `avx512_gemv_kn_f32` reads per sweep where B comes from memory
/// ([`KnStreams::Memory`]). Eight, with each stream prefetched 512 bytes ahead, against the
/// four rows 1 KiB ahead before (Zen 5, alternating in one process, GFLOP/s): 1 thread
/// 1x768x3072 53.5-54.1 vs 49.4-49.5, 8x576x1536 185-187 vs 155-156; 2 threads
/// 3x768x3072 173-174 vs 128-133, 8x576x1536 215-218 vs 148-151. 16 or 12 rows spill
/// registers (37-44 at 1x768x3072). From DRAM (4096x4096, 64 MiB), eight streams read
/// 47 GB/s against 35-40 for two.
pub const KN_ROWS: usize = 8;

/// How `avx512_gemv_kn_f32` streams B.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KnStreams {
    /// [`KN_ROWS`] rows per sweep, each prefetched 512 bytes ahead: the most memory-level
    /// parallelism, for B from DRAM and for several rows of A.
    Memory,
    /// One row of A over a B that stays in the last-level cache between calls: B read in
    /// storage order, one row at a time (an axpy into C, which stays in L1), 64 floats per
    /// step, each line prefetched 1.5 KiB ahead. One stream keeps more of L3's bandwidth
    /// than eight (Zen 5, one thread, B in L3, a standalone loop over the variants in turns,
    /// GFLOP/s, B 64-byte aligned / not): 768x3072 63.2 / 61.6 vs 57.1 / 54.6 for eight
    /// rows, 576x1536 64.3 / 62.7 vs 60.0 / 55.9; a plain sum over the same bytes reads at
    /// 65.5 / 61.1 (and two, three or four rows per sweep ran 52-60). From DRAM it loses
    /// (4096x4096: 17-19 vs 23).
    Cached,
}

/// C[0..m, n0..n1] = A · B[0..k, n0..n1] for row-major f32 B, streaming B as `streams` says.
///
/// # Safety
/// The CPU supports AVX-512F + FMA; `a` holds m*k floats; B (f32) rows 0..k and columns
/// n0..n1 are readable; C rows 0..m and columns n0..n1 are writable and not accessed by
/// anyone else during the call.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn avx512_gemv_kn_f32(args: &StreamArgs, n0: usize, n1: usize, streams: KnStreams) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match streams {
            KnStreams::Cached if args.m == 1 => kn_f32_one_row(args, n0, n1),
            _ => kn_f32_rows(args, n0, n1),
        }
    }
}

/// `avx512_gemv_kn_f32` for one row of A ([`KnStreams::Cached`]): C[0, n0..n1] += a[p] ·
/// B[p, n0..n1] for p in order.
///
/// # Safety
/// As `avx512_gemv_kn_f32`, with m == 1.
#[target_feature(enable = "avx512f,fma")]
unsafe fn kn_f32_one_row(args: &StreamArgs, n0: usize, n1: usize) {
    /// Floats per step (four vectors, four lines of B).
    const W: usize = 64;
    /// Floats ahead of the stream that each step prefetches (1.5 KiB).
    const AHEAD: usize = 384;
    let StreamArgs { k, a, ldb, c, .. } = *args;
    let b = args.b.cast::<f32>();
    let width = n1 - n0;
    let full = width / W * W;
    let vec_end = width / 16 * 16;
    // Lanes of the last, partial vector (none when width is a multiple of 16).
    let tail: __mmask16 = (1u32 << (width - vec_end)).wrapping_sub(1) as __mmask16;
    // SAFETY: C[0, n0..n1] is writable (the caller's contract).
    let y = unsafe { c.add(n0) };
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(y, 0, width) };
    for p in 0..k {
        // SAFETY: a holds k floats; row p, columns n0..n1 of B are readable.
        let (av, row) = unsafe { (_mm512_set1_ps(*a.add(p)), b.add(p * ldb + n0)) };
        let mut j = 0;
        while j < full {
            for v in 0..W / 16 {
                let at = j + 16 * v;
                // Prefetches never fault, wherever they point.
                line_at(row.wrapping_add(at + AHEAD).cast());
                // SAFETY: at + 16 <= width: inside row p and C's columns.
                unsafe {
                    let acc = _mm512_fmadd_ps(
                        av,
                        _mm512_loadu_ps(row.add(at)),
                        _mm512_loadu_ps(y.add(at)),
                    );
                    _mm512_storeu_ps(y.add(at), acc);
                }
            }
            j += W;
        }
        while j < vec_end {
            // SAFETY: j + 16 <= width.
            unsafe {
                let acc =
                    _mm512_fmadd_ps(av, _mm512_loadu_ps(row.add(j)), _mm512_loadu_ps(y.add(j)));
                _mm512_storeu_ps(y.add(j), acc);
            }
            j += 16;
        }
        if tail != 0 {
            // SAFETY: the masked lanes j..width are inside row p and C's columns; the
            // masked-off lanes are neither read nor written (no fault either).
            unsafe {
                let acc = _mm512_fmadd_ps(
                    av,
                    _mm512_maskz_loadu_ps(tail, row.add(j)),
                    _mm512_maskz_loadu_ps(tail, y.add(j)),
                );
                _mm512_mask_storeu_ps(y.add(j), tail, acc);
            }
        }
    }
}

/// `avx512_gemv_kn_f32` with [`KN_ROWS`] rows of B per sweep ([`KnStreams::Memory`]).
///
/// # Safety
/// As `avx512_gemv_kn_f32`.
#[target_feature(enable = "avx512f,fma")]
unsafe fn kn_f32_rows(args: &StreamArgs, n0: usize, n1: usize) {
    let StreamArgs {
        m,
        k,
        a,
        ldb,
        c,
        ldc,
        ..
    } = *args;
    let b = args.b.cast::<f32>();
    const W: usize = 32;
    const KB: usize = KN_ROWS;
    /// Floats ahead of each row stream that the loop prefetches (512 bytes).
    const AHEAD: usize = 128;
    let full_end = n0 + (n1 - n0) / W * W;
    for r in 0..m {
        // SAFETY: row r, columns n0..n1 of C are writable.
        unsafe { std::ptr::write_bytes(c.add(r * ldc + n0), 0, n1 - n0) };
    }
    let mut p0 = 0;
    while p0 < k {
        let kb = KB.min(k - p0);
        // Rows past k are read as row p0 with a zero coefficient (keeps the loop branch-free).
        let rows: [*const f32; KB] =
            std::array::from_fn(|q| b.wrapping_add((p0 + if q < kb { q } else { 0 }) * ldb));
        // (No closures around intrinsics in these loops: a closure does not take the
        // function's target features, so the intrinsics in it are not inlined.)
        let mut coef1 = [_mm512_setzero_ps(); KB];
        for (q, coef) in coef1.iter_mut().enumerate().take(kb) {
            // SAFETY: a[p0 + q] is inside A's first row for q < kb (zero otherwise).
            *coef = _mm512_set1_ps(unsafe { *a.add(p0 + q) });
        }
        let mut j = n0;
        while j < full_end {
            let mut bv = [[_mm512_setzero_ps(); 2]; KB];
            for (bq, row) in bv.iter_mut().zip(rows) {
                // SAFETY: columns j..j+32 < n1 of the KB (valid) rows are readable.
                *bq = unsafe {
                    [
                        _mm512_loadu_ps(row.add(j)),
                        _mm512_loadu_ps(row.add(j + 16)),
                    ]
                };
            }
            // The KB row streams (each read 128 bytes at a time) run ahead of the hardware
            // prefetcher: fetch both lines of each row AHEAD floats on. (With four rows
            // 1 KiB ahead, against none; Zen 5, one thread, B in L3, alternating in one
            // process: 1x768x3072 47-48 vs 39-40 GFLOP/s, 1x576x1536 48-50 vs 39-40; two
            // threads 88 vs 72 and 76 vs 63.)
            for row in rows {
                line_at(row.wrapping_add(j + AHEAD).cast());
                line_at(row.wrapping_add(j + AHEAD + 16).cast());
            }
            if m == 1 {
                // Decode: the KB coefficients stay in registers for the whole sweep.
                // SAFETY: C row 0 columns j..j+32 are inside the caller's region.
                unsafe {
                    let mut y0 = _mm512_loadu_ps(c.add(j));
                    let mut y1 = _mm512_loadu_ps(c.add(j + 16));
                    for (q, bq) in bv.iter().enumerate() {
                        y0 = _mm512_fmadd_ps(coef1[q], bq[0], y0);
                        y1 = _mm512_fmadd_ps(coef1[q], bq[1], y1);
                    }
                    _mm512_storeu_ps(c.add(j), y0);
                    _mm512_storeu_ps(c.add(j + 16), y1);
                }
                j += W;
                continue;
            }
            for r in 0..m {
                // SAFETY: C row r columns j..j+32 are inside the caller's region; a[r*k + p]
                // is inside A for p < k (coefficients of padded rows are zero).
                unsafe {
                    let y = c.add(r * ldc + j);
                    let mut y0 = _mm512_loadu_ps(y);
                    let mut y1 = _mm512_loadu_ps(y.add(16));
                    for (q, bq) in bv.iter().enumerate() {
                        let coef = if q < kb { *a.add(r * k + p0 + q) } else { 0.0 };
                        let av = _mm512_set1_ps(coef);
                        y0 = _mm512_fmadd_ps(av, bq[0], y0);
                        y1 = _mm512_fmadd_ps(av, bq[1], y1);
                    }
                    _mm512_storeu_ps(y, y0);
                    _mm512_storeu_ps(y.add(16), y1);
                }
            }
            j += W;
        }
        for j in full_end..n1 {
            for r in 0..m {
                let mut s = 0.0f32;
                for (q, row) in rows.iter().enumerate().take(kb) {
                    // SAFETY: (p0+q, j) is inside B and (r, p0+q) inside A.
                    s += unsafe { *a.add(r * k + p0 + q) * *row.add(j) };
                }
                // SAFETY: (r, j) is inside the caller's C region.
                unsafe { *c.add(r * ldc + j) += s };
            }
        }
        p0 += kb;
    }
}

/// Columns per packed panel that the packed kernels below take (the AVX-512 GEMM's NR).
pub const PACKED_NR: usize = 32;

/// Which packed layout a panel holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PanelKind {
    /// kc × 32 f32, k-major.
    F32,
    /// ⌈kc/2⌉ × 32 × 2 bf16: each 32-bit lane holds column l's k-pair (even k low).
    Bf16Pairs,
}

/// One depth block of C[0..m, cols] (+)= A[:, pc..pc+kc] · panels (`accumulate`: add to
/// C, else overwrite). `stream.a` points at A's column pc (rows `stream.k` floats apart),
/// `stream.b` at panel `panel_lo` of the block; panels are `panel_bytes` apart, hold
/// f32 or bf16 pairs per `kind`, and cover C columns from `panel_lo * 32`; `n` bounds
/// the valid columns (the last panel may be partial). `once`: prefetch the panels with
/// a non-temporal hint (weights larger than the caches, read once per step).
///
/// # Safety
/// The CPU supports AVX-512F + FMA; A's m rows hold kc floats from `stream.a`; panels
/// panel_lo..panel_hi are readable; C rows 0..m, columns panel_lo*32..min(panel_hi*32, n)
/// are writable by this caller only.
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn avx512_gemv_packed(
    kind: PanelKind,
    stream: &StreamArgs,
    kc: usize,
    panel_bytes: usize,
    panel_lo: usize,
    panel_hi: usize,
    n: usize,
    accumulate: bool,
    once: bool,
) {
    let args = PackedArgs {
        kind,
        a: stream.a,
        lda: stream.k,
        kc,
        panels: stream.b,
        panel_bytes,
        n,
        c: stream.c,
        ldc: stream.ldc,
        accumulate,
        once,
    };
    // SAFETY: forwarded from the caller's contract.
    unsafe { by_rows!(stream.m, packed, &args, panel_lo, panel_hi) }
}

/// M = 1 has its own loop (two accumulator pairs); more rows share one.
#[inline(always)]
unsafe fn packed<const M: usize>(args: &PackedArgs, panel_lo: usize, panel_hi: usize) {
    // SAFETY: forwarded from avx512_gemv_packed's contract.
    unsafe {
        if M == 1 {
            packed_m1(args, panel_lo, panel_hi)
        } else {
            packed_rows::<M>(args, panel_lo, panel_hi)
        }
    }
}

struct PackedArgs {
    kind: PanelKind,
    a: *const f32,
    lda: usize,
    kc: usize,
    panels: *const u8,
    panel_bytes: usize,
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    /// Read the panels with a non-temporal hint (see `stream_lines`).
    once: bool,
}

/// The two 16-column halves of one k-step (f32) or k-pair (bf16: even k, odd k).
#[inline(always)]
unsafe fn bf16_halves(x: __m512i) -> (__m512, __m512) {
    // bf16 -> f32 is the 16 bits moved into the high half: exact, NaN kept.
    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x));
    let odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(-65536)));
    (even, odd)
}

/// Stores (or adds) the 32 sums of row r into C, masking a partial last panel.
#[inline(always)]
unsafe fn store_row(args: &PackedArgs, r: usize, j: usize, acc: [__m512; 2]) {
    let w = PACKED_NR.min(args.n - j);
    // SAFETY: C row r, columns j..j+w are inside the caller's region.
    unsafe {
        let y = args.c.add(r * args.ldc + j);
        let masks: [__mmask16; 2] = [
            if w >= 16 { 0xFFFF } else { (1u16 << w) - 1 },
            if w >= 32 {
                0xFFFF
            } else if w > 16 {
                (1u16 << (w - 16)) - 1
            } else {
                0
            },
        ];
        for (h, mask) in masks.into_iter().enumerate() {
            let mut v = acc[h];
            if args.accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y.add(16 * h)));
            }
            _mm512_mask_storeu_ps(y.add(16 * h), mask, v);
        }
    }
}

/// The decode case: one row of A, two accumulator pairs so consecutive k-steps
/// do not wait on each other's FMA.
#[inline(always)]
unsafe fn packed_m1(args: &PackedArgs, panel_lo: usize, panel_hi: usize) {
    let kc = args.kc;
    for panel in panel_lo..panel_hi {
        // SAFETY: panel `panel` lies inside the caller's panels (see avx512_gemv_packed).
        let data = unsafe { args.panels.add((panel - panel_lo) * args.panel_bytes) };
        let mut s0 = [_mm512_setzero_ps(); 2];
        let mut s1 = [_mm512_setzero_ps(); 2];
        // SAFETY: every load below is inside this panel (steps < kc or < ⌈kc/2⌉);
        // prefetches are hints that never fault.
        unsafe {
            match args.kind {
                PanelKind::F32 => {
                    let d = data.cast::<f32>();
                    let mut q = 0;
                    while q + 2 <= kc {
                        stream_lines(data.wrapping_add(q * 128), 4, args.once); // the two k-steps q, q + 1
                        let a0 = _mm512_set1_ps(*args.a.add(q));
                        let a1 = _mm512_set1_ps(*args.a.add(q + 1));
                        s0[0] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(d.add(q * 32)), s0[0]);
                        s0[1] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(d.add(q * 32 + 16)), s0[1]);
                        s1[0] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(d.add(q * 32 + 32)), s1[0]);
                        s1[1] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(d.add(q * 32 + 48)), s1[1]);
                        q += 2;
                    }
                    if q < kc {
                        let a0 = _mm512_set1_ps(*args.a.add(q));
                        s0[0] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(d.add(q * 32)), s0[0]);
                        s0[1] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(d.add(q * 32 + 16)), s0[1]);
                    }
                }
                PanelKind::Bf16Pairs => {
                    let d = data.cast::<__m512i>();
                    let pairs = kc.div_ceil(2);
                    for q in 0..pairs {
                        stream_lines(data.wrapping_add(q * 128), 2, args.once);
                        let a0 = _mm512_set1_ps(*args.a.add(2 * q));
                        let a1 = _mm512_set1_ps(if 2 * q + 1 < kc {
                            *args.a.add(2 * q + 1)
                        } else {
                            0.0
                        });
                        for h in 0..2 {
                            let (even, odd) = bf16_halves(_mm512_loadu_si512(d.add(2 * q + h)));
                            s0[h] = _mm512_fmadd_ps(a0, even, s0[h]);
                            s1[h] = _mm512_fmadd_ps(a1, odd, s1[h]);
                        }
                    }
                }
            }
            let acc = [_mm512_add_ps(s0[0], s1[0]), _mm512_add_ps(s0[1], s1[1])];
            store_row(args, 0, panel * PACKED_NR, acc);
        }
    }
}

/// 2–8 rows of A: one accumulator pair per row (the rows already give independent chains).
#[inline(always)]
unsafe fn packed_rows<const M: usize>(args: &PackedArgs, panel_lo: usize, panel_hi: usize) {
    let kc = args.kc;
    for panel in panel_lo..panel_hi {
        // SAFETY: as in packed_m1.
        let data = unsafe { args.panels.add((panel - panel_lo) * args.panel_bytes) };
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        // SAFETY: as in packed_m1; a[r*lda + p] is inside A for r < M, p < kc.
        unsafe {
            match args.kind {
                PanelKind::F32 => {
                    let d = data.cast::<f32>();
                    for q in 0..kc {
                        stream_lines(data.wrapping_add(q * 128), 2, args.once);
                        let b0 = _mm512_loadu_ps(d.add(q * 32));
                        let b1 = _mm512_loadu_ps(d.add(q * 32 + 16));
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let av = _mm512_set1_ps(*args.a.add(r * args.lda + q));
                            acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
                            acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
                        }
                    }
                }
                PanelKind::Bf16Pairs => {
                    let d = data.cast::<__m512i>();
                    for q in 0..kc.div_ceil(2) {
                        stream_lines(data.wrapping_add(q * 128), 2, args.once);
                        let (e0, o0) = bf16_halves(_mm512_loadu_si512(d.add(2 * q)));
                        let (e1, o1) = bf16_halves(_mm512_loadu_si512(d.add(2 * q + 1)));
                        let odd_k = 2 * q + 1 < kc;
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let row = args.a.add(r * args.lda);
                            let a0 = _mm512_set1_ps(*row.add(2 * q));
                            let a1 = _mm512_set1_ps(if odd_k { *row.add(2 * q + 1) } else { 0.0 });
                            acc_r[0] = _mm512_fmadd_ps(a1, o0, _mm512_fmadd_ps(a0, e0, acc_r[0]));
                            acc_r[1] = _mm512_fmadd_ps(a1, o1, _mm512_fmadd_ps(a0, e1, acc_r[1]));
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                store_row(args, r, panel * PACKED_NR, *acc_r);
            }
        }
    }
}

/// Element type of the weights read by [`avx512_gemv_nk`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NkElem {
    F32,
    Bf16,
}

/// C[0..m, j0..j1] = A · Wᵀ for weights W stored N × K at `args.b` (Hugging Face
/// `Linear` layout: output j is row j, `args.ldb` elements apart): dot products along
/// W's rows, 16 lanes of K at a time, several rows of W per sweep so A's loads are shared.
///
/// # Safety
/// The CPU supports AVX-512F/BW/VL + FMA; A holds m*k floats; rows j0..j1 of W
/// (k elements each, of `elem`) are readable; C rows 0..m, columns j0..j1 are writable
/// by this caller only.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub unsafe fn avx512_gemv_nk(elem: NkElem, args: &StreamArgs, j0: usize, j1: usize) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { by_rows!(args.m, nk, elem, args, j0, j1) }
}

/// Four rows of W per sweep for up to 4 rows of A, two for more (accumulators: M × J).
#[inline(always)]
unsafe fn nk<const M: usize>(elem: NkElem, args: &StreamArgs, j0: usize, j1: usize) {
    // SAFETY: forwarded from avx512_gemv_nk's contract.
    unsafe {
        if M <= 4 {
            nk_rows::<M, 4>(elem, args, j0, j1)
        } else {
            nk_rows::<M, 2>(elem, args, j0, j1)
        }
    }
}

/// 16 weights of row `row` from element `p` on, widened to f32 (lanes outside `mask` zero).
#[inline(always)]
unsafe fn nk_load(
    elem: NkElem,
    args: &StreamArgs,
    row: usize,
    p: usize,
    mask: __mmask16,
) -> __m512 {
    // SAFETY: the caller keeps (row, p..p+16 under mask) inside W.
    unsafe {
        match elem {
            NkElem::F32 => {
                let at = args.b.cast::<f32>().add(row * args.ldb + p);
                if mask == 0xFFFF {
                    _mm512_loadu_ps(at)
                } else {
                    _mm512_maskz_loadu_ps(mask, at)
                }
            }
            NkElem::Bf16 => {
                let at = args.b.cast::<u16>().add(row * args.ldb + p);
                let half = if mask == 0xFFFF {
                    _mm256_loadu_si256(at.cast())
                } else {
                    _mm256_maskz_loadu_epi16(mask, at.cast())
                };
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
            }
        }
    }
}

#[inline(always)]
unsafe fn nk_rows<const M: usize, const J: usize>(
    elem: NkElem,
    args: &StreamArgs,
    j0: usize,
    j1: usize,
) {
    let k = args.k;
    let elem_bytes = match elem {
        NkElem::F32 => 4,
        NkElem::Bf16 => 2,
    };
    let mut j = j0;
    while j < j1 {
        let jn = J.min(j1 - j);
        // Rows past j1 repeat the last valid row (their sums are not stored).
        let rows: [usize; J] = std::array::from_fn(|jj| j + jj.min(jn - 1));
        let mut acc = [[_mm512_setzero_ps(); J]; M];
        let mut p = 0;
        while p < k {
            let mask: __mmask16 = if k - p >= 16 {
                0xFFFF
            } else {
                (1u16 << (k - p)) - 1
            };
            // SAFETY: (rows, p..p+16 under mask) are inside W and (r, p.. under mask)
            // inside A; prefetches are hints that never fault.
            unsafe {
                // The same place in the next sweep's rows: one sweep (J rows) ahead.
                for &row in &rows {
                    let ahead = ((row + J) * args.ldb + p) * elem_bytes;
                    _mm_prefetch::<_MM_HINT_T0>(args.b.wrapping_add(ahead).cast());
                }
                let mut wv = [_mm512_setzero_ps(); J];
                for (v, &row) in wv.iter_mut().zip(&rows) {
                    *v = nk_load(elem, args, row, p, mask);
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_maskz_loadu_ps(mask, args.a.add(r * k + p));
                    for jj in 0..J {
                        acc_r[jj] = _mm512_fmadd_ps(av, wv[jj], acc_r[jj]);
                    }
                }
            }
            p += 16;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (jj, v) in acc_r.iter().enumerate().take(jn) {
                // SAFETY: (r, j + jj) is inside the caller's C region.
                unsafe { *args.c.add(r * args.ldc + j + jj) = _mm512_reduce_add_ps(*v) };
            }
        }
        j += jn;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dispatch::Isa;
    use crate::kernels::testing::check_row_major_kernel;

    /// Both ways of streaming a row-major B give C[:, n0..n1] = A · B[:, n0..n1] within
    /// f32 rounding, on column ranges that start anywhere and end in every kind of tail
    /// (whole 64-float steps, 16-float vectors, a masked remainder), and leave the
    /// columns outside the range alone.
    #[test]
    fn row_major_streams_match_the_reference() {
        if !Isa::Avx512.is_supported() {
            return;
        }
        for shape in [
            (1, 1, 0, 1, 1),
            (1, 7, 0, 200, 200),
            (1, 33, 3, 180, 211),
            (1, 300, 17, 131, 131),
            (1, 65, 0, 64, 80),
            (1, 9, 5, 101, 101),
            (3, 19, 1, 76, 77),
            (8, 40, 0, 150, 150),
        ] {
            for streams in [KnStreams::Memory, KnStreams::Cached] {
                check_row_major_kernel(shape, &format!("{streams:?}"), |args, n0, n1| {
                    // SAFETY: AVX-512 is present (checked above); the helper's buffers hold
                    // A (m*k), B (k rows of ldb >= n1) and C (m rows of ldb), all its own.
                    unsafe { avx512_gemv_kn_f32(args, n0, n1, streams) }
                });
            }
        }
    }
}

//! Small-M GEMM (1–8 rows: the decode case). Memory-bound: B is streamed
//! exactly once, in its stored order, with the few rows of A held in cache:
//! - B row-major (K×N, numpy `a @ b`): each row of B is an axpy into a strip of C;
//! - B as transposed weights (HF `Linear`, W is N×K): dot products along W's rows;
//! - B pre-packed: the packed panels, in order.
//!
//! Bodies are written once (`#[inline(always)]`, fixed-width lane arrays that LLVM
//! vectorizes) and instantiated per ISA through `#[target_feature]` wrappers.

use half::bf16;

use crate::error::{Error, Result};
use crate::kernels::dispatch::{isa, Isa};
use crate::kernels::frame::epilogue::{apply_tile, Epilogue};
use crate::kernels::frame::gemm::{
    last_level_cache_bytes, weights_outgrow_cache, BSource, COut, KernelKind, PackedB,
};
use crate::kernels::frame::pack::{MatRef, WeightElement};
use crate::kernels::frame::prefetch;
use crate::kernels::frame::threads::{num_threads, parallel_for};

/// Largest M handled here.
pub const MAX_ROWS: usize = 8;
const LANES: usize = 16;

/// The packed-A rows (M × K contiguous f32) and what the task computes.
struct Job<'a> {
    m: usize,
    k: usize,
    a: &'a [f32],
    out: COut,
    /// Stream pre-packed weights with a non-temporal hint (`gemm::weights_outgrow_cache`).
    once: bool,
    /// One row of A over a row-major f32 B that fits in half the last-level cache (so it
    /// stays there between calls): the AVX-512 and AVX2 kernels read it in storage order
    /// (`KnStreams::Cached`, `avx2_gemv_kn_f32_one_row`), not as eight row streams.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    kn_cached: bool,
}

/// Rows of B consumed per sweep over the columns: that many sequential streams.
const KB: usize = 8;
/// Bytes ahead of each row stream of `kn_strip` that it prefetches.
const KN_AHEAD_BYTES: usize = 1024;

/// C[:, j0..j1] = A · B[:, j0..j1] for B row-major (cs == 1). Sweeps of KB rows
/// of B across the columns, accumulating into C (which stays in L1/L2), so B
/// is read as KB sequential streams, each byte once.
#[inline(always)]
fn kn_strip<T: WeightElement, const M: usize, const W: usize>(
    job: &Job<'_>,
    b: MatRef<T>,
    j0: usize,
    j1: usize,
) {
    let k = job.k;
    for p0 in (0..k).step_by(KB) {
        let kb = KB.min(k - p0);
        let mut j = j0;
        while j < j1 {
            let w = W.min(j1 - j);
            let mut acc = [[0f32; W]; M];
            for p in p0..p0 + kb {
                // SAFETY: row p, columns j..j+w are inside the K × N view.
                let row = unsafe {
                    std::slice::from_raw_parts(b.ptr.offset(p as isize * b.rs + j as isize), w)
                };
                // Each row is a stream read W elements at a time: fetch the lines of this
                // strip's part KN_AHEAD_BYTES on (prefetches never fault).
                let ahead = row.as_ptr().cast::<u8>().wrapping_add(KN_AHEAD_BYTES);
                for line in 0..(W * std::mem::size_of::<T>()).div_ceil(64) {
                    prefetch::line_at(ahead.wrapping_add(64 * line));
                }
                if w == W {
                    let mut bv = [0f32; W];
                    for (d, s) in bv.iter_mut().zip(row) {
                        *d = s.to_f32();
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = job.a[r * k + p];
                        for l in 0..W {
                            acc_r[l] += av * bv[l];
                        }
                    }
                } else {
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = job.a[r * k + p];
                        for (l, s) in row.iter().enumerate() {
                            acc_r[l] += av * s.to_f32();
                        }
                    }
                }
            }
            store(job, &acc, j, w, p0 > 0);
            j += w;
        }
    }
}

#[inline(always)]
fn store<const W: usize>(job: &Job<'_>, acc: &[[f32; W]], j: usize, w: usize, accumulate: bool) {
    for (r, acc_r) in acc.iter().enumerate().take(job.m) {
        // SAFETY: row r, columns j..j+w of C are inside the output and written by this task only.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(job.out.ptr.add(r * job.out.ldc + j), w) };
        for (d, &v) in dst.iter_mut().zip(acc_r.iter()) {
            *d = if accumulate { *d + v } else { v };
        }
    }
}

/// C[:, j0..j1] = A · Wᵀ[:, j0..j1] for transposed weights (B rs == 1: W row j at j*cs).
#[inline(always)]
fn nk_cols<T: WeightElement, const M: usize, const J: usize>(
    job: &Job<'_>,
    b: MatRef<T>,
    j0: usize,
    j1: usize,
) {
    let k = job.k;
    let full = k / LANES * LANES;
    let mut j = j0;
    while j < j1 {
        let jn = J.min(j1 - j);
        let mut acc = [[[0f32; LANES]; J]; M];
        let mut tail = [[0f32; J]; M];
        // SAFETY: rows j..j+jn of W (columns of B) have k elements each.
        let rows: [&[T]; J] = std::array::from_fn(|jj| unsafe {
            std::slice::from_raw_parts(b.ptr.offset((j + jj.min(jn - 1)) as isize * b.cs), k)
        });
        let mut p = 0;
        while p < full {
            let mut wv = [[0f32; LANES]; J];
            for (jj, w) in wv.iter_mut().enumerate() {
                for l in 0..LANES {
                    w[l] = rows[jj][p + l].to_f32();
                }
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = &job.a[r * k + p..r * k + p + LANES];
                for (jj, w) in wv.iter().enumerate() {
                    for l in 0..LANES {
                        acc_r[jj][l] += av[l] * w[l];
                    }
                }
            }
            p += LANES;
        }
        for (r, t) in tail.iter_mut().enumerate() {
            let a_tail = &job.a[r * k + full..r * k + k];
            for (tv, row) in t.iter_mut().zip(&rows) {
                *tv += a_tail
                    .iter()
                    .zip(&row[full..])
                    .map(|(&x, w)| x * w.to_f32())
                    .sum::<f32>();
            }
        }
        for r in 0..M {
            for jj in 0..jn {
                let v = acc[r][jj].iter().sum::<f32>() + tail[r][jj];
                // SAFETY: (r, j+jj) is inside C and written by this task only.
                unsafe { *job.out.ptr.add(r * job.out.ldc + j + jj) = v };
            }
        }
        j += jn;
    }
}

/// C[:, panels] from pre-packed f32 panels (each kc × nr, k-major).
#[inline(always)]
fn packed_f32<const M: usize, const NR: usize>(
    job: &Job<'_>,
    p: &PackedB,
    panel_lo: usize,
    panel_hi: usize,
) {
    for pc in (0..job.k).step_by(p.kind.kc()) {
        let kc = p.kind.kc().min(job.k - pc);
        for panel in panel_lo..panel_hi {
            let at = p.panel_offset(pc, panel * NR);
            let data = &p.f32_data[at..at + kc * NR];
            let j = panel * NR;
            let w = NR.min(p.n - j);
            let mut acc = [[0f32; NR]; M];
            for q in 0..kc {
                let bv = &data[q * NR..q * NR + NR];
                // Keep the panel stream's lines coming (the hardware prefetcher alone left a
                // core well short of DRAM speed).
                prefetch::stream_lines(bv.as_ptr().cast(), (NR * 4).div_ceil(64), job.once);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = job.a[r * job.k + pc + q];
                    for l in 0..NR {
                        acc_r[l] += av * bv[l];
                    }
                }
            }
            store(job, &acc, j, w, pc > 0);
        }
    }
}

/// C[:, panels] from pre-packed bf16 k-pair panels (kp × nr × 2).
#[inline(always)]
fn packed_bf16<const M: usize, const NR: usize>(
    job: &Job<'_>,
    p: &PackedB,
    panel_lo: usize,
    panel_hi: usize,
) {
    for pc in (0..job.k).step_by(p.kind.kc()) {
        let kc = p.kind.kc().min(job.k - pc);
        let kp = kc.div_ceil(2);
        for panel in panel_lo..panel_hi {
            let at = p.panel_offset(pc, panel * NR);
            let data = &p.bf16_data[at..at + kp * NR * 2];
            let j = panel * NR;
            let w = NR.min(p.n - j);
            let mut acc = [[0f32; NR]; M];
            for q in 0..kp {
                let pair = &data[q * NR * 2..(q + 1) * NR * 2];
                prefetch::stream_lines(pair.as_ptr().cast(), (NR * 4).div_ceil(64), job.once);
                let mut b0 = [0f32; NR];
                let mut b1 = [0f32; NR];
                // bf16 -> f32 is the bits shifted into the high half (exact, NaN kept):
                // plain integer ops, so the loop vectorizes (`to_f32` does not).
                for l in 0..NR {
                    b0[l] = f32::from_bits(u32::from(pair[2 * l]) << 16);
                    b1[l] = f32::from_bits(u32::from(pair[2 * l + 1]) << 16);
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a0 = job.a[r * job.k + pc + 2 * q];
                    let a1 = if 2 * q + 1 < kc {
                        job.a[r * job.k + pc + 2 * q + 1]
                    } else {
                        0.0
                    };
                    for l in 0..NR {
                        acc_r[l] += a0 * b0[l] + a1 * b1[l];
                    }
                }
            }
            store(job, &acc, j, w, pc > 0);
        }
    }
}

/// What one task computes: columns [j0, j1) (or packed panels [j0, j1)).
#[derive(Copy, Clone)]
enum Form<'a> {
    KnF32(MatRef<f32>),
    KnBf16(MatRef<bf16>),
    KnF16(MatRef<half::f16>),
    NkF32(MatRef<f32>),
    NkBf16(MatRef<bf16>),
    NkF16(MatRef<half::f16>),
    Packed(&'a PackedB),
}

#[inline(always)]
fn run_m<const M: usize>(job: &Job<'_>, form: Form<'_>, j0: usize, j1: usize) {
    match form {
        Form::KnF32(b) => kn_strip::<f32, M, 64>(job, b, j0, j1),
        Form::KnBf16(b) => kn_strip::<bf16, M, 64>(job, b, j0, j1),
        Form::KnF16(b) => kn_strip::<half::f16, M, 64>(job, b, j0, j1),
        Form::NkF32(b) => nk_cols::<f32, M, 4>(job, b, j0, j1),
        Form::NkBf16(b) => nk_cols::<bf16, M, 4>(job, b, j0, j1),
        Form::NkF16(b) => nk_cols::<half::f16, M, 4>(job, b, j0, j1),
        Form::Packed(p) => match (p.kind, p.kind.mr_nr().1) {
            (KernelKind::Bf16Pairs, 32) => packed_bf16::<M, 32>(job, p, j0, j1),
            (_, 32) => packed_f32::<M, 32>(job, p, j0, j1),
            (_, 16) => packed_f32::<M, 16>(job, p, j0, j1),
            _ => packed_f32::<M, 8>(job, p, j0, j1),
        },
    }
}

#[inline(always)]
fn run_body(job: &Job<'_>, form: Form<'_>, j0: usize, j1: usize) {
    match job.m {
        1 => run_m::<1>(job, form, j0, j1),
        2 => run_m::<2>(job, form, j0, j1),
        3 => run_m::<3>(job, form, j0, j1),
        4 => run_m::<4>(job, form, j0, j1),
        5 => run_m::<5>(job, form, j0, j1),
        6 => run_m::<6>(job, form, j0, j1),
        7 => run_m::<7>(job, form, j0, j1),
        _ => run_m::<8>(job, form, j0, j1),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")]
unsafe fn run_avx512(job: &Job<'_>, form: Form<'_>, j0: usize, j1: usize) {
    run_body(job, form, j0, j1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2(job: &Job<'_>, form: Form<'_>, j0: usize, j1: usize) {
    run_body(job, form, j0, j1)
}

fn run(isa: Isa, job: &Job<'_>, form: Form<'_>, j0: usize, j1: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && run_avx512_kernel(job, form, j0, j1) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx2, Form::KnF32(b), true) = (isa, form, job.kn_cached) {
        if b.rs > 0 {
            let args = kn_args(job, b, 0, job.k, job.out.base(), job.out.ldc);
            // SAFETY: Avx2 is only current after dispatch confirmed AVX2 + FMA; kn_cached
            // implies one row; B's rows, columns j0..j1, are inside the view; this task
            // owns C[0, j0..j1].
            unsafe { crate::kernels::x86_64::avx2_gemv::avx2_gemv_kn_f32_one_row(&args, j0, j1) };
            return;
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only current after dispatch confirmed AVX-512 (F16C comes with it).
        Isa::Avx512 => unsafe { run_avx512(job, form, j0, j1) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only current after dispatch confirmed AVX2 + FMA (+ F16C on such CPUs).
        Isa::Avx2 => unsafe { run_avx2(job, form, j0, j1) },
        _ => run_body(job, form, j0, j1),
    }
}

/// Columns (or packed panels) [j0, j1) with the AVX-512 kernel for this form of B;
/// false where there is none (then the portable body runs).
#[cfg(target_arch = "x86_64")]
fn run_avx512_kernel(job: &Job<'_>, form: Form<'_>, j0: usize, j1: usize) -> bool {
    use crate::kernels::x86_64::avx512_gemv::{
        avx512_gemv_kn_f32, avx512_gemv_nk, avx512_gemv_packed, NkElem, PanelKind, StreamArgs,
        PACKED_NR,
    };
    let stream = |b: *const u8, ldb: isize| StreamArgs {
        m: job.m,
        k: job.k,
        a: job.a.as_ptr(),
        b,
        ldb: ldb as usize,
        c: job.out.base(),
        ldc: job.out.ldc,
    };
    // The calls below run only at Isa::Avx512 (the caller's check), current only after
    // dispatch confirmed AVX-512 F/BW/DQ/VL + FMA; A holds m rows of k floats; B's rows
    // (or W's rows, or the packed panels) for columns j0..j1 are inside the view with the
    // strides passed; this task owns C[:, j0..j1].
    match form {
        // SAFETY: as above, B row-major with row stride b.rs.
        Form::KnF32(b) if b.rs > 0 => unsafe {
            avx512_gemv_kn_f32(&stream(b.ptr.cast(), b.rs), j0, j1, kn_streams(job))
        },
        // SAFETY: as above, W's rows b.cs f32 apart.
        Form::NkF32(b) if b.cs > 0 => unsafe {
            avx512_gemv_nk(NkElem::F32, &stream(b.ptr.cast(), b.cs), j0, j1)
        },
        // SAFETY: as above, W's rows b.cs bf16 apart.
        Form::NkBf16(b) if b.cs > 0 => unsafe {
            avx512_gemv_nk(NkElem::Bf16, &stream(b.ptr.cast(), b.cs), j0, j1)
        },
        Form::Packed(p) => {
            let (kind, base, elem) = match p.kind {
                KernelKind::Bf16Pairs => {
                    (PanelKind::Bf16Pairs, p.bf16_data.as_ptr().cast::<u8>(), 2)
                }
                KernelKind::F32 { isa: Isa::Avx512 } => {
                    (PanelKind::F32, p.f32_data.as_ptr().cast::<u8>(), 4)
                }
                _ => return false,
            };
            if p.kind.mr_nr().1 != PACKED_NR {
                return false;
            }
            for pc in (0..job.k).step_by(p.kind.kc()) {
                let kc = p.kind.kc().min(job.k - pc);
                let at = p.panel_offset(pc, j0 * PACKED_NR);
                let mut block = stream(base.wrapping_add(at * elem), 0);
                block.a = job.a[pc..].as_ptr();
                let panel_bytes = PACKED_NR * p.kind.b_units(kc) * elem;
                // SAFETY: as above; panels j0..j1 of depth block pc start at `at`.
                unsafe {
                    avx512_gemv_packed(kind, &block, kc, panel_bytes, j0, j1, p.n, pc > 0, job.once)
                };
            }
        }
        _ => return false,
    }
    true
}

/// The row-major kernels' arguments for rows p0..p0+rows of B (all of A's rows, from
/// column p0) into C at `c` (row stride `ldc`).
#[cfg(target_arch = "x86_64")]
fn kn_args(
    job: &Job<'_>,
    b: MatRef<f32>,
    p0: usize,
    rows: usize,
    c: *mut f32,
    ldc: usize,
) -> crate::kernels::x86_64::avx512_gemv::StreamArgs {
    crate::kernels::x86_64::avx512_gemv::StreamArgs {
        m: job.m,
        k: rows,
        a: job.a[p0..].as_ptr(),
        b: b.ptr.wrapping_offset(p0 as isize * b.rs).cast(),
        ldb: b.rs as usize,
        c,
        ldc,
    }
}

/// How the AVX-512 kernel streams a row-major f32 B for this job.
#[cfg(target_arch = "x86_64")]
fn kn_streams(job: &Job<'_>) -> crate::kernels::x86_64::avx512_gemv::KnStreams {
    use crate::kernels::x86_64::avx512_gemv::KnStreams;
    if job.kn_cached {
        KnStreams::Cached
    } else {
        KnStreams::Memory
    }
}

/// C[0, :] = A[0, :] · B for row-major f32 B with the rows of B split across the threads:
/// each thread streams its own contiguous part of B (its own pages) into a partial row,
/// and the partial rows are added. (Split by columns, both threads read every page of B,
/// each half of every row. Zen 5, 2 threads, alternating runs, median of 5 placements of B:
/// 1x768x3072 90.7 vs 87.5 GFLOP/s, 1x576x1536 84.1 vs 76.9.)
#[cfg(target_arch = "x86_64")]
fn k_split_kn_f32(isa: Isa, job: &Job<'_>, b: MatRef<f32>, n: usize, threads: usize) {
    use crate::kernels::frame::threads::SendPtr;
    use crate::kernels::x86_64::avx512_gemv::{avx512_gemv_kn_f32, KN_ROWS};
    let streams = kn_streams(job);
    let part = job.k.div_ceil(threads).next_multiple_of(KN_ROWS);
    let parts = job.k.div_ceil(part);
    let mut partial = vec![0f32; (parts - 1) * n];
    let (partial_rows, c_row) = (SendPtr(partial.as_mut_ptr()), SendPtr(job.out.base()));
    parallel_for(parts, |t| {
        let p0 = t * part;
        let rows = part.min(job.k - p0);
        let c = if t == 0 {
            c_row.get()
        } else {
            partial_rows.get().wrapping_add((t - 1) * n)
        };
        let args = kn_args(job, b, p0, rows, c, n);
        // SAFETY: the ISA is current (the caller's check; the AVX2 kernel only for a
        // cached B); rows p0..p0+rows of B, all n columns, are inside the view; A's row
        // holds k floats from p0; C (task 0) or partial row t-1 is written by this task only.
        unsafe {
            if isa == Isa::Avx512 {
                avx512_gemv_kn_f32(&args, 0, n, streams)
            } else {
                crate::kernels::x86_64::avx2_gemv::avx2_gemv_kn_f32_one_row(&args, 0, n)
            }
        };
    });
    // SAFETY: C's row 0 holds n floats, owned by this call.
    let c = unsafe { std::slice::from_raw_parts_mut(job.out.base(), n) };
    for row in partial.chunks_exact(n) {
        for (o, &x) in c.iter_mut().zip(row) {
            *o += x;
        }
    }
}

/// C = A · B (+ epilogue) for M ≤ 8.
pub fn gemv(
    a: MatRef<f32>,
    b: BSource<'_>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) -> Result<()> {
    gemv_with(isa(), a, b, c, ldc, epi)
}

/// `gemv` at an explicit ISA tier (tests run every tier side by side).
pub(crate) fn gemv_with(
    isa: Isa,
    a: MatRef<f32>,
    b: BSource<'_>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) -> Result<()> {
    let (m, k) = (a.rows, a.cols);
    if m > MAX_ROWS {
        return Err(Error::Internal(format!("gemv called with {m} rows")));
    }
    let n = b.dims().1;
    // A's few rows, contiguous.
    let mut a_rows = vec![0f32; m * k];
    for i in 0..m {
        for p in 0..k {
            // SAFETY: (i, p) is inside the M × K view.
            a_rows[i * k + p] = unsafe { a.at(i, p) };
        }
    }
    // B with unusual strides is made row-major first (rare: views with both strides > 1).
    let owned: Vec<f32>;
    let form = match b {
        BSource::F32(b) if b.cs == 1 => Form::KnF32(b),
        BSource::F32(b) if b.rs == 1 => Form::NkF32(b),
        BSource::BF16(b) if b.cs == 1 => Form::KnBf16(b),
        BSource::BF16(b) if b.rs == 1 => Form::NkBf16(b),
        BSource::F16(b) if b.cs == 1 => Form::KnF16(b),
        BSource::F16(b) if b.rs == 1 => Form::NkF16(b),
        BSource::Packed(p) | BSource::Pairs(p) => Form::Packed(p),
        other => {
            let mut dense = vec![0f32; k * n];
            for p in 0..k {
                for j in 0..n {
                    // SAFETY: (p, j) is inside the K × N view.
                    dense[p * n + j] = unsafe {
                        match other {
                            BSource::F32(b) => b.at(p, j),
                            BSource::BF16(b) => b.at(p, j).to_f32(),
                            BSource::F16(b) => b.at(p, j).to_f32(),
                            BSource::Packed(_) | BSource::Pairs(_) => 0.0,
                        }
                    };
                }
            }
            owned = dense;
            Form::KnF32(MatRef {
                ptr: owned.as_ptr(),
                rows: k,
                cols: n,
                rs: n as isize,
                cs: 1,
            })
        }
    };
    let job = Job {
        m,
        k,
        a: &a_rows,
        out: COut {
            ptr: c.as_mut_ptr(),
            ldc,
        },
        once: matches!(form, Form::Packed(_)) && weights_outgrow_cache(),
        kn_cached: m == 1
            && matches!(form, Form::KnF32(_))
            && k.saturating_mul(n).saturating_mul(4) <= last_level_cache_bytes() / 2,
    };
    // Split columns (or packed panels) across threads in chunks that keep SIMD strips whole.
    let (units, unit_cols) = match form {
        Form::Packed(p) => {
            let nr = p.kind.mr_nr().1;
            (n.div_ceil(nr), nr)
        }
        _ => (n, 1),
    };
    let threads = if (n * k) < 64 * 1024 {
        1
    } else {
        num_threads()
    };
    // One row of A over a row-major B (numpy's `x @ W`): the threads split B's rows.
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx512 | Isa::Avx2, Form::KnF32(b), 1) = (isa, form, m) {
        let kernel = isa == Isa::Avx512 || job.kn_cached;
        if kernel && threads > 1 && b.rs > 0 && k >= 64 * threads {
            k_split_kn_f32(isa, &job, b, n, threads);
            if !epi.is_identity() {
                // SAFETY: row 0, columns 0..n of C, written above and owned by this call.
                unsafe { apply_tile(job.out.ptr, ldc, 0, 1, 0, n, epi) };
            }
            return Ok(());
        }
    }
    let chunk = if threads <= 1 {
        units
    } else if matches!(form, Form::Packed(_)) {
        // Panels are contiguous K x NR blocks: equal shares, whatever the panel count
        // (rounding to an even count split a 576-wide layer 10:8 and a 192-wide one 4:2,
        // and the thread with less waited for the other on every decode step).
        units.div_ceil(threads)
    } else {
        // One contiguous column range per thread: long runs of each B row per
        // stream suit the prefetchers better than many short ones.
        // (Measured on Zen 5, 1x768x3072 at 2 threads: 90 GFLOP/s with 2 ranges,
        // 72 with 4, 65 with 8.)
        units
            .div_ceil(threads)
            .next_multiple_of(64 / unit_cols.min(64))
            .max(1)
    };
    let tasks = units.div_ceil(chunk);
    parallel_for(tasks, |t| {
        let u0 = t * chunk;
        let u1 = (u0 + chunk).min(units);
        run(isa, &job, form, u0, u1);
        if !epi.is_identity() {
            let (j0, j1) = (u0 * unit_cols, (u1 * unit_cols).min(n));
            // SAFETY: columns j0..j1 of rows 0..m belong to this task.
            unsafe { apply_tile(job.out.ptr.add(j0), ldc, 0, m, j0, j1 - j0, epi) };
        }
    });
    Ok(())
}

//! AVX-512 packing of A for the 12-row f32 micro-kernel: 12 rows × 16 columns
//! are loaded, transposed as a 16×16 block in registers (4 shuffle stages), and
//! stored as 16 k-steps of 12 values, instead of one scalar move per element.

use std::arch::x86_64::*;

/// Transposes 16 rows of 16 floats in place: afterwards `r[j]` lane `i` = old `r[i]` lane `j`.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * g + 1], t[4 * g + 3]);
    }
    let mut v = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        v[q] = _mm512_shuffle_f32x4::<0x88>(u[q], u[q + 4]);
        v[q + 4] = _mm512_shuffle_f32x4::<0xDD>(u[q], u[q + 4]);
        v[q + 8] = _mm512_shuffle_f32x4::<0x88>(u[q + 8], u[q + 12]);
        v[q + 12] = _mm512_shuffle_f32x4::<0xDD>(u[q + 8], u[q + 12]);
    }
    for q in 0..8 {
        r[q] = _mm512_shuffle_f32x4::<0x88>(v[q], v[q + 8]);
        r[q + 8] = _mm512_shuffle_f32x4::<0xDD>(v[q], v[q + 8]);
    }
}

/// Transposes the 16 × 16 block `r` (rows of A, 16 k-steps each) and writes its first 12
/// lanes per k-step: `out[j*12 + i] = r[i][j]` for j < 16, i < 12.
///
/// # Safety
/// The CPU supports AVX-512F; `out` is writable for 16 * 12 floats.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_transposed_12(r: &mut [__m512; 16], out: *mut f32) {
    transpose16(r);
    for (j, col) in r.iter().enumerate() {
        // SAFETY: out is writable for 16*12 floats; this writes floats j*12 .. j*12+12.
        unsafe { _mm512_mask_storeu_ps(out.add(j * 12), 0x0FFF, *col) };
    }
}

/// `out[p*12 + i] = rows[i][p]` for p < kc, i < 12 (rows past `nrows` are zero).
///
/// # Safety
/// The CPU supports AVX-512F; `rows[i]` is readable for `kc` floats for i < nrows;
/// `out` is writable for `kc * 12` floats.
#[target_feature(enable = "avx512f")]
pub unsafe fn avx512_pack_a_f32_12(
    rows: &[*const f32; 12],
    nrows: usize,
    kc: usize,
    out: *mut f32,
) {
    const MR: usize = 12;
    let mut p = 0;
    while p + 16 <= kc {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, row) in rows.iter().enumerate().take(nrows) {
            // SAFETY: row i is readable for kc floats and p + 16 <= kc.
            r[i] = unsafe { _mm512_loadu_ps(row.add(p)) };
        }
        // SAFETY: out holds kc*12 floats and p + 16 <= kc.
        unsafe { store_transposed_12(&mut r, out.add(p * MR)) };
        p += 16;
    }
    for p in p..kc {
        for (i, row) in rows.iter().enumerate() {
            // SAFETY: row i (< nrows) is readable at p < kc; out is writable at p*12 + i.
            unsafe { *out.add(p * MR + i) = if i < nrows { *row.add(p) } else { 0.0 } };
        }
    }
}

/// `out[q*12 + i]` = row i's k-pair q as bf16 (k = 2q in the low half, 2q+1 in the high
/// half, rounded to nearest even by `vcvtne2ps2bf16`) for q < ⌈kc/2⌉, i < 12 (rows past
/// `nrows` are zero; an odd kc's last pair has a zero high half): the A panel of the
/// AVX512-BF16 micro-kernel. Per 16 pairs, each row is converted by one instruction and
/// the 12 × 16 pairs are transposed in registers as in `avx512_pack_a_f32_12`. (The
/// portable loop converted one element at a time into a strided store: a quarter of a
/// 1024³ bf16 GEMM at 2 threads.) The instruction turns f32 denormals into zeros of the
/// same sign; the kernel's `vdpbf16ps` treats bf16 denormal inputs as zeros anyway, so
/// products are the same.
///
/// # Safety
/// The CPU supports AVX-512F + AVX512_BF16; `rows[i]` is readable for `kc` floats for
/// i < nrows; `out` is writable for `⌈kc/2⌉ * 12` u32.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn avx512_pack_a_bf16_pairs_12(
    rows: &[*const f32; 12],
    nrows: usize,
    kc: usize,
    out: *mut u32,
) {
    const MR: usize = 12;
    let kp = kc.div_ceil(2);
    let mut q = 0;
    while 2 * q + 32 <= kc {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, row) in rows.iter().enumerate().take(nrows) {
            // SAFETY: row i is readable for kc floats and 2q + 32 <= kc.
            let (lo, hi) = unsafe {
                (
                    _mm512_loadu_ps(row.add(2 * q)),
                    _mm512_loadu_ps(row.add(2 * q + 16)),
                )
            };
            // 32 bf16 in k order (the second operand gives the low 16): pairs as u32.
            r[i] = _mm512_castsi512_ps(bf16_bits(_mm512_cvtne2ps_pbh(hi, lo)));
        }
        // SAFETY: out holds kp*12 u32 (4 bytes, as f32) and q + 16 <= kp.
        unsafe { store_transposed_12(&mut r, out.add(q * MR).cast()) };
        q += 16;
    }
    for q in q..kp {
        for (i, row) in rows.iter().enumerate() {
            let pair = if i < nrows {
                // SAFETY: row i (< nrows) is readable at 2q < kc, and at 2q + 1 when < kc.
                let (lo, hi) = unsafe {
                    (
                        *row.add(2 * q),
                        (2 * q + 1 < kc).then(|| *row.add(2 * q + 1)),
                    )
                };
                crate::kernels::frame::pack::bf16_pair_bits(lo, hi)
            } else {
                0
            };
            // SAFETY: out is writable at q*12 + i < kp*12.
            unsafe { *out.add(q * MR + i) = pair };
        }
    }
}

/// The bits of 32 bf16 values.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
fn bf16_bits(v: __m512bh) -> __m512i {
    // SAFETY: __m512bh and __m512i are both 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

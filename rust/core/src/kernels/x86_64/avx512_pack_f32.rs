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
        transpose16(&mut r);
        for (j, col) in r.iter().enumerate() {
            // SAFETY: out holds kc*12 floats; this writes floats (p+j)*12 .. +12.
            unsafe { _mm512_mask_storeu_ps(out.add((p + j) * MR), 0x0FFF, *col) };
        }
        p += 16;
    }
    for p in p..kc {
        for (i, row) in rows.iter().enumerate() {
            // SAFETY: row i (< nrows) is readable at p < kc; out is writable at p*12 + i.
            unsafe { *out.add(p * MR + i) = if i < nrows { *row.add(p) } else { 0.0 } };
        }
    }
}

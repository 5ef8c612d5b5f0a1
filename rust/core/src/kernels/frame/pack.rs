//! Packing: copies a block of A or B into the panel layout the micro-kernels
//! read sequentially, converting the element type on the way (bf16/f16 weights
//! become f32 for the f32 kernels, or stay bf16 pairs for the bf16 kernel).
//! Panels are zero-padded to full MR/NR so kernels never branch on edges.

use half::{bf16, f16};

/// A strided read-only matrix view: element (i, j) is at `ptr + i*rs + j*cs`.
#[derive(Copy, Clone, Debug)]
pub struct MatRef<T> {
    pub ptr: *const T,
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a MatRef is only a description of read-only memory; creators promise
// the memory stays valid and unmodified while kernels read it from any thread.
unsafe impl<T: Sync> Send for MatRef<T> {}
// SAFETY: as above: shared, read-only access.
unsafe impl<T: Sync> Sync for MatRef<T> {}

impl<T: Copy> MatRef<T> {
    /// # Safety
    /// (i, j) must be inside the matrix the view was created over.
    #[inline(always)]
    pub unsafe fn at(&self, i: usize, j: usize) -> T {
        // SAFETY: the caller keeps (i, j) in bounds of a view over valid memory.
        unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }

    /// The sub-matrix starting at (i, j).
    pub fn sub(&self, i: usize, j: usize, rows: usize, cols: usize) -> MatRef<T> {
        MatRef {
            ptr: self
                .ptr
                .wrapping_offset(i as isize * self.rs + j as isize * self.cs),
            rows,
            cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// Element types B may hold; packed to f32.
pub trait WeightElement: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// `dst = src` widened to f32, a fixed-width row of a packed panel.
    #[inline(always)]
    fn widen_row<const W: usize>(src: &[Self; W], dst: &mut [f32; W]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}
impl WeightElement for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    /// A plain array copy: vector moves. (The element loop of the default body compiled to
    /// 32 scalar moves per row once `pack_b_panels` was inlined into the GEMM driver: B's
    /// packing then took 30% of a 32x384x1536 GEMM instead of 19%.)
    #[inline(always)]
    fn widen_row<const W: usize>(src: &[f32; W], dst: &mut [f32; W]) {
        *dst = *src;
    }
}
impl WeightElement for bf16 {
    /// The 16 bits moved into the high half: exact, NaN kept (a signaling NaN stays
    /// signaling, unlike `bf16::to_f32`). Plain integer ops, so loops over it
    /// vectorize (`bf16::to_f32`'s NaN branch kept them scalar).
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}
impl WeightElement for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// Pointers to rows row0.. of `a` for a 12-row SIMD panel packer (the rows past `rows`
/// repeat the last one; the packers read only the first `rows`).
#[cfg(target_arch = "x86_64")]
fn twelve_rows(a: MatRef<f32>, row0: usize, rows: usize) -> [*const f32; 12] {
    std::array::from_fn(|i| {
        a.ptr
            .wrapping_offset((row0 + i.min(rows - 1)) as isize * a.rs)
    })
}

/// Packs `a` (mc × kc) into panels of `mr` rows: panel r holds rows r*mr.., laid
/// out k-major (`out[p*mr + i]`). `out` must hold ceil(mc/mr)*mr*kc values.
pub fn pack_a(a: MatRef<f32>, mr: usize, out: &mut [f32]) {
    let (mc, kc) = (a.rows, a.cols);
    #[cfg(target_arch = "x86_64")]
    let simd = mr == 12 && a.cs == 1 && crate::kernels::dispatch::cpu().avx512;
    for (panel, chunk) in out.chunks_mut(mr * kc).enumerate().take(mc.div_ceil(mr)) {
        let row0 = panel * mr;
        let rows = mr.min(mc - row0);
        #[cfg(target_arch = "x86_64")]
        if simd && chunk.len() >= kc * 12 {
            let ptrs = twelve_rows(a, row0, rows);
            // SAFETY: AVX-512 confirmed above; rows row0..row0+rows are readable for kc
            // floats (cs == 1); the chunk holds kc*12 floats.
            unsafe {
                crate::kernels::x86_64::avx512_pack_f32::avx512_pack_a_f32_12(
                    &ptrs,
                    rows,
                    kc,
                    chunk.as_mut_ptr(),
                )
            };
            continue;
        }
        if a.cs == 1 {
            // Rows as slices; write k-major so the stores are sequential.
            let mut src: [&[f32]; 16] = [&[]; 16];
            for (i, s) in src.iter_mut().enumerate().take(rows) {
                // SAFETY: row row0+i < mc and columns 0..kc are inside the view.
                *s = unsafe {
                    std::slice::from_raw_parts(a.ptr.offset((row0 + i) as isize * a.rs), kc)
                };
            }
            for (p, dst) in chunk.chunks_exact_mut(mr).enumerate().take(kc) {
                for (d, row) in dst.iter_mut().zip(&src[..rows]) {
                    *d = row[p];
                }
            }
        } else {
            for p in 0..kc {
                for i in 0..rows {
                    // SAFETY: (row0+i, p) is inside the mc × kc view.
                    chunk[p * mr + i] = unsafe { a.at(row0 + i, p) };
                }
            }
        }
        for p in 0..kc {
            for i in rows..mr {
                chunk[p * mr + i] = 0.0;
            }
        }
    }
}

/// Packs `b` (kc × nc) into panels of `nr` columns, k-major (`out[p*nr + j]`),
/// converting to f32. `out` must hold ceil(nc/nr)*nr*kc values.
pub fn pack_b<T: WeightElement>(b: MatRef<T>, nr: usize, out: &mut [f32]) {
    let (kc, nc) = (b.rows, b.cols);
    for (panel, chunk) in out.chunks_mut(nr * kc).enumerate().take(nc.div_ceil(nr)) {
        pack_b_panel(b, panel * nr, nr, chunk);
    }
}

/// Copies one full panel row with a fixed width, so it compiles to vector moves
/// instead of a `memmove` call per 128-byte row.
#[inline(always)]
fn copy_row<T: WeightElement>(src: &[T], dst: &mut [f32]) {
    fn fixed<T: WeightElement, const W: usize>(src: &[T], dst: &mut [f32]) {
        if let (Ok(s), Ok(d)) = (<&[T; W]>::try_from(src), <&mut [f32; W]>::try_from(dst)) {
            T::widen_row(s, d);
        }
    }
    match dst.len() {
        32 => fixed::<T, 32>(src, dst),
        16 => fixed::<T, 16>(src, dst),
        8 => fixed::<T, 8>(src, dst),
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        }
    }
}

/// Packs panels `panels` (each `nr` columns) of a row-major (cs == 1) B into
/// `out`, where panel `i` starts at `out[(i - panels.start) * nr * kc]`. Full
/// panels are packed in groups sweeping B row by row, so each row is read as one
/// contiguous run (prefetch-friendly) instead of once per panel; a partial last
/// panel goes through `pack_b_panel`.
pub fn pack_b_panels<T: WeightElement>(
    b: MatRef<T>,
    nr: usize,
    panels: std::ops::Range<usize>,
    out: &mut [f32],
) {
    const GROUP: usize = 8;
    let (kc, nc) = (b.rows, b.cols);
    let panel_len = nr * kc;
    let full_end = panels.end.min(nc / nr);
    let mut panel = panels.start;
    if b.cs == 1 {
        while panel < full_end {
            let g = GROUP.min(full_end - panel);
            let base = (panel - panels.start) * panel_len;
            for p in 0..kc {
                // SAFETY: row p < kc and columns panel*nr .. (panel+g)*nr <= nc are inside the view.
                let src = unsafe {
                    std::slice::from_raw_parts(
                        b.ptr.offset(p as isize * b.rs + (panel * nr) as isize),
                        g * nr,
                    )
                };
                for (q, chunk) in src.chunks_exact(nr).enumerate() {
                    let at = base + q * panel_len + p * nr;
                    copy_row(chunk, &mut out[at..at + nr]);
                }
            }
            panel += g;
        }
    }
    for i in panel..panels.end {
        let at = (i - panels.start) * panel_len;
        pack_b_panel(b, i * nr, nr, &mut out[at..at + panel_len]);
    }
}

/// Packs one panel of `nr` columns starting at column `col0`.
pub fn pack_b_panel<T: WeightElement>(b: MatRef<T>, col0: usize, nr: usize, out: &mut [f32]) {
    let (kc, nc) = (b.rows, b.cols);
    let cols = nr.min(nc - col0);
    if b.cs == 1 {
        for p in 0..kc {
            // SAFETY: row p < kc and columns col0..col0+cols are inside the view.
            let src = unsafe {
                std::slice::from_raw_parts(b.ptr.offset(p as isize * b.rs + col0 as isize), cols)
            };
            let dst = &mut out[p * nr..p * nr + nr];
            if cols == nr {
                copy_row(src, dst);
            } else {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s.to_f32();
                }
                dst[cols..].fill(0.0);
            }
        }
    } else {
        for j in 0..cols {
            for p in 0..kc {
                // SAFETY: (p, col0+j) is inside the kc × nc view.
                out[p * nr + j] = unsafe { b.at(p, col0 + j) }.to_f32();
            }
        }
        for p in 0..kc {
            out[p * nr + cols..p * nr + nr].fill(0.0);
        }
    }
}

/// Round-to-nearest-even f32 -> bf16 bits (NaN stays a quiet NaN); branch-free
/// so packing loops vectorize.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16) | 0x0040;
    if x.is_nan() {
        nan
    } else {
        rounded
    }
}

/// One k-pair of a row as the bf16 kernel's A panels hold it: `lo` (k even) rounded to
/// bf16 in the low half, `hi` (k odd; none past an odd depth: zero) in the high half.
#[inline(always)]
pub fn bf16_pair_bits(lo: f32, hi: Option<f32>) -> u32 {
    u32::from(f32_to_bf16_bits(lo)) | u32::from(hi.map_or(0, f32_to_bf16_bits)) << 16
}

/// Packs `a` (mc × kc) for the bf16 kernel: panels of `mr` rows, each k-pair of
/// a row as one u32 (`lo` = k even, `hi` = k odd): `out[(p/2)*mr + i]`.
pub fn pack_a_bf16_pairs(a: MatRef<f32>, mr: usize, out: &mut [u32]) {
    let (mc, kc) = (a.rows, a.cols);
    let kp = kc.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    let simd = mr == 12 && a.cs == 1 && crate::kernels::dispatch::cpu().avx512_bf16;
    for (panel, chunk) in out.chunks_mut(mr * kp).enumerate().take(mc.div_ceil(mr)) {
        let row0 = panel * mr;
        let rows = mr.min(mc - row0);
        #[cfg(target_arch = "x86_64")]
        if simd && chunk.len() >= kp * 12 {
            let ptrs = twelve_rows(a, row0, rows);
            // SAFETY: AVX-512F + AVX512_BF16 confirmed above; rows row0..row0+rows are
            // readable for kc floats (cs == 1); the chunk holds kp*12 u32.
            unsafe {
                crate::kernels::x86_64::avx512_pack_f32::avx512_pack_a_bf16_pairs_12(
                    &ptrs,
                    rows,
                    kc,
                    chunk.as_mut_ptr(),
                )
            };
            continue;
        }
        chunk.fill(0);
        for i in 0..rows {
            if a.cs == 1 {
                // SAFETY: row row0+i < mc, columns 0..kc are inside the view.
                let src = unsafe {
                    std::slice::from_raw_parts(a.ptr.offset((row0 + i) as isize * a.rs), kc)
                };
                for (q, pair) in src.chunks(2).enumerate() {
                    chunk[q * mr + i] = bf16_pair_bits(pair[0], pair.get(1).copied());
                }
            } else {
                for q in 0..kp {
                    // SAFETY: (row0+i, 2q) and (row0+i, 2q+1) (when < kc) are inside the view.
                    let (lo, hi) = unsafe {
                        let hi = (2 * q + 1 < kc).then(|| a.at(row0 + i, 2 * q + 1));
                        (a.at(row0 + i, 2 * q), hi)
                    };
                    chunk[q * mr + i] = bf16_pair_bits(lo, hi);
                }
            }
        }
    }
}

/// Packs bf16 `b` (kc × nc) in k-pairs for `vdpbf16ps`: for each pair q and
/// column j, two bf16 (k=2q, 2q+1) at `out[(q*nr + j)*2 ..]`.
pub fn pack_b_bf16_pairs(b: MatRef<bf16>, nr: usize, out: &mut [u16]) {
    let (kc, nc) = (b.rows, b.cols);
    let kp = kc.div_ceil(2);
    for (panel, chunk) in out
        .chunks_mut(nr * kp * 2)
        .enumerate()
        .take(nc.div_ceil(nr))
    {
        let col0 = panel * nr;
        let cols = nr.min(nc - col0);
        for q in 0..kp {
            let dst = &mut chunk[q * nr * 2..(q + 1) * nr * 2];
            if b.cs == 1 {
                // Row-major B: interleave two row segments (vectorizes to shuffles).
                let row = |p: usize| -> &[bf16] {
                    // SAFETY: row p < kc, columns col0..col0+cols are inside the view.
                    unsafe {
                        std::slice::from_raw_parts(
                            b.ptr.offset(p as isize * b.rs + col0 as isize),
                            cols,
                        )
                    }
                };
                let r0 = row(2 * q);
                let r1 = if 2 * q + 1 < kc {
                    Some(row(2 * q + 1))
                } else {
                    None
                };
                for (j, pair) in dst.chunks_exact_mut(2).take(cols).enumerate() {
                    pair[0] = r0[j].to_bits();
                    pair[1] = r1.map_or(0, |r| r[j].to_bits());
                }
                dst[cols * 2..].fill(0);
            } else {
                for j in 0..nr {
                    let c = col0 + j;
                    for h in 0..2 {
                        let p = 2 * q + h;
                        dst[j * 2 + h] = if c < nc && p < kc {
                            // SAFETY: (p, c) checked inside the view just above.
                            unsafe { b.at(p, c) }.to_bits()
                        } else {
                            0
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_the_half_crate() {
        let mut x = 1u32;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(x);
            let want = bf16::from_f32(v);
            let got = f32_to_bf16_bits(v);
            if v.is_nan() {
                assert!(bf16::from_bits(got).is_nan());
            } else {
                assert_eq!(got, want.to_bits(), "{v:e}");
            }
        }
    }

    /// The bf16 A panels, SIMD (where the CPU has AVX512_BF16) or portable, hold each
    /// row's k-pairs rounded to nearest even, pair-major, padded with zero rows and a zero
    /// high half for an odd depth; NaN stays NaN, infinities and signs stay. Denormal
    /// inputs may come out as zeros of the same sign (what `vcvtne2ps2bf16` does; the bf16
    /// kernel reads bf16 denormals as zeros anyway).
    #[test]
    fn bf16_pair_panels_hold_each_rows_rounded_pairs() {
        let mut x = 7u32;
        let mut next = || {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            x
        };
        for &(mc, kc) in &[
            (1, 1),
            (12, 2),
            (5, 31),
            (12, 32),
            (13, 33),
            (24, 65),
            (7, 100),
            (30, 257),
        ] {
            let a: Vec<f32> = (0..mc * kc)
                .map(|_| match next() % 16 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => -f32::INFINITY,
                    3 => -0.0,
                    4 => f32::from_bits(next() & 0x807F_FFFF), // denormal
                    // A tie: the low half exactly 0x8000.
                    5 => f32::from_bits((next() & 0xFFFF_0000) | 0x8000),
                    _ => f32::from_bits(next()),
                })
                .collect();
            let view = MatRef {
                ptr: a.as_ptr(),
                rows: mc,
                cols: kc,
                rs: kc as isize,
                cs: 1,
            };
            let kp = kc.div_ceil(2);
            let mut out = vec![0xDEAD_BEEFu32; mc.div_ceil(12) * 12 * kp];
            pack_a_bf16_pairs(view, 12, &mut out);
            let half = |bits: u32| (bits & 0xFFFF) as u16;
            for panel in 0..mc.div_ceil(12) {
                for q in 0..kp {
                    for i in 0..12 {
                        let got = out[panel * 12 * kp + q * 12 + i];
                        let row = panel * 12 + i;
                        for (h, bits) in [half(got), half(got >> 16)].into_iter().enumerate() {
                            let p = 2 * q + h;
                            if row >= mc || p >= kc {
                                assert_eq!(bits, 0, "padding at row {row}, k {p}");
                                continue;
                            }
                            let v = a[row * kc + p];
                            let want = f32_to_bf16_bits(v);
                            if v.is_nan() {
                                assert!(bf16::from_bits(bits).is_nan(), "{mc}x{kc} ({row},{p})");
                            } else if v != 0.0 && v.abs() < f32::MIN_POSITIVE {
                                let zero = if v < 0.0 { 0x8000 } else { 0 };
                                assert!(bits == want || bits == zero, "denormal {v:e}: {bits:#x}");
                            } else {
                                assert_eq!(bits, want, "{mc}x{kc} ({row},{p}) {v:e}");
                            }
                        }
                    }
                }
            }
        }
    }
}

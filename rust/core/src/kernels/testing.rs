//! Deterministic test data shared by kernel tests and the device conformance suite.

/// Deterministic pseudo-random values in [lo, hi) (an LCG: reproducible, no dependency).
pub fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + ((x >> 40) as f32 / (1u64 << 24) as f32) * (hi - lo)
        })
        .collect()
}

/// Runs a row-major small-M kernel over `m` rows of A (k floats each) and a B of k rows
/// `ldb` floats apart into C[:, n0..n1], then checks C against an f64 reference within
/// f32 rounding and that the columns outside n0..n1 are untouched.
#[cfg(all(test, target_arch = "x86_64"))]
pub fn check_row_major_kernel(
    (m, k, n0, n1, ldb): (usize, usize, usize, usize, usize),
    what: &str,
    run: impl Fn(&crate::kernels::x86_64::avx512_gemv::StreamArgs, usize, usize),
) {
    let a = uniform(m * k, 1, -1.0, 1.0);
    let b = uniform(k * ldb, 2, -1.0, 1.0);
    let mut c = vec![f32::NAN; m * ldb];
    let args = crate::kernels::x86_64::avx512_gemv::StreamArgs {
        m,
        k,
        a: a.as_ptr(),
        b: b.as_ptr().cast(),
        ldb,
        c: c.as_mut_ptr(),
        ldc: ldb,
    };
    run(&args, n0, n1);
    for i in 0..m {
        for j in 0..ldb {
            let got = c[i * ldb + j];
            if !(n0..n1).contains(&j) {
                assert!(got.is_nan(), "{what} wrote outside its columns at {j}");
                continue;
            }
            let (mut want, mut scale) = (0f64, 0f64);
            for p in 0..k {
                let t = a[i * k + p] as f64 * b[p * ldb + j] as f64;
                want += t;
                scale += t.abs();
            }
            let tol = 1e-6 + 2.0 * f32::EPSILON as f64 * (k as f64).sqrt() * scale;
            assert!(
                (got as f64 - want).abs() <= tol,
                "{what} {m}x{k}x[{n0}..{n1}] at ({i},{j}): {got} vs {want}"
            );
        }
    }
}

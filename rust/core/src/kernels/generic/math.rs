//! Branch-free f32 approximations of exp, log, tanh and erf, written so that
//! LLVM vectorizes a loop over them (no libm calls, selects instead of
//! branches). The SIMD tiers inline them into `#[target_feature]` wrappers; the
//! generic tier uses `std` instead and is the reference they are tested against.
//!
//! Accuracy against f64 (measured in the tests below over dense grids):
//! exp and log within 2 ulp, tanh and erf within 2e-7 absolute / 1e-6 relative.

// Polynomial coefficients are kept as fitted/published, digits beyond f32 included.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

/// 1.5 * 2^23: adding and subtracting it rounds an f32 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x. Overflows to +inf above ~88.72, reaches 0 (through subnormals) below ~-103.9.
///
/// The polynomials here and in `erf_f32` use `mul_add`: inlined into a SIMD tier's
/// `#[target_feature(enable = "...,fma")]` loop it is one FMA per step (Rust does not contract
/// `a * b + c` on its own); in the generic tier it is a correctly rounded libm `fmaf`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Clamp with comparisons (not f32::min/max) so that NaN flows through.
    let xc = if x > 88.8 { 88.8 } else { x };
    let xc = if xc < -104.0 { -104.0 } else { xc };
    let shifted = xc * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // ln 2 split in two so that n * C1 is exact (Cody-Waite).
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n in two factors so that n in [-151, 128] stays representable per factor.
    // n as an integer from the bits of the shifted sum (its low mantissa bits hold n):
    // `n as i32` is a saturating cast that LLVM cannot vectorize, so every SIMD caller
    // (GEMM epilogues, softmax, silu) would convert lane by lane. For a NaN x the
    // integer is garbage, but y is NaN and so is the product.
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    y * s1 * s2
}

/// Natural logarithm: NaN for x < 0, -inf at 0, +inf at +inf.
#[inline(always)]
pub fn log_f32(x: f32) -> f32 {
    // Subnormals: scale into the normal range first.
    let tiny = x < f32::MIN_POSITIVE;
    let xs = if tiny { x * 33_554_432.0 } else { x }; // 2^25
    let bits = xs.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    if tiny {
        e -= 25;
    }
    // Mantissa in [0.5, 1).
    let mut m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    if small {
        e -= 1;
    }
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let ef = e as f32;
    let z = m * m;
    let mut p = 7.037_683_6e-2_f32;
    p = p * m - 1.151_461e-1;
    p = p * m + 1.167_699_9e-1;
    p = p * m - 1.242_014_1e-1;
    p = p * m + 1.424_932_3e-1;
    p = p * m - 1.666_805_8e-1;
    p = p * m + 2.000_071_5e-1;
    p = p * m - 2.499_999_4e-1;
    p = p * m + 3.333_333e-1;
    let mut y = p * m * z;
    y += -2.121_944_4e-4 * ef;
    y += -0.5 * z;
    let mut r = m + y;
    r += 0.693_359_4 * ef;
    let r = if x == f32::INFINITY { x } else { r };
    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    if x < 0.0 || x.is_nan() {
        f32::NAN
    } else {
        r
    }
}

/// Hyperbolic tangent.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    // Small |x|: odd polynomial (Cephes tanhf); large: 1 - 2 / (e^{2|x|} + 1).
    let s = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = p * s + 2.063_908_9e-2;
    p = p * s - 5.373_971_6e-2;
    p = p * s + 1.333_144_2e-1;
    p = p * s - 3.333_328_2e-1;
    let small = p * s * x + x;
    let big = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    let big = if x < 0.0 { -big } else { big };
    if a < 0.625 {
        small
    } else {
        big
    }
}

/// The error function. Polynomials fitted to f64 `erf` (see the module tests).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    // |x| <= 1: erf(x) = x * P(x^2).
    let z = x * x;
    let mut p = 7.914_315_7e-5_f32;
    p = p.mul_add(z, -8.028_627e-4);
    p = p.mul_add(z, 5.190_456_4e-3);
    p = p.mul_add(z, -2.685_496_5e-2);
    p = p.mul_add(z, 1.128_361_4e-1);
    p = p.mul_add(z, -3.761_262_9e-1);
    p = p.mul_add(z, 1.128_379_2);
    let small = x * p;
    // 1 < |x| < 4: erf(|x|) = 1 - exp(-x^2) * Q(1/|x|); beyond 4 it rounds to 1.
    let ac = if a > 4.0 { 4.0 } else { a };
    let ac = if ac < 1.0 { 1.0 } else { ac };
    let t = 1.0 / ac;
    let mut q = -1.802_991_7e-2_f32;
    q = q.mul_add(t, 1.217_254_4e-1);
    q = q.mul_add(t, -3.565_343_9e-1);
    q = q.mul_add(t, 5.784_000_2e-1);
    q = q.mul_add(t, -5.075_488_3e-1);
    q = q.mul_add(t, 5.157_875_7e-2);
    q = q.mul_add(t, 5.576_348e-1);
    q = q.mul_add(t, 3.577_859_7e-4);
    let big = 1.0 - exp_f32(-(ac * ac)) * q;
    let big = if a >= 4.0 { 1.0 } else { big };
    let big = if x < 0.0 { -big } else { big };
    if a <= 1.0 || x.is_nan() {
        small
    } else {
        big
    }
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    fn ulp_diff(a: f32, b: f32) -> f64 {
        let ulp = if b == 0.0 {
            f32::MIN_POSITIVE as f64
        } else {
            let e = (b.abs() as f64).log2().floor();
            2f64.powf(e - 23.0)
        };
        ((a as f64) - (b as f64)).abs() / ulp
    }

    #[test]
    fn exp_within_2_ulp() {
        for x in grid(-87.0, 88.5, 400_000) {
            let want = (x as f64).exp() as f32;
            let d = ulp_diff(exp_f32(x), want);
            assert!(d <= 2.0, "exp({x}) = {} want {want} ({d} ulp)", exp_f32(x));
        }
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        // Subnormal results keep their magnitude.
        let sub = exp_f32(-90.0) as f64;
        assert!((sub / (-90f64).exp() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn log_within_2_ulp() {
        for x in grid(1e-3, 1e3, 400_000).chain(grid(0.5, 2.0, 100_000)) {
            let want = (x as f64).ln() as f32;
            let d = ulp_diff(log_f32(x), want);
            assert!(
                d <= 2.0 || (log_f32(x) - want).abs() < 1e-7,
                "log({x}): {d} ulp"
            );
        }
        assert_eq!(log_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(log_f32(f32::INFINITY), f32::INFINITY);
        assert!(log_f32(-1.0).is_nan() && log_f32(f32::NAN).is_nan());
        let tiny = 1e-40_f32;
        assert!((log_f32(tiny) as f64 - (tiny as f64).ln()).abs() < 1e-4);
    }

    #[test]
    fn tanh_and_erf_within_bounds() {
        for x in grid(-10.0, 10.0, 400_000) {
            let t = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            assert!((got - t).abs() <= 2e-7 + 1e-6 * t.abs(), "tanh({x})");
        }
        let erf64 = |x: f64| -> f64 {
            // erf via its Taylor series (|x| < 3) or the asymptotic continued fraction.
            if x.abs() < 3.0 {
                let mut term = x;
                let mut sum = x;
                for n in 1..200 {
                    term *= -x * x / n as f64;
                    sum += term / (2 * n + 1) as f64;
                }
                sum * 2.0 / std::f64::consts::PI.sqrt()
            } else {
                let a = x.abs();
                let mut f = 0.0;
                for k in (1..60).rev() {
                    f = (k as f64 / 2.0) / (a + f);
                }
                let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
                x.signum() * (1.0 - erfc)
            }
        };
        for x in grid(-6.0, 6.0, 200_000) {
            let want = erf64(x as f64);
            let got = erf_f32(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 + 1e-6 * want.abs(),
                "erf({x}) = {got} want {want}"
            );
        }
        assert!(erf_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan());
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
    }
}

//! Elementwise kernels over contiguous slices: unary float functions and
//! binary arithmetic with one side possibly a scalar (a broadcast row).
//!
//! `*_body` functions are `#[inline(always)]` and branch-free per element so
//! that the `#[target_feature]` wrappers in `x86_64/` compile them to 256- or
//! 512-bit code; `unary_f32_reference` is the scalar reference built on `std`.

// Polynomial coefficients are kept as fitted/published, digits beyond f32 included.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

use super::math::{erf_f32, exp_f32, log_f32, sigmoid_f32, tanh_f32};

/// Unary functions. Neg, Abs and Relu also apply to integers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Exp,
    Log,
    Tanh,
    Erf,
    /// x * Phi(x), the erf form.
    Gelu,
    /// The tanh approximation of gelu.
    GeluTanh,
    Silu,
    Relu,
    Sigmoid,
    Sqrt,
    Rsqrt,
    Neg,
    Abs,
}

impl Unary {
    pub fn name(self) -> &'static str {
        match self {
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Tanh => "tanh",
            Unary::Erf => "erf",
            Unary::Gelu => "gelu",
            Unary::GeluTanh => "gelu_tanh",
            Unary::Silu => "silu",
            Unary::Relu => "relu",
            Unary::Sigmoid => "sigmoid",
            Unary::Sqrt => "sqrt",
            Unary::Rsqrt => "rsqrt",
            Unary::Neg => "neg",
            Unary::Abs => "abs",
        }
    }

    /// Whether the function is defined on integers (neg, abs, relu).
    pub fn takes_integers(self) -> bool {
        matches!(self, Unary::Neg | Unary::Abs | Unary::Relu)
    }
}

/// Binary arithmetic. Max and Min propagate NaN (numpy `maximum`/`minimum`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Max => "maximum",
            Binary::Min => "minimum",
            Binary::Pow => "pow",
        }
    }

    /// Whether the op is defined on integers (wrapping, like numpy).
    pub fn takes_integers(self) -> bool {
        matches!(
            self,
            Binary::Add | Binary::Sub | Binary::Mul | Binary::Max | Binary::Min
        )
    }
}

const SQRT_1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// sqrt(2 / pi), the gelu_tanh constant.
const SQRT_2_PI: f32 = 0.797_884_6;

/// Unary f32 with the vectorizable approximations of [`super::math`].
#[inline(always)]
pub fn unary_f32_body(op: Unary, x: &[f32], out: &mut [f32]) {
    match op {
        Unary::Exp => map(x, out, exp_f32),
        Unary::Log => map(x, out, log_f32),
        Unary::Tanh => map(x, out, tanh_f32),
        Unary::Erf => map(x, out, erf_f32),
        Unary::Gelu => map(x, out, |v| 0.5 * v * (1.0 + erf_f32(v * SQRT_1_2))),
        Unary::GeluTanh => map(x, out, |v| {
            0.5 * v * (1.0 + tanh_f32(SQRT_2_PI * (v + 0.044_715 * v * v * v)))
        }),
        Unary::Silu => map(x, out, |v| v * sigmoid_f32(v)),
        Unary::Sigmoid => map(x, out, sigmoid_f32),
        _ => unary_exact_body(op, x, out),
    }
}

/// The ops whose vector form is exact (IEEE sqrt and division, sign ops).
#[inline(always)]
fn unary_exact_body(op: Unary, x: &[f32], out: &mut [f32]) {
    match op {
        Unary::Sqrt => map(x, out, f32::sqrt),
        Unary::Rsqrt => map(x, out, |v| 1.0 / v.sqrt()),
        Unary::Neg => map(x, out, |v| -v),
        Unary::Abs => map(x, out, f32::abs),
        // `v < 0` keeps NaN (torch relu propagates it).
        Unary::Relu => map(x, out, |v| if v < 0.0 { 0.0 } else { v }),
        _ => unary_f32_reference(op, x, out),
    }
}

/// The scalar reference: `std` math, evaluated in f64 where f32 `std` has none (erf).
pub fn unary_f32_reference(op: Unary, x: &[f32], out: &mut [f32]) {
    match op {
        Unary::Exp => map(x, out, f32::exp),
        Unary::Log => map(x, out, f32::ln),
        Unary::Tanh => map(x, out, f32::tanh),
        Unary::Erf => map(x, out, |v| erf_f64(v as f64) as f32),
        Unary::Gelu => map(x, out, |v| {
            let v = v as f64;
            (0.5 * v * (1.0 + erf_f64(v * std::f64::consts::FRAC_1_SQRT_2))) as f32
        }),
        Unary::GeluTanh => map(x, out, |v| {
            let v = v as f64;
            let k = (2.0 / std::f64::consts::PI).sqrt();
            (0.5 * v * (1.0 + (k * (v + 0.044_715 * v * v * v)).tanh())) as f32
        }),
        Unary::Silu => map(x, out, |v| v / (1.0 + (-v).exp())),
        Unary::Sigmoid => map(x, out, |v| 1.0 / (1.0 + (-v).exp())),
        _ => unary_exact_body(op, x, out),
    }
}

/// Unary on f64 (scalar `std`; f64 is not a fast path).
pub fn unary_f64(op: Unary, x: &[f64], out: &mut [f64]) {
    let f: fn(f64) -> f64 = match op {
        Unary::Exp => f64::exp,
        Unary::Log => f64::ln,
        Unary::Tanh => f64::tanh,
        Unary::Erf => erf_f64,
        Unary::Gelu => |v| 0.5 * v * (1.0 + erf_f64(v * std::f64::consts::FRAC_1_SQRT_2)),
        Unary::GeluTanh => |v| {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (k * (v + 0.044_715 * v * v * v)).tanh())
        },
        Unary::Silu => |v| v / (1.0 + (-v).exp()),
        Unary::Sigmoid => |v| 1.0 / (1.0 + (-v).exp()),
        Unary::Sqrt => f64::sqrt,
        Unary::Rsqrt => |v| 1.0 / v.sqrt(),
        Unary::Neg => |v| -v,
        Unary::Abs => f64::abs,
        Unary::Relu => |v| if v < 0.0 { 0.0 } else { v },
    };
    map(x, out, f);
}

/// Neg, Abs, Relu on integers (wrapping like numpy: -i64::MIN == i64::MIN).
pub fn unary_i64(op: Unary, x: &[i64], out: &mut [i64]) {
    match op {
        Unary::Neg => map(x, out, i64::wrapping_neg),
        Unary::Abs => map(x, out, i64::wrapping_abs),
        _ => map(x, out, |v| v.max(0)),
    }
}

/// erf in f64 (W. J. Cody's rational approximations; relative error < 1e-15).
pub fn erf_f64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a < 0.5 {
        let z = x * x;
        let p = [
            3.209_377_589_138_469_4e3,
            3.774_852_376_853_020_2e2,
            1.138_641_541_510_501_6e2,
            3.161_123_743_870_565_6,
            1.857_777_061_846_031_5e-1,
        ];
        let q = [
            2.844_236_833_439_170_6e3,
            1.282_616_526_077_372_3e3,
            2.440_246_379_344_441_7e2,
            2.360_129_095_234_412_1e1,
            1.0,
        ];
        let num = (((p[4] * z + p[3]) * z + p[2]) * z + p[1]) * z + p[0];
        let den = (((q[4] * z + q[3]) * z + q[2]) * z + q[1]) * z + q[0];
        return x * num / den;
    }
    let erfc = if a < 4.0 {
        let p = [
            1.230_339_354_797_997_2e3,
            2.051_078_377_826_071_6e3,
            1.712_047_612_634_070_7e3,
            8.819_522_212_417_69e2,
            2.986_351_381_974_001_3e2,
            6.611_919_063_714_163e1,
            8.883_149_794_388_376,
            5.641_884_969_886_701e-1,
            2.153_115_354_744_038_3e-8,
        ];
        let q = [
            1.230_339_354_803_749_5e3,
            3.439_367_674_143_721_6e3,
            4.362_619_090_143_247e3,
            3.290_799_235_733_459_7e3,
            1.621_389_574_566_690_2e3,
            5.371_811_018_620_098_6e2,
            1.176_939_508_913_125e2,
            1.574_492_611_070_983_5e1,
            1.0,
        ];
        let num = p.iter().rev().fold(0.0, |acc, &c| acc * a + c);
        let den = q.iter().rev().fold(0.0, |acc, &c| acc * a + c);
        (-a * a).exp() * num / den
    } else if a < 27.0 {
        let p = [
            -6.587_491_615_298_378e-4,
            -1.608_378_514_874_227_5e-2,
            -1.257_817_261_112_292_6e-1,
            -3.603_448_999_498_044_4e-1,
            -3.053_266_349_612_323_4e-1,
            -1.631_538_713_730_209_7e-2,
        ];
        let q = [
            2.335_204_976_268_691_8e-3,
            6.051_834_131_244_132e-2,
            5.279_051_029_514_284e-1,
            1.872_952_849_923_460_4,
            2.568_520_192_289_822,
            1.0,
        ];
        let z = 1.0 / (a * a);
        let num = p.iter().rev().fold(0.0, |acc, &c| acc * z + c);
        let den = q.iter().rev().fold(0.0, |acc, &c| acc * z + c);
        let r = z * num / den;
        (-a * a).exp() / a * (1.0 / std::f64::consts::PI.sqrt() + r)
    } else {
        0.0
    };
    let v = 1.0 - erfc;
    if x < 0.0 {
        -v
    } else {
        v
    }
}

#[inline(always)]
fn map<T: Copy, U>(x: &[T], out: &mut [U], f: impl Fn(T) -> U) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

/// Element types of the binary kernels: f32 (the fast path), f64 and i64
/// (every integer dtype computes in i64 and wraps back, which equals wrapping
/// arithmetic in the narrow type).
pub trait BinaryScalar: Copy + PartialOrd + Send + Sync + 'static {
    fn add(a: Self, b: Self) -> Self;
    fn sub(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn div(a: Self, b: Self) -> Self;
    fn pow(a: Self, b: Self) -> Self;
    /// Self != Self (NaN); always false for integers.
    fn is_nan(self) -> bool;
}

macro_rules! float_scalar {
    ($t:ty) => {
        impl BinaryScalar for $t {
            #[inline(always)]
            fn add(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline(always)]
            fn sub(a: Self, b: Self) -> Self {
                a - b
            }
            #[inline(always)]
            fn mul(a: Self, b: Self) -> Self {
                a * b
            }
            #[inline(always)]
            fn div(a: Self, b: Self) -> Self {
                a / b
            }
            #[inline(always)]
            fn pow(a: Self, b: Self) -> Self {
                a.powf(b)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                self != self
            }
        }
    };
}
float_scalar!(f32);
float_scalar!(f64);

impl BinaryScalar for i64 {
    #[inline(always)]
    fn add(a: Self, b: Self) -> Self {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub(a: Self, b: Self) -> Self {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn mul(a: Self, b: Self) -> Self {
        a.wrapping_mul(b)
    }
    /// Not offered for integers by the ops layer; defined (never panics) anyway.
    #[inline(always)]
    fn div(a: Self, b: Self) -> Self {
        a.checked_div(b).unwrap_or(0)
    }
    #[inline(always)]
    fn pow(a: Self, b: Self) -> Self {
        a.wrapping_pow(b.clamp(0, u32::MAX as i64) as u32)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        false
    }
}

/// One side of a binary op: a contiguous run or one value repeated.
#[derive(Copy, Clone, Debug)]
pub enum Operand<'a, T> {
    Slice(&'a [T]),
    Scalar(T),
}

#[inline(always)]
fn max_nan<T: BinaryScalar>(a: T, b: T) -> T {
    // NaN in `a` is kept; NaN in `b` is returned by the `else` arm.
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn min_nan<T: BinaryScalar>(a: T, b: T) -> T {
    if a.is_nan() || a < b {
        a
    } else {
        b
    }
}

/// `out[i] = op(a[i], b[i])` with scalar operands broadcast.
#[inline(always)]
pub fn binary_body<T: BinaryScalar>(op: Binary, a: Operand<T>, b: Operand<T>, out: &mut [T]) {
    match op {
        Binary::Add => zip_with(a, b, out, T::add),
        Binary::Sub => zip_with(a, b, out, T::sub),
        Binary::Mul => zip_with(a, b, out, T::mul),
        Binary::Div => zip_with(a, b, out, T::div),
        Binary::Max => zip_with(a, b, out, max_nan),
        Binary::Min => zip_with(a, b, out, min_nan),
        Binary::Pow => zip_with(a, b, out, T::pow),
    }
}

#[inline(always)]
fn zip_with<T: Copy>(a: Operand<T>, b: Operand<T>, out: &mut [T], f: impl Fn(T, T) -> T) {
    match (a, b) {
        (Operand::Slice(a), Operand::Slice(b)) => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        }
        (Operand::Slice(a), Operand::Scalar(y)) => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = f(x, y);
            }
        }
        (Operand::Scalar(x), Operand::Slice(b)) => {
            for (o, &y) in out.iter_mut().zip(b) {
                *o = f(x, y);
            }
        }
        (Operand::Scalar(x), Operand::Scalar(y)) => out.fill(f(x, y)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_f64_matches_known_values() {
        // erf(0.5), erf(1), erf(2), erf(5) from tables (DLMF 7.23).
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (-3.0, -0.999_977_909_503_001_4),
        ] {
            assert!((erf_f64(x) - want).abs() < 1e-15, "erf({x})");
        }
        assert_eq!(erf_f64(30.0), 1.0);
    }

    #[test]
    fn max_min_propagate_nan_and_ints_wrap() {
        let a = [1.0f32, f32::NAN, 3.0];
        let b = [2.0f32, 0.0, f32::NAN];
        let mut o = [0.0f32; 3];
        binary_body(Binary::Max, Operand::Slice(&a), Operand::Slice(&b), &mut o);
        assert_eq!(o[0], 2.0);
        assert!(o[1].is_nan() && o[2].is_nan());
        binary_body(
            Binary::Min,
            Operand::Slice(&a),
            Operand::Scalar(0.5),
            &mut o,
        );
        assert_eq!(o[0], 0.5);
        assert!(o[1].is_nan());
        let mut oi = [0i64; 1];
        binary_body(
            Binary::Add,
            Operand::Scalar(i64::MAX),
            Operand::Slice(&[1]),
            &mut oi,
        );
        assert_eq!(oi[0], i64::MIN);
    }
}

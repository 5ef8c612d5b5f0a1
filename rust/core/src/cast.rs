//! Element conversion between every pair of dtypes, with numpy's semantics for
//! in-range values: float -> int truncates toward zero (saturating outside the
//! range, where numpy's result is undefined), int -> int wraps, anything -> bool
//! is `!= 0` (NaN is true), bool -> number is 0 or 1.

use half::{bf16, f16};

use crate::dtype::DType;

/// A value type that can stand for one dtype's elements in memory.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    const IS_FLOAT: bool;
    fn to_f64(self) -> f64;
    fn to_i64(self) -> i64;
    fn from_f64(v: f64) -> Self;
    fn from_i64(v: i64) -> Self;
}

/// A bool element as stored: one byte, any non-zero byte reads as true. Reading
/// external bytes as Rust `bool` would be undefined behaviour for values > 1.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bool8(pub u8);

macro_rules! int_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const IS_FLOAT: bool = false;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
        }
    };
}
int_element!(i64, DType::I64);
int_element!(i32, DType::I32);
int_element!(i16, DType::I16);
int_element!(i8, DType::I8);
int_element!(u8, DType::U8);

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    const IS_FLOAT: bool = true;
    fn to_f64(self) -> f64 {
        self
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_i64(v: i64) -> Self {
        v as f64
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    const IS_FLOAT: bool = true;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_i64(v: i64) -> Self {
        // Direct conversion rounds once (via f64 could round twice).
        v as f32
    }
}

macro_rules! half_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const IS_FLOAT: bool = true;
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn to_i64(self) -> i64 {
                <$t>::to_f64(self) as i64
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn from_i64(v: i64) -> Self {
                <$t>::from_f64(v as f64)
            }
        }
    };
}
half_element!(f16, DType::F16);
half_element!(bf16, DType::BF16);

impl Element for Bool8 {
    const DTYPE: DType = DType::Bool;
    const IS_FLOAT: bool = false;
    fn to_f64(self) -> f64 {
        (self.0 != 0) as u8 as f64
    }
    fn to_i64(self) -> i64 {
        (self.0 != 0) as i64
    }
    fn from_f64(v: f64) -> Self {
        Bool8((v != 0.0) as u8)
    }
    fn from_i64(v: i64) -> Self {
        Bool8((v != 0) as u8)
    }
}

/// Converts one element.
#[inline]
pub fn convert<S: Element, D: Element>(s: S) -> D {
    if !S::IS_FLOAT {
        D::from_i64(s.to_i64())
    } else if D::IS_FLOAT || D::DTYPE == DType::Bool {
        // Bool is "non-zero": truncating 0.5 to an integer first would lose it.
        D::from_f64(s.to_f64())
    } else {
        // float -> int: truncate toward zero first, as numpy does.
        D::from_i64(s.to_f64() as i64)
    }
}

/// Runs `$body` with `$t` bound to the element type of `$dtype`.
#[macro_export]
macro_rules! with_element_type {
    ($dtype:expr, $t:ident, $body:block) => {
        match $dtype {
            $crate::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::DType::F64 => {
                type $t = f64;
                $body
            }
            $crate::DType::F16 => {
                type $t = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            $crate::DType::I64 => {
                type $t = i64;
                $body
            }
            $crate::DType::I32 => {
                type $t = i32;
                $body
            }
            $crate::DType::I16 => {
                type $t = i16;
                $body
            }
            $crate::DType::I8 => {
                type $t = i8;
                $body
            }
            $crate::DType::U8 => {
                type $t = u8;
                $body
            }
            $crate::DType::Bool => {
                type $t = $crate::cast::Bool8;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_semantics() {
        assert_eq!(convert::<f32, i32>(-2.7), -2);
        assert_eq!(convert::<f32, u8>(3.9), 3);
        assert_eq!(convert::<i32, i8>(300), 44); // wraps like numpy
        assert_eq!(convert::<f32, Bool8>(0.5), Bool8(1));
        assert_eq!(convert::<f32, Bool8>(f32::NAN), Bool8(1));
        assert_eq!(convert::<Bool8, f32>(Bool8(7)), 1.0);
        assert_eq!(convert::<i64, f32>(16_777_217), 16_777_216.0);
        assert_eq!(convert::<f32, bf16>(1.003_906_2).to_f32(), 1.0); // 1 + 2^-8 ties to even
        assert_eq!(convert::<f64, f16>(65520.0).to_f64(), f64::INFINITY);
    }
}

//! Scalar reference implementations of every kernel.

pub mod attention;
pub mod elementwise;
pub mod math;
pub mod mmm;
pub mod norm;
pub mod reduce;
pub mod softmax;

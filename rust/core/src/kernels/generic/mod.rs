//! Scalar reference implementations of every kernel.

//! Tensor-level operations: shape/dtype checks, broadcasting and strides are
//! handled here; the arithmetic is in `crate::kernels`. Each op family is one file.

//! Tensor-level operations: shape/dtype checks, broadcasting and strides are
//! handled here; the arithmetic is in `crate::kernels`. Each op family is one file.
pub mod attention;
pub mod binary;
pub mod concat;
pub mod data;
pub mod gather;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod select;
pub mod softmax;
pub mod topk;
pub mod unary;

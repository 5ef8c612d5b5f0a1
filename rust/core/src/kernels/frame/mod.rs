//! Portable drivers written once: threading, tiling and packing. Micro-kernels
//! (generic/, x86_64/) plug into them.

pub mod attention;
pub mod epilogue;
pub mod gemm;
pub mod gemv;
pub mod pack;
pub mod peak;
pub mod prefetch;
pub mod rowwise;
pub mod threads;

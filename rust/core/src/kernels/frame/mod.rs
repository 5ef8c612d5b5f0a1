//! Portable drivers written once: threading, tiling and packing. Micro-kernels
//! (generic/, x86_64/) plug into them.

pub mod threads;

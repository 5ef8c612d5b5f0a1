//! CPU kernels: `frame/` (drivers), `generic/` (scalar references),
//! `x86_64/` (SIMD micro-kernels), `dispatch` (runtime ISA choice).

pub mod dispatch;
pub mod frame;
pub mod generic;
pub mod testing;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use dispatch::{isa, set_isa, Isa};
pub use frame::threads::{local_threads, num_threads, set_local_threads, set_num_threads};

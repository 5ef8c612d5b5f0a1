//! rtserve core: tensors, storage, dtypes and weight formats.
//!
//! This crate knows nothing of Python; `rust/bindings` wraps it. Every fallible
//! function returns [`Result`], and data that came from outside (files, user
//! shapes) is validated before it is trusted.

pub mod cast;
pub mod device;
pub mod dtype;
pub mod error;
pub mod exec;
pub mod formats;
pub mod graph;
pub mod kernels;
pub mod layout;
pub mod ops;
pub mod passes;
pub mod plan;
pub mod shape;
pub mod storage;
pub mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use layout::{IndexItem, Layout};
pub use storage::{ExternalBuffer, Storage};
pub use tensor::Tensor;

//! Weight file formats.

pub mod safetensors;

//! AVX2 and AVX-512 micro-kernels, named `<isa>_<family>_<dtype>_<mr>x<nr>`.
//! Every function here is `#[target_feature]` and called only after
//! [`crate::kernels::dispatch`] has confirmed the CPU supports it.

pub mod avx2_attention_f32;
pub mod avx2_elementwise;
pub mod avx2_gemv;
pub mod avx2_mmm_f32_6x16;
pub mod avx2_norm;
pub mod avx2_reduce;
pub mod avx2_softmax;
pub mod avx512_attention_f32;
pub mod avx512_elementwise;
pub mod avx512_gemv;
pub mod avx512_mmm_bf16_12x32;
pub mod avx512_mmm_f32_12x32;
pub mod avx512_norm;
pub mod avx512_pack_f32;
pub mod avx512_reduce;
pub mod avx512_softmax;
pub mod peak;

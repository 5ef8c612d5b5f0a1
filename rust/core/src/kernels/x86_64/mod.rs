//! AVX2 and AVX-512 micro-kernels, named `<isa>_<family>_<dtype>_<mr>x<nr>`.
//! Every function here is `#[target_feature]` and called only after
//! [`crate::kernels::dispatch`] has confirmed the CPU supports it.

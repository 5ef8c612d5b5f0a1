//! What a GEMM applies to each finished tile of C while it is still in cache:
//! `C = act(C + bias) + residual`.

use crate::kernels::frame::pack::MatRef;
use crate::kernels::generic::math::{erf_f32, sigmoid_f32, tanh_f32};

/// Activation fused into a GEMM epilogue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// erf form: x/2 (1 + erf(x/√2)).
    Gelu,
    /// tanh form: x/2 (1 + tanh(√(2/π)(x + 0.044715x³))).
    GeluTanh,
    Silu,
}

impl Activation {
    pub fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "none" | "" => Activation::None,
            "relu" => Activation::Relu,
            "gelu" | "gelu_erf" => Activation::Gelu,
            "gelu_tanh" | "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// Bias (length N), activation, and residual (M × N) fused after the product.
#[derive(Copy, Clone, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub activation: Option<Activation>,
    pub residual: Option<MatRef<f32>>,
}

impl Epilogue<'_> {
    pub fn is_identity(&self) -> bool {
        self.bias.is_none()
            && matches!(self.activation, None | Some(Activation::None))
            && self.residual.is_none()
    }
}

#[inline(always)]
pub fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x * (1.0 + tanh_f32(0.797_884_6 * (x + 0.044_715 * x * x * x)))
        }
        Activation::Silu => x * sigmoid_f32(x),
    }
}

/// Applies the epilogue to `row` = C[i, j0 .. j0 + row.len()], on the
/// running tier.
pub fn apply_row(row: &mut [f32], i: usize, j0: usize, epi: &Epilogue<'_>) {
    let cols = row.len();
    // SAFETY: `row` is one valid, exclusively borrowed row of `cols` elements.
    unsafe { apply_tile(row.as_mut_ptr(), 0, i, 1, j0, cols, epi) }
}

/// Applies the epilogue to the tile C[i0 .. i0 + rows, j0 .. j0 + cols], with
/// `c` pointing at C[i0, j0] and rows `ldc` apart: one dispatch per tile, the
/// whole epilogue (bias, activation, residual) vectorized for the running tier.
///
/// # Safety
/// The tile must be valid, writable memory owned by the caller for the call,
/// and (i0 + rows, j0 + cols) inside the bias and residual views of `epi`.
pub unsafe fn apply_tile(
    c: *mut f32,
    ldc: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    epi: &Epilogue<'_>,
) {
    if epi.is_identity() {
        return;
    }
    crate::dispatch_isa!(crate::kernels::isa(),
        // SAFETY: the caller's contract (valid tile, views in bounds).
        generic => unsafe { tile_body(c, ldc, i0, rows, j0, cols, epi) },
        // SAFETY: as above; this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { tile_avx2(c, ldc, i0, rows, j0, cols, epi) },
        // SAFETY: as above; this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { tile_avx512(c, ldc, i0, rows, j0, cols, epi) },
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    c: *mut f32,
    ldc: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    epi: &Epilogue<'_>,
) {
    // SAFETY: forwarded from `apply_tile`.
    unsafe { tile_body(c, ldc, i0, rows, j0, cols, epi) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn tile_avx512(
    c: *mut f32,
    ldc: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    epi: &Epilogue<'_>,
) {
    // SAFETY: forwarded from `apply_tile`.
    unsafe { tile_body(c, ldc, i0, rows, j0, cols, epi) }
}

#[inline(always)]
unsafe fn tile_body(
    c: *mut f32,
    ldc: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    epi: &Epilogue<'_>,
) {
    let act = epi.activation.unwrap_or(Activation::None);
    for r in 0..rows {
        let i = i0 + r;
        // SAFETY: row r of the tile is valid and exclusively ours (caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
        if let Some(bias) = epi.bias {
            for (v, &b) in row.iter_mut().zip(&bias[j0..j0 + cols]) {
                *v += b;
            }
        }
        // One plain loop per activation (no closures: a non-inlined `for_each` would be
        // compiled without this tier's features), each vectorized with its math inlined.
        match act {
            Activation::None => {}
            Activation::Relu => {
                for v in row.iter_mut() {
                    *v = activate(*v, Activation::Relu);
                }
            }
            Activation::Gelu => {
                for v in row.iter_mut() {
                    *v = activate(*v, Activation::Gelu);
                }
            }
            Activation::GeluTanh => {
                for v in row.iter_mut() {
                    *v = activate(*v, Activation::GeluTanh);
                }
            }
            Activation::Silu => {
                for v in row.iter_mut() {
                    *v = activate(*v, Activation::Silu);
                }
            }
        }
        if let Some(res) = epi.residual {
            if res.cs == 1 {
                // SAFETY: the residual view is M × N over valid memory; row i's columns
                // j0 .. j0 + cols are inside it and contiguous (column stride 1).
                let src = unsafe {
                    std::slice::from_raw_parts(
                        res.ptr.offset(i as isize * res.rs + j0 as isize),
                        cols,
                    )
                };
                for (v, &x) in row.iter_mut().zip(src) {
                    *v += x;
                }
            } else {
                for (j, v) in row.iter_mut().enumerate() {
                    // SAFETY: the residual view is M × N and (i, j0 + j) is inside it.
                    *v += unsafe { res.at(i, j0 + j) };
                }
            }
        }
    }
}

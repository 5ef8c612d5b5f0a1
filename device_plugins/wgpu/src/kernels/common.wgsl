// Prepended to every kernel. Each dispatch reads its parameters from a
// 256-byte window of the run's uniform buffer, as 64 u32 words.
struct Params { v: array<vec4<u32>, 16> }
@group(0) @binding(0) var<uniform> params: Params;

fn pu(i: u32) -> u32 { return params.v[i / 4u][i % 4u]; }
fn pi(i: u32) -> i32 { return bitcast<i32>(pu(i)); }
fn pf(i: u32) -> f32 { return bitcast<f32>(pu(i)); }

// Flat index of a thread when the grid is folded into x and y (x is capped at 65535 groups).
fn flat_id(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * size + lid;
}
fn flat_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 { return wg.y * nwg.x + wg.x; }

fn is_nan(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

// Abramowitz & Stegun 7.1.26 refined: |error| < 1.5e-7.
fn erf_f32(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return select(y, -y, x < 0.0);
}
fn tanh_f32(x: f32) -> f32 {
    // Saturate early: some drivers' tanh overflows to NaN for large |x|.
    let c = clamp(x, -15.0, 15.0);
    let e = exp(2.0 * c);
    return (e - 1.0) / (e + 1.0);
}
fn sigmoid_f32(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}
fn gelu_f32(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752)); }
fn gelu_tanh_f32(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_f32(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
// The GEMM epilogue's activations: 0 none, 1 gelu, 2 gelu_tanh, 3 silu, 4 relu.
fn activation(code: u32, x: f32) -> f32 {
    switch code {
        case 1u: { return gelu_f32(x); }
        case 2u: { return gelu_tanh_f32(x); }
        case 3u: { return x * sigmoid_f32(x); }
        case 4u: { return max(x, 0.0); }
        default: { return x; }
    }
}

// `word` with its j-th element of `es` bytes (1, 2 or 4) replaced by the low bits of v.
fn put_bits(word: u32, j: u32, es: u32, v: u32) -> u32 {
    if (es == 4u) { return v; }
    let shift = j * es * 8u;
    let mask = ((1u << (es * 8u)) - 1u) << shift;
    return (word & ~mask) | ((v << shift) & mask);
}

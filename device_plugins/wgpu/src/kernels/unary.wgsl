// y = op(x), f32, contiguous. Params: n, op code (kernels::unary_code).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn unary_op(code: u32, v: f32) -> f32 {
    switch code {
        case 0u: { return exp(v); }
        case 1u: { return log(v); }
        case 2u: { return tanh_f32(v); }
        case 3u: { return erf_f32(v); }
        case 4u: { return gelu_f32(v); }
        case 5u: { return gelu_tanh_f32(v); }
        case 6u: { return v * sigmoid_f32(v); }
        case 7u: { return max(v, 0.0); }
        case 8u: { return sigmoid_f32(v); }
        case 9u: { return sqrt(v); }
        case 10u: { return inverseSqrt(v); }
        case 11u: { return -v; }
        default: { return abs(v); }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_id(wg, nwg, lid, 64u);
    if (i >= pu(0u)) { return; }
    y[i] = unary_op(pu(1u), x[i]);
}

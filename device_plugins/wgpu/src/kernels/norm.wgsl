// layer_norm (mode 0) or rms_norm (mode 1) over the last axis: one workgroup
// per row. Params: rows, n, eps (f32 bits), mode, has_weight, has_bias.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> scratch: array<f32, 64>;

fn reduce_sum(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) { scratch[lid] = scratch[lid] + scratch[lid + s]; }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wg, nwg);
    let n = pu(1u);
    if (row >= pu(0u)) { return; }
    let base = row * n;
    let rms = pu(3u) == 1u;
    var mean = 0.0;
    if (!rms) {
        var s = 0.0;
        for (var j = lid; j < n; j += 64u) { s += x[base + j]; }
        mean = reduce_sum(s, lid) / f32(n);
    }
    var q = 0.0;
    for (var j = lid; j < n; j += 64u) { let d = x[base + j] - mean; q += d * d; }
    let inv = inverseSqrt(reduce_sum(q, lid) / f32(n) + pf(2u));
    for (var j = lid; j < n; j += 64u) {
        var v = (x[base + j] - mean) * inv;
        if (pu(4u) == 1u) { v = v * w[j]; }
        if (pu(5u) == 1u) { v = v + bias[j]; }
        y[base + j] = v;
    }
}

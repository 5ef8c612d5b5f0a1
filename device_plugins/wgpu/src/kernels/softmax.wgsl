// softmax / log_softmax along an axis: one workgroup per (outer, inner) row.
// Params: outer, n, inner, log.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> scratch: array<f32, 64>;

fn reduce_max(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) { scratch[lid] = max(scratch[lid], scratch[lid + s]); }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}
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
    let outer = pu(0u);
    let n = pu(1u);
    let inner = pu(2u);
    if (row >= outer * inner) { return; }
    let base = (row / inner) * n * inner + row % inner;
    var m = bitcast<f32>(0xff800000u);
    for (var j = lid; j < n; j += 64u) { m = max(m, x[base + j * inner]); }
    m = reduce_max(m, lid);
    var s = 0.0;
    for (var j = lid; j < n; j += 64u) { s += exp(x[base + j * inner] - m); }
    s = reduce_sum(s, lid);
    let log_s = log(s);
    for (var j = lid; j < n; j += 64u) {
        let v = x[base + j * inner] - m;
        if (pu(3u) == 1u) {
            y[base + j * inner] = v - log_s;
        } else {
            y[base + j * inner] = exp(v) / s;
        }
    }
}

// sum, mean, max, min or argmax of f32 along an axis: one workgroup per
// output. Params: outer, n, inner, kind (0 sum, 1 mean, 2 max, 3 min, 4 argmax).
// Output: f32, or i64 words (low, high) for argmax. NaN wins max and min, as on
// the CPU; ties go to the lowest index.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

var<workgroup> vals: array<f32, 64>;
var<workgroup> idxs: array<u32, 64>;

// Whether (a, ia) should be kept over (b, ib).
fn better(kind: u32, a: f32, ia: u32, b: f32, ib: u32) -> bool {
    if (is_nan(a) != is_nan(b)) { return is_nan(a); }
    if (is_nan(a) || a == b) { return ia < ib; }
    if (kind == 3u) { return a < b; }
    return a > b;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wg, nwg);
    let n = pu(1u);
    let inner = pu(2u);
    let kind = pu(3u);
    if (row >= pu(0u) * inner) { return; }
    let base = (row / inner) * n * inner + row % inner;
    var acc = 0.0;
    var best = 0.0;
    var best_i = 0xffffffffu;
    for (var j = lid; j < n; j += 64u) {
        let v = x[base + j * inner];
        acc += v;
        if (best_i == 0xffffffffu || better(kind, v, j, best, best_i)) { best = v; best_i = j; }
    }
    if (kind <= 1u) { vals[lid] = acc; } else { vals[lid] = best; }
    idxs[lid] = best_i;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            if (kind <= 1u) {
                vals[lid] = vals[lid] + vals[lid + s];
            } else if (idxs[lid + s] != 0xffffffffu &&
                       (idxs[lid] == 0xffffffffu || better(kind, vals[lid + s], idxs[lid + s], vals[lid], idxs[lid]))) {
                vals[lid] = vals[lid + s];
                idxs[lid] = idxs[lid + s];
            }
        }
        workgroupBarrier();
    }
    if (lid != 0u) { return; }
    switch kind {
        case 0u, 2u, 3u: { y[row] = bitcast<u32>(vals[0]); }
        case 1u: { y[row] = bitcast<u32>(vals[0] / f32(n)); }
        default: { y[2u * row] = idxs[0]; y[2u * row + 1u] = 0u; }
    }
}

// Top-k along an axis, one thread per (outer, inner) row: pick r is the best
// element that comes after pick r-1 in the order (value, then lower index),
// so no scratch is needed. Params: outer, n, inner, k, largest.
// Outputs: values f32 and indices i64 (low, high words), [outer, k, inner].
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> values: array<f32>;
@group(0) @binding(3) var<storage, read_write> indices: array<u32>;

// Whether (a, ia) comes before (b, ib) in the output order.
fn before(largest: bool, a: f32, ia: u32, b: f32, ib: u32) -> bool {
    if (is_nan(a) != is_nan(b)) { return is_nan(a) == largest; }
    if (is_nan(a) || a == b) { return ia < ib; }
    return (a > b) == largest;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_id(wg, nwg, lid, 64u);
    let n = pu(1u);
    let inner = pu(2u);
    let k = pu(3u);
    let largest = pu(4u) == 1u;
    if (row >= pu(0u) * inner) { return; }
    let o = row / inner;
    let i = row % inner;
    let base = o * n * inner + i;
    var prev = 0.0;
    var prev_i = 0xffffffffu;
    for (var r = 0u; r < k; r++) {
        var best = 0.0;
        var best_i = 0xffffffffu;
        for (var j = 0u; j < n; j++) {
            let v = x[base + j * inner];
            if (prev_i != 0xffffffffu && !before(largest, prev, prev_i, v, j)) { continue; }
            if (best_i == 0xffffffffu || before(largest, v, j, best, best_i)) { best = v; best_i = j; }
        }
        let at = (o * k + r) * inner + i;
        values[at] = best;
        indices[2u * at] = best_i;
        indices[2u * at + 1u] = 0u;
        prev = best;
        prev_i = best_i;
    }
}

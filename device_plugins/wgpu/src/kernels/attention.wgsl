// Fused attention: one workgroup per (batch, query, head) row. Scores for a
// chunk of keys go to workgroup memory, the softmax is online across chunks
// (running max and sum, the output rescaled), so any seq_k fits.
// Params: batch, seq_q, seq_k, heads_q, heads_kv, dim, dim_v, scale (f32),
// causal, has_mask. q, k, v contiguous [batch, seq, heads, dim]; mask bytes
// [batch, seq_k] (nonzero = attend).
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const CHUNK: u32 = 512u;
const MAX_DV: u32 = 256u;
var<workgroup> qrow: array<f32, 256>;
var<workgroup> scores: array<f32, 512>;
var<workgroup> scratch: array<f32, 64>;

fn reduce(v: f32, lid: u32, is_max: bool) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            if (is_max) { scratch[lid] = max(scratch[lid], scratch[lid + s]); }
            else { scratch[lid] = scratch[lid] + scratch[lid + s]; }
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

fn mask_byte(i: u32) -> u32 { return (mask[i / 4u] >> ((i % 4u) * 8u)) & 0xffu; }

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wg, nwg);
    let batch = pu(0u);
    let sq = pu(1u);
    let sk = pu(2u);
    let hq = pu(3u);
    let hkv = pu(4u);
    let dim = pu(5u);
    let dv = pu(6u);
    let scale = pf(7u);
    if (row >= batch * sq * hq) { return; }
    let h = row % hq;
    let i = (row / hq) % sq;
    let b = row / (hq * sq);
    let hk = h / (hq / hkv);
    for (var d = lid; d < dim; d += 64u) { qrow[d] = q[row * dim + d]; }
    workgroupBarrier();
    // Keys j with j <= i + (seq_k - seq_q) under the causal mask.
    var key_end = sk;
    if (pu(8u) == 1u) { key_end = u32(clamp(i32(i) + i32(sk) - i32(sq) + 1, 0, i32(sk))); }
    let neg_inf = bitcast<f32>(0xff800000u);
    var m = neg_inf;
    var total = 0.0;
    var acc: array<f32, 4>;
    for (var c = 0u; c < 4u; c++) { acc[c] = 0.0; }
    for (var j0 = 0u; j0 < key_end; j0 += CHUNK) {
        let nj = min(CHUNK, key_end - j0);
        var local_max = neg_inf;
        for (var jj = lid; jj < nj; jj += 64u) {
            let j = j0 + jj;
            var s = neg_inf;
            if (pu(9u) == 0u || mask_byte(b * sk + j) != 0u) {
                let kb = ((b * sk + j) * hkv + hk) * dim;
                var dot = 0.0;
                for (var d = 0u; d < dim; d++) { dot += qrow[d] * k[kb + d]; }
                s = dot * scale;
            }
            scores[jj] = s;
            local_max = max(local_max, s);
        }
        let new_m = max(m, reduce(local_max, lid, true));
        // A chunk (so far) of masked keys only: nothing to add, nothing to rescale.
        let rescale = select(exp(m - new_m), 1.0, new_m == neg_inf);
        var local_sum = 0.0;
        for (var jj = lid; jj < nj; jj += 64u) {
            let p = select(exp(scores[jj] - new_m), 0.0, scores[jj] == neg_inf);
            scores[jj] = p;
            local_sum += p;
        }
        total = total * rescale + reduce(local_sum, lid, false);
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            let d = lid + c * 64u;
            if (d < dv) {
                var o = acc[c] * rescale;
                for (var jj = 0u; jj < nj; jj++) {
                    o += scores[jj] * v[((b * sk + j0 + jj) * hkv + hk) * dv + d];
                }
                acc[c] = o;
            }
        }
        m = new_m;
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid + c * 64u;
        if (d < dv) {
            var o = 0.0;
            if (total > 0.0) { o = acc[c] / total; }
            y[row * dv + d] = o;
        }
    }
}

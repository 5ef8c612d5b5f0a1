// Rotary embedding on x [batch, seq, heads, dim], one thread per element.
// Params: n, seq, heads, dim, rotary_dim, interleaved, has_positions,
// positions_per_batch, offset (i32), has_freq_lo.
// The angle pos * inv_freq is kept in two floats (inv_freq = hi + lo, the
// product's rounding error recovered with fma) and reduced modulo 2*pi before
// sin/cos, so large positions keep f32 accuracy as the CPU's f64 angle does.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<i32>;
@group(0) @binding(3) var<storage, read> freq_hi: array<f32>;
@group(0) @binding(4) var<storage, read> freq_lo: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

fn reduced_angle(pos: f32, i: u32) -> f32 {
    let fh = freq_hi[i];
    var fl = 0.0;
    if (pu(9u) == 1u) { fl = freq_lo[i]; }
    let p = pos * fh;
    let err = fma(pos, fh, -p) + pos * fl;
    let two_pi_hi = 6.28318548202514648;
    let two_pi_lo = -1.7484555314695172e-7;
    let k = round(p / two_pi_hi);
    return ((p - k * two_pi_hi) - k * two_pi_lo) + err;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = flat_id(wg, nwg, lid, 64u);
    if (idx >= pu(0u)) { return; }
    let seq = pu(1u);
    let heads = pu(2u);
    let dim = pu(3u);
    let rd = pu(4u);
    let d = idx % dim;
    let token = idx / (dim * heads);
    let s = token % seq;
    let b = token / seq;
    if (d >= rd) { y[idx] = x[idx]; return; }
    var pos: i32;
    if (pu(6u) == 1u) {
        var at = s;
        if (pu(7u) == 1u) { at = b * seq + s; }
        pos = positions[at];
    } else {
        pos = pi(8u) + i32(s);
    }
    let half = rd / 2u;
    var i: u32;
    var partner: u32;
    var sign: f32;
    if (pu(5u) == 1u) {
        i = d / 2u;
        if (d % 2u == 0u) { partner = idx + 1u; sign = -1.0; } else { partner = idx - 1u; sign = 1.0; }
    } else {
        if (d < half) { i = d; partner = idx + half; sign = -1.0; } else { i = d - half; partner = idx - half; sign = 1.0; }
    }
    let angle = reduced_angle(f32(pos), i);
    y[idx] = x[idx] * cos(angle) + sign * x[partner] * sin(angle);
}

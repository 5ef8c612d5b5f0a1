// Tiled f32 GEMM with the linear epilogue: y = act(A·B + bias) + residual.
// A 64x64 output tile per 8x8 workgroup, each thread 8x8, K in steps of 16
// through workgroup memory. A element (m, k) at a_base + m*a_ms + k*a_ks, B
// element (k, n) at b_base + k*b_ks + n*b_ns, so a linear's W [n, k] is read
// transposed in place. Batches (grid z) broadcast over up to 4 dims.
// B may hold f32, or f16 / bf16 (a linear's 16-bit weights stay 16-bit on the
// device, two per word, widened as the tile is loaded; accumulation is f32).
// Params: M, N, K, a_ms, a_ks, b_ks, b_ns, activation, has_bias, has_residual,
// batch_ndim, batch shape[4] at 11, a batch strides[4] at 15, b batch strides[4] at 19,
// b dtype at 23 (0 f32, 1 f16, 2 bf16).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// IEEE half bits to f32 (by bits: the unpack builtin needs an optional capability).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if (exp == 0x1fu) { return bitcast<f32>(sign | 0x7f800000u | (man << 13u)); }
    if (exp == 0u) {
        let v = f32(man) * 5.9604644775390625e-8;
        return select(v, -v, sign != 0u);
    }
    return bitcast<f32>(sign | ((exp + 112u) << 23u) | (man << 13u));
}

fn load_b(i: u32, kind: u32) -> f32 {
    if (kind == 0u) { return bitcast<f32>(b[i]); }
    let bits = (b[i / 2u] >> ((i % 2u) * 16u)) & 0xffffu;
    if (kind == 2u) { return bitcast<f32>(bits << 16u); }
    return f16_to_f32(bits);
}

const TILE: u32 = 64u;
const BK: u32 = 16u;
// [BK][TILE / 4] each: 8 consecutive rows (columns) of a thread are two vec4 reads.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let M = pu(0u);
    let N = pu(1u);
    let K = pu(2u);
    let a_ms = pu(3u);
    let a_ks = pu(4u);
    let b_ks = pu(5u);
    let b_ns = pu(6u);
    var a_base = 0u;
    var b_base = 0u;
    var rest = wg.z;
    let bnd = pu(10u);
    for (var d = 0u; d < bnd; d++) {
        let dd = bnd - 1u - d;
        let c = rest % pu(11u + dd);
        rest = rest / pu(11u + dd);
        a_base += c * pu(15u + dd);
        b_base += c * pu(19u + dd);
    }
    let b_kind = pu(23u);
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    // acc[2 * i + h]: row ty*8 + i, columns tx*8 + 4h .. +4.
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }
    for (var k0 = 0u; k0 < K; k0 += BK) {
        // 1024 elements of each tile, 16 per thread.
        for (var t = 0u; t < 16u; t++) {
            let e = lid + t * 64u;
            // A: element (m = e / BK, k = e % BK), consecutive threads along k.
            let am = e / BK;
            let ak = e % BK;
            var av = 0.0;
            if (row0 + am < M && k0 + ak < K) { av = a[a_base + (row0 + am) * a_ms + (k0 + ak) * a_ks]; }
            a_tile[ak * 16u + am / 4u][am % 4u] = av;
            // B: element (k, n) with consecutive threads along whichever of k, n is contiguous.
            var bk: u32;
            var bn: u32;
            if (b_ns == 1u) { bk = e / TILE; bn = e % TILE; } else { bn = e / BK; bk = e % BK; }
            var bv = 0.0;
            if (col0 + bn < N && k0 + bk < K) { bv = load_b(b_base + (k0 + bk) * b_ks + (col0 + bn) * b_ns, b_kind); }
            b_tile[bk * 16u + bn / 4u][bn % 4u] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = a_tile[kk * 16u + lid3.y * 2u];
            let a1 = a_tile[kk * 16u + lid3.y * 2u + 1u];
            let b0 = b_tile[kk * 16u + lid3.x * 2u];
            let b1 = b_tile[kk * 16u + lid3.x * 2u + 1u];
            for (var i = 0u; i < 4u; i++) {
                acc[2u * i] = fma(vec4<f32>(a0[i]), b0, acc[2u * i]);
                acc[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, acc[2u * i + 1u]);
                acc[2u * i + 8u] = fma(vec4<f32>(a1[i]), b0, acc[2u * i + 8u]);
                acc[2u * i + 9u] = fma(vec4<f32>(a1[i]), b1, acc[2u * i + 9u]);
            }
        }
        workgroupBarrier();
    }
    let out_base = wg.z * M * N;
    for (var i = 0u; i < 8u; i++) {
        let m = row0 + lid3.y * 8u + i;
        if (m >= M) { continue; }
        for (var h = 0u; h < 2u; h++) {
            let v4 = acc[2u * i + h];
            for (var j = 0u; j < 4u; j++) {
                let n = col0 + lid3.x * 8u + 4u * h + j;
                if (n >= N) { continue; }
                var v = v4[j];
                if (pu(8u) == 1u) { v += bias[n]; }
                v = activation(pu(7u), v);
                let o = out_base + m * N + n;
                if (pu(9u) == 1u) { v += residual[o]; }
                y[o] = v;
            }
        }
    }
}

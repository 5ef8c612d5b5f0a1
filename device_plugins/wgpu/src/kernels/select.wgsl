// where(cond, a, b) with broadcasting for elements of any size; masked_fill
// is where(mask, fill, x) with the fill value read at stride 0.
// cond is bytes (bool). One thread per output word.
// Params: n, elem_bytes, ndim, shape[6] at 3, cond strides[6] at 9, a strides at 15, b strides at 21.
@group(0) @binding(1) var<storage, read> cond: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<u32>;
//#bits cond
//#bits a
//#bits b

// (cond index, a index, b index) of output element e.
fn sources(e: u32) -> vec3<u32> {
    var rest = e;
    var at = vec3<u32>(0u, 0u, 0u);
    let ndim = pu(2u);
    for (var d = 0u; d < ndim; d++) {
        let dd = ndim - 1u - d;
        let c = rest % pu(3u + dd);
        rest = rest / pu(3u + dd);
        at += c * vec3<u32>(pu(9u + dd), pu(15u + dd), pu(21u + dd));
    }
    return at;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = flat_id(wg, nwg, lid, 64u);
    let n = pu(0u);
    let es = pu(1u);
    if (es == 8u) {
        let e = w / 2u;
        if (e >= n) { return; }
        let s = sources(e);
        if (bits_cond(s.x, 1u) != 0u) { y[w] = a[2u * s.y + w % 2u]; } else { y[w] = b[2u * s.z + w % 2u]; }
        return;
    }
    let per_word = 4u / es;
    if (w * per_word >= n) { return; }
    var word = 0u;
    for (var j = 0u; j < per_word; j++) {
        let e = w * per_word + j;
        if (e >= n) { break; }
        let s = sources(e);
        var v: u32;
        if (bits_cond(s.x, 1u) != 0u) { v = bits_a(s.y, es); } else { v = bits_b(s.z, es); }
        word = put_bits(word, j, es, v);
    }
    y[w] = word;
}

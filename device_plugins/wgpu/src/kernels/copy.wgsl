// Strided copy of elements of any size (1, 2, 4 or 8 bytes): transpose,
// slice, and one part of a concat. One thread per output word (32 bits), so
// sub-word elements never race. Output element e has multi-index idx over
// `shape`; it reads source element base + sum((idx[d] - lo if d == axis) * stride[d]).
// Only elements with lo <= idx[axis] < hi are written (a concat part); with
// rmw the word's other elements are kept.
// Params: n, elem_bytes, ndim, rmw, axis, lo, hi, base, shape[6] at 8, stride[6] at 14.
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;
//#bits src

// The source element of output element e, or 0xffffffff outside the region.
fn source_of(e: u32) -> u32 {
    var rest = e;
    var at = pu(7u);
    let ndim = pu(2u);
    for (var d = 0u; d < ndim; d++) {
        let dd = ndim - 1u - d;
        var c = rest % pu(8u + dd);
        rest = rest / pu(8u + dd);
        if (dd == pu(4u)) {
            if (c < pu(5u) || c >= pu(6u)) { return 0xffffffffu; }
            c -= pu(5u);
        }
        at += c * pu(14u + dd);
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
        let s = source_of(e);
        if (s != 0xffffffffu) { y[w] = src[2u * s + w % 2u]; }
        return;
    }
    let per_word = 4u / es;
    if (w * per_word >= n) { return; }
    var word = 0u;
    if (pu(3u) == 1u) { word = y[w]; }
    for (var j = 0u; j < per_word; j++) {
        let e = w * per_word + j;
        if (e >= n) { break; }
        let s = source_of(e);
        if (s == 0xffffffffu) { continue; }
        word = put_bits(word, j, es, bits_src(s, es));
    }
    y[w] = word;
}

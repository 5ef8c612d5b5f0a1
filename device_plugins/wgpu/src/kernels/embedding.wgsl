// Rows of a table gathered by id, elements of any size; one thread per output
// word. ids are i32, or i64 as (low, high) words. An id outside [0, vocab)
// gives a zero row and raises the run's error flag.
// Params: n, elem_bytes, row (elements), vocab, ids_i64.
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;
@group(0) @binding(4) var<storage, read_write> flag: array<atomic<u32>>;
//#bits table

// The table element of output element e, or 0xffffffff for a bad id.
fn source_of(e: u32) -> u32 {
    let row = pu(2u);
    let r = e / row;
    var id: u32;
    var ok: bool;
    if (pu(4u) == 1u) {
        id = ids[2u * r];
        ok = ids[2u * r + 1u] == 0u && id < pu(3u);
    } else {
        id = ids[r];
        ok = id < pu(3u);
    }
    if (!ok) {
        atomicMax(&flag[0], 1u);
        return 0xffffffffu;
    }
    return id * row + e % row;
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
        var v = 0u;
        if (s != 0xffffffffu) { v = table[2u * s + w % 2u]; }
        y[w] = v;
        return;
    }
    let per_word = 4u / es;
    if (w * per_word >= n) { return; }
    var word = 0u;
    for (var j = 0u; j < per_word; j++) {
        let e = w * per_word + j;
        if (e >= n) { break; }
        let s = source_of(e);
        var v = 0u;
        if (s != 0xffffffffu) { v = bits_table(s, es); }
        word = put_bits(word, j, es, v);
    }
    y[w] = word;
}

// Element conversion between f32, f16, bf16, i64, i32, i16, i8, u8 and bool
// (codes 0..8, kernels::dtype_code), with the CPU's rules: float to integer
// truncates and saturates, integer to integer wraps, anything to bool is != 0.
// One thread per output word. Params: n, src code, dst code.
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;
//#bits x

fn code_bytes(code: u32) -> u32 {
    switch code {
        case 0u, 4u: { return 4u; }
        case 1u, 2u, 5u: { return 2u; }
        case 3u: { return 8u; }
        default: { return 1u; }
    }
}
fn is_float_code(code: u32) -> bool { return code <= 2u; }

// A source element: a float (f32) or an integer as i64 words (low, high).
struct Num { f: f32, lo: u32, hi: u32 }

fn sign_word(v: i32) -> u32 { return select(0u, 0xffffffffu, v < 0); }

fn read_num(e: u32, code: u32) -> Num {
    switch code {
        case 0u: { return Num(bitcast<f32>(x[e]), 0u, 0u); }
        case 1u: { return Num(f16_to_f32(bits_x(e, 2u)), 0u, 0u); }
        case 2u: { return Num(bitcast<f32>(bits_x(e, 2u) << 16u), 0u, 0u); }
        case 3u: { return Num(0.0, x[2u * e], x[2u * e + 1u]); }
        case 4u: { let v = bitcast<i32>(x[e]); return Num(0.0, u32(v), sign_word(v)); }
        case 5u: { let v = (bitcast<i32>(bits_x(e, 2u)) << 16u) >> 16u; return Num(0.0, u32(v), sign_word(v)); }
        case 6u: { let v = (bitcast<i32>(bits_x(e, 1u)) << 24u) >> 24u; return Num(0.0, u32(v), sign_word(v)); }
        default: { return Num(0.0, bits_x(e, 1u), 0u); }
    }
}

fn int_to_f32(v: Num) -> f32 {
    if (v.hi == sign_word(bitcast<i32>(v.lo))) { return f32(bitcast<i32>(v.lo)); }
    return f32(bitcast<i32>(v.hi)) * 4294967296.0 + f32(v.lo);
}

// Float to i64 words, truncating toward zero and saturating (NaN gives 0).
fn f32_to_i64(f: f32) -> vec2<u32> {
    if (is_nan(f)) { return vec2<u32>(0u, 0u); }
    let t = trunc(f);
    if (t >= 9.223372e18) { return vec2<u32>(0xffffffffu, 0x7fffffffu); }
    if (t <= -9.223372e18) { return vec2<u32>(0u, 0x80000000u); }
    if (abs(t) < 2147483648.0) { let v = i32(t); return vec2<u32>(u32(v), sign_word(v)); }
    let hi = floor(t / 4294967296.0);
    let lo = t - hi * 4294967296.0;
    return vec2<u32>(u32(lo), u32(bitcast<i32>(i32(hi))));
}

// IEEE half <-> single by bits (the pack/unpack builtins need an optional capability).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if (exp == 0x1fu) { return bitcast<f32>(sign | 0x7f800000u | (man << 13u)); }
    if (exp == 0u) {
        // Subnormal (or zero): man * 2^-24.
        let v = f32(man) * 5.9604644775390625e-8;
        return select(v, -v, sign != 0u);
    }
    return bitcast<f32>(sign | ((exp + 112u) << 23u) | (man << 13u));
}
// Round to nearest, ties to even; overflow to infinity.
fn f32_to_f16(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) { return sign | 0x7c00u | select(0u, 0x200u, a > 0x7f800000u); }
    if (a >= 0x477ff000u) { return sign | 0x7c00u; }
    if (a < 0x38800000u) {
        // Subnormal half: round |f| / 2^-24 to an integer, ties to even.
        let v = bitcast<f32>(a) * 16777216.0;
        var r = round(v);
        return sign | u32(r);
    }
    let rounded = a + 0xfffu + ((a >> 13u) & 1u);
    return sign | ((rounded - 0x38000000u) >> 13u);
}

fn f32_to_bf16(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    if (is_nan(f)) { return (b >> 16u) | 0x40u; }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// Output bits (the low es*8 bits, or the `half` word of an i64) of `v` as `dst`.
fn convert(v: Num, src: u32, dst: u32, half: u32) -> u32 {
    let from_float = is_float_code(src);
    var f = v.f;
    if (!from_float) { f = int_to_f32(v); }
    switch dst {
        case 0u: { return bitcast<u32>(f); }
        case 1u: { return f32_to_f16(f); }
        case 2u: { return f32_to_bf16(f); }
        case 3u: {
            var w = vec2<u32>(v.lo, v.hi);
            if (from_float) { w = f32_to_i64(f); }
            return select(w.x, w.y, half == 1u);
        }
        case 8u: {
            if (from_float) { return select(0u, 1u, f != 0.0); }
            return select(0u, 1u, v.lo != 0u || v.hi != 0u);
        }
        default: {
            // i32, i16, i8, u8: wrap integers, saturate floats.
            var lo = v.lo;
            if (from_float) {
                var lim = vec2<f32>(-2147483648.0, 2147483520.0);
                if (dst == 5u) { lim = vec2<f32>(-32768.0, 32767.0); }
                if (dst == 6u) { lim = vec2<f32>(-128.0, 127.0); }
                if (dst == 7u) { lim = vec2<f32>(0.0, 255.0); }
                if (is_nan(f)) { lo = 0u; } else { lo = u32(i32(clamp(trunc(f), lim.x, lim.y))); }
                if (dst == 4u && f >= 2147483648.0) { lo = 0x7fffffffu; }
            }
            let es = code_bytes(dst);
            if (es == 4u) { return lo; }
            return lo & ((1u << (es * 8u)) - 1u);
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = flat_id(wg, nwg, lid, 64u);
    let n = pu(0u);
    let src = pu(1u);
    let dst = pu(2u);
    let es = code_bytes(dst);
    if (es == 8u) {
        let e = w / 2u;
        if (e >= n) { return; }
        y[w] = convert(read_num(e, src), src, dst, w % 2u);
        return;
    }
    let per_word = 4u / es;
    if (w * per_word >= n) { return; }
    var word = 0u;
    for (var j = 0u; j < per_word; j++) {
        let e = w * per_word + j;
        if (e >= n) { break; }
        word = put_bits(word, j, es, convert(read_num(e, src), src, dst, 0u));
    }
    y[w] = word;
}

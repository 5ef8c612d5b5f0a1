// rtserve's CUDA kernels: every graph op except the GEMMs (cuBLAS does those),
// compiled once per process with NVRTC (see kernels.rs). No CUDA headers are
// included, so NVRTC needs nothing beyond its own library: f16 and bf16 are
// handled as raw bits, converted with PTX instructions or integer arithmetic.
//
// Conventions: every tensor is contiguous; `n` counts elements; loops are
// grid-stride so any grid size covers any n. Dtype codes follow DTYPE_CODE in
// kernels.rs: 0 f32, 1 f64, 2 f16, 3 bf16, 4 i64, 5 i32, 6 i16, 7 i8, 8 u8, 9 bool.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define MAX_DIMS 8
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fc00000)
#define FULL_MASK 0xffffffffu

// Broadcast indexing: the output's shape and each operand's element strides
// (0 along broadcast dims, negative for reversed slices). Mirrors `Strided` in ops.rs.
struct Strided {
    int ndim;
    int pad;
    i64 shape[MAX_DIMS];
    i64 stride[3][MAX_DIMS];
};

__device__ __forceinline__ void offsets_of(const Strided &s, i64 i, i64 *o0, i64 *o1, i64 *o2) {
    i64 a = 0, b = 0, c = 0;
    for (int d = s.ndim - 1; d >= 0; --d) {
        i64 n = s.shape[d];
        i64 q = i / n;
        i64 r = i - q * n;
        a += r * s.stride[0][d];
        b += r * s.stride[1][d];
        c += r * s.stride[2][d];
        i = q;
    }
    *o0 = a;
    *o1 = b;
    *o2 = c;
}

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ---- element conversion ---------------------------------------------------------------

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
    return (u16)(u >> 16);
}
// double -> f32 rounded to odd: narrowing that to f16/bf16 with round-to-nearest-even
// then rounds once (f32 keeps more than two extra bits), like a direct conversion.
__device__ __forceinline__ float f64_to_f32_odd(double d) {
    float f = __double2float_rz(d);
    if ((double)f != d && !isnan(d)) f = __uint_as_float(__float_as_uint(f) | 1u);
    return f;
}

// The value of element i as f64 (floats, bool) or i64 (integers), per cast.rs.
__device__ double load_f64(const u8 *p, int dt, i64 i) {
    switch (dt) {
    case 0: return (double)((const float *)p)[i];
    case 1: return ((const double *)p)[i];
    case 2: return (double)f16_to_f32(((const u16 *)p)[i]);
    case 3: return (double)bf16_to_f32(((const u16 *)p)[i]);
    case 4: return (double)((const i64 *)p)[i];
    case 5: return (double)((const int *)p)[i];
    case 6: return (double)((const short *)p)[i];
    case 7: return (double)((const signed char *)p)[i];
    case 8: return (double)p[i];
    default: return p[i] != 0 ? 1.0 : 0.0;
    }
}
__device__ i64 load_i64(const u8 *p, int dt, i64 i) {
    switch (dt) {
    case 4: return ((const i64 *)p)[i];
    case 5: return ((const int *)p)[i];
    case 6: return ((const short *)p)[i];
    case 7: return ((const signed char *)p)[i];
    case 8: return p[i];
    case 9: return p[i] != 0;
    default: return 0;
    }
}
__device__ __forceinline__ bool is_float_dt(int dt) { return dt <= 3; }
__device__ __forceinline__ bool truthy(const u8 *p, int dt, i64 i) {
    return is_float_dt(dt) ? load_f64(p, dt, i) != 0.0 || isnan(load_f64(p, dt, i)) : load_i64(p, dt, i) != 0;
}
// float -> integer: truncate toward zero, saturating (Rust's `as`; NaN -> 0).
__device__ __forceinline__ i64 f64_to_i64_sat(double v) {
    if (isnan(v)) return 0;
    if (v >= 9223372036854775807.0) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0) return (i64)(-9223372036854775807LL - 1);
    return (i64)v;
}
__device__ void store_f64(u8 *p, int dt, i64 i, double v) {
    switch (dt) {
    case 0: ((float *)p)[i] = (float)v; break;
    case 1: ((double *)p)[i] = v; break;
    case 2: ((u16 *)p)[i] = f32_to_f16(f64_to_f32_odd(v)); break;
    case 3: ((u16 *)p)[i] = f32_to_bf16(f64_to_f32_odd(v)); break;
    case 9: p[i] = v != 0.0 || isnan(v); break;
    default: break;
    }
}
__device__ void store_i64(u8 *p, int dt, i64 i, i64 v) {
    switch (dt) {
    case 0: ((float *)p)[i] = (float)v; break;  // one rounding, like `v as f32`
    case 1: ((double *)p)[i] = (double)v; break;
    case 2: ((u16 *)p)[i] = f32_to_f16(f64_to_f32_odd((double)v)); break;
    case 3: ((u16 *)p)[i] = f32_to_bf16(f64_to_f32_odd((double)v)); break;
    case 4: ((i64 *)p)[i] = v; break;
    case 5: ((int *)p)[i] = (int)(u32)(u64)v; break;  // integers wrap
    case 6: ((short *)p)[i] = (short)(u16)(u64)v; break;
    case 7: ((signed char *)p)[i] = (signed char)(u8)(u64)v; break;
    case 8: p[i] = (u8)(u64)v; break;
    default: p[i] = v != 0; break;
    }
}

extern "C" __global__ void cast_any(const u8 *src, int sdt, u8 *dst, int ddt, i64 n) {
    GRID_STRIDE(i, n) {
        if (!is_float_dt(sdt)) {
            store_i64(dst, ddt, i, load_i64(src, sdt, i));
        } else if (is_float_dt(ddt) || ddt == 9) {
            store_f64(dst, ddt, i, load_f64(src, sdt, i));
        } else {
            store_i64(dst, ddt, i, f64_to_i64_sat(load_f64(src, sdt, i)));
        }
    }
}

// f32 <-> f16/bf16 fast paths (activations of half-precision GEMMs, results).
extern "C" __global__ void f32_to_half(const float *src, u16 *dst, int bf16, i64 n) {
    GRID_STRIDE(i, n) { dst[i] = bf16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]); }
}

// The same, four elements per thread with 16-byte loads and 8-byte stores: rounding a
// linear's f32 activations on every call is bound by memory bandwidth, and one element
// per thread reached about a third of it. `n4` groups of four; src 16-, dst 8-byte aligned.
struct alignas(16) Float4 { float x, y, z, w; };
struct alignas(8) Half4 { u32 lo, hi; };
extern "C" __global__ void f32_to_half4(const Float4 *src, Half4 *dst, int bf16, i64 n4) {
    GRID_STRIDE(i, n4) {
        Float4 v = src[i];
        u32 a, b, c, d;
        if (bf16) {
            a = f32_to_bf16(v.x); b = f32_to_bf16(v.y); c = f32_to_bf16(v.z); d = f32_to_bf16(v.w);
        } else {
            a = f32_to_f16(v.x); b = f32_to_f16(v.y); c = f32_to_f16(v.z); d = f32_to_f16(v.w);
        }
        dst[i] = Half4{a | (b << 16), c | (d << 16)};
    }
}

// ---- elementwise ------------------------------------------------------------------------
// Op codes: unary Exp 0, Log 1, Tanh 2, Erf 3, Gelu 4, GeluTanh 5, Silu 6, Relu 7,
// Sigmoid 8, Sqrt 9, Rsqrt 10, Neg 11, Abs 12; binary Add 0, Sub 1, Mul 2, Div 3,
// Max 4, Min 5, Pow 6 (see ops.rs).

template <typename T> __device__ __forceinline__ T unary_float(int op, T x) {
    const T half = (T)0.5, one = (T)1;
    switch (op) {
    case 0: return exp(x);
    case 1: return log(x);
    case 2: return tanh(x);
    case 3: return erf(x);
    case 4: return half * x * (one + erf(x * (T)0.70710678118654752440));
    case 5: return half * x * (one + tanh((T)0.79788456080286535588 * (x + (T)0.044715 * x * x * x)));
    case 6: return x / (one + exp(-x));
    case 7: return x > (T)0 ? x : (x != x ? x : (T)0);
    case 8: return one / (one + exp(-x));
    case 9: return sqrt(x);
    case 10: return one / sqrt(x);
    case 11: return -x;
    default: return fabs(x);
    }
}
template <typename T> __device__ __forceinline__ T unary_int(int op, T x) {
    switch (op) {
    case 7: return x > (T)0 ? x : (T)0;
    case 11: return (T)(0 - (u64)(i64)x);
    default: return (T)(x < (T)1 - (T)1 ? (T)(0 - (u64)(i64)x) : x);
    }
}
template <typename T> __device__ __forceinline__ T binary_float(int op, T a, T b) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return (a != a || b != b) ? a + b : (a > b ? a : b);
    case 5: return (a != a || b != b) ? a + b : (a < b ? a : b);
    default: return pow(a, b);
    }
}
template <typename T> __device__ __forceinline__ T binary_int(int op, T a, T b) {
    switch (op) {
    case 0: return (T)((u64)(i64)a + (u64)(i64)b);
    case 1: return (T)((u64)(i64)a - (u64)(i64)b);
    case 2: return (T)((u64)(i64)a * (u64)(i64)b);
    case 4: return a > b ? a : b;
    default: return a < b ? a : b;
    }
}

#define UNARY(name, T, f)                                                                    \
    extern "C" __global__ void name(int op, const T *x, T *y, i64 n) {                       \
        GRID_STRIDE(i, n) { y[i] = f<T>(op, x[i]); }                                         \
    }
UNARY(unary_f32, float, unary_float)
UNARY(unary_f64, double, unary_float)
UNARY(unary_i64, i64, unary_int)
UNARY(unary_i32, int, unary_int)
UNARY(unary_i16, short, unary_int)
UNARY(unary_i8, signed char, unary_int)
UNARY(unary_u8, u8, unary_int)

// `contiguous`: a, b and the output all have the output's shape (no index math).
#define BINARY(name, T, f)                                                                   \
    extern "C" __global__ void name(int op, const T *a, const T *b, T *y, Strided s,         \
                                    int contiguous, i64 n) {                                 \
        GRID_STRIDE(i, n) {                                                                  \
            if (contiguous) {                                                                \
                y[i] = f<T>(op, a[i], b[i]);                                                 \
            } else {                                                                         \
                i64 oa, ob, unused;                                                          \
                offsets_of(s, i, &oa, &ob, &unused);                                         \
                y[i] = f<T>(op, a[oa], b[ob]);                                               \
            }                                                                                \
        }                                                                                    \
    }
BINARY(binary_f32, float, binary_float)
BINARY(binary_f64, double, binary_float)
BINARY(binary_i64, i64, binary_int)
BINARY(binary_i32, int, binary_int)
BINARY(binary_i16, short, binary_int)
BINARY(binary_i8, signed char, binary_int)
BINARY(binary_u8, u8, binary_int)

// Linear's epilogue after the cuBLAS product: y = act(y + bias) + residual.
// Activation codes: None 0, Relu 1, Gelu 2, GeluTanh 3, Silu 4.
extern "C" __global__ void bias_act_residual(float *y, const float *bias, const float *residual,
                                            int act, i64 n_cols, i64 n) {
    GRID_STRIDE(i, n) {
        float v = y[i];
        if (bias) v += bias[i % n_cols];
        switch (act) {
        case 1: v = unary_float<float>(7, v); break;
        case 2: v = unary_float<float>(4, v); break;
        case 3: v = unary_float<float>(5, v); break;
        case 4: v = unary_float<float>(6, v); break;
        default: break;
        }
        if (residual) v += residual[i];
        y[i] = v;
    }
}

// ---- data movement (by element size) -----------------------------------------------------

template <typename T> __device__ __forceinline__ void copy_el(u8 *dst, i64 di, const u8 *src, i64 si) {
    ((T *)dst)[di] = ((const T *)src)[si];
}
__device__ __forceinline__ void copy_sized(u8 *dst, i64 di, const u8 *src, i64 si, int esize) {
    switch (esize) {
    case 1: copy_el<u8>(dst, di, src, si); break;
    case 2: copy_el<u16>(dst, di, src, si); break;
    case 4: copy_el<u32>(dst, di, src, si); break;
    default: copy_el<u64>(dst, di, src, si); break;
    }
}

// out[i] = src[base + offset_0(i)]: transpose, slice (any step), broadcast copies.
extern "C" __global__ void strided_copy(const u8 *src, u8 *dst, int esize, Strided s, i64 base, i64 n) {
    GRID_STRIDE(i, n) {
        i64 o, u1, u2;
        offsets_of(s, i, &o, &u1, &u2);
        copy_sized(dst, i, src, base + o, esize);
    }
}

// Row blocks: concat writes each input as `rows` rows of `row_bytes` at a pitch.
extern "C" __global__ void copy_rows(const u8 *src, u8 *dst, i64 rows, i64 row_bytes, i64 src_pitch,
                                     i64 dst_pitch) {
    i64 n = rows * row_bytes;
    GRID_STRIDE(i, n) {
        i64 r = i / row_bytes, c = i - r * row_bytes;
        dst[r * dst_pitch + c] = src[r * src_pitch + c];
    }
}

// where(cond, a, b): operand 0 = cond, 1 = a, 2 = b.
extern "C" __global__ void where_any(const u8 *cond, int cdt, const u8 *a, const u8 *b, u8 *y, int esize,
                                     Strided s, i64 n) {
    GRID_STRIDE(i, n) {
        i64 oc, oa, ob;
        offsets_of(s, i, &oc, &oa, &ob);
        if (truthy(cond, cdt, oc)) copy_sized(y, i, a, oa, esize);
        else copy_sized(y, i, b, ob, esize);
    }
}

// masked_fill(x, mask, value): operand 0 = x, 1 = mask; `fill` holds value's bits.
extern "C" __global__ void masked_fill_any(const u8 *x, const u8 *mask, int mdt, u8 *y, int esize, u64 fill,
                                           Strided s, i64 n) {
    GRID_STRIDE(i, n) {
        i64 ox, om, unused;
        offsets_of(s, i, &ox, &om, &unused);
        if (truthy(mask, mdt, om)) copy_sized(y, i, (const u8 *)&fill, 0, esize);
        else copy_sized(y, i, x, ox, esize);
    }
}

// Embedding rows: one block per id. An id outside [0, vocab) sets *bad (checked after the run).
extern "C" __global__ void embedding_rows(const u8 *w, const u8 *ids, int idt, u8 *y, i64 n_ids, i64 row_bytes,
                                          i64 vocab, int *bad) {
    for (i64 r = blockIdx.x; r < n_ids; r += gridDim.x) {
        i64 id = load_i64(ids, idt, r);
        if (id < 0 || id >= vocab) {
            if (threadIdx.x == 0) atomicExch(bad, 1);
            continue;
        }
        const u8 *src = w + id * row_bytes;
        u8 *dst = y + r * row_bytes;
        if ((row_bytes & 3) == 0 && (((u64)src | (u64)dst) & 3) == 0) {
            for (i64 c = threadIdx.x; c < row_bytes / 4; c += blockDim.x) ((u32 *)dst)[c] = ((const u32 *)src)[c];
        } else {
            for (i64 c = threadIdx.x; c < row_bytes; c += blockDim.x) dst[c] = src[c];
        }
    }
}

// ---- block reductions ---------------------------------------------------------------------

__device__ __forceinline__ float warp_sum_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    __syncthreads();
    v = warp_sum_d(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : 0.0;
    return warp_sum_d(v);
}
__device__ float block_sum_f(float v) {
    __shared__ float part_f[32];
    __syncthreads();
    v = warp_sum_f(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) part_f[warp] = v;
    __syncthreads();
    v = lane < warps ? part_f[lane] : 0.0f;
    return warp_sum_f(v);
}
__device__ float block_max_f(float v) {
    __shared__ float part_m[32];
    __syncthreads();
    v = warp_max_f(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) part_m[warp] = v;
    __syncthreads();
    v = lane < warps ? part_m[lane] : -INFINITY;
    return warp_max_f(v);
}

// softmax / log_softmax along an axis of length n: x viewed as [outer, n, inner],
// one block per (outer, inner) row. NaN propagates like the CPU's (max picks NaN).
extern "C" __global__ void softmax_f32(const float *x, float *y, i64 outer, i64 n, i64 inner, int log_out) {
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        i64 o = row / inner, in = row - o * inner;
        const float *xr = x + o * n * inner + in;
        float *yr = y + o * n * inner + in;
        float m = -INFINITY;
        int saw_nan = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            float v = xr[j * inner];
            saw_nan |= v != v;
            m = fmaxf(m, v);
        }
        m = block_max_f(m);
        saw_nan = __syncthreads_or(saw_nan);
        if (saw_nan) m = NAN;
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += expf(xr[j * inner] - m);
        s = block_sum_f(s);
        float ls = logf(s);
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            float d = xr[j * inner] - m;
            yr[j * inner] = log_out ? d - ls : expf(d) / s;
        }
    }
}

// layer_norm over the last axis (n), f64 statistics; weight/bias optional (null).
extern "C" __global__ void layer_norm_f32(const float *x, const float *w, const float *b, float *y, i64 rows, i64 n,
                                          float eps) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double s = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
        double mean = block_sum_d(s) / (double)n;
        double v = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            double d = xr[j] - mean;
            v += d * d;
        }
        double var = block_sum_d(v) / (double)n;
        double rstd = 1.0 / sqrt(var + (double)eps);
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            double o = ((double)xr[j] - mean) * rstd;
            if (w) o *= (double)w[j];
            if (b) o += (double)b[j];
            yr[j] = (float)o;
        }
    }
}

extern "C" __global__ void rms_norm_f32(const float *x, const float *w, float *y, i64 rows, i64 n, float eps) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double s = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += (double)xr[j] * (double)xr[j];
        double rstd = 1.0 / sqrt(block_sum_d(s) / (double)n + (double)eps);
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            double o = (double)xr[j] * rstd;
            if (w) o *= (double)w[j];
            yr[j] = (float)o;
        }
    }
}

// Rotary embedding on x [batch, seq, heads, dim]: one thread per output element.
// positions: i64 [batch, seq] (pos_per_batch) or [seq], or null (offset + s).
// inv_freq: f64 [rotary_dim / 2]. Angles in f64 like the CPU, products in f32.
extern "C" __global__ void rope_f32(const float *x, float *y, const i64 *positions, int pos_per_batch, i64 offset,
                                    const double *inv_freq, i64 seq, i64 heads, i64 dim, i64 rotary_dim,
                                    int interleaved, i64 n) {
    i64 half = rotary_dim / 2;
    GRID_STRIDE(i, n) {
        i64 d = i % dim;
        i64 token = i / (dim * heads);
        if (d >= rotary_dim) {
            y[i] = x[i];
            continue;
        }
        i64 s = token % seq;
        i64 pos = positions ? positions[pos_per_batch ? token : s] : offset + s;
        const float *row = x + (i - d);
        i64 k = interleaved ? d / 2 : (d < half ? d : d - half);
        double sn, cs;
        sincos((double)pos * inv_freq[k], &sn, &cs);
        float c = (float)cs, si = (float)sn;
        float out;
        if (interleaved) {
            float a = row[2 * k], b = row[2 * k + 1];
            out = (d & 1) ? b * c + a * si : a * c - b * si;
        } else {
            float a = row[k], b = row[k + half];
            out = d < half ? a * c - b * si : b * c + a * si;
        }
        y[i] = out;
    }
}

// Fused attention, f32, [batch, seq, heads, head_dim] layout, GQA (heads_q a multiple
// of heads_kv), causal bottom-right aligned, key mask u8 [batch, seq_k] (nonzero =
// attend) or null. One warp per query row, keys in chunks of 32 (one per lane),
// online softmax; each lane accumulates head_dim_v / 32 output dims (at most 8:
// head_dim_v <= 256, checked by the host). Rows with no key attended are 0.
extern "C" __global__ void attention_f32(const float *q, const float *k, const float *v, const u8 *mask, float *out,
                                         i64 batch, i64 seq_q, i64 seq_k, i64 heads_q, i64 heads_kv, i64 dim,
                                         i64 dim_v, float scale, int causal) {
    extern __shared__ float q_shared[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float *qs = q_shared + warp * dim;
    const i64 rows = batch * seq_q * heads_q;
    const i64 group = heads_q / heads_kv;
    for (i64 row = (i64)blockIdx.x * warps + warp; row < rows; row += (i64)gridDim.x * warps) {
        const i64 h = row % heads_q, bi = row / heads_q, i = bi % seq_q, b = bi / seq_q;
        const i64 kvh = h / group;
        const float *qr = q + row * dim;
        for (i64 d = lane; d < dim; d += 32) qs[d] = qr[d] * scale;
        __syncwarp();
        i64 last = seq_k - 1;
        if (causal) last = min(last, i + seq_k - seq_q);
        float m = -INFINITY, l = 0.0f;
        float acc[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) acc[t] = 0.0f;
        for (i64 j0 = 0; j0 <= last; j0 += 32) {
            const i64 j = j0 + lane;
            float sc = -INFINITY;
            if (j <= last && (!mask || mask[b * seq_k + j])) {
                const float *kr = k + ((b * seq_k + j) * heads_kv + kvh) * dim;
                float dot = 0.0f;
                for (i64 d = 0; d < dim; ++d) dot = fmaf(qs[d], kr[d], dot);
                sc = dot;
            }
            float cm = warp_max_f(sc);
            if (cm == -INFINITY) continue;
            float m_new = fmaxf(m, cm);
            float p = sc == -INFINITY ? 0.0f : expf(sc - m_new);
            float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
            l = l * corr + warp_sum_f(p);
#pragma unroll
            for (int t = 0; t < 8; ++t) acc[t] *= corr;
            const i64 chunk = min((i64)32, last - j0 + 1);
            for (int jj = 0; jj < chunk; ++jj) {
                float pj = __shfl_sync(FULL_MASK, p, jj);
                if (pj == 0.0f) continue;
                const float *vr = v + ((b * seq_k + j0 + jj) * heads_kv + kvh) * dim_v;
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    i64 d = lane + 32 * t;
                    if (d < dim_v) acc[t] = fmaf(pj, vr[d], acc[t]);
                }
            }
            m = m_new;
        }
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *o = out + row * dim_v;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            i64 d = lane + 32 * t;
            if (d < dim_v) o[d] = acc[t] * inv;
        }
        __syncwarp();
    }
}

// ---- reductions over an axis: x viewed as [outer, n, inner] ---------------------------------
// Kinds: Sum 0, Mean 1, Max 2, Min 3, ArgMax 4. Floats reduce in f64, integers in i64
// (the host casts to those first), like ops/reduce.rs. Max/min/argmax pick the first
// NaN if any, else the first extreme.

struct PickD {
    double v;
    i64 i;
};
__device__ __forceinline__ bool better_d(PickD a, PickD b, bool max) {
    bool an = a.v != a.v, bn = b.v != b.v;
    if (an || bn) return an && (!bn || a.i < b.i);
    if (a.v != b.v) return max ? a.v > b.v : a.v < b.v;
    return a.i < b.i;
}
struct PickI {
    i64 v;
    i64 i;
};
__device__ __forceinline__ bool better_i(PickI a, PickI b, bool max) {
    if (a.v != b.v) return max ? a.v > b.v : a.v < b.v;
    return a.i < b.i;
}

extern "C" __global__ void reduce_f64(const double *x, double *vals, i64 *idx, i64 outer, i64 n, i64 inner,
                                      int kind) {
    __shared__ PickD picks[32];
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        i64 o = row / inner, in = row - o * inner;
        const double *xr = x + o * n * inner + in;
        if (kind <= 1) {
            double s = 0.0;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += xr[j * inner];
            s = block_sum_d(s);
            if (threadIdx.x == 0) vals[row] = kind == 1 ? s / (double)n : s;
            continue;
        }
        bool max = kind != 3;
        PickD best = {xr[0], 0};
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            PickD c = {xr[j * inner], j};
            if (better_d(c, best, max)) best = c;
        }
        for (int off = 16; off > 0; off >>= 1) {
            PickD c = {__shfl_xor_sync(FULL_MASK, best.v, off), __shfl_xor_sync(FULL_MASK, best.i, off)};
            if (better_d(c, best, max)) best = c;
        }
        __syncthreads();
        if ((threadIdx.x & 31) == 0) picks[threadIdx.x >> 5] = best;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
                if (better_d(picks[w], best, max)) best = picks[w];
            if (kind == 4) idx[row] = best.i;
            else vals[row] = best.v;
        }
    }
}

extern "C" __global__ void reduce_i64(const i64 *x, i64 *ivals, double *fvals, i64 outer, i64 n, i64 inner,
                                      int kind) {
    __shared__ PickI picks_i[32];
    __shared__ unsigned long long sums[32];
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        i64 o = row / inner, in = row - o * inner;
        const i64 *xr = x + o * n * inner + in;
        if (kind <= 1) {
            // Wrapping i64 sum (sum), exact-enough f64 sum (mean).
            u64 s = 0;
            double f = 0.0;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
                s += (u64)xr[j * inner];
                f += (double)xr[j * inner];
            }
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(FULL_MASK, s, off);
            f = block_sum_d(f);
            __syncthreads();
            if ((threadIdx.x & 31) == 0) sums[threadIdx.x >> 5] = s;
            __syncthreads();
            if (threadIdx.x == 0) {
                u64 t = 0;
                for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += sums[w];
                if (kind == 0) ivals[row] = (i64)t;
                else fvals[row] = f / (double)n;
            }
            continue;
        }
        bool max = kind != 3;
        PickI best = {xr[0], 0};
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            PickI c = {xr[j * inner], j};
            if (better_i(c, best, max)) best = c;
        }
        for (int off = 16; off > 0; off >>= 1) {
            PickI c = {__shfl_xor_sync(FULL_MASK, best.v, off), __shfl_xor_sync(FULL_MASK, best.i, off)};
            if (better_i(c, best, max)) best = c;
        }
        __syncthreads();
        if ((threadIdx.x & 31) == 0) picks_i[threadIdx.x >> 5] = best;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
                if (better_i(picks_i[w], best, max)) best = picks_i[w];
            ivals[row] = kind == 4 ? best.i : best.v;
        }
    }
}

// top-k along an axis: keys are f64 (floats, NaN largest) or i64 (integers); x viewed
// as [outer, n, inner]. One block per row picks k times the best key that ranks after
// the previous pick in the total order (value, then lower index), so ties keep index
// order like ops/topk.rs. Values are copied from `src` (esize bytes per element).
__device__ __forceinline__ bool ranks_before(const double *fk, const i64 *ik, i64 a, i64 b, i64 inner, bool largest) {
    // Whether position a comes before position b (a != b).
    int c;
    if (fk) {
        double x = fk[a * inner], y = fk[b * inner];
        bool xn = x != x, yn = y != y;
        c = (xn || yn) ? (xn == yn ? 0 : (xn ? 1 : -1)) : (x < y ? -1 : (x > y ? 1 : 0));
    } else {
        i64 x = ik[a * inner], y = ik[b * inner];
        c = x < y ? -1 : (x > y ? 1 : 0);
    }
    if (largest) c = -c;
    return c < 0 || (c == 0 && a < b);
}

extern "C" __global__ void topk_rows(const double *fkeys, const i64 *ikeys, const u8 *src, int esize, i64 outer, i64 n,
                                     i64 inner, i64 k, int largest, u8 *vals, i64 *idx) {
    __shared__ i64 picks[32];
    __shared__ i64 prev_s;
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        i64 o = row / inner, in = row - o * inner;
        i64 base = o * n * inner + in;
        const double *fk = fkeys ? fkeys + base : 0;
        const i64 *ik = ikeys ? ikeys + base : 0;
        i64 prev = -1;
        for (i64 t = 0; t < k; ++t) {
            i64 best = -1;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
                if (prev >= 0 && !ranks_before(fk, ik, prev, j, inner, largest)) continue;
                if (best < 0 || ranks_before(fk, ik, j, best, inner, largest)) best = j;
            }
            for (int off = 16; off > 0; off >>= 1) {
                i64 c = __shfl_xor_sync(FULL_MASK, best, off);
                if (c >= 0 && (best < 0 || ranks_before(fk, ik, c, best, inner, largest))) best = c;
            }
            __syncthreads();
            if ((threadIdx.x & 31) == 0) picks[threadIdx.x >> 5] = best;
            __syncthreads();
            if (threadIdx.x == 0) {
                for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
                    i64 c = picks[w];
                    if (c >= 0 && (best < 0 || ranks_before(fk, ik, c, best, inner, largest))) best = c;
                }
                i64 out = (o * k + t) * inner + in;
                idx[out] = best;
                copy_sized(vals, out, src, base + best * inner, esize);
                prev_s = best;
            }
            __syncthreads();
            prev = prev_s;
        }
    }
}

//! The GEMM driver (BLIS-style): C (M×N, row-major) = A (M×K) · B (K×N), with
//! any strides for A and B, B in f32, bf16 or f16 (or pre-packed), and a fused
//! epilogue. Loops: jc (NC columns of B, L3) → pc (KC depth, packed B shared
//! by all threads) → parallel tasks over (MC rows of A packed per task, L2) ×
//! (column groups) → jr (NR panel, L1) → ir (MR panel) → micro-kernel.
//! Small M (≤ 8 rows) goes to `gemv`, which streams B once instead.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::kernels::dispatch::{cpu, isa, Isa};
use crate::kernels::frame::epilogue::{apply_row, apply_tile, Epilogue};
use crate::kernels::frame::gemv;
use crate::kernels::frame::pack::{
    pack_a, pack_a_bf16_pairs, pack_b_bf16_pairs, pack_b_panels, MatRef,
};
use crate::kernels::frame::prefetch::{self, Prefetch};
use crate::kernels::frame::threads::{num_threads, parallel_for, SendPtr};
use crate::kernels::generic::mmm as generic;

/// Depth of one packed block for the AVX2 and generic kernels (even, so bf16
/// k-pairs never straddle blocks). The AVX-512 kernels use a deeper block; see
/// [`KernelKind::kc`].
pub const KC: usize = 256;
/// Columns of B packed per block (KC × NC f32 = 4 MiB, shared L3).
const NC: usize = 4096;
/// Rows of A packed per block (≈ MC × KC f32 = 144 KiB, private L2).
const MC_TARGET: usize = 144;
/// AVX-512 kernels: deep blocks, fewer rows (72 × 1024 f32 = 288 KiB of L2).
const KC_AVX512: usize = 1024;
const MC_TARGET_AVX512: usize = 72;

/// Columns per bf16 k-pair panel (the AVX512-BF16 micro-kernel's NR), on every CPU.
pub const PAIRS_NR: usize = 32;
/// How far ahead (in pair rows of 128 bytes) `widen_pairs` prefetches.
const PAIR_ROWS_AHEAD: usize = 32;

/// Where B comes from.
#[derive(Copy, Clone)]
pub enum BSource<'a> {
    F32(MatRef<f32>),
    BF16(MatRef<bf16>),
    F16(MatRef<f16>),
    Packed(&'a PackedB),
    /// Pre-packed bf16 k-pair panels read as a plain K × N matrix, packed again (widened
    /// to f32 panels) per product: GEMM on a CPU without the bf16 micro-kernel.
    Pairs(&'a PackedB),
}

impl BSource<'_> {
    /// (K, N) of B.
    pub(crate) fn dims(&self) -> (usize, usize) {
        match self {
            BSource::F32(b) => (b.rows, b.cols),
            BSource::BF16(b) => (b.rows, b.cols),
            BSource::F16(b) => (b.rows, b.cols),
            BSource::Packed(p) | BSource::Pairs(p) => (p.k, p.n),
        }
    }
}

/// A micro-kernel family: its tile, the packed element types, and how to pack.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KernelKind {
    F32 {
        isa: Isa,
    },
    /// bf16 k-pair panels (kp × 32 × 2), read by the AVX512-BF16 micro-kernel
    /// (`vdpbf16ps`) where the CPU has it, widened to f32 panels per product otherwise,
    /// and by every tier's GEMV.
    Bf16Pairs,
}

impl KernelKind {
    /// The kernel this CPU uses for B of `dtype` at the current ISA tier.
    pub fn choose(bf16_weights: bool) -> KernelKind {
        if bf16_weights && KernelKind::bf16_kernel_runs() {
            KernelKind::Bf16Pairs
        } else {
            KernelKind::F32 { isa: isa() }
        }
    }

    /// The layout of bf16 or f32 weights packed once for reuse: bf16 weights stay bf16
    /// (k-pair panels) on every CPU, so decoding streams half the bytes of f32 panels
    /// and the packed copy takes half the memory; where the bf16 micro-kernel cannot run,
    /// GEMMs widen the panels block by block (`BSource::Pairs`).
    pub fn choose_for_reuse(bf16_weights: bool) -> KernelKind {
        if bf16_weights {
            KernelKind::Bf16Pairs
        } else {
            KernelKind::F32 { isa: isa() }
        }
    }

    /// Whether the AVX512-BF16 micro-kernel runs at the current ISA tier on this CPU.
    pub fn bf16_kernel_runs() -> bool {
        isa() == Isa::Avx512 && cpu().avx512_bf16
    }

    pub fn mr_nr(self) -> (usize, usize) {
        match self {
            KernelKind::F32 { isa: Isa::Generic } => (generic::MR, generic::NR),
            #[cfg(target_arch = "x86_64")]
            KernelKind::F32 { isa: Isa::Avx2 } => {
                use crate::kernels::x86_64::avx2_mmm_f32_6x16 as k;
                (k::MR, k::NR)
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::F32 { isa: Isa::Avx512 } => {
                use crate::kernels::x86_64::avx512_mmm_f32_12x32 as k;
                (k::MR, k::NR)
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::Bf16Pairs => {
                use crate::kernels::x86_64::avx512_mmm_bf16_12x32 as k;
                (k::MR, k::NR)
            }
            #[cfg(not(target_arch = "x86_64"))]
            KernelKind::Bf16Pairs => (12, PAIRS_NR),
            #[cfg(not(target_arch = "x86_64"))]
            _ => (generic::MR, generic::NR),
        }
    }

    /// Rows of A per packed block.
    fn mc(self) -> usize {
        let (mr, _) = self.mr_nr();
        let target = match self {
            KernelKind::F32 { isa: Isa::Avx512 } | KernelKind::Bf16Pairs => MC_TARGET_AVX512,
            _ => MC_TARGET,
        };
        mr * (target / mr).max(1)
    }

    /// Depth of a packed block. Measured on Zen 5 (1 MiB L2): with AVX-512 the
    /// C-tile loads and stores between depth blocks cost more than streaming a
    /// 128 KiB B panel from L2, so the block is deep (1024: 237 vs 223 GFLOP/s
    /// at 1024³, 243 vs 203 at 2048³, against 256).
    pub fn kc(self) -> usize {
        match self {
            KernelKind::F32 { isa: Isa::Avx512 } | KernelKind::Bf16Pairs => KC_AVX512,
            _ => KC,
        }
    }

    /// Packed B elements (f32 or bf16 halves) per k-step per column.
    pub(crate) fn b_units(self, kc: usize) -> usize {
        match self {
            KernelKind::F32 { .. } => kc,
            KernelKind::Bf16Pairs => kc.div_ceil(2) * 2,
        }
    }
}

/// Bytes held by every live [`PackedB`] (a model's pre-packed weights, all models).
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Whether the live pre-packed weights are more than the last-level cache holds. Then a
/// decode step streams every weight from DRAM whatever the caches do, and the small-M
/// kernels read them with a non-temporal hint ([`prefetch::stream_ahead_once`]): the
/// stream no longer evicts the KV cache, the activations and the executor's own data,
/// which every step otherwise reread from DRAM. (SmolLM2-135M shape, Zen 5 with 32 MiB
/// of L3, alternating in one process: bf16 decode 149-153 vs 135-144 tok/s, f32 77-81 vs
/// 75-77; attention, norms and rope 10-35% faster, the GEMVs themselves 9-13%.)
/// Weights that fit keep the ordinary hint, so they stay cached from call to call.
pub fn weights_outgrow_cache() -> bool {
    PACKED_BYTES.load(Ordering::Relaxed) > last_level_cache_bytes()
}

/// The largest cache of cpu0 (Linux sysfs), else 32 MiB.
pub(crate) fn last_level_cache_bytes() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| {
        let sizes = (0..8).filter_map(|i| {
            let path = format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size");
            parse_cache_size(std::fs::read_to_string(path).ok()?.trim())
        });
        sizes.max().unwrap_or(32 << 20)
    })
}

/// "32768K", "1M", "512" (bytes) as sysfs writes cache sizes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, scale) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(scale)
}

/// B packed once for repeated use (constant weights): the same panels the
/// driver would build, for every (KC block, NR panel).
pub struct PackedB {
    pub k: usize,
    pub n: usize,
    pub kind: KernelKind,
    pub(crate) f32_data: Vec<f32>,
    pub(crate) bf16_data: Vec<u16>,
}

impl Drop for PackedB {
    fn drop(&mut self) {
        PACKED_BYTES.fetch_sub(self.nbytes(), Ordering::Relaxed);
    }
}

impl PackedB {
    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.f32_data.len() * 4 + self.bf16_data.len() * 2
    }

    /// Offset (in packed elements) of the panel holding column `col0` of block `pc`.
    pub(crate) fn panel_offset(&self, pc: usize, col0: usize) -> usize {
        let (_, nr) = self.kind.mr_nr();
        let n_pad = self.n.div_ceil(nr) * nr;
        let kc = self.kind.kc().min(self.k - pc);
        // Blocks before pc hold kc() units each per padded column.
        pc * n_pad + (col0 / nr) * nr * self.kind.b_units(kc)
    }
}

/// `len` zeroed elements for packed weights, asking Linux for transparent huge pages
/// where the machine leaves that to the program (THP "madvise", a common default): a
/// decode step streams every weight once, and with 4 KiB pages every 4 KiB of the stream
/// costs a TLB miss. (SmolLM2-135M-shaped f32 decode, Zen 5, 2 threads, runs alternating
/// between THP "always" and "madvise": 75-85 vs 72-75 tok/s; in the machine's slow memory
/// phases, 65 either way.) The memory is untouched until packing writes it (calloc maps
/// fresh zero pages), so the advice applies from the first fault.
fn huge_page_vec<T: Copy + Default>(len: usize) -> Vec<T> {
    let v = vec![T::default(); len];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = len * std::mem::size_of::<T>();
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside v's allocation, which outlives the call;
            // madvise only changes how the kernel backs those pages (contents stay zero),
            // and a failure (no THP support) leaves ordinary pages.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// Packs B for reuse: f32 B in the current ISA tier's f32 panels, bf16 B in bf16 k-pair
/// panels on every CPU (see `KernelKind::choose_for_reuse`).
pub fn pack_b_for_reuse(b: BSource<'_>) -> Result<PackedB> {
    let (k, n) = b.dims();
    let kind = KernelKind::choose_for_reuse(matches!(b, BSource::BF16(_)));
    let (_, nr) = kind.mr_nr();
    let n_pad = n.div_ceil(nr) * nr;
    let mut out = PackedB {
        k,
        n,
        kind,
        f32_data: Vec::new(),
        bf16_data: Vec::new(),
    };
    let total = n_pad
        .checked_mul(k.div_ceil(2) * 2)
        .ok_or_else(|| Error::shape("pack", format!("B of {k} x {n} is too large")))?;
    if matches!(b, BSource::Packed(_) | BSource::Pairs(_)) {
        return Err(Error::Internal("B is already packed".into()));
    }
    if kind == KernelKind::Bf16Pairs {
        out.bf16_data = huge_page_vec(total);
    } else {
        out.f32_data = huge_page_vec(n_pad * k);
    }
    // The same panels the driver packs per (jc = 0, pc) block, laid end to end.
    for pc in (0..k).step_by(kind.kc()) {
        let kc = kind.kc().min(k - pc);
        let at = out.panel_offset(pc, 0);
        pack_b_block(
            kind,
            b,
            (0, pc, kc, n),
            (0, n.div_ceil(nr)),
            out.f32_data.as_mut_ptr().wrapping_add(at),
            out.bf16_data.as_mut_ptr().wrapping_add(at),
        );
    }
    PACKED_BYTES.fetch_add(out.nbytes(), Ordering::Relaxed);
    Ok(out)
}

/// Raw output pointer shared by tasks that write disjoint tiles.
#[derive(Copy, Clone)]
pub(crate) struct COut {
    pub(crate) ptr: *mut f32,
    pub(crate) ldc: usize,
}
impl COut {
    /// The pointer (a method, so closures capture the whole Send + Sync struct).
    pub(crate) fn base(&self) -> *mut f32 {
        self.ptr
    }
}

// SAFETY: tasks write disjoint tiles of C (distinct row blocks or column groups).
unsafe impl Send for COut {}
// SAFETY: as above.
unsafe impl Sync for COut {}

thread_local! {
    static A_BUF: RefCell<(Vec<f32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// C = A · B (+ epilogue). `c` is row-major with row stride `ldc` and at least
/// (M-1)*ldc + N elements; A is M × K (any strides), B is K × N.
pub fn gemm(
    a: MatRef<f32>,
    b: BSource<'_>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) -> Result<()> {
    let (m, k) = (a.rows, a.cols);
    let (kb, n) = b.dims();
    if kb != k {
        return Err(Error::shape(
            "matmul",
            format!("A is {m} x {k} but B is {kb} x {n}"),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if ldc < n || c.len() < (m - 1) * ldc + n {
        return Err(Error::Internal(format!(
            "output buffer too small for {m} x {n} (ldc {ldc})"
        )));
    }
    if let Some(bias) = epi.bias {
        if bias.len() != n {
            return Err(Error::shape(
                "matmul",
                format!("bias has {} values for {n} columns", bias.len()),
            ));
        }
    }
    if k == 0 {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            row.fill(0.0);
            apply_row(row, i, 0, epi);
        }
        return Ok(());
    }
    // Pre-packed f32 weights with 2..8 rows run faster on the packed GEMM path than on
    // gemv's generic multi-row body (measured 1x576x49152: 4 rows 14 ms vs ~3 ms).
    let packed_f32 = matches!(b, BSource::Packed(p) if matches!(p.kind, KernelKind::F32 { .. }));
    if m <= gemv::MAX_ROWS && !(packed_f32 && m > 1) {
        return gemv::gemv(a, b, c, ldc, epi);
    }
    let (kind, b) = match b {
        // bf16 panels without the bf16 micro-kernel: widened to f32 panels per product.
        BSource::Packed(p)
            if p.kind == KernelKind::Bf16Pairs && !KernelKind::bf16_kernel_runs() =>
        {
            (KernelKind::choose(false), BSource::Pairs(p))
        }
        BSource::Packed(p) => (p.kind, b),
        BSource::BF16(_) => (KernelKind::choose(true), b),
        _ => (KernelKind::choose(false), b),
    };
    gemm_with(kind, a, b, c, ldc, epi);
    Ok(())
}

/// The packed path with an explicit kernel (tests run every kind side by side).
pub(crate) fn gemm_with(
    kind: KernelKind,
    a: MatRef<f32>,
    b: BSource<'_>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) {
    let (m, n, k) = (a.rows, b.dims().1, a.cols);
    let (mr, nr) = kind.mr_nr();
    let threads = if (m * n).saturating_mul(k) < 64 * 64 * 64 {
        1
    } else {
        num_threads()
    };
    let (m_panels, n_panels) = (m.div_ceil(mr), n.div_ceil(nr));
    // (bf16 weights keep one task per thread: their tasks each convert A to bf16 pairs,
    // and a 256-token bf16 prefill measured 17% slower split four ways per thread)
    let prepacked = matches!(b, BSource::Packed(_));
    let (tm, tn) = if prepacked && kind != KernelKind::Bf16Pairs {
        oversplit_grid(m_panels, n_panels, m, n, k, threads)
    } else if prepacked && m >= OVERSPLIT_MIN_ROWS {
        rows_grid(m_panels, n_panels, m, n, threads)
    } else {
        grid(m_panels, n_panels, m, n, threads)
    };
    let out = COut {
        ptr: c.as_mut_ptr(),
        ldc,
    };
    if tm > 1
        && !matches!(b, BSource::Packed(_))
        && b_read_in_place(kind, b, m.div_ceil(tm)).is_none()
    {
        // Row parts would each pack all of B: pack it once, together.
        gemm_shared_b(kind, a, b, out, (tm, tn), threads, epi);
        return;
    }
    parallel_for(tm * tn, |t| {
        let (rows, cols) = (split(m, mr, tm, t / tn), split(n, nr, tn, t % tn));
        if rows.0 < rows.1 && cols.0 < cols.1 {
            gemm_block(kind, a, b, out, rows, cols, epi);
        }
    });
}

/// Threads as a tm × tn grid over C, choosing the split that packs least:
/// each column part re-packs A (M×K), each row part re-packs B (K×N).
fn grid(m_panels: usize, n_panels: usize, m: usize, n: usize, threads: usize) -> (usize, usize) {
    let mut best = (1, 1);
    let mut best_cost = usize::MAX;
    for tm in 1..=threads {
        if !threads.is_multiple_of(tm) {
            continue;
        }
        let tn = threads / tm;
        if tm > m_panels || tn > n_panels {
            continue;
        }
        let cost = tn * m + tm * n;
        if cost < best_cost {
            best_cost = cost;
            best = (tm, tn);
        }
    }
    best
}

/// The grid for pre-packed bf16 pair panels with many rows: the threads split the rows
/// where they can. Each column part converts all of A to bf16 pairs (the kernel's A
/// panels); a row part converts only its rows, and pre-packed B costs a row part nothing
/// but reads. (Zen 5, 2 threads, alternating in one process, GFLOP/s rows vs columns:
/// 1024^3 871-873 vs 746-755, 2048^3 890-904 vs 818-830.) Below OVERSPLIT_MIN_ROWS rows
/// (a decoder's short prefill) the column split stays: few row panels split unevenly.
fn rows_grid(
    m_panels: usize,
    n_panels: usize,
    m: usize,
    n: usize,
    threads: usize,
) -> (usize, usize) {
    (1..=threads)
        .rev()
        .filter(|&tm| threads.is_multiple_of(tm) && tm <= m_panels && threads / tm <= n_panels)
        .map(|tm| (tm, threads / tm))
        .next()
        .unwrap_or_else(|| grid(m_panels, n_panels, m, n, threads))
}

/// Tasks per thread for products with pre-packed B.
const OVERSPLIT: usize = 4;
/// Rows below which pre-packed products keep one task per thread: with few rows (a
/// decoder's 32-token prefill) small tasks cost more than they balance (bf16 prefill
/// measured 37% slower split four ways per thread).
const OVERSPLIT_MIN_ROWS: usize = 128;
/// Multiply-adds a task should have at least (a few microseconds of one core).
const TASK_MIN_MACS: usize = 4 * 64 * 64 * 64;

/// The grid for pre-packed B: a few tasks per thread rather than one, so that when the OS
/// preempts one of the pool's threads (for the server's event loop, a tokenizer) the others
/// take its share of the tasks instead of waiting for it. With B packed once, a task packs
/// only its own rows of A, so extra column parts cost little (an A re-pack per column part,
/// small next to the product when tasks keep [`TASK_MIN_MACS`]).
fn oversplit_grid(
    m_panels: usize,
    n_panels: usize,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> (usize, usize) {
    if threads <= 1 || m < OVERSPLIT_MIN_ROWS {
        return grid(m_panels, n_panels, m, n, threads);
    }
    let by_work = (m * n).saturating_mul(k.max(1)) / TASK_MIN_MACS;
    let mut parts = (threads * OVERSPLIT).min(by_work.max(threads));
    while parts > threads {
        let g = grid(m_panels, n_panels, m, n, parts);
        if g.0 * g.1 == parts {
            return g;
        }
        parts -= 1;
    }
    grid(m_panels, n_panels, m, n, threads)
}

/// Part `i` of `parts` of `0..len`, cut on multiples of `unit`.
fn split(len: usize, unit: usize, parts: usize, i: usize) -> (usize, usize) {
    let units = len.div_ceil(unit);
    let lo = units * i / parts * unit;
    let hi = (units * (i + 1) / parts * unit).min(len);
    (lo.min(len), hi)
}

thread_local! {
    static B_BUF: RefCell<(Vec<f32>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One (jc, pc) block of packed B, as the micro-kernels read it.
#[derive(Copy, Clone)]
struct BBlock<'a> {
    f32: *const f32,
    bf16: *const u16,
    /// When set, panels are packed on first use (by the first row block), so the
    /// packed panel is still in L1/L2 when the micro-kernels first read it.
    lazy: Option<LazyPack<'a>>,
    /// Packed elements per panel.
    panel_len: usize,
    jc: usize,
    pc: usize,
    kc: usize,
    /// B (row-major f32) when the micro-kernels read its full panels where they are (see
    /// [`b_read_in_place`]); only a partial last panel is then packed (lazily).
    in_place: Option<MatRef<f32>>,
}

// SAFETY: a BBlock only reads packed panels that no thread writes while it is
// shared (lazy packing is used only by the single thread owning the block).
unsafe impl Send for BBlock<'_> {}
// SAFETY: as above.
unsafe impl Sync for BBlock<'_> {}

/// What `pack_b_block` needs to pack one panel of a block on demand.
#[derive(Copy, Clone)]
struct LazyPack<'a> {
    kind: KernelKind,
    b: BSource<'a>,
    block: (usize, usize, usize, usize),
    bf: *mut f32,
    bb: *mut u16,
}

impl LazyPack<'_> {
    /// Packs `panels` of the block (each panel must be packed by one caller only).
    fn pack(&self, panels: (usize, usize)) {
        pack_b_block(self.kind, self.b, self.block, panels, self.bf, self.bb);
    }
}

// SAFETY: lazy packing writes each panel from exactly one task (its owner), and
// no task reads a panel before the barrier that follows its packing.
unsafe impl Send for LazyPack<'_> {}
// SAFETY: as above.
unsafe impl Sync for LazyPack<'_> {}

/// Packs panels `panels` of the (jc, pc) block of B (kc × nc) into `bf`/`bb`
/// (which hold the whole block), in the layout of `kind`.
fn pack_b_block(
    kind: KernelKind,
    b: BSource<'_>,
    (jc, pc, kc, nc): (usize, usize, usize, usize),
    panels: (usize, usize),
    bf: *mut f32,
    bb: *mut u16,
) {
    let (_, nr) = kind.mr_nr();
    let panel_len = nr * kind.b_units(kc);
    if kind != KernelKind::Bf16Pairs && panels.0 < panels.1 {
        // SAFETY: the caller sized `bf` for every panel of the block; this call owns
        // panels panels.0 .. panels.1 exclusively.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                bf.add(panels.0 * panel_len),
                (panels.1 - panels.0) * panel_len,
            )
        };
        match b {
            BSource::F32(s) => pack_b_panels(s.sub(pc, jc, kc, nc), nr, panels.0..panels.1, dst),
            BSource::BF16(s) => pack_b_panels(s.sub(pc, jc, kc, nc), nr, panels.0..panels.1, dst),
            BSource::F16(s) => pack_b_panels(s.sub(pc, jc, kc, nc), nr, panels.0..panels.1, dst),
            BSource::Pairs(p) => widen_pairs(p, (jc, pc, kc, nc), nr, panels.0..panels.1, dst),
            BSource::Packed(_) => {}
        }
        return;
    }
    // The bf16 kernel is only chosen for bf16 weights.
    if let BSource::BF16(src) = b {
        for panel in panels.0..panels.1 {
            let col0 = panel * nr;
            let cols = nr.min(nc - col0);
            // SAFETY: the caller sized `bb` for every panel of the block; each panel
            // index is packed by exactly one caller.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(bb.add(panel * panel_len), panel_len) };
            pack_b_bf16_pairs(src.sub(pc, jc + col0, kc, cols), nr, dst);
        }
    }
}

/// Packs panels `panels` (`nr` columns each, f32, k-major) of the (jc, pc) block (kc × nc)
/// of B from bf16 k-pair panels `p` (whose depth blocks need not match this block's).
/// Every f32 kernel's NR divides [`PAIRS_NR`], so each output panel lies inside one pair
/// panel; widening is exact (a bf16 is the high half of its f32).
fn widen_pairs(
    p: &PackedB,
    block: (usize, usize, usize, usize),
    nr: usize,
    panels: std::ops::Range<usize>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa(), Isa::Avx2 | Isa::Avx512) {
        // SAFETY: these tiers are only current after dispatch confirmed AVX2.
        unsafe { widen_pairs_avx2(p, block, nr, panels, out) };
        return;
    }
    widen_pairs_body(p, block, nr, panels, out);
}

/// [`widen_pairs`] compiled for AVX2 (the loops vectorize 8 columns wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_pairs_avx2(
    p: &PackedB,
    block: (usize, usize, usize, usize),
    nr: usize,
    panels: std::ops::Range<usize>,
    out: &mut [f32],
) {
    widen_pairs_body(p, block, nr, panels, out);
}

#[inline(always)]
fn widen_pairs_body(
    p: &PackedB,
    (jc, pc, kc, nc): (usize, usize, usize, usize),
    nr: usize,
    panels: std::ops::Range<usize>,
    out: &mut [f32],
) {
    debug_assert!(PAIRS_NR.is_multiple_of(nr) && jc.is_multiple_of(nr));
    let panel_len = nr * kc;
    for (o, i) in panels.enumerate() {
        let dst = &mut out[o * panel_len..(o + 1) * panel_len];
        let col0 = jc + i * nr;
        let cols = nr.min(jc + nc - col0);
        let sub = col0 % PAIRS_NR;
        // Rows pc.. of the pair panel holding col0; the block's rows continue in the same
        // pairs depth block (see `pair_row_at`), so pair row q / 2 is 128 bytes on per two.
        let base = pair_row_at(p, pc, col0 - sub, kc);
        let mut q = 0;
        while q < kc {
            // Pair row q / 2 holds rows q and q + 1 (q even), interleaved column by column:
            // each (even, odd) pair of a column is one u32, even in the low half.
            let row_at = base + (q / 2) * PAIRS_NR * 2;
            let pairs = &p.bf16_data[row_at + sub * 2..row_at + sub * 2 + 2 * cols];
            // This panel reads one line of each 128-byte pair row (the next panel the
            // other), a stride the hardware prefetcher followed too slowly (the loads
            // stalled 80% of this loop on DRAM): fetch both lines of the pair row
            // PAIR_ROWS_AHEAD on, for this panel and the next.
            let ahead = p
                .bf16_data
                .as_ptr()
                .wrapping_add(row_at + PAIR_ROWS_AHEAD * PAIRS_NR * 2);
            prefetch::line_at(ahead.cast());
            prefetch::line_at(ahead.wrapping_add(PAIRS_NR).cast());
            let (first, rest) = dst[q * nr..].split_at_mut(nr);
            if q + 1 < kc {
                let second = &mut rest[..nr];
                for ((e, o), c) in first
                    .iter_mut()
                    .zip(second.iter_mut())
                    .zip(pairs.chunks_exact(2))
                {
                    *e = f32::from_bits(u32::from(c[0]) << 16);
                    *o = f32::from_bits(u32::from(c[1]) << 16);
                }
                first[cols..].fill(0.0);
                second[cols..].fill(0.0);
            } else {
                for (v, c) in first.iter_mut().zip(pairs.chunks_exact(2)) {
                    *v = f32::from_bits(u32::from(c[0]) << 16);
                }
                first[cols..].fill(0.0);
            }
            q += 2;
        }
    }
}

/// Offset in `p.bf16_data` of the pair row holding row `k` (even) of the pair panel that
/// starts at column `col` (a multiple of [`PAIRS_NR`]); rows `k..k + rows` follow it,
/// 128 bytes per two rows. They must lie in one pairs depth block: GEMM depth blocks
/// (KC or KC_AVX512 rows, starting at multiples of them) do, as both divide KC_AVX512.
fn pair_row_at(p: &PackedB, k: usize, col: usize, rows: usize) -> usize {
    const _: () = assert!(KC_AVX512.is_multiple_of(KC));
    let depth = p.kind.kc();
    let blk = k / depth * depth;
    debug_assert!(k.is_multiple_of(2) && k + rows <= blk + depth);
    p.panel_offset(blk, col) + (k - blk) / 2 * PAIRS_NR * 2
}

/// Where the bf16 pair rows that output panel `panel` of a lazily widened block reads
/// begin, when it starts a new pair panel (kc × 64 contiguous bytes); None for other
/// sources and for panels that share the previous panel's pair panel (its rows are
/// being read already).
fn pair_rows_of(l: LazyPack<'_>, panel: usize, nr: usize) -> Option<*const u8> {
    let BSource::Pairs(p) = l.b else {
        return None;
    };
    let (jc, pc, kc, _) = l.block;
    let col = jc + panel * nr;
    if !col.is_multiple_of(PAIRS_NR) {
        return None;
    }
    let at = pair_row_at(p, pc, col, kc);
    Some(p.bf16_data.as_ptr().wrapping_add(at).cast())
}

/// Where the rows of B that panel `panel` of a lazily packed block reads begin, how many
/// bytes of each it reads and how far apart they lie: the next panel's source, prefetched
/// while the micro-kernels work on the current one, so that packing it reads from cache.
/// For B in rows (f32, bf16 or f16 with unit column stride), kc rows of the panel's width
/// with B's row stride between them (packing a panel from those was 9% of a 512x768x3072
/// GEMM); for bf16 pair panels being widened, the pair panel's rows where the panel starts
/// a new one (contiguous: rows of 64 bytes, 64 apart; see [`pair_rows_of`]).
fn source_rows_of(l: LazyPack<'_>, panel: usize, nr: usize) -> Option<(*const u8, usize, usize)> {
    if let BSource::Pairs(_) = l.b {
        return pair_rows_of(l, panel, nr).map(|at| (at, 64, 64));
    }
    let (jc, pc, _, nc) = l.block;
    if (panel + 1) * nr > nc {
        return None;
    }
    fn rows<T>(s: MatRef<T>, at: (usize, usize), nr: usize) -> Option<(*const u8, usize, usize)> {
        let elem = std::mem::size_of::<T>();
        (s.cs == 1 && s.rs > 0).then(|| {
            let offset = at.0 as isize * s.rs + at.1 as isize;
            (
                s.ptr.wrapping_offset(offset).cast::<u8>(),
                nr * elem,
                s.rs as usize * elem,
            )
        })
    }
    let at = (pc, jc + panel * nr);
    match l.b {
        BSource::F32(s) => rows(s, at, nr),
        BSource::BF16(s) => rows(s, at, nr),
        BSource::F16(s) => rows(s, at, nr),
        _ => None,
    }
}

/// The slices of a pre-packed B for block (jc, pc).
fn prepacked_block(
    kind: KernelKind,
    p: &PackedB,
    jc: usize,
    pc: usize,
    kc: usize,
    n_panels: usize,
) -> BBlock<'_> {
    let (_, nr) = kind.mr_nr();
    let panel_len = nr * kind.b_units(kc);
    let at = p.panel_offset(pc, jc);
    let (f32, bf16): (&[f32], &[u16]) = match kind {
        KernelKind::Bf16Pairs => (&[], &p.bf16_data[at..at + n_panels * panel_len]),
        _ => (&p.f32_data[at..at + n_panels * panel_len], &[]),
    };
    BBlock {
        f32: f32.as_ptr(),
        bf16: bf16.as_ptr(),
        lazy: None,
        panel_len,
        jc,
        pc,
        kc,
        in_place: None,
    }
}

/// Rows `rows` × panels `panels` of one packed B block: packs A per MC block
/// (thread-local buffer) and runs the micro-kernels, with the epilogue on the
/// last depth block. `n_end` is the end column of this B block in C.
#[allow(clippy::too_many_arguments)]
fn macro_kernel(
    kind: KernelKind,
    a: MatRef<f32>,
    blk: BBlock<'_>,
    rows: (usize, usize),
    panels: (usize, usize),
    n_end: usize,
    last: bool,
    out: COut,
    epi: &Epilogue<'_>,
) {
    let (mr, nr) = kind.mr_nr();
    let mc = kind.mc();
    let (kc, pc, jc, panel_len) = (blk.kc, blk.pc, blk.jc, blk.panel_len);
    A_BUF.with(|abuf| {
        let mut abuf = abuf.borrow_mut();
        let (af, ab) = &mut *abuf;
        for ic in (rows.0..rows.1).step_by(mc) {
            let mcur = mc.min(rows.1 - ic);
            let a_blk = a.sub(ic, pc, mcur, kc);
            match kind {
                KernelKind::Bf16Pairs => {
                    ab.resize(mcur.div_ceil(mr) * mr * kc.div_ceil(2), 0);
                    pack_a_bf16_pairs(a_blk, mr, ab);
                }
                _ => {
                    af.resize(mcur.div_ceil(mr) * mr * kc, 0.0);
                    pack_a(a_blk, mr, af);
                }
            }
            let n_ir = mcur.div_ceil(mr);
            let elem = if kind == KernelKind::Bf16Pairs { 2 } else { 4 };
            let lines = (panel_len * elem).div_ceil(64);
            let per_call = lines.div_ceil(n_ir);
            for panel in panels.0..panels.1 {
                let j0 = jc + panel * nr;
                let ncur = nr.min(n_end - j0);
                let direct = blk.in_place.filter(|_| ncur == nr);
                if let (Some(l), true, None) = (blk.lazy, ic == rows.0, direct) {
                    l.pack((panel, panel + 1));
                }
                for (ir, i0) in (0..mcur).step_by(mr).enumerate() {
                    let mcur_r = mr.min(mcur - i0);
                    // Pull the next panel of this task towards L1 while this one is in use;
                    // while the first row block packs the panels, pull the rows of B the next
                    // one is packed (or widened) from instead (`source_rows_of`).
                    let prefetch = if panel + 1 < panels.1 && blk.in_place.is_none() {
                        let source = blk
                            .lazy
                            .filter(|_| ic == rows.0)
                            .and_then(|l| source_rows_of(l, panel + 1, nr));
                        if let Some((rows_at, row_bytes, stride)) = source {
                            // The next panel is still to be packed (or widened) from B's
                            // rows: pull those (kc rows of row_bytes, stride apart) instead.
                            let lines = kc * row_bytes.div_ceil(64).next_power_of_two();
                            let per_call = lines.div_ceil(n_ir);
                            let first = ir * per_call;
                            Prefetch::rows(
                                rows_at,
                                row_bytes,
                                stride,
                                first,
                                per_call.min(lines.saturating_sub(first)),
                            )
                        } else {
                            let next = if kind == KernelKind::Bf16Pairs {
                                blk.bf16.wrapping_add((panel + 1) * panel_len).cast()
                            } else {
                                blk.f32.wrapping_add((panel + 1) * panel_len).cast()
                            };
                            Prefetch::new(
                                next,
                                ir * per_call,
                                per_call.min(lines.saturating_sub(ir * per_call)),
                            )
                        }
                    } else {
                        Prefetch::NONE
                    };
                    let tile = Tile {
                        kind,
                        kc,
                        prefetch,
                        a_f32: af.as_ptr().wrapping_add(ir * mr * kc),
                        a_bf16: ab.as_ptr().wrapping_add(ir * mr * kc.div_ceil(2)),
                        b_f32: match direct {
                            Some(src) => src.sub(pc, j0, kc, nr).ptr,
                            None => blk.f32.wrapping_add(panel * panel_len),
                        },
                        b_bf16: blk.bf16.wrapping_add(panel * panel_len),
                        b_ldb: direct.map_or(0, |src| src.rs as usize),
                    };
                    // SAFETY: the packed panels hold full MR/NR tiles of kc depth;
                    // C[ic+i0.., j0..] (mcur_r × ncur) is inside this task's disjoint
                    // region of the output.
                    unsafe {
                        tile.run(out, ic + i0, j0, mcur_r, ncur, pc > 0);
                        if last && !epi.is_identity() {
                            let i = ic + i0;
                            apply_tile(
                                out.base().add(i * out.ldc + j0),
                                out.ldc,
                                i,
                                mcur_r,
                                j0,
                                ncur,
                                epi,
                            );
                        }
                    }
                }
            }
        }
    });
}

/// B, when the micro-kernels read its full panels where they are rather than packed copies:
/// f32 B with unit column stride and the AVX-512 f32 kernel, when one row block of
/// `rows` reads each panel and B fits in half the last-level cache, or two row blocks
/// and B fits in 1 MiB (one core's L2 here). Packing costs a full read and write of B,
/// which many row blocks amortize and one or two do not; but the kernel's strided reads
/// of B cannot hide DRAM latency the way the packing loop's can. (Zen 5, 32 MiB L3,
/// builds alternating, GFLOP/s in place vs packed, 1 thread / 2 threads: 32x384x1536
/// 228-230 vs 178-180 / 435-437 vs 343; 9x576x1536 155-179 vs 103 / 340-352 vs 196-198;
/// 16x1024x1024 164-171 vs 112-113 / 311-316 vs 218-220; 32x768x3072 (9.4 MB of B)
/// 163-174 vs 141-149; 128x384x384 (two blocks) 252 vs 231-235 / 475-479 vs 441-442;
/// but 144x768x3072 (two blocks, 9.4 MB) 181-219 vs 214-220 and 64x4096x4096 (64 MB)
/// 94-96 vs 122-124 at 1 thread.)
fn b_read_in_place(kind: KernelKind, b: BSource<'_>, rows: usize) -> Option<MatRef<f32>> {
    let BSource::F32(src) = b else {
        return None;
    };
    let bytes = src.rows.saturating_mul(src.cols).saturating_mul(4);
    let mc = kind.mc();
    let read = kind == (KernelKind::F32 { isa: Isa::Avx512 })
        && src.cs == 1
        && src.rs > 0
        && ((rows <= mc && bytes <= last_level_cache_bytes() / 2)
            || (rows <= 2 * mc && bytes <= 1 << 20));
    read.then_some(src)
}

/// The single-threaded BLIS loops over C[rows, cols] (B packed by this thread).
fn gemm_block(
    kind: KernelKind,
    a: MatRef<f32>,
    b: BSource<'_>,
    out: COut,
    rows: (usize, usize),
    cols: (usize, usize),
    epi: &Epilogue<'_>,
) {
    let k = a.cols;
    let (_, nr) = kind.mr_nr();
    B_BUF.with(|bbuf| {
        let mut bbuf = bbuf.borrow_mut();
        let (bf, bb) = &mut *bbuf;
        for jc in (cols.0..cols.1).step_by(NC) {
            let nc = NC.min(cols.1 - jc);
            let n_panels = nc.div_ceil(nr);
            for pc in (0..k).step_by(kind.kc()) {
                let kc = kind.kc().min(k - pc);
                let panel_len = nr * kind.b_units(kc);
                let blk = match b {
                    BSource::Packed(p) => prepacked_block(kind, p, jc, pc, kc, n_panels),
                    _ => {
                        if kind == KernelKind::Bf16Pairs {
                            bb.resize(n_panels * panel_len, 0);
                        } else {
                            bf.resize(n_panels * panel_len, 0.0);
                        }
                        // Packed panel by panel as the first row block reaches it (or,
                        // read in place, only a partial last panel).
                        BBlock {
                            f32: bf.as_ptr(),
                            bf16: bb.as_ptr(),
                            lazy: Some(LazyPack {
                                kind,
                                b,
                                block: (jc, pc, kc, nc),
                                bf: bf.as_mut_ptr(),
                                bb: bb.as_mut_ptr(),
                            }),
                            panel_len,
                            jc,
                            pc,
                            kc,
                            in_place: b_read_in_place(kind, b, rows.1 - rows.0),
                        }
                    }
                };
                macro_kernel(
                    kind,
                    a,
                    blk,
                    rows,
                    (0, n_panels),
                    jc + nc,
                    pc + kc == k,
                    out,
                    epi,
                );
            }
        }
    });
}

/// Several threads over one C with B packed once per block and shared: the
/// threads split the panels to pack, then split the rows (and, when rows are
/// few, the panels) to compute.
fn gemm_shared_b(
    kind: KernelKind,
    a: MatRef<f32>,
    b: BSource<'_>,
    out: COut,
    (tm, tn): (usize, usize),
    threads: usize,
    epi: &Epilogue<'_>,
) {
    let (m, k, n) = (a.rows, a.cols, b.dims().1);
    let (mr, nr) = kind.mr_nr();
    let mut bf: Vec<f32> = Vec::new();
    let mut bb: Vec<u16> = Vec::new();
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let n_panels = nc.div_ceil(nr);
        for pc in (0..k).step_by(kind.kc()) {
            let kc = kind.kc().min(k - pc);
            let panel_len = nr * kind.b_units(kc);
            if kind == KernelKind::Bf16Pairs {
                bb.resize(n_panels * panel_len, 0);
            } else {
                bf.resize(n_panels * panel_len, 0.0);
            }
            let last = pc + kc == k;
            let blk = BBlock {
                f32: bf.as_ptr(),
                bf16: bb.as_ptr(),
                lazy: None,
                panel_len,
                jc,
                pc,
                kc,
                in_place: None,
            };
            if tn == 1 && n_panels >= tm {
                // Two phases: each thread packs its share of the panels while computing
                // its rows against them (packed panels are still hot), then, after the
                // barrier, computes its rows against everyone else's panels.
                let lazy = LazyPack {
                    kind,
                    b,
                    block: (jc, pc, kc, nc),
                    bf: bf.as_mut_ptr(),
                    bb: bb.as_mut_ptr(),
                };
                let own = |t: usize| (n_panels * t / tm, n_panels * (t + 1) / tm);
                let packing = BBlock {
                    lazy: Some(lazy),
                    ..blk
                };
                parallel_for(tm, |t| {
                    let rows = split(m, mr, tm, t);
                    let mine = own(t);
                    if rows.0 < rows.1 {
                        macro_kernel(kind, a, packing, rows, mine, jc + nc, last, out, epi);
                    } else {
                        // No rows for this thread: still pack its panels for the others.
                        lazy.pack(mine);
                    }
                });
                parallel_for(tm, |t| {
                    let rows = split(m, mr, tm, t);
                    let mine = own(t);
                    if rows.0 < rows.1 {
                        for range in [(0, mine.0), (mine.1, n_panels)] {
                            if range.0 < range.1 {
                                macro_kernel(kind, a, blk, rows, range, jc + nc, last, out, epi);
                            }
                        }
                    }
                });
                continue;
            }
            let targets = (SendPtr(bf.as_mut_ptr()), SendPtr(bb.as_mut_ptr()));
            let groups = threads.min(n_panels);
            parallel_for(groups, |g| {
                let (lo, hi) = (n_panels * g / groups, n_panels * (g + 1) / groups);
                pack_b_block(
                    kind,
                    b,
                    (jc, pc, kc, nc),
                    (lo, hi),
                    targets.0.get(),
                    targets.1.get(),
                );
            });
            parallel_for(tm * tn, |t| {
                let rows = split(m, mr, tm, t / tn);
                let (p_lo, p_hi) = (n_panels * (t % tn) / tn, n_panels * (t % tn + 1) / tn);
                if rows.0 < rows.1 && p_lo < p_hi {
                    macro_kernel(kind, a, blk, rows, (p_lo, p_hi), jc + nc, last, out, epi);
                }
            });
        }
    }
}

/// One micro-tile's inputs (the bf16 ones are read by the x86 bf16 kernel only).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    kind: KernelKind,
    kc: usize,
    prefetch: Prefetch,
    a_f32: *const f32,
    a_bf16: *const u32,
    b_f32: *const f32,
    b_bf16: *const u16,
    /// Nonzero: `b_f32` points at B's own rows, this many floats apart (the AVX-512
    /// kernel's direct form); zero: at a packed panel.
    b_ldb: usize,
}

impl Tile {
    /// Runs the micro-kernel into C[i0.., j0..] (rows × cols ≤ MR × NR).
    ///
    /// # Safety
    /// Panels valid for this kind and depth; the C region is inside the output.
    unsafe fn run(
        &self,
        out: COut,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let (mr, nr) = self.kind.mr_nr();
        let c = out.ptr.wrapping_add(i0 * out.ldc + j0);
        if rows == mr && cols == nr {
            // SAFETY: full tile inside C; forwarded caller guarantees.
            unsafe { self.call(c, out.ldc, accumulate) };
            return;
        }
        // Edge tile: run on a full-size scratch tile, then copy the valid part.
        let mut scratch = [0f32; 16 * 64];
        let tmp = scratch.as_mut_ptr();
        if accumulate {
            for r in 0..rows {
                for j in 0..cols {
                    // SAFETY: (r, j) is inside both the C edge region and the scratch tile.
                    unsafe { *tmp.add(r * nr + j) = *c.add(r * out.ldc + j) };
                }
            }
        }
        // SAFETY: scratch holds MR × NR (≤ 16 × 64) floats with row stride nr.
        unsafe { self.call(tmp, nr, accumulate) };
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: as above.
                unsafe { *c.add(r * out.ldc + j) = *tmp.add(r * nr + j) };
            }
        }
    }

    /// # Safety
    /// `c` is a writable MR × NR tile with row stride `ldc`; panels as in `run`.
    unsafe fn call(&self, c: *mut f32, ldc: usize, accumulate: bool) {
        #[cfg(target_arch = "x86_64")]
        if self.b_ldb > 0 {
            // SAFETY: b_ldb is only set for the AVX-512 f32 kind (`b_read_in_place`), after
            // dispatch confirmed AVX-512; B's kc rows of 32 floats at b_f32, b_ldb apart,
            // are inside B (forwarded caller guarantees).
            return unsafe {
                crate::kernels::x86_64::avx512_mmm_f32_12x32::avx512_mmm_f32_12x32_direct(
                    self.kc, self.a_f32, self.b_f32, self.b_ldb, c, ldc, accumulate,
                )
            };
        }
        type F32Kernel = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, bool, Prefetch);
        let f32_kernel: F32Kernel = match self.kind {
            #[cfg(target_arch = "x86_64")]
            KernelKind::F32 { isa: Isa::Avx2 } => {
                crate::kernels::x86_64::avx2_mmm_f32_6x16::avx2_mmm_f32_6x16
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::F32 { isa: Isa::Avx512 } => {
                crate::kernels::x86_64::avx512_mmm_f32_12x32::avx512_mmm_f32_12x32
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::Bf16Pairs => {
                // SAFETY: Bf16Pairs is only chosen when the CPU reports AVX512_BF16;
                // the packed bf16 panels are valid for kc (forwarded caller guarantees).
                return unsafe {
                    crate::kernels::x86_64::avx512_mmm_bf16_12x32::avx512_mmm_bf16_12x32(
                        self.kc.div_ceil(2),
                        self.a_bf16,
                        self.b_bf16,
                        c,
                        ldc,
                        accumulate,
                        self.prefetch,
                    )
                };
            }
            _ => generic::generic_mmm_f32_4x8,
        };
        // SAFETY: each SIMD kind is only chosen after dispatch confirmed its ISA (the
        // generic kernel has no requirement); panels and tile as the caller guarantees.
        unsafe {
            f32_kernel(
                self.kc,
                self.a_f32,
                self.b_f32,
                c,
                ldc,
                accumulate,
                self.prefetch,
            )
        }
    }
}

/// f32 view helpers for callers with plain slices.
pub fn mat<T>(data: &[T], rows: usize, cols: usize, rs: isize, cs: isize) -> MatRef<T> {
    MatRef {
        ptr: data.as_ptr(),
        rows,
        cols,
        rs,
        cs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dispatch::available;
    use crate::kernels::frame::epilogue::{activate, Activation};
    use crate::kernels::frame::gemv::gemv_with;
    use crate::kernels::generic::mmm::reference_gemm_f64;

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them_and_big_packed_weights_count() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("12Q"), None);
        // While a B larger than the last-level cache is packed, it counts as outgrowing it
        // (other tests may pack too, so only this direction is asserted).
        let n = last_level_cache_bytes() / (4 * 256) + 32;
        let data = vec![0.5f32; 256 * n];
        let b = mat(&data, 256, n, n as isize, 1);
        let packed = pack_b_for_reuse(BSource::F32(b)).unwrap();
        assert!(packed.nbytes() > last_level_cache_bytes());
        assert!(weights_outgrow_cache());
        drop(packed);
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::testing::uniform(n, seed, -1.0, 1.0)
    }

    fn kinds() -> Vec<KernelKind> {
        let mut out: Vec<KernelKind> = available()
            .into_iter()
            .map(|isa| KernelKind::F32 { isa })
            .collect();
        if cpu().avx512_bf16 && available().contains(&Isa::Avx512) {
            out.push(KernelKind::Bf16Pairs);
        }
        out
    }

    fn check(m: usize, k: usize, n: usize, kind: KernelKind, transposed_b: bool) {
        let a = values(m * k, 1 + m as u64);
        // Row-major A (the SIMD packing path) with weights-layout B; otherwise A is
        // read through a transposed view: element (i, p) at p*m + i.
        let a_t: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect();
        let av = if transposed_b {
            MatRef {
                ptr: a.as_ptr(),
                rows: m,
                cols: k,
                rs: k as isize,
                cs: 1,
            }
        } else {
            MatRef {
                ptr: a_t.as_ptr(),
                rows: m,
                cols: k,
                rs: 1,
                cs: m as isize,
            }
        };
        let b = values(k * n, 7 + n as u64);
        let bias = values(n, 3);
        let bv = if transposed_b {
            // Stored N × K (weights layout).
            let bt: Vec<f32> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
            (bt, 1isize, k as isize)
        } else {
            (b.clone(), n as isize, 1isize)
        };
        let bref = MatRef {
            ptr: bv.0.as_ptr(),
            rows: k,
            cols: n,
            rs: bv.1,
            cs: bv.2,
        };
        let bf: Vec<half::bf16> = bv.0.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let bbf = MatRef {
            ptr: bf.as_ptr(),
            rows: k,
            cols: n,
            rs: bv.1,
            cs: bv.2,
        };
        let bf16_kernel = kind == KernelKind::Bf16Pairs;
        let round = |x: f32| {
            if bf16_kernel {
                half::bf16::from_f32(x).to_f32()
            } else {
                x
            }
        };
        let reference = reference_gemm_f64(
            m,
            n,
            k,
            |i, p| round(a[i * k + p]),
            |p, j| {
                if bf16_kernel {
                    half::bf16::from_f32(b[p * n + j]).to_f32()
                } else {
                    b[p * n + j]
                }
            },
        );
        let scale = reference_gemm_f64(
            m,
            n,
            k,
            |i, p| a[i * k + p].abs(),
            |p, j| b[p * n + j].abs(),
        );
        let epi = Epilogue {
            bias: Some(&bias),
            activation: Some(Activation::Gelu),
            residual: None,
        };
        let src = if bf16_kernel {
            BSource::BF16(bbf)
        } else {
            BSource::F32(bref)
        };
        let mut c = vec![f32::NAN; m * n];
        if m <= crate::kernels::frame::gemv::MAX_ROWS && !bf16_kernel {
            let KernelKind::F32 { isa } = kind else {
                unreachable!()
            };
            gemv_with(isa, av, src, &mut c, n, &epi).unwrap();
        } else {
            gemm_with(kind, av, src, &mut c, n, &epi);
        }
        for i in 0..m {
            for j in 0..n {
                let want = activate(
                    (reference[i * n + j] + bias[j] as f64) as f32,
                    Activation::Gelu,
                ) as f64;
                let tol = 1e-6 + 4.0 * f32::EPSILON as f64 * (k as f64).sqrt() * scale[i * n + j];
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{kind:?} {m}x{k}x{n} t={transposed_b} at ({i},{j}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_on_odd_shapes() {
        for kind in kinds() {
            for &(m, k, n) in &[
                (1, 1, 1),
                (3, 7, 5),
                (9, 17, 33),
                (13, 33, 7),
                (33, 300, 65),
                (127, 257, 40),
                // Row-major B read in place (AVX-512, few row blocks) across depth blocks.
                (40, 1100, 64),
            ] {
                for t in [false, true] {
                    check(m, k, n, kind, t);
                }
            }
        }
    }

    #[test]
    fn oversplit_grid_gives_several_tasks_per_thread_within_the_panels() {
        // 192 rows x 1536 columns x 384: four tasks per thread, as column parts (A is small).
        assert_eq!(oversplit_grid(16, 48, 192, 1536, 384, 2), (1, 8));
        // one row panel, four column panels (wide K): as many parts as panels allow
        let (tm, tn) = oversplit_grid(11, 4, 128, 128, 4096, 2);
        assert_eq!((tm, tn), (2, 4));
        // few rows (a decoder's prefill): one task per thread
        assert_eq!(
            oversplit_grid(3, 18, 32, 576, 576, 2),
            grid(3, 18, 32, 576, 2)
        );
        // small products keep one task per thread; one thread, one task
        assert_eq!(oversplit_grid(4, 4, 48, 128, 8, 2), grid(4, 4, 48, 128, 2));
        assert_eq!(oversplit_grid(16, 48, 192, 1536, 384, 1), (1, 1));
    }

    #[test]
    fn rows_grid_splits_rows_where_the_panels_allow() {
        // 1024 rows (86 panels of 12) over 2 or 4 threads: all the threads on rows.
        assert_eq!(rows_grid(86, 32, 1024, 1024, 2), (2, 1));
        assert_eq!(rows_grid(86, 32, 1024, 1024, 4), (4, 1));
        // Fewer row panels than threads: rows as far as they go, the rest on columns.
        assert_eq!(rows_grid(2, 32, 24, 1024, 4), (2, 2));
        // Neither dimension can take the threads alone: the packing-cost grid decides.
        assert_eq!(rows_grid(1, 1, 12, 32, 3), grid(1, 1, 12, 32, 3));
    }

    #[test]
    fn prepacked_equals_unpacked() {
        for (m, k, n) in [(20, 300, 45), (97, 301, 389), (150, 301, 389)] {
            prepacked_equals_unpacked_at(m, k, n);
        }
    }

    /// `a` as a row-major rows × cols matrix.
    fn row_major<T>(a: &[T], rows: usize, cols: usize) -> MatRef<T> {
        MatRef {
            ptr: a.as_ptr(),
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// N × K weights `w` seen as B (K × N).
    fn weights<T>(w: &[T], k: usize, n: usize) -> MatRef<T> {
        MatRef {
            ptr: w.as_ptr(),
            rows: k,
            cols: n,
            rs: 1,
            cs: k as isize,
        }
    }

    fn prepacked_equals_unpacked_at(m: usize, k: usize, n: usize) {
        let a = values(m * k, 5);
        let w = values(n * k, 6); // N × K weights
        let (av, bv) = (row_major(&a, m, k), weights(&w, k, n));
        let packed = pack_b_for_reuse(BSource::F32(bv)).unwrap();
        for rows in [m, 3] {
            let a_rows = MatRef { rows, ..av };
            let mut c1 = vec![0f32; rows * n];
            let mut c2 = vec![0f32; rows * n];
            gemm(a_rows, BSource::F32(bv), &mut c1, n, &Epilogue::default()).unwrap();
            gemm(
                a_rows,
                BSource::Packed(&packed),
                &mut c2,
                n,
                &Epilogue::default(),
            )
            .unwrap();
            for (x, y) in c1.iter().zip(&c2) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
    }

    /// bf16 weights packed once (k-pair panels on every CPU) and widened per product to
    /// each tier's f32 panels equal the product with the unpacked bf16 weights, for
    /// depths across the pair panels' depth blocks and odd column counts.
    #[test]
    fn bf16_pairs_widened_for_every_f32_kernel_equal_unpacked() {
        for (m, k, n) in [(9, 7, 5), (20, 301, 45), (33, 1030, 70), (97, 2100, 33)] {
            let a = values(m * k, 7);
            let w: Vec<bf16> = values(n * k, 8).into_iter().map(bf16::from_f32).collect();
            let (av, bv) = (row_major(&a, m, k), weights(&w, k, n));
            let packed = pack_b_for_reuse(BSource::BF16(bv)).unwrap();
            assert_eq!(packed.kind, KernelKind::Bf16Pairs);
            let mut want = vec![0f32; m * n];
            gemm_with(
                KernelKind::F32 { isa: Isa::Generic },
                av,
                BSource::BF16(bv),
                &mut want,
                n,
                &Epilogue::default(),
            );
            for isa in available() {
                let mut got = vec![0f32; m * n];
                let kind = KernelKind::F32 { isa };
                gemm_with(
                    kind,
                    av,
                    BSource::Pairs(&packed),
                    &mut got,
                    n,
                    &Epilogue::default(),
                );
                for (x, y) in want.iter().zip(&got) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                        "{isa:?} {m}x{k}x{n}: {x} vs {y}"
                    );
                }
            }
        }
    }
}

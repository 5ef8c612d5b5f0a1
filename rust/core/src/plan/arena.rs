//! Offsets in one arena for blocks with known lifetimes: greedy by size, best
//! fit (largest block first; each goes into the smallest gap left between the
//! already placed blocks whose lifetimes overlap its own, else above them).

use super::lifetimes::Lifetime;

/// Alignment of every offset (a cache line; the widest SIMD load).
pub const ALIGN: usize = 64;

/// One block to place.
#[derive(Copy, Clone, Debug)]
pub struct Block {
    pub bytes: usize,
    pub life: Lifetime,
}

pub fn aligned(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Offsets for `blocks` and the arena size. Blocks whose lifetimes overlap
/// never overlap in memory.
pub fn assign_offsets(blocks: &[Block]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| blocks[b].bytes.cmp(&blocks[a].bytes).then(a.cmp(&b)));
    let mut offsets = vec![0usize; blocks.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(blocks.len());
    let mut arena = 0usize;
    for &i in &order {
        let size = aligned(blocks[i].bytes);
        if size == 0 {
            continue;
        }
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| blocks[j].life.overlaps(&blocks[i].life))
            .map(|&j| (offsets[j], offsets[j] + aligned(blocks[j].bytes)))
            .collect();
        conflicts.sort_unstable();
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut cursor = 0usize;
        for &(start, end) in &conflicts {
            if start > cursor {
                let gap = start - cursor;
                if gap >= size && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(end);
        }
        let offset = best.map_or(cursor, |(_, o)| o);
        offsets[i] = offset;
        arena = arena.max(offset + size);
        placed.push(i);
    }
    (offsets, arena)
}

/// The largest total of (aligned) bytes alive at any one step: no placement
/// can use less.
pub fn lower_bound(blocks: &[Block]) -> usize {
    let steps = blocks.iter().map(|b| b.life.last + 1).max().unwrap_or(0);
    // +bytes where a block starts, -bytes after it ends; the running sum is what is live.
    let mut delta = vec![0i128; steps + 1];
    for b in blocks {
        delta[b.life.first] += aligned(b.bytes) as i128;
        delta[b.life.last + 1] -= aligned(b.bytes) as i128;
    }
    let mut best = 0i128;
    let mut cur = 0i128;
    for d in delta {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}

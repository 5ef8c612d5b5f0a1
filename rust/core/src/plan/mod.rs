//! Static memory planning: every intermediate of a run gets an offset in one
//! arena, from the lifetimes of the values (`lifetimes`) and a greedy best-fit
//! placement (`arena`). An elementwise step may write its output over its
//! first input when that input dies there (in-place), so the two share a block.

pub mod arena;
pub mod lifetimes;

use crate::error::Result;
use arena::{aligned, assign_offsets, lower_bound, Block};
pub use lifetimes::{Lifetime, Step, ValueInfo, ValueKind};

/// Where each value lives and how good the plan is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Byte offset in the arena of each value (`None`: external or never defined).
    pub offsets: Vec<Option<usize>>,
    /// Arena size this plan needs.
    pub planned_bytes: usize,
    /// The most bytes alive at once (after in-place sharing): no plan needs less.
    pub lower_bound_bytes: usize,
    /// Bytes needed without any reuse (every planned value its own buffer).
    pub naive_bytes: usize,
    /// Values written in place over an input.
    pub in_place: usize,
}

/// Plans `values` for the program `steps` (at concrete dims: sizes in bytes).
pub fn plan(steps: &[Step], values: &[ValueInfo]) -> Result<MemoryPlan> {
    let lives = lifetimes::lifetimes(steps, values)?;
    // Each value's block; in-place outputs join their input's block.
    let mut block_of: Vec<Option<usize>> = vec![None; values.len()];
    let mut blocks: Vec<Block> = Vec::new();
    let mut in_place = 0;
    for (t, step) in steps.iter().enumerate() {
        let Some(life) = lives[step.output] else {
            continue;
        };
        let shared = step
            .in_place
            .then(|| step.inputs.first().copied())
            .flatten()
            .and_then(|i| {
                let li = lives[i]?;
                let bi = block_of[i]?;
                // The input must die at this very step, be read only once here, and be big enough.
                let single_use = step.inputs.iter().filter(|&&x| x == i).count() == 1;
                (li.last == t
                    && single_use
                    && blocks[bi].bytes >= values[step.output].bytes
                    && blocks[bi].life.last == t)
                    .then_some(bi)
            });
        match shared {
            Some(b) => {
                blocks[b].life.last = life.last;
                block_of[step.output] = Some(b);
                in_place += 1;
            }
            None => {
                block_of[step.output] = Some(blocks.len());
                blocks.push(Block {
                    bytes: values[step.output].bytes,
                    life,
                });
            }
        }
    }
    let (block_offsets, planned_bytes) = assign_offsets(&blocks);
    let naive_bytes = values
        .iter()
        .zip(&lives)
        .filter(|(_, l)| l.is_some())
        .map(|(v, _)| aligned(v.bytes))
        .sum();
    Ok(MemoryPlan {
        offsets: block_of
            .iter()
            .map(|b| b.map(|b| block_offsets[b]))
            .collect(),
        planned_bytes,
        lower_bound_bytes: lower_bound(&blocks),
        naive_bytes,
        in_place,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inter(bytes: usize) -> ValueInfo {
        ValueInfo {
            bytes,
            kind: ValueKind::Intermediate,
        }
    }

    /// Checks the plan's safety: values alive at the same time never share bytes
    /// (unless one was written in place over the other at the step it died).
    fn assert_no_overlap(steps: &[Step], values: &[ValueInfo], plan: &MemoryPlan) {
        let lives = lifetimes::lifetimes(steps, values).unwrap();
        for a in 0..values.len() {
            for b in a + 1..values.len() {
                let (Some(la), Some(lb), Some(oa), Some(ob)) =
                    (lives[a], lives[b], plan.offsets[a], plan.offsets[b])
                else {
                    continue;
                };
                if !la.overlaps(&lb) || oa == ob && (la.last == lb.first || lb.last == la.first) {
                    continue;
                }
                let (ea, eb) = (oa + aligned(values[a].bytes), ob + aligned(values[b].bytes));
                assert!(
                    ea <= ob || eb <= oa,
                    "values {a} {la:?} @{oa} and {b} {lb:?} @{ob} overlap"
                );
            }
        }
        assert!(plan.offsets.iter().flatten().all(|o| o % arena::ALIGN == 0));
        assert!(plan.planned_bytes >= plan.lower_bound_bytes);
        assert!(plan.planned_bytes <= plan.naive_bytes);
    }

    #[test]
    fn elementwise_chain_runs_in_place() {
        // x -> a -> b -> c -> out, all elementwise: one buffer suffices.
        let mut values = vec![ValueInfo {
            bytes: 1000,
            kind: ValueKind::External,
        }];
        values.extend((0..4).map(|_| inter(1000)));
        values[4].kind = ValueKind::Output;
        let steps: Vec<Step> = (0..4)
            .map(|t| Step {
                inputs: vec![t],
                output: t + 1,
                in_place: t > 0,
            })
            .collect();
        let p = plan(&steps, &values).unwrap();
        assert_eq!(p.in_place, 3);
        assert_eq!(p.planned_bytes, 1024);
        assert_eq!(p.naive_bytes, 4 * 1024);
        assert_no_overlap(&steps, &values, &p);
    }

    #[test]
    fn transformer_like_block_stays_near_the_lower_bound() {
        // Residual stream h; per layer: n = norm(h); q,k,v = lin(n); a = attn(q,k,v);
        // o = lin(a); h2 = add(h, o); u = lin(h2) (4x); g = gelu(u); d = lin(g); h3 = add(h2, d).
        let d = 768 * 128 * 4;
        let mut values = vec![ValueInfo {
            bytes: d,
            kind: ValueKind::External,
        }];
        let mut steps = Vec::new();
        let mut push =
            |values: &mut Vec<ValueInfo>, bytes: usize, inputs: Vec<usize>, in_place: bool| {
                values.push(inter(bytes));
                let id = values.len() - 1;
                steps.push(Step {
                    inputs,
                    output: id,
                    in_place,
                });
                id
            };
        let mut h = 0usize;
        for _ in 0..12 {
            let n = push(&mut values, d, vec![h], false);
            let q = push(&mut values, d, vec![n], false);
            let k = push(&mut values, d, vec![n], false);
            let v = push(&mut values, d, vec![n], false);
            let a = push(&mut values, d, vec![q, k, v], false);
            let o = push(&mut values, d, vec![a], false);
            let h2 = push(&mut values, d, vec![o, h], true);
            let u = push(&mut values, 4 * d, vec![h2], false);
            let g = push(&mut values, 4 * d, vec![u], true);
            let dd = push(&mut values, d, vec![g], false);
            h = push(&mut values, d, vec![dd, h2], true);
        }
        values[h].kind = ValueKind::Output;
        let p = plan(&steps, &values).unwrap();
        assert_no_overlap(&steps, &values, &p);
        assert!(
            p.planned_bytes as f64 <= 1.05 * p.lower_bound_bytes as f64,
            "{p:?}"
        );
        assert!(p.naive_bytes > 10 * p.planned_bytes);
    }

    #[test]
    fn random_programs_never_overlap_live_values() {
        let mut x = 12345u64;
        let mut rnd = |n: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize % n.max(1)
        };
        for _ in 0..200 {
            let n_steps = 1 + rnd(40);
            let mut values = vec![ValueInfo {
                bytes: 100,
                kind: ValueKind::External,
            }];
            let mut steps = Vec::new();
            for _ in 0..n_steps {
                let n_in = 1 + rnd(3);
                let inputs: Vec<usize> = (0..n_in).map(|_| rnd(values.len())).collect();
                values.push(inter(1 + rnd(5000)));
                steps.push(Step {
                    inputs,
                    output: values.len() - 1,
                    in_place: rnd(2) == 0,
                });
            }
            let last = values.len() - 1;
            values[last].kind = ValueKind::Output;
            let p = plan(&steps, &values).unwrap();
            assert_no_overlap(&steps, &values, &p);
        }
    }
}

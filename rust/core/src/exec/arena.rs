//! What runs of one compiled program share: the memory plans made so far (one
//! per shape signature) and the idle arenas of finished runs.
//!
//! **Arena policy.** A run takes the smallest idle arena that holds its plan,
//! or maps a fresh one of exactly the planned size. When the run ends its
//! arena goes back to the pool unless it is more than [`SHRINK_FACTOR`] times
//! the largest need of the last [`HISTORY`] runs: then it is unmapped (the
//! pages go back to the OS) and the next run maps what it needs. So after a
//! run at a large shape, a few runs at small shapes bring memory back down,
//! while a workload that alternates sizes keeps one arena of its larger size.
//! At most [`MAX_IDLE`] arenas stay idle (one per concurrent run, up to that).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;
use crate::plan::MemoryPlan;
use crate::storage::Arena;

/// An idle arena larger than this many times the recent need is freed.
pub const SHRINK_FACTOR: usize = 2;
/// Runs whose needs the shrink decision looks at.
pub const HISTORY: usize = 8;
/// Idle arenas kept at most.
pub const MAX_IDLE: usize = 4;
/// Arenas up to this size (one page) are never freed for being too big.
pub const ARENA_FLOOR: usize = 4096;
/// Plans kept at most (distinct shape signatures); the oldest goes first.
pub const MAX_PLANS: usize = 64;

/// A memory plan for concrete dims, with each value's size in bytes.
#[derive(Debug)]
pub struct RunPlan {
    pub memory: MemoryPlan,
    pub bytes: Vec<usize>,
    /// Each value's shape under the plan's symbol bindings (resolved once, not per run).
    pub shapes: Vec<Vec<usize>>,
}

/// Counters over the runs of one program (for tests and `memory_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub runs: u64,
    /// Node outputs written into their planned arena region.
    pub in_arena: u64,
    /// Elementwise nodes that wrote over their input in place.
    pub in_place: u64,
    /// Planned nodes whose output went to a fresh buffer instead (an op that
    /// returns a view, or a region still referenced).
    pub fallback: u64,
    /// Arenas mapped so far.
    pub arenas_created: u64,
    /// Arenas unmapped by the shrink policy.
    pub arenas_freed: u64,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Arc<Arena>>,
    recent: VecDeque<usize>,
    stats: RunStats,
}

#[derive(Default)]
struct Plans {
    by_dims: HashMap<Vec<usize>, Arc<RunPlan>>,
    order: VecDeque<Vec<usize>>,
}

/// Shared by every clone of a `Compiled` (and so by its device executable).
#[derive(Default)]
pub struct RunCache {
    pool: Mutex<Pool>,
    plans: Mutex<Plans>,
    /// Per-node times, when profiling is on (see `Compiled::set_profiling`).
    pub(crate) profile: NodeProfile,
}

/// Time spent in each node over the profiled runs: (calls, nanoseconds) by node id.
#[derive(Default)]
pub(crate) struct NodeProfile {
    pub(crate) enabled: AtomicBool,
    times: Mutex<Vec<(u64, u64)>>,
}

impl NodeProfile {
    /// Adds one run's (node id, nanoseconds) measurements.
    pub(crate) fn record(&self, run: &[(usize, u64)]) {
        let mut times = lock(&self.times);
        for &(id, nanos) in run {
            if times.len() <= id {
                times.resize(id + 1, (0, 0));
            }
            times[id].0 += 1;
            times[id].1 += nanos;
        }
    }

    /// (calls, nanoseconds) by node id so far.
    pub(crate) fn snapshot(&self) -> Vec<(u64, u64)> {
        lock(&self.times).clone()
    }

    pub(crate) fn clear(&self) {
        lock(&self.times).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunCache {
    /// The plan for `key` (symbol values in a fixed order), made by `make` once.
    pub fn plan(
        &self,
        key: Vec<usize>,
        make: impl FnOnce() -> Result<RunPlan>,
    ) -> Result<Arc<RunPlan>> {
        if let Some(p) = lock(&self.plans).by_dims.get(&key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(make()?);
        let mut plans = lock(&self.plans);
        if plans.by_dims.len() >= MAX_PLANS {
            if let Some(old) = plans.order.pop_front() {
                plans.by_dims.remove(&old);
            }
        }
        if plans.by_dims.insert(key.clone(), plan.clone()).is_none() {
            plans.order.push_back(key);
        }
        Ok(plan)
    }

    /// Plans cached now.
    pub fn plans_cached(&self) -> usize {
        lock(&self.plans).by_dims.len()
    }

    /// An arena of at least `need` bytes for one run.
    pub fn take_arena(&self, need: usize) -> Result<Arc<Arena>> {
        {
            let mut pool = lock(&self.pool);
            let best = pool
                .idle
                .iter()
                .enumerate()
                .filter(|(_, a)| a.capacity() >= need)
                .min_by_key(|(_, a)| a.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(pool.idle.swap_remove(i));
            }
            pool.stats.arenas_created += 1;
        }
        Arena::new(need)
    }

    /// Returns a run's arena (which needed `need` bytes) and applies the policy.
    pub fn give_arena(&self, arena: Arc<Arena>, need: usize, run: RunStats) {
        let mut pool = lock(&self.pool);
        let s = &mut pool.stats;
        s.runs += 1;
        s.in_arena += run.in_arena;
        s.in_place += run.in_place;
        s.fallback += run.fallback;
        if pool.recent.len() == HISTORY {
            pool.recent.pop_front();
        }
        pool.recent.push_back(need);
        let high = pool.recent.iter().copied().max().unwrap_or(0);
        // Too big for what runs need lately: free it (and any idle one like it).
        let limit = SHRINK_FACTOR.saturating_mul(high).max(ARENA_FLOOR);
        let before = pool.idle.len() + 1;
        pool.idle.retain(|a| a.capacity() <= limit);
        // An arena some tensor still points into (never expected) is not reused.
        if arena.capacity() <= limit
            && pool.idle.len() < MAX_IDLE
            && Arc::strong_count(&arena) == 1
            && arena.live_regions() == 0
        {
            pool.idle.push(arena);
        }
        let freed = before - pool.idle.len();
        pool.stats.arenas_freed += freed as u64;
    }

    /// Bytes held by idle arenas.
    pub fn idle_bytes(&self) -> usize {
        lock(&self.pool).idle.iter().map(|a| a.capacity()).sum()
    }

    pub fn stats(&self) -> RunStats {
        lock(&self.pool).stats
    }
}

impl std::fmt::Debug for RunCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RunCache({} plans, {} idle arena bytes)",
            self.plans_cached(),
            self.idle_bytes()
        )
    }
}

//! The runtime's one thread pool. Its size comes from `RTSERVE_NUM_THREADS`,
//! else the number of physical cores; [`set_num_threads`] replaces it (for
//! benchmarks at 1 and 2 threads). Kernels never spawn threads of their own.

use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

struct Pool {
    threads: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
}

fn state() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("RTSERVE_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(num_cpus::get_physical)
            .max(1);
        Mutex::new(Pool {
            threads,
            pool: None,
        })
    })
}

/// Threads kernels may use.
pub fn num_threads() -> usize {
    state().lock().map(|p| p.threads).unwrap_or(1)
}

/// Resizes the pool (the old one finishes its work and is dropped when unused).
pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 || threads > 1024 {
        return Err(Error::Unsupported(format!(
            "num_threads must be between 1 and 1024, got {threads}"
        )));
    }
    let mut p = state()
        .lock()
        .map_err(|_| Error::Internal("thread pool lock poisoned".into()))?;
    if p.threads != threads {
        p.threads = threads;
        p.pool = None;
    }
    Ok(())
}

/// The pool of helper threads (`num_threads() - 1` of them: the calling thread
/// works too), or `None` when one thread is configured (work runs inline).
pub fn pool() -> Option<Arc<rayon::ThreadPool>> {
    let mut p = state().lock().ok()?;
    if p.threads <= 1 {
        return None;
    }
    if p.pool.is_none() {
        p.pool = rayon::ThreadPoolBuilder::new()
            .num_threads(p.threads - 1)
            .thread_name(|i| format!("rtserve-{i}"))
            .build()
            .ok()
            .map(Arc::new);
    }
    p.pool.clone()
}

/// Runs `f(i)` for `i in 0..tasks`: the calling thread and the pool's helpers
/// take task indices from a shared counter (so the caller never just waits, and
/// a short call costs one wake-up of the helpers, not a hand-off and back).
pub fn parallel_for(tasks: usize, f: impl Fn(usize) + Send + Sync) {
    let pool = match pool() {
        Some(pool) if tasks > 1 => pool,
        _ => return (0..tasks).for_each(f),
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        f(t);
    };
    let helpers = pool.current_num_threads().min(tasks - 1);
    pool.in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| work());
        }
        work();
    });
}

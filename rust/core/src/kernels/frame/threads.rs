//! The runtime's one thread pool. Its size comes from `RTSERVE_NUM_THREADS`,
//! else the number of physical cores; [`set_num_threads`] resizes it (for
//! benchmarks at 1 and 2 threads). Kernels never spawn threads of their own.
//!
//! `parallel_for` hands task indices out from a shared counter; the calling
//! thread works too. After a job, helper threads spin for a short while
//! (`SPIN`, or `RTSERVE_SPIN_US` microseconds) before sleeping, so the back-to-back
//! small calls of a decode loop do not pay an OS wake-up each (the same trade
//! OpenBLAS and llama.cpp make; `OMP_WAIT_POLICY` is OpenMP's knob for it).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long an idle helper keeps polling for the next job before it sleeps, unless
/// `RTSERVE_SPIN_US` says otherwise (0: sleep at once).
const SPIN: Duration = Duration::from_micros(200);

fn spin_time() -> Duration {
    static SPIN_TIME: OnceLock<Duration> = OnceLock::new();
    *SPIN_TIME.get_or_init(|| {
        std::env::var("RTSERVE_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(SPIN, |us| Duration::from_micros(us.min(1_000_000)))
    })
}

/// Polls of the caller waiting for the helpers' last tasks before it starts yielding
/// its core (a few microseconds; 2^16 polls, about 1 ms, wasted whole slices when the
/// process had more runnable threads than cores).
const WAIT_SPINS: u32 = 1 << 10;

type TaskFn = dyn Fn(usize) + Sync;
type Panic = Box<dyn std::any::Any + Send>;

/// One `parallel_for` call. The function pointer's lifetime is erased: it is
/// only called for claimed task indices below `tasks`, and the caller does not
/// return before every claimed task has finished (`done == tasks`).
struct Job {
    func: *const TaskFn,
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Panic>>,
}

// SAFETY: `func` points to a `Sync` closure that outlives every call made through
// it (see `Job`); the other fields are atomics or a mutex.
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs tasks until none are left.
    fn work(&self) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.tasks {
                return;
            }
            // SAFETY: t < tasks was claimed by this thread alone, so the caller of
            // `parallel_for` is still waiting for it and the closure is alive.
            let f = unsafe { &*self.func };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(t))) {
                if let Ok(mut slot) = self.panic.lock() {
                    slot.get_or_insert(p);
                }
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    seq: AtomicU64,
    current: Mutex<Option<Arc<Job>>>,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            seq: AtomicU64::new(0),
            current: Mutex::new(None),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .filter_map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("rtserve-{i}"))
                    .spawn(move || worker(&shared))
                    .ok()
            })
            .collect();
        Pool {
            threads,
            shared,
            workers,
        }
    }

    fn shutdown(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Ok(_guard) = self.shared.sleep.lock() {
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(shared: &Shared) {
    IN_TASK.set(true);
    let mut seen = shared.seq.load(Ordering::Acquire);
    loop {
        // Spin, then sleep, until a new job is published. The clock is read every 64
        // polls: reading it on every poll made clock_gettime 2% of an encoder's profile.
        let start = Instant::now();
        let spin = spin_time();
        let mut polls = 0u32;
        while shared.seq.load(Ordering::Acquire) == seen {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(64) && start.elapsed() >= spin {
                break;
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            std::hint::spin_loop();
        }
        if shared.seq.load(Ordering::Acquire) == seen {
            let Ok(mut guard) = shared.sleep.lock() else {
                return;
            };
            while shared.seq.load(Ordering::Acquire) == seen && !shared.stop.load(Ordering::SeqCst)
            {
                guard = match shared.wake.wait_timeout(guard, Duration::from_millis(100)) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        seen = shared.seq.load(Ordering::Acquire);
        let job = shared.current.lock().ok().and_then(|j| j.clone());
        if let Some(job) = job {
            job.work();
        }
    }
}

fn state() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("RTSERVE_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(num_cpus::get_physical)
            .clamp(1, 1024);
        SHARED_THREADS.store(threads, Ordering::Relaxed);
        Mutex::new(Pool::new(threads))
    })
}

/// The shared pool's size, kept beside it so that reading it never waits for the
/// pool's lock (held for the whole of a running job). Set when `state()` makes the pool.
static SHARED_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's own pool, when [`set_local_threads`] gave it one: kernels called
    /// from this thread use it instead of the shared pool while it is active.
    static LOCAL: RefCell<Local> = const { RefCell::new(Local { pool: None, active: false }) };
    /// Set while this thread runs a task of a `parallel_for` job (and for the pools'
    /// helper threads): a nested `parallel_for` runs inline.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// A thread's own pool, and whether its kernels use it now.
struct Local {
    pool: Option<Pool>,
    active: bool,
}

impl Local {
    fn active_pool(&self) -> Option<&Pool> {
        self.pool.as_ref().filter(|_| self.active)
    }
}

/// Threads kernels called from this thread may use: its own pool's size if
/// [`set_local_threads`] made it active, else the shared pool's.
pub fn num_threads() -> usize {
    local_threads().unwrap_or_else(|| {
        state(); // makes the pool (and sets its size) on first use
        SHARED_THREADS.load(Ordering::Relaxed)
    })
}

/// Resizes the shared pool (waits for a running job to finish first).
pub fn set_num_threads(threads: usize) -> Result<()> {
    check_threads(threads)?;
    let mut p = state()
        .lock()
        .map_err(|_| Error::Internal("thread pool lock poisoned".into()))?;
    if p.threads != threads {
        p.shutdown();
        *p = Pool::new(threads);
        SHARED_THREADS.store(threads, Ordering::Relaxed);
    }
    Ok(())
}

fn check_threads(threads: usize) -> Result<()> {
    if threads == 0 || threads > 1024 {
        return Err(Error::Unsupported(format!(
            "num_threads must be between 1 and 1024, got {threads}"
        )));
    }
    Ok(())
}

/// Gives the calling thread a pool of its own: the kernels it calls from now on run
/// on `threads` threads (itself and `threads - 1` helpers, which inherit its CPU
/// affinity; 1: on itself alone) instead of the shared pool. `None` goes back to the
/// shared pool; the thread's pool stays (its helpers asleep) until a call with another
/// size replaces it or the thread ends, so switching back and forth is cheap. A server
/// runs several model instances side by side this way, each on its share of the
/// cores, so that one instance's threads never wait for another's.
pub fn set_local_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        check_threads(n)?;
    }
    LOCAL.with(|l| {
        let mut local = l.try_borrow_mut().map_err(|_| {
            Error::Unsupported(
                "set_local_threads cannot be called from inside a kernel task".into(),
            )
        })?;
        match threads {
            None => local.active = false,
            Some(n) => {
                if local.pool.as_ref().is_none_or(|p| p.threads != n) {
                    local.pool = Some(Pool::new(n));
                }
                local.active = true;
            }
        }
        Ok(())
    })
}

/// The size of the calling thread's own pool (see [`set_local_threads`]) while its
/// kernels use it.
pub fn local_threads() -> Option<usize> {
    LOCAL.with(|l| {
        l.try_borrow()
            .ok()
            .and_then(|l| l.active_pool().map(|p| p.threads))
    })
}

/// A raw pointer handed to `parallel_for` tasks that write disjoint parts of its buffer
/// (raw pointers are neither Send nor Sync).
#[derive(Copy, Clone)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> SendPtr<T> {
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: every user hands the pointer to tasks that write disjoint parts of the buffer,
// which outlives the parallel_for call.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Runs `f(i)` for every `i in 0..tasks`, on the calling thread and the pool's
/// helpers. One job runs at a time: a call made while another thread's job is
/// running (several Python threads at once) runs its tasks inline.
pub fn parallel_for(tasks: usize, f: impl Fn(usize) + Send + Sync) {
    if tasks <= 1 || IN_TASK.get() {
        (0..tasks).for_each(f);
        return;
    }
    let f: &(dyn Fn(usize) + Sync) = &f;
    let on_local = LOCAL.with(|l| {
        let local = l.try_borrow().ok()?;
        local.active_pool().map(|pool| run_job(pool, tasks, f))
    });
    // Else the shared pool. Holding its lock for the whole job serialises jobs and keeps
    // it from being resized under them. A busy pool, or one without helpers: inline, with
    // the lock released at once.
    let shared = || state().try_lock().ok().filter(|p| !p.workers.is_empty());
    let panic = on_local.unwrap_or_else(|| match shared() {
        Some(pool) => run_job(&pool, tasks, f),
        None => {
            (0..tasks).for_each(f);
            None
        }
    });
    // Re-raised after the lock is released, so a task's panic does not poison it.
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

/// Publishes a job of `tasks` tasks to `pool`'s helpers, works on it too, and returns
/// once every task has finished, with the first task's panic if one panicked.
/// A pool without helpers (one thread) runs the tasks inline.
fn run_job(pool: &Pool, tasks: usize, f: &(dyn Fn(usize) + Sync)) -> Option<Panic> {
    if pool.workers.is_empty() {
        (0..tasks).for_each(f);
        return None;
    }
    // SAFETY: lifetime erasure (see `Job`); this function waits for `done == tasks`
    // below before `f` goes out of scope, also when a task panics.
    let func: *const TaskFn =
        unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static TaskFn>(f) };
    let job = Arc::new(Job {
        func,
        tasks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panic: Mutex::new(None),
    });
    if let Ok(mut current) = pool.shared.current.lock() {
        *current = Some(job.clone());
    }
    pool.shared.seq.fetch_add(1, Ordering::AcqRel);
    if let Ok(_guard) = pool.shared.sleep.lock() {
        pool.shared.wake.notify_all();
    }
    IN_TASK.set(true);
    job.work();
    IN_TASK.set(false);
    // The helpers are finishing their last tasks: poll briefly, then yield, so that a
    // helper preempted by another thread of the process (the server's event loop, a
    // tokenizer) gets the core back instead of this thread spinning through its slice.
    let mut spins = 0u32;
    while job.done.load(Ordering::Acquire) < tasks {
        spins += 1;
        if spins < WAIT_SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    if let Ok(mut current) = pool.shared.current.lock() {
        *current = None;
    }
    job.panic.lock().ok().and_then(|mut p| p.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_panics_propagate() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..50 {
            parallel_for(hits.len(), |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        let r = catch_unwind(|| parallel_for(64, |i| assert!(i != 33, "task 33 fails")));
        assert!(r.is_err());
        // The pool still works afterwards.
        let sum = AtomicUsize::new(0);
        parallel_for(10, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn a_thread_of_its_own_pool_runs_every_task_and_nested_calls_inline() {
        std::thread::spawn(|| {
            assert_eq!(local_threads(), None);
            for threads in [1, 3, 1] {
                set_local_threads(Some(threads)).unwrap();
                assert_eq!(local_threads(), Some(threads));
                assert_eq!(num_threads(), threads);
                let hits: Vec<AtomicUsize> = (0..257).map(|_| AtomicUsize::new(0)).collect();
                let inner = AtomicUsize::new(0);
                parallel_for(hits.len(), |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    if i % 64 == 0 {
                        // Nested: runs inline on whichever thread runs task i.
                        parallel_for(4, |_| {
                            inner.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                assert_eq!(inner.load(Ordering::Relaxed), 5 * 4);
                let r = catch_unwind(|| parallel_for(16, |i| assert!(i != 7, "task 7 fails")));
                assert!(r.is_err());
            }
            set_local_threads(None).unwrap();
            assert_eq!(local_threads(), None);
            assert!(set_local_threads(Some(0)).is_err());
            assert!(set_local_threads(Some(1025)).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn reading_the_thread_count_does_not_wait_for_a_running_job() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        // One thread's task waits until another thread has read num_threads() (and run
        // kernels of its own) while that job holds the shared pool; before the count sat
        // beside the pool, under its lock, the reader waited for the job to end.
        let (tx, rx) = channel::<usize>();
        let rx = Mutex::new(rx);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let n = num_threads();
            let sum = AtomicUsize::new(0);
            parallel_for(8, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 28);
            tx.send(n).unwrap();
        });
        let got = Mutex::new(None);
        parallel_for(2, |i| {
            if i == 0 {
                let n = rx.lock().unwrap().recv_timeout(Duration::from_secs(20));
                *got.lock().unwrap() = Some(n.is_ok());
            }
        });
        reader.join().unwrap();
        assert_eq!(*got.lock().unwrap(), Some(true));
    }
}

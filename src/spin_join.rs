//! Two-way fork-join on a helper thread that spins briefly between jobs, and never makes
//! the caller wait for a job the helper has not started.
//!
//! A residual MLP step is hundreds of short parallel sections (a split GEMM, a BatchNorm
//! pass) of 10-200 µs each. Between them rayon's idle worker goes to sleep, and on this
//! virtual machine waking it costs an inter-processor interrupt: in a W1 step the kernel's
//! wake-up and scheduling paths took 12% of the samples and the halted vCPU another 8%. The
//! helper here instead spins (with `spin_loop`, which yields the core's issue slots to its
//! sibling hyperthread) for a short window after each job, so back-to-back sections hand over
//! in well under a microsecond; after the window it parks and costs nothing.
//!
//! On a machine whose cores are shared (a second resprop, a browser, a busy loop, a process
//! pinned to one core) either thread may be descheduled at any moment, and a thread that spins
//! for the other then burns the time slice the other needs: two resprop processes on two
//! cores each took 5x their solo step, and a small network pinned to one core could take
//! minutes. So every wait here is bounded:
//!
//! - the caller posts `b`, runs `a`, then takes `b` back and runs it itself if the helper has
//!   not started it (the split is the caller's, so the bits are the same either way): a
//!   descheduled helper costs nothing but its own absence;
//! - a caller waiting for a started `b` spins for [`SPIN_WAIT`], then yields the core between
//!   looks until [`YIELD_WAIT`], then parks until the helper unparks it;
//! - the idle helper yields the core between looks while it waits for the next job, and parks
//!   after [`SPIN_WINDOW`].
//!
//! [`join`] decides where `b` runs: on the helper when it is free and the calling thread has
//! not opted out; through `rayon::join` otherwise (a second caller while the helper is busy,
//! or code that runs many networks at once on rayon's workers and wraps each in
//! [`without_helper`], so the machine is not oversubscribed); on the calling thread when
//! rayon has one thread. The split is the caller's and never depends on which of these ran,
//! so results are bit-identical for any thread count.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long the idle helper looks for the next job before it parks. Longer than the gaps
/// between a step's parallel sections (a few µs to ~100 µs), short enough that a parked
/// helper does not compete with rayon's workers in code that does not use it.
const SPIN_WINDOW: Duration = Duration::from_micros(500);
/// How long a caller spins for a started job before it starts yielding the core.
const SPIN_WAIT: Duration = Duration::from_micros(20);
/// How long a caller yields between looks before it parks: longer than the largest halves
/// (a W3 GEMM half takes about a millisecond), since waking a parked thread costs tens of
/// microseconds on a virtual machine, and a yield to no one returns at once.
const YIELD_WAIT: Duration = Duration::from_millis(5);
/// Spins between two yields of the idle helper (about 2 µs of `spin_loop`).
const SPINS_PER_YIELD: u32 = 128;

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const RUNNING: u8 = 2;
const DONE: u8 = 3;
const PANICKED: u8 = 4;

/// A posted job: a type-erased `Option<F>` on the caller's stack and the function that takes
/// and runs it, and the caller to unpark when it is done.
#[derive(Clone)]
struct JobRef {
    data: *mut (),
    run: unsafe fn(*mut ()),
    caller: Thread,
}

struct Helper {
    /// Held by the caller that posted the current job (one job at a time).
    claimed: AtomicBool,
    state: AtomicU8,
    /// Written by the claimant before `state` becomes POSTED, read by the helper after.
    job: UnsafeCell<Option<JobRef>>,
    /// A panicking job's payload, written by the helper before it stores PANICKED.
    panic: UnsafeCell<Option<Box<dyn std::any::Any + Send>>>,
    /// The helper is parked (or about to park) waiting for a job.
    parked: AtomicBool,
    /// The caller is parked (or about to park) waiting for the job to finish.
    caller_parked: AtomicBool,
    thread: Thread,
}

// SAFETY: `job` is written only by the caller holding `claimed`, before a SeqCst store of
// POSTED, and read only by the helper after it has moved POSTED to RUNNING (SeqCst); the caller
// does not touch it again until the helper has stored DONE/PANICKED (Release) and it has seen
// that (Acquire), or until it has itself moved POSTED back to IDLE, after which the helper
// cannot read it. The pointer inside is used only while the posting caller waits in `join`.
// `panic` is written only by the helper, before its Release store of PANICKED, and taken only
// by the caller after its Acquire load of PANICKED, before it releases `claimed`.
unsafe impl Sync for Helper {}
unsafe impl Send for Helper {}

static HELPER: OnceLock<&'static Helper> = OnceLock::new();

/// Test-only: while set, the helper takes no job, as if it were never scheduled, so every
/// join takes its `b` back (other tests' joins too, which then run serially: the same bits).
#[cfg(test)]
static HELPER_AWAY: AtomicBool = AtomicBool::new(false);

/// Test-only: how many jobs their callers took back.
#[cfg(test)]
static TAKEN_BACK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(test)]
fn helper_away() -> bool {
    HELPER_AWAY.load(Ordering::SeqCst)
}

#[cfg(not(test))]
fn helper_away() -> bool {
    false
}

thread_local! {
    /// Set while this thread runs one of several networks in parallel (see [`without_helper`]).
    static HELPER_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread's handle, for the helper to unpark it (taken once, not per join).
    static ME: Thread = thread::current();
}

/// Runs `f` with this thread's joins going through rayon's pool instead of the helper: for
/// work items of a parallel loop over whole networks, where every core already has one.
pub fn without_helper<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            HELPER_OFF.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(HELPER_OFF.with(|c| c.replace(true)));
    f()
}

fn helper() -> &'static Helper {
    HELPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        thread::Builder::new()
            .name("resprop-helper".into())
            .spawn(move || {
                let me: &'static Helper = Box::leak(Box::new(Helper {
                    claimed: AtomicBool::new(false),
                    state: AtomicU8::new(IDLE),
                    job: UnsafeCell::new(None),
                    panic: UnsafeCell::new(None),
                    parked: AtomicBool::new(false),
                    caller_parked: AtomicBool::new(false),
                    thread: thread::current(),
                }));
                tx.send(me)
                    .expect("the spawning thread waits for the helper");
                serve(me)
            })
            .expect("could not start the helper thread");
        rx.recv().expect("the helper thread starts")
    })
}

/// The helper's loop: look for a posted job (yielding the core between looks, parking after
/// the window), take it unless its caller took it back, run it, report.
fn serve(h: &'static Helper) -> ! {
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            if h.state.load(Ordering::Acquire) == POSTED
                && !helper_away()
                && h.state
                    .compare_exchange(POSTED, RUNNING, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(SPINS_PER_YIELD) {
                if since.elapsed() > SPIN_WINDOW {
                    // Announce the park, then look once more: a caller that posts after this
                    // store sees `parked` and unparks us (both SeqCst, so one sees the other).
                    h.parked.store(true, Ordering::SeqCst);
                    if h.state.load(Ordering::SeqCst) != POSTED {
                        thread::park();
                    }
                    h.parked.store(false, Ordering::SeqCst);
                    since = Instant::now();
                } else {
                    // On a shared core the thread that will post (or another process) may be
                    // waiting for this one's time slice.
                    thread::yield_now();
                }
            }
        }
        // SAFETY: see `unsafe impl Sync for Helper`: we moved POSTED to RUNNING.
        let job = unsafe { (*h.job.get()).clone().expect("a posted job") };
        // SAFETY: `job.data` points to the `Option<F>` matching `job.run`, alive until the
        // caller sees DONE or PANICKED.
        let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { (job.run)(job.data) }));
        let done = match outcome {
            Ok(()) => DONE,
            Err(payload) => {
                // SAFETY: the caller reads `panic` only after seeing PANICKED (Acquire).
                unsafe { *h.panic.get() = Some(payload) };
                PANICKED
            }
        };
        h.state.store(done, Ordering::SeqCst);
        if h.caller_parked.load(Ordering::SeqCst) {
            job.caller.unpark();
        }
    }
}

/// Takes the closure out of its slot and runs it.
///
/// # Safety
/// `data` must point to a live `Option<F>` that no one else touches during the call.
unsafe fn run_slot<F: FnOnce()>(data: *mut ()) {
    let slot = &mut *(data as *mut Option<F>);
    if let Some(f) = slot.take() {
        f()
    }
}

/// Runs `a` and `b`, in parallel when there is more than one thread; returns when both have
/// finished. A panic in either is re-raised on the caller after both have stopped.
pub fn join(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    if rayon::current_num_threads() <= 1 {
        a();
        b();
        return;
    }
    if HELPER_OFF.with(|c| c.get()) {
        rayon::join(a, b);
        return;
    }
    let h = helper();
    if h.claimed
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // Another thread's job is on the helper: share rayon's pool instead.
        rayon::join(a, b);
        return;
    }
    let mut slot = Some(b);
    post(h, &mut slot);
    let mine = catch_unwind(AssertUnwindSafe(a));
    let theirs = if h
        .state
        .compare_exchange(POSTED, IDLE, Ordering::SeqCst, Ordering::Relaxed)
        .is_ok()
    {
        // The helper had not started `b`: run it here (the slot is ours again).
        #[cfg(test)]
        TAKEN_BACK.fetch_add(1, Ordering::SeqCst);
        let b = slot.take().expect("a job not taken is still in its slot");
        match catch_unwind(AssertUnwindSafe(b)) {
            Ok(()) => DONE,
            Err(payload) => {
                // SAFETY: the helper never saw this job, so it does not touch `panic`.
                unsafe { *h.panic.get() = Some(payload) };
                PANICKED
            }
        }
    } else {
        wait(h)
    };
    // SAFETY: `panic` was written before PANICKED was stored, by the helper (which `wait` saw
    // with Acquire) or by this thread, and is not touched again until a new job is posted.
    let their_panic = (theirs == PANICKED).then(|| unsafe { (*h.panic.get()).take() });
    h.claimed.store(false, Ordering::Release);
    if let Err(payload) = mine {
        resume_unwind(payload);
    }
    if let Some(payload) = their_panic {
        resume_unwind(payload.unwrap_or_else(|| Box::new("a job on the helper thread panicked")));
    }
}

/// Below this many elements an elementwise or per-column pass runs its two halves on the
/// calling thread: a fork costs about a microsecond when both threads are on a core, and far
/// more when one is not, against about a nanosecond per element of work.
pub const MIN_PARALLEL_ELEMENTS: usize = 16 * 1024;

/// [`join`] when `parallel`, else `a` then `b` on the calling thread: the same halves either
/// way, so the same bits.
pub fn join_if(parallel: bool, a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    if parallel {
        join(a, b)
    } else {
        a();
        b();
    }
}

fn post<F: FnOnce() + Send>(h: &Helper, slot: &mut Option<F>) {
    // SAFETY: we hold `claimed` and the helper is IDLE, so no one reads `job` now.
    unsafe {
        *h.job.get() = Some(JobRef {
            data: slot as *mut Option<F> as *mut (),
            run: run_slot::<F>,
            caller: ME.with(Thread::clone),
        });
    }
    h.caller_parked.store(false, Ordering::SeqCst);
    h.state.store(POSTED, Ordering::SeqCst);
    if h.parked.load(Ordering::SeqCst) {
        h.thread.unpark();
    }
}

/// Waits until the helper has finished the job it started: spins, then yields the core
/// between looks, then parks; returns how the job ended.
fn wait(h: &Helper) -> u8 {
    let finished = |h: &Helper| {
        let s = h.state.load(Ordering::Acquire);
        (s == DONE || s == PANICKED).then_some(s)
    };
    let since = Instant::now();
    let mut spins = 0u32;
    let outcome = loop {
        if let Some(s) = finished(h) {
            break s;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let waited = since.elapsed();
        if waited < SPIN_WAIT {
            std::hint::spin_loop();
        } else if waited < YIELD_WAIT {
            thread::yield_now();
        } else {
            // Announce the park, then look once more: the helper stores DONE before it reads
            // `caller_parked` (both SeqCst), so either we see DONE or it unparks us.
            h.caller_parked.store(true, Ordering::SeqCst);
            while finished(h).is_none() {
                thread::park();
            }
            break finished(h).expect("seen finished");
        }
    };
    h.state.store(IDLE, Ordering::Relaxed);
    outcome
}

/// Splits `len` items at a boundary that is a multiple of `unit` (so fixed-size tasks stay
/// whole): the index where the second half starts.
pub fn split_point(len: usize, unit: usize) -> usize {
    let tasks = len.div_ceil(unit.max(1));
    (tasks / 2) * unit.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn both_sides_run_and_see_their_borrows() {
        let mut left = vec![0u32; 1000];
        let mut right = vec![0u32; 1000];
        for round in 0..200u32 {
            join(
                || left.iter_mut().for_each(|v| *v += round),
                || right.iter_mut().for_each(|v| *v += 2 * round),
            );
        }
        let total: u32 = (0..200).sum();
        assert!(left.iter().all(|&v| v == total));
        assert!(right.iter().all(|&v| v == 2 * total));
    }

    #[test]
    fn works_after_the_helper_has_parked() {
        let count = AtomicUsize::new(0);
        for _ in 0..3 {
            join(
                || {
                    count.fetch_add(1, Ordering::Relaxed);
                },
                || {
                    count.fetch_add(10, Ordering::Relaxed);
                },
            );
            std::thread::sleep(SPIN_WINDOW * 4);
        }
        assert_eq!(count.load(Ordering::Relaxed), 33);
    }

    #[test]
    fn concurrent_callers_and_nested_joins_finish() {
        let count = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        join(
                            || {
                                join(
                                    || {
                                        count.fetch_add(1, Ordering::Relaxed);
                                    },
                                    || {
                                        count.fetch_add(1, Ordering::Relaxed);
                                    },
                                )
                            },
                            || {
                                count.fetch_add(1, Ordering::Relaxed);
                            },
                        )
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 4 * 100 * 3);
    }

    #[test]
    fn a_panic_on_either_side_reaches_the_caller() {
        let r = catch_unwind(|| join(|| {}, || panic!("right")));
        let message = r.unwrap_err().downcast::<&str>().map(|m| *m);
        // Through the helper the payload arrives as it was; through rayon (another test
        // holds the helper) too.
        assert_eq!(message.ok(), Some("right"));
        let r = catch_unwind(|| join(|| panic!("left"), || {}));
        assert!(r.is_err());
        // The helper still serves after both.
        let count = AtomicUsize::new(0);
        join(
            || {
                count.fetch_add(1, Ordering::Relaxed);
            },
            || {
                count.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_job_the_helper_has_not_started_runs_on_the_caller() {
        HELPER_AWAY.store(true, Ordering::SeqCst);
        let me = std::thread::current().id();
        // Another test may hold the helper for a moment (its join then goes through rayon):
        // retry until this caller has posted to the helper and taken its job back.
        let mut ran_on = None;
        for _ in 0..1000 {
            let before = TAKEN_BACK.load(Ordering::SeqCst);
            let mut right = None;
            join(|| {}, || right = Some(std::thread::current().id()));
            if TAKEN_BACK.load(Ordering::SeqCst) > before && right == Some(me) {
                ran_on = right;
                break;
            }
        }
        let r = catch_unwind(|| join(|| {}, || panic!("taken back")));
        HELPER_AWAY.store(false, Ordering::SeqCst);
        assert_eq!(ran_on, Some(me), "no job was taken back");
        let message = r.unwrap_err().downcast::<&str>().map(|m| *m);
        assert_eq!(message.ok(), Some("taken back"));
        // The helper serves again.
        let count = AtomicUsize::new(0);
        join(
            || {
                count.fetch_add(1, Ordering::Relaxed);
            },
            || {
                count.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn split_point_keeps_tasks_whole() {
        assert_eq!(split_point(32768, 8192), 16384);
        assert_eq!(split_point(10, 4), 4);
        assert_eq!(split_point(3, 4), 0);
        assert_eq!(split_point(0, 4), 0);
    }
}

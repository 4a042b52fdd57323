//! Two-way fork-join on a helper thread that spins between jobs.
//!
//! A residual MLP step is hundreds of short parallel sections (a split GEMM, a BatchNorm
//! pass) of 10-200 µs each. Between them rayon's idle worker goes to sleep, and on this
//! virtual machine waking it costs an inter-processor interrupt: in a W1 step the kernel's
//! wake-up and scheduling paths took 12% of the samples and the halted vCPU another 8%. The
//! helper here instead spins (with `spin_loop`, which yields the core's issue slots to its
//! sibling hyperthread) for a short window after each job, so back-to-back sections hand over
//! in well under a microsecond; after the window it parks and costs nothing.
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

/// How long the helper spins for the next job before it parks. Longer than the gaps between
/// a step's parallel sections (a few µs to ~100 µs), short enough that a parked helper does
/// not compete with rayon's workers in code that does not use it.
const SPIN_WINDOW: Duration = Duration::from_micros(500);

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;
const PANICKED: u8 = 3;

/// A posted job: a type-erased `Option<F>` on the caller's stack and the function that takes
/// and runs it.
#[derive(Clone, Copy)]
struct JobRef {
    data: *mut (),
    run: unsafe fn(*mut ()),
}

struct Helper {
    /// Held by the caller that posted the current job (one job at a time).
    claimed: AtomicBool,
    state: AtomicU8,
    /// Written by the claimant before `state` becomes POSTED, read by the helper after.
    job: UnsafeCell<Option<JobRef>>,
    /// A panicking job's payload, written by the helper before it stores PANICKED.
    panic: UnsafeCell<Option<Box<dyn std::any::Any + Send>>>,
    parked: AtomicBool,
    thread: Thread,
}

// SAFETY: `job` is written only by the caller holding `claimed`, before a Release store of
// POSTED, and read only by the helper after an Acquire load of POSTED; the caller does not
// touch it again until the helper has stored DONE/PANICKED (Release) and it has seen that
// (Acquire). The pointer inside is used only while the posting caller waits in `join`.
// `panic` is written only by the helper, before its Release store of PANICKED, and taken only
// by the caller after its Acquire load of PANICKED, before it releases `claimed`.
unsafe impl Sync for Helper {}
unsafe impl Send for Helper {}

static HELPER: OnceLock<&'static Helper> = OnceLock::new();

thread_local! {
    /// Set while this thread runs one of several networks in parallel (see [`without_helper`]).
    static HELPER_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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

/// The helper's loop: spin for a posted job, park after the spin window, run, report.
fn serve(h: &'static Helper) -> ! {
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        while h.state.load(Ordering::Acquire) != POSTED {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && since.elapsed() > SPIN_WINDOW {
                // Announce the park, then look once more: a caller that posts after this
                // store sees `parked` and unparks us (both SeqCst, so one sees the other).
                h.parked.store(true, Ordering::SeqCst);
                if h.state.load(Ordering::SeqCst) != POSTED {
                    thread::park();
                }
                h.parked.store(false, Ordering::SeqCst);
                since = Instant::now();
            }
        }
        // SAFETY: see `unsafe impl Sync for Helper`: POSTED was seen with Acquire.
        let job = unsafe { (*h.job.get()).expect("a posted job") };
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
        h.state.store(done, Ordering::Release);
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
    let theirs = wait(h);
    // SAFETY: the helper wrote `panic` before storing PANICKED, which `wait` saw (Acquire),
    // and will not touch it again until a new job is posted.
    let their_panic = (theirs == PANICKED).then(|| unsafe { (*h.panic.get()).take() });
    h.claimed.store(false, Ordering::Release);
    if let Err(payload) = mine {
        resume_unwind(payload);
    }
    if let Some(payload) = their_panic {
        resume_unwind(payload.unwrap_or_else(|| Box::new("a job on the helper thread panicked")));
    }
}

fn post<F: FnOnce() + Send>(h: &Helper, slot: &mut Option<F>) {
    // SAFETY: we hold `claimed` and the helper is IDLE, so no one reads `job` now.
    unsafe {
        *h.job.get() = Some(JobRef {
            data: slot as *mut Option<F> as *mut (),
            run: run_slot::<F>,
        });
    }
    h.state.store(POSTED, Ordering::SeqCst);
    if h.parked.load(Ordering::SeqCst) {
        h.thread.unpark();
    }
}

/// Spins until the helper has finished the posted job; returns how it ended.
fn wait(h: &Helper) -> u8 {
    loop {
        let s = h.state.load(Ordering::Acquire);
        if s == DONE || s == PANICKED {
            h.state.store(IDLE, Ordering::Relaxed);
            return s;
        }
        std::hint::spin_loop();
    }
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
    fn split_point_keeps_tasks_whole() {
        assert_eq!(split_point(32768, 8192), 16384);
        assert_eq!(split_point(10, 4), 4);
        assert_eq!(split_point(3, 4), 0);
        assert_eq!(split_point(0, 4), 0);
    }
}

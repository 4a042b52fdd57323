//! The `resprop` binary: parse, dispatch, report errors (see `resprop::cli`).

/// mimalloc keeps freed pages for reuse. A step allocates and frees thousands of
/// activation-sized blocks (256 KB for W1, 4 MB for W2); glibc malloc returned them to the OS,
/// so every reuse paid page faults, zeroing and cross-core TLB flushes (measured: 20-30% of a
/// W2 step in the kernel).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enum (not exported by libmimalloc-sys).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Never hand freed pages back to the OS. With the default delay (1 s) mimalloc purged the
    // previous step's activations during the next one, which then faulted them back in as
    // zeroed huge pages: 2,300 page faults per W3 step, median 0.44 s against 0.40 s kept.
    // SAFETY: sets a plain integer option; mimalloc reads it at each purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    resprop::cli::run(std::env::args_os())
}

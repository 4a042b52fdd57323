//! The `resprop` binary: parse, dispatch, report errors (see `resprop::cli`).

/// Keeps freed memory in the process instead of returning it to the OS. A step allocates and
/// frees thousands of activation-sized blocks (256 KB for W1); by default glibc serves blocks
/// that large with fresh mmap pages, which the kernel must zero on every use (measured: 15% of
/// a W1 step in `clear_page_erms` and page faults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    use std::os::raw::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    // SAFETY: mallopt only adjusts glibc malloc's tuning parameters; called before any
    // threads start.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, c_int::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    resprop::cli::run(std::env::args_os())
}

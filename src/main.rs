//! The `resprop` binary: parse, dispatch, report errors (see `resprop::cli`).

/// mimalloc keeps freed pages for reuse. A step allocates and frees thousands of
/// activation-sized blocks (256 KB for W1, 4 MB for W2); glibc malloc returned them to the OS,
/// so every reuse paid page faults, zeroing and cross-core TLB flushes (measured: 20-30% of a
/// W2 step in the kernel).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    resprop::cli::run(std::env::args_os())
}

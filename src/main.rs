//! The `resprop` binary: parse, dispatch, report errors (see `resprop::cli`).

fn main() -> std::process::ExitCode {
    resprop::cli::run(std::env::args_os())
}

//! The `palisade` binary: flag parsing only; everything else is in the library.

fn main() -> std::process::ExitCode {
    palisade::cli::main()
}

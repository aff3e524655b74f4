//! `ova`: the command-line front end of an Ova peer (see `ova --help`).

fn main() -> std::process::ExitCode {
    ova_worker::cli::main()
}

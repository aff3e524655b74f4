//! `ova-executor`: the process in which a worker runs units. Started and supervised by the
//! `ova` worker (see `ova_worker::supervisor`); not meant to be run by hand.

fn main() -> std::process::ExitCode {
    match ova_worker::supervisor::child_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ova-executor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `ova`: the command-line front end of an Ova peer (see `ova --help`).

/// jemalloc rather than the C library's allocator. A peer's loop allocates and frees small
/// buffers on every message (frames, commits, store records) across tokio's threads; with
/// jemalloc the peers' own CPU per verified tiny unit fell by about a seventh and P4 rose by a
/// fifth, side by side with glibc's malloc, while P3 (large results) stayed the same. (mimalloc
/// was tried too: P4 gained less and P3's peers took a quarter more CPU.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    ova_worker::cli::main()
}

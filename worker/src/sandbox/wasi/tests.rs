//! What a unit sees through every kind of WASI call, pinned.
//!
//! These answers were checked call by call against wasmtime-wasi 48 (the host this one
//! replaced) with a differential test over 124 cases before it was removed; they are the same
//! except where the module docs of [`super`] say otherwise (`poll_oneoff`'s byte counts and
//! hang-up, a zero-length read, the read budget), which is why results name the host's ABI
//! ([`super::HOST_ABI`]). Any change to an answer here must bump that version: peers only
//! compare results of the same ABI.

use std::sync::Arc;

use ova_jobs::{BlobId, Determinism, Limits, Outcome, TrapKind, UnitId};

use super::FIXED_WALL_CLOCK_SECS;
use crate::sandbox::{ModuleSource, Sandbox, SandboxConfig, UnitRequest};

/// Every preview-1 function with its core-wasm signature.
const FUNCTIONS: &[(&str, &str)] = &[
    ("args_get", "(param i32 i32) (result i32)"),
    ("args_sizes_get", "(param i32 i32) (result i32)"),
    ("environ_get", "(param i32 i32) (result i32)"),
    ("environ_sizes_get", "(param i32 i32) (result i32)"),
    ("clock_res_get", "(param i32 i32) (result i32)"),
    ("clock_time_get", "(param i32 i64 i32) (result i32)"),
    ("fd_advise", "(param i32 i64 i64 i32) (result i32)"),
    ("fd_allocate", "(param i32 i64 i64) (result i32)"),
    ("fd_close", "(param i32) (result i32)"),
    ("fd_datasync", "(param i32) (result i32)"),
    ("fd_fdstat_get", "(param i32 i32) (result i32)"),
    ("fd_fdstat_set_flags", "(param i32 i32) (result i32)"),
    ("fd_fdstat_set_rights", "(param i32 i64 i64) (result i32)"),
    ("fd_filestat_get", "(param i32 i32) (result i32)"),
    ("fd_filestat_set_size", "(param i32 i64) (result i32)"),
    ("fd_filestat_set_times", "(param i32 i64 i64 i32) (result i32)"),
    ("fd_pread", "(param i32 i32 i32 i64 i32) (result i32)"),
    ("fd_prestat_get", "(param i32 i32) (result i32)"),
    ("fd_prestat_dir_name", "(param i32 i32 i32) (result i32)"),
    ("fd_pwrite", "(param i32 i32 i32 i64 i32) (result i32)"),
    ("fd_read", "(param i32 i32 i32 i32) (result i32)"),
    ("fd_readdir", "(param i32 i32 i32 i64 i32) (result i32)"),
    ("fd_renumber", "(param i32 i32) (result i32)"),
    ("fd_seek", "(param i32 i64 i32 i32) (result i32)"),
    ("fd_sync", "(param i32) (result i32)"),
    ("fd_tell", "(param i32 i32) (result i32)"),
    ("fd_write", "(param i32 i32 i32 i32) (result i32)"),
    ("path_create_directory", "(param i32 i32 i32) (result i32)"),
    ("path_filestat_get", "(param i32 i32 i32 i32 i32) (result i32)"),
    ("path_filestat_set_times", "(param i32 i32 i32 i32 i64 i64 i32) (result i32)"),
    ("path_link", "(param i32 i32 i32 i32 i32 i32 i32) (result i32)"),
    ("path_open", "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)"),
    ("path_readlink", "(param i32 i32 i32 i32 i32 i32) (result i32)"),
    ("path_remove_directory", "(param i32 i32 i32) (result i32)"),
    ("path_rename", "(param i32 i32 i32 i32 i32 i32) (result i32)"),
    ("path_symlink", "(param i32 i32 i32 i32 i32) (result i32)"),
    ("path_unlink_file", "(param i32 i32 i32) (result i32)"),
    ("poll_oneoff", "(param i32 i32 i32 i32) (result i32)"),
    ("proc_exit", "(param i32)"),
    ("proc_raise", "(param i32) (result i32)"),
    ("sched_yield", "(result i32)"),
    ("random_get", "(param i32 i32) (result i32)"),
    ("sock_accept", "(param i32 i32 i32) (result i32)"),
    ("sock_recv", "(param i32 i32 i32 i32 i32 i32) (result i32)"),
    ("sock_send", "(param i32 i32 i32 i32 i32) (result i32)"),
    ("sock_shutdown", "(param i32 i32) (result i32)"),
];

const BADF: i32 = 8;
const ILSEQ: i32 = 25;
const INVAL: i32 = 28;
const NOTDIR: i32 = 54;
const NOTSOCK: i32 = 57;
const NOTSUP: i32 = 58;
const SPIPE: i32 = 70;

/// The unit's input in every case.
const INPUT: &[u8] = b"hello, world";

/// A module importing every function as `$name`, running `body`, then writing memory
/// [0, 1024) to stdout. Memory holds "\ff\fe" (not UTF-8) at 1024 and "hello.txt" at 1040.
fn module(body: &str) -> Arc<ModuleSource> {
    let mut m = String::from("(module\n");
    for (name, sig) in FUNCTIONS {
        m.push_str(&format!(
            "(import \"wasi_snapshot_preview1\" \"{name}\" (func ${name} {sig}))\n"
        ));
    }
    m.push_str(&format!(
        r#"(memory (export "memory") 1)
  (data (i32.const 1024) "\ff\fe")
  (data (i32.const 1040) "hello.txt")
  (func (export "_start") {body}
    (i32.store (i32.const 4096) (i32.const 0))
    (i32.store (i32.const 4100) (i32.const 1024))
    (drop (call $fd_write (i32.const 1) (i32.const 4096) (i32.const 1) (i32.const 4104)))))"#
    ));
    ModuleSource::new(wat::parse_str(&m).expect("test WAT"))
}

fn request(module: &Arc<ModuleSource>) -> UnitRequest {
    let args: Vec<String> = vec!["a".into(), "bc".into()];
    UnitRequest {
        unit: UnitId::derive(&module.id(), &BlobId::of(INPUT), &args),
        module: module.clone(),
        input: bytes::Bytes::from_static(INPUT),
        args,
        limits: Limits {
            memory_bytes: 16 << 20,
            deadline_ms: 10_000,
            fuel: None,
            max_output_bytes: 4096,
            max_stderr_bytes: 16,
        },
        determinism: Determinism::SameArch,
        epoch_guard: false,
    }
}

thread_local! {
    static SANDBOX: Sandbox =
        Sandbox::new(SandboxConfig { slots: 4, ..SandboxConfig::default() }).unwrap();
}

/// Runs `body`; the unit's outcome, memory [0, 1024) after it, stderr, and its unit id.
fn run(body: &str) -> (Outcome, Vec<u8>, Vec<u8>, UnitId) {
    let req = request(&module(body));
    let r = SANDBOX.with(|sb| sb.run(&req));
    (r.outcome, r.stdout, r.stderr, req.unit)
}

/// Runs `body`, which must succeed, and returns memory [0, 1024) after it.
fn memory(body: &str) -> Vec<u8> {
    let (outcome, mem, stderr, _) = run(body);
    assert_eq!(outcome, Outcome::Success, "{}", String::from_utf8_lossy(&stderr));
    assert_eq!(mem.len(), 1024);
    mem
}

/// The errno `call` returns (stored at 0).
fn errno(call: &str) -> i32 {
    i32_at(&memory(&format!("(i32.store (i32.const 0) {call})")), 0)
}

fn i32_at(m: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(m[at..at + 4].try_into().unwrap())
}

fn u64_at(m: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(m[at..at + 8].try_into().unwrap())
}

fn traps(body: &str) {
    let (outcome, ..) = run(body);
    assert_eq!(outcome, Outcome::Trap { kind: TrapKind::HostError }, "{body}");
}

/// An iovec `{ buf, len }` at `at`.
fn iov(at: u32, buf: u32, len: u32) -> String {
    format!(
        "(i32.store (i32.const {at}) (i32.const {buf})) (i32.store (i32.const {}) (i32.const {len}))",
        at + 4
    )
}

#[test]
fn every_preview1_function_is_defined_with_its_signature() {
    // A module importing all of them links (a wrong type would not), and does nothing else.
    assert_eq!(FUNCTIONS.len(), 46);
    memory("");
}

#[test]
fn arguments_are_unit_then_the_units_own_and_there_is_no_environment() {
    let m = memory(
        "(i32.store (i32.const 0) (call $args_sizes_get (i32.const 16) (i32.const 20)))
         (i32.store (i32.const 4) (call $args_get (i32.const 32) (i32.const 64)))
         (i32.store (i32.const 8) (call $environ_sizes_get (i32.const 24) (i32.const 28)))",
    );
    assert_eq!([i32_at(&m, 0), i32_at(&m, 4), i32_at(&m, 8)], [0, 0, 0]);
    assert_eq!([i32_at(&m, 16), i32_at(&m, 20)], [3, 10], "argc, argv_buf_size");
    assert_eq!([i32_at(&m, 32), i32_at(&m, 36), i32_at(&m, 40)], [64, 69, 71]);
    assert_eq!(&m[64..74], b"unit\0a\0bc\0");
    assert_eq!([i32_at(&m, 24), i32_at(&m, 28)], [0, 0], "no variables");
}

#[test]
fn clocks_are_fixed_and_cpu_clocks_do_not_exist() {
    let m = memory(
        "(i32.store (i32.const 0) (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 16)))
         (i32.store (i32.const 4) (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 24)))
         (i32.store (i32.const 8) (call $clock_res_get (i32.const 0) (i32.const 32)))
         (i32.store (i32.const 12) (call $clock_time_get (i32.const 2) (i64.const 1) (i32.const 40)))",
    );
    assert_eq!(&[i32_at(&m, 0), i32_at(&m, 4), i32_at(&m, 8)], &[0, 0, 0]);
    assert_eq!(u64_at(&m, 16), FIXED_WALL_CLOCK_SECS * 1_000_000_000);
    assert_eq!(u64_at(&m, 24), 0);
    assert_eq!(u64_at(&m, 32), 1);
    assert_eq!(i32_at(&m, 12), BADF);
    // Not a clock id at all: the argument is rejected (a trap, as in wasmtime-wasi).
    traps("(drop (call $clock_time_get (i32.const 4) (i64.const 1) (i32.const 16)))");
}

#[test]
fn random_bytes_are_the_units_blake3_stream_one_byte_per_word() {
    let (outcome, m, _, unit) = run("(drop (call $random_get (i32.const 16) (i32.const 5)))
         (drop (call $random_get (i32.const 21) (i32.const 300)))");
    assert_eq!(outcome, Outcome::Success);
    let mut h = blake3::Hasher::new_derive_key("ova unit random v1");
    h.update(b"secure");
    h.update(unit.as_bytes());
    let mut words = vec![0u8; 305 * 4];
    h.finalize_xof().fill(&mut words);
    let expected: Vec<u8> = words.chunks(4).map(|w| w[0]).collect();
    assert_eq!(&m[16..321], &expected[..]);
}

#[test]
fn stdin_reads_the_input_one_buffer_per_call_then_end_of_file() {
    let m = memory(&format!(
        "{} {} (i32.store (i32.const 0) (call $fd_read (i32.const 0) (i32.const 512) (i32.const 2) (i32.const 8)))
         (i32.store (i32.const 4) (call $fd_read (i32.const 0) (i32.const 520) (i32.const 1) (i32.const 12)))
         (i32.store (i32.const 100) (call $fd_read (i32.const 0) (i32.const 520) (i32.const 1) (i32.const 104)))",
        iov(512, 16, 5),
        iov(520, 32, 100),
    ));
    assert_eq!([i32_at(&m, 0), i32_at(&m, 8)], [0, 5], "the first buffer only");
    assert_eq!(&m[16..21], b"hello");
    assert_eq!([i32_at(&m, 4), i32_at(&m, 12)], [0, 7]);
    assert_eq!(&m[32..39], b", world");
    assert_eq!([i32_at(&m, 100), i32_at(&m, 104)], [0, 0], "end of input");
}

#[test]
fn stdio_descriptors_do_what_pipes_do_and_nothing_else_exists() {
    let read = |fd: u32| {
        format!("(call $fd_read (i32.const {fd}) (i32.const 512) (i32.const 1) (i32.const 8))")
    };
    let write = |fd: u32| {
        format!("(call $fd_write (i32.const {fd}) (i32.const 512) (i32.const 1) (i32.const 8))")
    };
    let with_iov = |call: String| format!("{} (i32.store (i32.const 0) {call})", iov(512, 1040, 9));
    let e = |body: String| i32_at(&memory(&body), 0);
    assert_eq!(e(with_iov(read(1))), BADF);
    assert_eq!(e(with_iov(read(3))), BADF);
    assert_eq!(e(with_iov(write(0))), BADF);
    assert_eq!(e(with_iov(write(5))), BADF);
    assert_eq!(e(with_iov(write(2))), 0);
    // Closed, or moved by renumbering.
    assert_eq!(e(format!("(drop (call $fd_close (i32.const 2))) {}", with_iov(write(2)))), BADF);
    assert_eq!(errno("(call $fd_close (i32.const 3))"), BADF);
    let req = request(&module(&format!(
        "(i32.store (i32.const 4) (call $fd_renumber (i32.const 2) (i32.const 0))) {}",
        with_iov(write(0))
    )));
    let r = SANDBOX.with(|sb| sb.run(&req));
    assert_eq!([i32_at(&r.stdout, 4), i32_at(&r.stdout, 0), i32_at(&r.stdout, 8)], [0, 0, 9]);
    assert_eq!(r.stderr, b"hello.txt", "fd 0 is stderr now");
    assert_eq!(
        e(format!("(drop (call $fd_renumber (i32.const 2) (i32.const 0))) {}", with_iov(write(2)))),
        BADF
    );
    assert_eq!(errno("(call $fd_renumber (i32.const 1) (i32.const 3))"), BADF);
    // Positioned I/O and seeking: stdio is a pipe.
    let pread = format!(
        "{} (i32.store (i32.const 0) (call $fd_pread (i32.const 0) (i32.const 512) (i32.const 1) (i64.const 0) (i32.const 8)))",
        iov(512, 16, 4)
    );
    assert_eq!(e(pread), SPIPE);
    assert_eq!(
        errno("(call $fd_seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 16))"),
        SPIPE
    );
    assert_eq!(errno("(call $fd_tell (i32.const 7) (i32.const 16))"), BADF);
    // Calls that need a file.
    for call in [
        "(call $fd_sync (i32.const 1))",
        "(call $fd_datasync (i32.const 1))",
        "(call $fd_allocate (i32.const 1) (i64.const 0) (i64.const 1))",
        "(call $fd_filestat_set_size (i32.const 1) (i64.const 0))",
        "(call $fd_fdstat_set_flags (i32.const 1) (i32.const 0))",
        "(call $fd_advise (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 1))",
        "(call $fd_readdir (i32.const 0) (i32.const 16) (i32.const 64) (i64.const 0) (i32.const 8))",
        "(call $fd_prestat_get (i32.const 3) (i32.const 16))",
    ] {
        assert_eq!(errno(call), BADF, "{call}");
    }
    assert_eq!(
        errno("(call $fd_prestat_dir_name (i32.const 0) (i32.const 16) (i32.const 8))"),
        NOTDIR
    );
}

#[test]
fn stdio_is_described_as_unknown_files_with_read_or_write_rights() {
    let m = memory(
        "(i32.store (i32.const 0) (call $fd_fdstat_get (i32.const 0) (i32.const 16)))
         (i32.store (i32.const 4) (call $fd_fdstat_get (i32.const 2) (i32.const 40)))
         (i32.store (i32.const 8) (call $fd_filestat_get (i32.const 1) (i32.const 64)))",
    );
    assert_eq!(&[i32_at(&m, 0), i32_at(&m, 4), i32_at(&m, 8)], &[0, 0, 0]);
    assert_eq!((m[16], u64_at(&m, 24), u64_at(&m, 32)), (0, 2, 2), "stdin: fd_read");
    assert_eq!((m[40], u64_at(&m, 48), u64_at(&m, 56)), (0, 64, 64), "stderr: fd_write");
    assert!(m[64..128].iter().all(|b| *b == 0));
}

#[test]
fn output_over_its_cap_ends_the_unit_and_stderr_is_cut() {
    let (outcome, out, ..) = run(&format!(
        "{} (loop (drop (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 8))) br 0)",
        iov(512, 0, 1000)
    ));
    assert_eq!(outcome, Outcome::OutputTooLarge { limit: 4096 });
    assert!(out.is_empty());
    let req = request(&module(&format!(
        "{} (drop (call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8)))
         (i32.store (i32.const 0) (call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8)))",
        iov(512, 1040, 9)
    )));
    let r = SANDBOX.with(|sb| sb.run(&req));
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.stderr, b"hello.txthello.t");
    assert!(r.stderr_truncated);
    assert_eq!([i32_at(&r.stdout, 0), i32_at(&r.stdout, 8)], [0, 9], "the whole write is taken");
}

#[test]
fn the_filesystem_and_sockets_are_not_there() {
    let open = |fd: u32, path: u32, len: u32, oflags: u32| {
        format!(
            "(call $path_open (i32.const {fd}) (i32.const 0) (i32.const {path}) (i32.const {len}) \
             (i32.const {oflags}) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))"
        )
    };
    assert_eq!(errno(&open(3, 1040, 9, 0)), BADF);
    assert_eq!(errno(&open(0, 1040, 9, 0)), BADF);
    assert_eq!(errno(&open(3, 1024, 2, 0)), ILSEQ, "the path is read first");
    traps(&format!("(drop {})", open(3, 1040, 9, 16)));
    traps(&format!("(drop {})", open(3, 65530, 20, 0)));
    for call in [
        "(call $path_create_directory (i32.const 3) (i32.const 1040) (i32.const 9))",
        "(call $path_filestat_get (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 16))",
        "(call $path_unlink_file (i32.const 0) (i32.const 1040) (i32.const 9))",
        "(call $path_symlink (i32.const 1040) (i32.const 9) (i32.const 3) (i32.const 1040) (i32.const 9))",
        "(call $sock_accept (i32.const 3) (i32.const 0) (i32.const 16))",
    ] {
        assert_eq!(errno(call), BADF, "{call}");
    }
    assert_eq!(errno("(call $sock_accept (i32.const 0) (i32.const 0) (i32.const 16))"), NOTSOCK);
    assert_eq!(errno("(call $sock_shutdown (i32.const 1) (i32.const 3))"), NOTSOCK);
    traps("(drop (call $sock_shutdown (i32.const 1) (i32.const 4)))");
}

#[test]
fn poll_oneoff_never_waits_and_reports_ready_stdio() {
    // A 10 s relative sleep on the monotonic clock fires at once.
    let m = memory(
        "(i64.store (i32.const 512) (i64.const 77)) (i32.store (i32.const 528) (i32.const 1))
         (i64.store (i32.const 536) (i64.const 10000000000))
         (i32.store (i32.const 0) (call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16)))",
    );
    assert_eq!([i32_at(&m, 0), i32_at(&m, 16)], [0, 1]);
    assert_eq!((u64_at(&m, 256), m[264], m[266]), (77, 0, 0), "userdata, errno, clock");
    // Reading stdin beside a sleep: only stdin fires, with the bytes left to read.
    let m = memory(
        "(i64.store (i32.const 512) (i64.const 1)) (i32.store (i32.const 528) (i32.const 1))
         (i64.store (i32.const 536) (i64.const 10000000000))
         (i64.store (i32.const 560) (i64.const 2)) (i32.store8 (i32.const 568) (i32.const 1))
         (i32.store (i32.const 0) (call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 2) (i32.const 16)))",
    );
    assert_eq!([i32_at(&m, 0), i32_at(&m, 16)], [0, 1]);
    assert_eq!((u64_at(&m, 256), m[266], u64_at(&m, 272)), (2, 1, INPUT.len() as u64));
    assert_eq!(
        errno("(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 0) (i32.const 16))"),
        INVAL
    );
    let bad_fd =
        "(i32.store8 (i32.const 520) (i32.const 1)) (i32.store (i32.const 528) (i32.const 9))";
    let m = memory(&format!(
        "{bad_fd} (i32.store (i32.const 0) (call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16)))"
    ));
    assert_eq!(i32_at(&m, 0), BADF);
}

#[test]
fn the_process_calls() {
    assert_eq!(errno("(call $sched_yield)"), 0);
    assert_eq!(errno("(call $proc_raise (i32.const 3))"), NOTSUP);
    assert_eq!(run("(call $proc_exit (i32.const 7))").0, Outcome::Exit { code: 7 });
    assert_eq!(run("(call $proc_exit (i32.const 0))").0, Outcome::Success);
    traps("(call $proc_exit (i32.const 126))");
}

#[test]
fn bad_pointers_trap() {
    traps("(drop (call $args_sizes_get (i32.const 18) (i32.const 20)))"); // misaligned
    traps("(drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 20)))");
    traps("(drop (call $random_get (i32.const 65530) (i32.const 16)))");
    traps("(drop (call $fd_read (i32.const 0) (i32.const 65532) (i32.const 1) (i32.const 8)))");
}

#[test]
fn calls_need_an_exported_memory_and_work_from_a_start_function() {
    let no_memory = ModuleSource::new(
        wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
                 (func (export "_start") (drop (call $y))))"#,
        )
        .unwrap(),
    );
    let r = SANDBOX.with(|sb| sb.run(&request(&no_memory)));
    assert_eq!(r.outcome, Outcome::Trap { kind: TrapKind::HostError });
    let from_start = ModuleSource::new(
        wat::parse_str(
            r#"(module
              (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (data (i32.const 64) "from start")
              (func $s (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 10))
                (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
              (start $s)
              (func (export "_start")))"#,
        )
        .unwrap(),
    );
    let r = SANDBOX.with(|sb| sb.run(&request(&from_start)));
    assert_eq!((r.outcome, r.stdout), (Outcome::Success, b"from start".to_vec()));
}

const NOMEM: i32 = 48;

#[test]
fn a_call_over_its_budget_is_enomem_before_it_walks_anything() {
    // 2^24 + 1 iovecs are 128 MiB + 8 bytes of array: over the budget, although the first
    // iovec alone would do.
    let huge = (super::guest::HOSTCALL_BUDGET / 8 + 1) as u32;
    let call = |name: &str, fd: u32, n: u32| {
        format!(
            "{} (i32.store (i32.const 0) (call ${name} (i32.const {fd}) (i32.const 512) (i32.const {n}) (i32.const 8)))",
            iov(512, 16, 4)
        )
    };
    let e = |body: String| i32_at(&memory(&body), 0);
    assert_eq!(e(call("fd_write", 2, huge)), NOMEM);
    assert_eq!(e(call("fd_read", 0, huge)), NOMEM);
    assert_eq!(e(call("fd_write", 2, huge - 2)), 0, "the array and the buffer fit");
    // One buffer over the budget (it would be out of bounds too: the budget comes first).
    let big = (super::guest::HOSTCALL_BUDGET + 1) as u32;
    let write = format!(
        "{} (i32.store (i32.const 0) (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 8)))",
        iov(512, 16, big)
    );
    assert_eq!(e(write), NOMEM);
    // poll_oneoff: 80 bytes a subscription (its record and its event); the array would be
    // out of bounds long before its end, but the count alone is refused first.
    let n = (super::guest::HOSTCALL_BUDGET / 80 + 1) as u32;
    assert_eq!(
        errno(&format!(
            "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const {n}) (i32.const 16))"
        )),
        NOMEM
    );
    assert_eq!(
        errno("(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const -1) (i32.const 16))"),
        NOMEM
    );
}

// Edge cases of the differential test against wasmtime-wasi 48 (removed with it), pinned;
// where this host knowingly answers otherwise (see the module docs of `super`), the case
// says so.

/// `poll_oneoff` over the one subscription at 512, events at 256, the count at 16; its errno
/// at 0.
const POLL_ONE: &str = "(i32.store (i32.const 0) (call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16)))";

#[test]
fn poll_oneoff_checks_each_subscription() {
    let e = |setup: &str| i32_at(&memory(&format!("{setup} {POLL_ONE}")), 0);
    assert_eq!(e("(i32.store8 (i32.const 520) (i32.const 3))"), INVAL, "unknown tag");
    let fd_sub = |tag: u32, fd: u32| {
        format!(
            "(i32.store8 (i32.const 520) (i32.const {tag})) (i32.store (i32.const 528) (i32.const {fd}))"
        )
    };
    assert_eq!(e(&fd_sub(1, 1)), BADF, "reading stdout");
    assert_eq!(e(&fd_sub(2, 0)), BADF, "writing stdin");
    assert_eq!(e(&fd_sub(1, 9)), BADF, "not open");
    assert_eq!(e("(i32.store (i32.const 528) (i32.const 2))"), INVAL, "a CPU-time clock");
    assert_eq!(e("(i32.store (i32.const 528) (i32.const 7))"), INVAL, "not a clock");
    assert_eq!(e("(i32.store16 (i32.const 552) (i32.const 2))"), INVAL, "an undefined flag");
    traps(
        "(drop (call $poll_oneoff (i32.const 516) (i32.const 256) (i32.const 1) (i32.const 16)))",
    );
    traps(
        "(drop (call $poll_oneoff (i32.const 65520) (i32.const 256) (i32.const 1) (i32.const 16)))",
    );
    traps(
        "(drop (call $poll_oneoff (i32.const 512) (i32.const 260) (i32.const 1) (i32.const 16)))",
    );
}

#[test]
fn poll_oneoff_clocks_fire_in_virtual_time() {
    // Due now: a zero relative timeout, and an absolute wall-clock time in the past.
    for setup in [
        "(i64.store (i32.const 512) (i64.const 77)) (i32.store (i32.const 528) (i32.const 1))",
        "(i64.store (i32.const 512) (i64.const 77)) (i32.store16 (i32.const 552) (i32.const 1))
         (i64.store (i32.const 536) (i64.const 5))",
    ] {
        let m = memory(&format!("{setup} {POLL_ONE}"));
        assert_eq!([i32_at(&m, 0), i32_at(&m, 16)], [0, 1], "{setup}");
        assert_eq!((u64_at(&m, 256), m[264], m[266]), (77, 0, 0), "{setup}");
    }
    // Two sleeps and nothing else: only the nearest fires (at once).
    let m = memory(
        "(i64.store (i32.const 512) (i64.const 1)) (i32.store (i32.const 528) (i32.const 1))
         (i64.store (i32.const 536) (i64.const 10000000000))
         (i64.store (i32.const 560) (i64.const 2)) (i32.store (i32.const 576) (i32.const 1))
         (i64.store (i32.const 584) (i64.const 5000000000))
         (i32.store (i32.const 0) (call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 2) (i32.const 16)))",
    );
    assert_eq!([i32_at(&m, 0), i32_at(&m, 16)], [0, 1]);
    assert_eq!((u64_at(&m, 256), m[266]), (2, 0));
}

#[test]
fn poll_oneoff_reports_what_stdio_can_take() {
    // After the whole input was read: stdin hangs up with 0 bytes; stdout has its whole cap
    // of room. (wasmtime-wasi 48 reported 1 byte and no hang-up for both.)
    let m = memory(&format!(
        "{} (drop (call $fd_read (i32.const 0) (i32.const 800) (i32.const 1) (i32.const 8)))
         (i64.store (i32.const 512) (i64.const 5)) (i32.store8 (i32.const 520) (i32.const 1))
         (i64.store (i32.const 560) (i64.const 6)) (i32.store8 (i32.const 568) (i32.const 2))
         (i32.store (i32.const 576) (i32.const 1))
         (i32.store (i32.const 0) (call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 2) (i32.const 16)))",
        iov(800, 900, 100)
    ));
    assert_eq!([i32_at(&m, 0), i32_at(&m, 16)], [0, 2]);
    let event = |at: usize| (u64_at(&m, at), m[at + 10], u64_at(&m, at + 16), m[at + 24]);
    assert_eq!(event(256), (5, 1, 0, 1), "stdin: at its end, hung up");
    assert_eq!(event(288), (6, 2, 4096, 0), "stdout: its cap");
}

#[test]
fn reads_and_writes_take_one_buffer_and_check_it() {
    // Writes: only the first non-empty buffer; none at all is a write of nothing.
    let req = request(&module(&format!(
        "{} {} (i32.store (i32.const 0) (call $fd_write (i32.const 2) (i32.const 512) (i32.const 2) (i32.const 8)))
         (i32.store (i32.const 4) (call $fd_write (i32.const 2) (i32.const 512) (i32.const 0) (i32.const 12)))",
        iov(512, 1040, 5),
        iov(520, 1040, 9)
    )));
    let r = SANDBOX.with(|sb| sb.run(&req));
    assert_eq!(r.outcome, Outcome::Success);
    let m = &r.stdout;
    assert_eq!([i32_at(m, 0), i32_at(m, 8), i32_at(m, 4), i32_at(m, 12)], [0, 5, 0, 0]);
    assert_eq!(r.stderr, b"hello");
    // A buffer out of bounds traps, unless the descriptor is bad first.
    let write = |fd: u32| {
        format!(
            "{} (i32.store (i32.const 0) (call $fd_write (i32.const {fd}) (i32.const 512) (i32.const 1) (i32.const 8)))",
            iov(512, 65530, 100)
        )
    };
    traps(&write(2));
    assert_eq!(i32_at(&memory(&write(7)), 0), BADF);
    // Reads: a zero-length buffer reads nothing and returns 0 (wasmtime-wasi 48: EINTR);
    // an empty first iovec is skipped.
    let m = memory(&format!(
        "{} {} (i32.store (i32.const 0) (call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8)))
         (i32.store (i32.const 4) (call $fd_read (i32.const 0) (i32.const 512) (i32.const 2) (i32.const 12)))",
        iov(512, 16, 0),
        iov(520, 32, 5)
    ));
    assert_eq!([i32_at(&m, 0), i32_at(&m, 8), i32_at(&m, 4), i32_at(&m, 12)], [0, 0, 0, 5]);
    assert_eq!(&m[32..37], b"hello");
    traps(&format!(
        "{} (drop (call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8)))",
        iov(512, 65530, 100)
    ));
    traps(&format!(
        "{} (drop (call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 9)))",
        iov(512, 16, 100)
    ));
}

#[test]
fn stdout_may_fill_its_cap_exactly() {
    // 3072 bytes, then the 1024 every case writes: 4096, the cap.
    let (outcome, out, ..) = run(&format!(
        "{} (i32.store (i32.const 0) (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 8)))",
        iov(512, 8192, 3072)
    ));
    assert_eq!(outcome, Outcome::Success);
    assert_eq!(out.len(), 4096);
    assert_eq!(i32_at(&out, 3072 + 8), 3072, "nwritten");
    // One byte more is too much.
    let (outcome, out, ..) = run(&format!(
        "{} (drop (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 8)))",
        iov(512, 8192, 3073)
    ));
    assert_eq!((outcome, out.len()), (Outcome::OutputTooLarge { limit: 4096 }, 0));
}

#[test]
fn arguments_random_and_exit_edge_cases() {
    traps("(drop (call $args_get (i32.const 16) (i32.const 65534)))");
    assert_eq!(errno("(call $random_get (i32.const 16) (i32.const 0))"), 0);
    traps("(drop (call $random_get (i32.const 16) (i32.const 67108865)))");
    traps("(call $proc_exit (i32.const -1))");
    traps("(drop (call $proc_raise (i32.const 31)))");
    traps("(drop (call $proc_raise (i32.const 256)))");
}

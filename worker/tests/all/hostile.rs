//! Hostile modules: every one ends with its own typed outcome, and the executor keeps serving.

use std::sync::Arc;
use std::time::Duration;

use ova_jobs::{Outcome, Phase, Resource, TrapKind, UnitResult};
use ova_worker::{Executor, ExecutorExt, ModuleSource};

use crate::common::*;

struct Case {
    name: &'static str,
    module: Arc<ModuleSource>,
    limits: ova_jobs::Limits,
    check: Box<dyn Fn(&UnitResult) + Send + Sync>,
}

fn case(
    name: &'static str,
    module: Arc<ModuleSource>,
    tweak: impl FnOnce(&mut ova_jobs::Limits),
    check: impl Fn(&UnitResult) + Send + Sync + 'static,
) -> Case {
    let mut limits = small_limits();
    tweak(&mut limits);
    Case { name, module, limits, check: Box::new(check) }
}

fn none(_: &mut ova_jobs::Limits) {}

fn is(expected: Outcome) -> impl Fn(&UnitResult) + Send + Sync {
    move |r| assert_eq!(r.outcome, expected, "stderr: {}", String::from_utf8_lossy(&r.stderr))
}

fn trap(kind: TrapKind) -> impl Fn(&UnitResult) + Send + Sync {
    is(Outcome::Trap { kind })
}

fn invalid(needle: &'static str) -> impl Fn(&UnitResult) + Send + Sync {
    move |r| match &r.outcome {
        Outcome::InvalidModule { reason } => {
            assert!(reason.contains(needle), "reason {reason:?} lacks {needle:?}");
            assert!(r.result_hash.is_some());
        }
        o => panic!("expected an invalid module ({needle}), got {o:?}"),
    }
}

/// A module whose compilation takes seconds: many large functions.
fn slow_to_compile() -> Arc<ModuleSource> {
    // A 60 KB module that Cranelift needs about half a minute for here (11.6 s measured with
    // 40 loops; 64 is (64/40)² of that), twenty times the test's compile timeout (the test
    // waits only for the timeout). LOOPS nested loops; the
    // innermost one adds 1 to each of LOCALS locals (read before written) and may branch back
    // to any of the loops; afterwards the locals are summed. Every loop header then needs a
    // parameter per local, and the compile time grows with the square of both counts
    // (measured: doubling either quadruples it), so a faster machine cannot finish in time. A
    // module of many ordinary functions (compile time linear in its size) took under a second
    // on an idle machine and let the test pass or fail by the machine's speed.
    const LOOPS: u32 = 64;
    const LOCALS: u32 = 4_000;
    fn leb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend_from_slice(body);
    }
    let mut body = vec![1];
    leb(LOCALS, &mut body);
    body.push(0x7e); // LOCALS locals of type i64
    for _ in 0..LOOPS {
        body.extend_from_slice(&[0x03, 0x40]); // loop (no results)
    }
    for x in 0..LOCALS {
        body.push(0x20); // local.get x
        leb(x, &mut body);
        body.extend_from_slice(&[0x42, 1, 0x7c, 0x21]); // i64.const 1, i64.add, local.set x
        leb(x, &mut body);
    }
    for depth in 0..LOOPS {
        body.extend_from_slice(&[0x41, 0, 0x0d]); // i32.const 0, br_if depth (never taken)
        leb(depth, &mut body);
    }
    body.extend(std::iter::repeat_n(0x0b, LOOPS as usize)); // end of each loop
    body.extend_from_slice(&[0x42, 0]); // i64.const 0
    for x in 0..LOCALS {
        body.push(0x20); // local.get x, i64.add
        leb(x, &mut body);
        body.push(0x7c);
    }
    body.extend_from_slice(&[0x1a, 0x0b]); // drop, end
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut m); // one type: () -> ()
    section(3, &[1, 0], &mut m); // one function of that type
    let mut exports = vec![1, 6];
    exports.extend_from_slice(b"_start");
    exports.extend_from_slice(&[0, 0]); // function 0
    section(7, &exports, &mut m);
    let mut code = vec![1];
    leb(body.len() as u32, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut m);
    ModuleSource::new(m)
}

/// Errno-returning WASI calls end the unit with `proc_exit(errno)`.
fn wasi_errno_module(import: &str, call: &str) -> Arc<ModuleSource> {
    wat(&format!(
        r#"(module
  {import}
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "secret.txt")
  (func (export "_start") (call $proc_exit {call})))"#
    ))
}

fn cases() -> Vec<Case> {
    let timeout_ms = 300;
    let primes = example("primes");
    let mut c = vec![
        case(
            "infinite loop",
            wat(r#"(module (func (export "_start") (loop br 0)))"#),
            |l| l.deadline_ms = timeout_ms,
            is(Outcome::Timeout { phase: Phase::Run, deadline_ms: timeout_ms }),
        ),
        case(
            "infinite loop in the start function",
            wat(r#"(module (func $s (loop br 0)) (start $s) (func (export "_start")))"#),
            |l| l.deadline_ms = timeout_ms,
            is(Outcome::Timeout { phase: Phase::Run, deadline_ms: timeout_ms }),
        ),
        case(
            "memory.grow bomb",
            wat(r#"(module (memory 1)
                 (func (export "_start") (loop (drop (memory.grow (i32.const 16))) br 0)))"#),
            none,
            |r| match r.outcome {
                Outcome::OutOfMemory { resource: Resource::Memory, requested, limit } => {
                    assert_eq!(limit, 16 << 20);
                    assert!(requested > limit);
                }
                ref o => panic!("expected out of memory, got {o:?}"),
            },
        ),
        case(
            "huge initial memory",
            wat(r#"(module (memory 65536) (func (export "_start")))"#),
            none,
            is(Outcome::OutOfMemory {
                resource: Resource::Memory,
                requested: 4 << 30,
                limit: 16 << 20,
            }),
        ),
        case(
            "huge table",
            wat(r#"(module (table 50000000 funcref) (func (export "_start")))"#),
            none,
            is(Outcome::OutOfMemory {
                resource: Resource::Table,
                requested: 50_000_000,
                limit: ova_worker::sandbox::MAX_TABLE_ELEMENTS as u64,
            }),
        ),
        case(
            "table.grow bomb",
            wat(r#"(module (table 1 funcref)
                 (func (export "_start") (loop (drop (table.grow (ref.null func) (i32.const 1000))) br 0)))"#),
            none,
            |r| {
                assert!(
                    matches!(r.outcome, Outcome::OutOfMemory { resource: Resource::Table, .. }),
                    "{:?}",
                    r.outcome
                )
            },
        ),
        case(
            "deep recursion",
            wat(r#"(module (func $f (call $f)) (func (export "_start") (call $f)))"#),
            none,
            |r| {
                assert_eq!(r.outcome, Outcome::Trap { kind: TrapKind::StackOverflow });
                assert!(r.result_hash.is_none(), "stack overflow is not a comparable result");
            },
        ),
        case(
            "output flood",
            wat(&wasi_module(
                r#"(i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 1000))
                   (loop (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) br 0)"#,
            )),
            none,
            |r| {
                assert_eq!(r.outcome, Outcome::OutputTooLarge { limit: 4096 });
                assert!(r.stdout.is_empty(), "a cut output is never returned");
            },
        ),
        case(
            "stderr flood",
            wat(&wasi_module(
                r#"(local i32) (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 1000))
                   (loop (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
                         (local.set 0 (i32.add (local.get 0) (i32.const 1)))
                         (br_if 0 (i32.lt_u (local.get 0) (i32.const 10000))))"#,
            )),
            none,
            |r| {
                assert_eq!(r.outcome, Outcome::Success);
                assert_eq!(r.stderr.len(), 1024);
                assert!(r.stderr_truncated);
            },
        ),
        case(
            "unreachable",
            wat(r#"(module (func (export "_start") unreachable))"#),
            none,
            trap(TrapKind::Unreachable),
        ),
        case(
            "integer divide by zero",
            wat(
                r#"(module (func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0)))))"#,
            ),
            none,
            trap(TrapKind::IntegerDivisionByZero),
        ),
        case(
            "integer overflow",
            wat(r#"(module (func (export "_start")
                 (drop (i32.div_s (i32.const -2147483648) (i32.const -1)))))"#),
            none,
            trap(TrapKind::IntegerOverflow),
        ),
        case(
            "out-of-bounds load",
            wat(
                r#"(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 70000)))))"#,
            ),
            none,
            trap(TrapKind::MemoryOutOfBounds),
        ),
        case(
            "NaN to integer",
            wat(r#"(module (func (export "_start") (drop (i32.trunc_f64_s (f64.const nan)))))"#),
            none,
            trap(TrapKind::BadConversionToInteger),
        ),
        case(
            "indirect call to null",
            wat(r#"(module (type $t (func)) (table 1 funcref)
                 (func (export "_start") (call_indirect (type $t) (i32.const 0))))"#),
            none,
            trap(TrapKind::IndirectCallToNull),
        ),
        case(
            "unknown function import",
            wat(r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#),
            none,
            is(Outcome::ForbiddenImport { module: "env".into(), name: "launch_missiles".into() }),
        ),
        case(
            "unknown WASI function",
            wat(
                r#"(module (import "wasi_snapshot_preview1" "sock_open" (func (param i32) (result i32)))
                 (func (export "_start")))"#,
            ),
            none,
            is(Outcome::ForbiddenImport {
                module: "wasi_snapshot_preview1".into(),
                name: "sock_open".into(),
            }),
        ),
        case(
            "WASI import with the wrong type",
            wat(r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))
                 (func (export "_start")))"#),
            none,
            invalid("imports do not match"),
        ),
        case(
            "imported memory",
            wat(r#"(module (import "env" "memory" (memory 1)) (func (export "_start")))"#),
            none,
            is(Outcome::ForbiddenImport { module: "env".into(), name: "memory".into() }),
        ),
        case(
            "open a file without preopens",
            wasi_errno_module(
                r#"(import "wasi_snapshot_preview1" "path_open" (func $open
                     (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
                "(call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 10) (i32.const 0) \
                 (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 128))",
            ),
            none,
            is(Outcome::Exit { code: 8 }), // EBADF: there is no fd 3 to open from
        ),
        case(
            "read the environment",
            wasi_errno_module(
                r#"(import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))"#,
                // exit code = 100 + errno + number of variables
                "(i32.add (i32.const 100) (i32.add (call $env (i32.const 0) (i32.const 4)) (i32.load (i32.const 0))))",
            ),
            none,
            is(Outcome::Exit { code: 100 }),
        ),
        case(
            "accept on a socket",
            wasi_errno_module(
                r#"(import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))"#,
                "(call $accept (i32.const 3) (i32.const 0) (i32.const 128))",
            ),
            none,
            is(Outcome::Exit { code: 8 }),
        ),
        case(
            "proc_exit with a non-zero code",
            wat(&wasi_module("(call $proc_exit (i32.const 3))")),
            none,
            |r| {
                assert_eq!(r.outcome, Outcome::Exit { code: 3 });
                assert!(r.result_hash.is_some());
            },
        ),
        case(
            "proc_exit(0) is success",
            wat(&wasi_module("(call $proc_exit (i32.const 0))")),
            none,
            is(Outcome::Success),
        ),
        case(
            "invalid binary",
            ModuleSource::new(b"#!/bin/sh\nrm -rf /\n".to_vec()),
            none,
            invalid("not a WebAssembly binary"),
        ),
        case(
            "truncated binary",
            ModuleSource::new(primes.bytes()[..primes.bytes().len() / 2].to_vec()),
            none,
            |r| assert!(matches!(r.outcome, Outcome::InvalidModule { .. }), "{:?}", r.outcome),
        ),
        case(
            "garbage after the header",
            ModuleSource::new(b"\0asm\x01\0\0\0\xff\xff\xff\xff".to_vec()),
            none,
            |r| assert!(matches!(r.outcome, Outcome::InvalidModule { .. }), "{:?}", r.outcome),
        ),
        case(
            "a component instead of a core module",
            ModuleSource::new(wat::parse_str("(component)").unwrap()),
            none,
            invalid("component"),
        ),
        case("no _start", wat(r#"(module (func (export "main")))"#), none, invalid("_start")),
        case(
            "_start with parameters",
            wat(r#"(module (func (export "_start") (param i32)))"#),
            none,
            invalid("_start"),
        ),
        case(
            "runs out of fuel",
            wat(r#"(module (func (export "_start") (loop br 0)))"#),
            |l| l.fuel = Some(100_000),
            |r| {
                assert_eq!(r.outcome, Outcome::OutOfFuel { limit: 100_000 });
                assert_eq!(r.fuel_used, Some(100_000));
            },
        ),
    ];
    // A module that compiles slowly is bounded by the compile timeout (set short below).
    c.push(case("takes very long to compile", slow_to_compile(), none, |r| {
        assert!(
            matches!(r.outcome, Outcome::Timeout { phase: Phase::Compile, .. }),
            "{:?}",
            r.outcome
        )
    }));
    c
}

fn healthy(exec: &dyn Executor) {
    let primes = example("primes");
    let r = exec.run_blocking(request(&primes, b"0 1000000", &[], small_limits()));
    assert_eq!(r.outcome, Outcome::Success, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, b"78498\n");
}

#[test]
fn every_hostile_module_gets_its_outcome_and_the_supervised_pool_keeps_serving() {
    let cache = tempfile::tempdir().unwrap();
    let mut config = supervisor_config(2);
    // Restarted children reload compiled code from the cache, so only a genuinely slow
    // compile can hit this.
    config.cache_dir = Some(cache.path().to_path_buf());
    config.compile_timeout = Duration::from_millis(1500);
    let exec = ova_worker::SupervisedExecutor::start(config).unwrap();
    let cases = cases();
    assert!(cases.len() >= 20);
    healthy(&exec);
    for c in &cases {
        let r = exec.run_blocking(request(&c.module, b"", &[], c.limits));
        eprintln!("{:40} → {}", c.name, r.outcome);
        (c.check)(&r);
        healthy(&exec);
    }
    assert!(exec.restarts() >= 3, "loops and slow compiles are stopped by restarting the child");
}

#[test]
fn hostile_modules_all_at_once_in_process_with_epoch_checks() {
    // The in-process pool with epoch checks on every unit: same outcomes, except compile time
    // (which only the supervisor bounds), run concurrently on two threads.
    let exec = pool(2).guard_all(true);
    let cases: Vec<Case> =
        cases().into_iter().filter(|c| c.name != "takes very long to compile").collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let results = rt.block_on(async {
        let futs: Vec<_> =
            cases.iter().map(|c| exec.run(request(&c.module, b"", &[], c.limits))).collect();
        let mut out = Vec::new();
        for f in futs {
            out.push(f.await);
        }
        out
    });
    for (c, r) in cases.iter().zip(&results) {
        eprintln!("{:40} → {}", c.name, r.outcome);
        (c.check)(r);
    }
    healthy(&exec);
}

#[test]
fn invalid_modules_are_compiled_once_and_fail_fast() {
    let exec = pool(1);
    let m = ModuleSource::new(b"\0asm\x01\0\0\0\x01".to_vec());
    for _ in 0..3 {
        let r = exec.run_blocking(request(&m, b"", &[], small_limits()));
        assert!(matches!(r.outcome, Outcome::InvalidModule { .. }));
    }
}

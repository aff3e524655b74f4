//! The supervised executor: runaway units are stopped by restarting the child, innocents are
//! re-run, misbehaving modules get epoch checks, compiled code survives restarts.

use std::time::Duration;

use ova_jobs::{Outcome, Phase};
use ova_worker::{
    Executor, ExecutorExt, Sandbox, SandboxConfig, ShardedExecutor, SupervisedExecutor,
};

use crate::common::*;

#[test]
fn a_runaway_unit_is_killed_and_innocent_units_in_flight_still_finish() {
    let mut config = supervisor_config(2);
    // Long grace: once guarded, a loop must be stopped by its epoch checks, not by a kill.
    config.guard_grace = Duration::from_secs(120);
    let exec = SupervisedExecutor::start(config).unwrap();
    let spin = wat(r#"(module (func (export "_start") (loop br 0)))"#);
    let primes = example("primes");
    let mut loop_limits = small_limits();
    loop_limits.deadline_ms = 200;

    let (tx, rx) = std::sync::mpsc::channel();
    let t = tx.clone();
    exec.submit(
        request(&spin, b"", &[], loop_limits),
        Box::new(move |r| t.send((usize::MAX, r)).unwrap()),
    );
    for i in 0..20usize {
        let t = tx.clone();
        let req = request(&primes, i.to_string().as_bytes(), &["--span", "300000"], small_limits());
        exec.submit(req, Box::new(move |r| t.send((i, r)).unwrap()));
    }
    drop(tx);
    let mut ok = 0;
    for (i, r) in rx {
        if i == usize::MAX {
            assert_eq!(r.outcome, Outcome::Timeout { phase: Phase::Run, deadline_ms: 200 });
            assert!(r.result_hash.is_none(), "a timeout is never a result");
        } else {
            assert_eq!(r.outcome, Outcome::Success, "innocent unit {i}");
            let want = primes::count_primes(i as u64 * 300_000, (i as u64 + 1) * 300_000);
            assert_eq!(r.stdout, format!("{want}\n").into_bytes());
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
    assert_eq!(exec.restarts(), 1);
    assert!(exec.is_misbehaved(&spin.id()));

    // The module is now guarded: the next runaway unit stops on its own epoch deadline,
    // without another restart.
    let r = exec.run_blocking(request(&spin, b"again", &[], loop_limits));
    assert_eq!(r.outcome, Outcome::Timeout { phase: Phase::Run, deadline_ms: 200 });
    assert_eq!(exec.restarts(), 1);
}

#[test]
fn async_callers_get_results_from_the_pool() {
    let exec = supervised(2);
    let primes = example("primes");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let results = rt.block_on(async {
        let mut handles = Vec::new();
        for i in 0..8u64 {
            let fut = exec.run(request(
                &primes,
                format!("{} {}", i * 1000, i * 1000 + 1000).as_bytes(),
                &[],
                small_limits(),
            ));
            handles.push(tokio::spawn(fut));
        }
        let mut v = Vec::new();
        for h in handles {
            v.push(h.await.unwrap());
        }
        v
    });
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            r.stdout,
            format!("{}\n", primes::count_primes(i * 1000, i * 1000 + 1000)).into_bytes()
        );
    }
}

#[test]
fn batches_run_in_order_with_a_runaway_among_them() {
    // A batch mixing ordinary units with one runaway: every result comes back, in order, equal
    // to the in-process run; the runaway times out and the child is restarted once.
    let exec = supervised(2);
    let primes = example("primes");
    let spin = wat(&wasi_module("(loop $l (br $l))"));
    let mut reqs = Vec::new();
    for i in 0..300u64 {
        let input = format!("{} {}", i * 100, i * 100 + 100);
        reqs.push(request(&primes, input.as_bytes(), &[], small_limits()));
        if i == 150 {
            let mut limits = small_limits();
            limits.deadline_ms = 300;
            reqs.push(request(&spin, b"", &[], limits));
        }
    }
    let results = exec.run_batch_blocking(reqs.clone());
    // The reference runs in process without the runaway (nothing would stop it there).
    let ordinary: Vec<_> = reqs.iter().filter(|q| q.module.id() != spin.id()).cloned().collect();
    let mut reference = pool(2).run_batch_blocking(ordinary).into_iter();
    assert_eq!(results.len(), reqs.len());
    for (r, q) in results.iter().zip(&reqs) {
        assert_eq!(r.unit, q.unit);
        if q.module.id() == spin.id() {
            assert!(matches!(r.outcome, Outcome::Timeout { phase: Phase::Run, .. }), "{r:?}");
        } else {
            let want = reference.next().unwrap();
            assert_eq!(r.outcome, Outcome::Success);
            assert_eq!((&r.stdout, r.result_hash), (&want.stdout, want.result_hash));
        }
    }
    assert_eq!(exec.restarts(), 1);
}

#[test]
fn a_missing_executor_program_fails_units_clearly() {
    let mut config = supervisor_config(1);
    config.program = "/nonexistent/ova-executor".into();
    assert!(SupervisedExecutor::start(config).is_err());
}

#[test]
fn compiled_code_is_cached_on_disk_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let primes = example("primes");
    let config = || SandboxConfig {
        slots: 4,
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let req = request(&primes, b"0 1000", &[], small_limits());

    let first = Sandbox::new(config()).unwrap();
    let r = first.run(&req);
    assert_eq!(r.stdout, b"168\n", "{r:?}");
    let files: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "one compiled artefact per (module, engine)");

    // A fresh sandbox (a restarted peer) loads it.
    let second = Sandbox::new(config()).unwrap();
    assert_eq!(second.run(&req).stdout, b"168\n");

    // A corrupted entry is discarded and the module recompiled, never loaded.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let third = Sandbox::new(config()).unwrap();
    assert_eq!(third.run(&req).stdout, b"168\n");
    std::fs::write(&files[0], &bytes[..n / 2]).unwrap();
    let fourth = Sandbox::new(config()).unwrap();
    assert_eq!(fourth.run(&req).stdout, b"168\n");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An executor program: a shell script in `dir` running `body` (with `$EXE` the real
/// `ova-executor`).
fn script(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("executor.sh");
    let exe = env!("CARGO_BIN_EXE_ova-executor");
    std::fs::write(&path, format!("#!/bin/sh\nEXE='{exe}'\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Waits for `n` results on `rx`; a missing one is a hang, reported after a generous bound.
#[cfg(debug_assertions)] // used by the fault-injection tests only
fn collect<T>(rx: &std::sync::mpsc::Receiver<T>, n: usize) -> Vec<T> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(300)).unwrap_or_else(|e| panic!("result {i}: {e}"))
        })
        .collect()
}

#[test]
#[cfg(debug_assertions)] // the executor's fault injection exists in debug builds only
fn a_unit_that_kills_the_executor_at_once_fails_alone_and_the_pool_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = supervisor_config(2);
    config.program =
        script(dir.path(), "OVA_EXECUTOR_TEST_CRASH_ON_INPUT=boom exec \"$EXE\" \"$@\"");
    config.max_crashes = 2;
    let exec = SupervisedExecutor::start(config).unwrap();
    let primes = example("primes");
    let (tx, rx) = std::sync::mpsc::channel();
    // The crasher among innocents sent in the same batch: it dies before it can be reported
    // as started, so only being sent can charge it.
    let mut reqs: Vec<_> = (0..40u64)
        .map(|i| {
            let input = format!("{} {}", i * 1000, i * 1000 + 1000);
            (i, request(&primes, input.as_bytes(), &[], small_limits()))
        })
        .collect();
    reqs.insert(20, (u64::MAX, request(&primes, b"boom", &[], small_limits())));
    let n = reqs.len();
    exec.submit_batch(
        reqs.into_iter()
            .map(|(i, req)| {
                let tx = tx.clone();
                (
                    req,
                    Box::new(move |r: ova_jobs::UnitResult| tx.send((i, r)).unwrap())
                        as ova_worker::Completion,
                )
            })
            .collect(),
    );
    for (i, r) in collect(&rx, n) {
        if i == u64::MAX {
            let Outcome::Failed { message } = &r.outcome else { panic!("{r:?}") };
            assert!(message.contains("died 3 times with this unit in it"), "{message}");
        } else {
            assert_eq!(r.outcome, Outcome::Success, "innocent unit {i}");
            let want = primes::count_primes(i * 1000, i * 1000 + 1000);
            assert_eq!(r.stdout, format!("{want}\n").into_bytes());
        }
    }
    // Once in the batch, then twice alone: three crashes, no more.
    assert_eq!(exec.restarts(), 3);
    let r = exec.run_blocking(request(&primes, b"0 1000", &[], small_limits()));
    assert_eq!(r.stdout, b"168\n");
    assert_eq!(exec.restarts(), 3);
}

#[test]
#[cfg(debug_assertions)] // the executor's fault injection exists in debug builds only
fn a_restarted_executor_that_hangs_before_its_hello_is_killed_and_the_units_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = supervisor_config(1);
    // The first child is a real executor that dies on the unit "boom"; every later one hangs
    // without a word.
    let marker = dir.path().join("started");
    config.program = script(
        dir.path(),
        &format!(
            "if [ -e '{m}' ]; then exec sleep 600; fi\ntouch '{m}'\n\
             OVA_EXECUTOR_TEST_CRASH_ON_INPUT=boom exec \"$EXE\" \"$@\"",
            m = marker.display()
        ),
    );
    config.hello_timeout = Duration::from_secs(1);
    let exec = SupervisedExecutor::start(config).unwrap();
    let primes = example("primes");
    let r = exec.run_blocking(request(&primes, b"0 1000", &[], small_limits()));
    assert_eq!(r.stdout, b"168\n", "the first child works");
    let (tx, rx) = std::sync::mpsc::channel();
    exec.submit_batch(vec![(
        request(&primes, b"boom", &[], small_limits()),
        Box::new(move |r: ova_jobs::UnitResult| tx.send(r).unwrap()) as ova_worker::Completion,
    )]);
    let r = collect(&rx, 1).pop().unwrap();
    let Outcome::Failed { message } = &r.outcome else { panic!("{r:?}") };
    assert!(message.contains("before its hello 3 times in a row"), "{message}");
    // Later units fail at once with the same reason instead of waiting for a child.
    let r = exec.run_blocking(request(&primes, b"0 1000", &[], small_limits()));
    let Outcome::Failed { message } = &r.outcome else { panic!("{r:?}") };
    assert!(message.contains("before its hello"), "{message}");
}

#[test]
fn a_program_that_is_not_this_builds_executor_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = supervisor_config(1);
    // Echoes the supervisor's own frames back: a hello, but from the wrong side.
    config.program = script(dir.path(), "exec cat");
    let e = SupervisedExecutor::start(config.clone()).err().expect("refused");
    assert!(e.to_string().contains("is not an ova-executor of this build"), "{e}");
    // Says nothing at all.
    config.program = script(dir.path(), "exit 0");
    let e = SupervisedExecutor::start(config).err().expect("refused");
    assert!(e.to_string().contains("exited before its hello 3 times in a row"), "{e}");
}

#[test]
fn output_caps_over_the_manifest_maximum_are_refused_not_run() {
    // Their result might not fit in a frame; no manifest can ask for them.
    let exec = supervised(1);
    let mut limits = small_limits();
    limits.max_stderr_bytes = ova_jobs::manifest::MAX_OUTPUT_CAP_BYTES + 1;
    let r = exec.run_blocking(request(&example("primes"), b"0 1000", &[], limits));
    let Outcome::Failed { message } = &r.outcome else { panic!("{r:?}") };
    assert!(message.contains("cap over"), "{message}");
    let r = exec.run_blocking(request(&example("primes"), b"0 1000", &[], small_limits()));
    assert_eq!(r.stdout, b"168\n");
    assert_eq!(exec.restarts(), 0);
}

/// CPU seconds a process has used so far (Linux `/proc`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    ova_worker::spare_cpu::parse_pid_stat(&stat).unwrap() as f64 / 100.0
}

/// Issue #3 (P2): a worker runs one single-threaded child per core, so the children do not
/// contend for one process's memory map. Units are spread over the children, give the same
/// results as one child, and a runaway unit kills and restarts its own child only.
#[test]
fn a_child_per_core_shares_the_units_and_a_runaway_restarts_only_its_own_child() {
    let exec = ShardedExecutor::start(supervisor_config(2)).unwrap();
    assert_eq!(exec.cores(), 2);
    let pids = exec.child_pids();
    assert_eq!(pids.len(), 2, "one child per core");
    assert_ne!(pids[0], pids[1]);

    let primes = example("primes");
    let reqs: Vec<_> = (0..16usize)
        .map(|i| {
            let input = (i * 1_000_000).to_string();
            request(&primes, input.as_bytes(), &["--span", "1000000"], small_limits())
        })
        .collect();
    let cpu_before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let results = exec.run_batch_blocking(reqs.clone());
    let one = supervised(1).run_batch_blocking(reqs.clone());
    for (i, (r, o)) in results.iter().zip(&one).enumerate() {
        assert_eq!(r.outcome, Outcome::Success, "unit {i}");
        assert_eq!(r.result_hash, o.result_hash, "unit {i}: same result as one child");
    }
    assert_eq!(exec.in_flight(), vec![0, 0], "every unit counted out");
    for (k, &p) in pids.iter().enumerate() {
        assert!(cpu_seconds(p) > cpu_before[k], "child {k} ran units");
    }

    // A runaway unit, then innocents: the ones queued behind it in its child are re-run after
    // the kill; the other child is never restarted.
    let spin = wat(r#"(module (func (export "_start") (loop br 0)))"#);
    let mut loop_limits = small_limits();
    loop_limits.deadline_ms = 200;
    let mut batch = vec![request(&spin, b"", &[], loop_limits)];
    batch.extend(reqs[..8].iter().cloned());
    let results = exec.run_batch_blocking(batch);
    assert_eq!(results[0].outcome, Outcome::Timeout { phase: Phase::Run, deadline_ms: 200 });
    for (i, r) in results[1..].iter().enumerate() {
        assert_eq!(r.result_hash, one[i].result_hash, "innocent unit {i}");
    }
    assert_eq!(exec.restarts(), 1, "only the runaway's child was restarted");
    let after = exec.child_pids();
    assert_eq!(after.len(), 2);
    assert_eq!(
        after.iter().zip(&pids).filter(|(a, b)| a != b).count(),
        1,
        "one child replaced: {pids:?} -> {after:?}"
    );
    assert_eq!(exec.in_flight(), vec![0, 0]);
}

/// The niceness of every thread of process `pid` (Linux `/proc`).
fn thread_niceness(pid: &str) -> Vec<i64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
            let after = stat.rsplit_once(')').unwrap().1;
            // Field 19 (nice); `after` starts at field 3.
            after.split_whitespace().nth(16).unwrap().parse().unwrap()
        })
        .collect()
}

/// A worker's units run at the lowest priority (the owner's programs come first): every
/// thread of the executor children has the niceness asked for, units still run, and a
/// child started without it keeps the supervisor's own.
#[test]
fn executor_children_run_units_at_the_niceness_asked_for() {
    let mut config = supervisor_config(2);
    config.nice = 19;
    let exec = ShardedExecutor::start(config).unwrap();
    let primes = example("primes");
    let r = exec.run_blocking(request(&primes, b"0", &["--span", "1000"], small_limits()));
    assert_eq!(r.outcome, Outcome::Success);
    let pids = exec.child_pids();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        let nice = thread_niceness(&pid.to_string());
        assert!(nice.len() >= 2, "the unit thread and the child's others: {nice:?}");
        assert!(nice.iter().all(|&n| n == 19), "child {pid}: {nice:?}");
    }

    let ours = thread_niceness("self")[0];
    let plain = supervised(1);
    let pid = plain.child_pid().unwrap();
    assert!(thread_niceness(&pid.to_string()).iter().all(|&n| n == ours));
}

/// A worker offering fewer cores than it has children (its owner got busy) runs new units on
/// that many children only; offering more again spreads them again.
#[test]
fn new_units_go_only_to_the_children_of_the_cores_offered() {
    let exec = ShardedExecutor::start(supervisor_config(2)).unwrap();
    let primes = example("primes");
    let reqs: Vec<_> = (0..8usize)
        .map(|i| request(&primes, i.to_string().as_bytes(), &["--span", "1000"], small_limits()))
        .collect();
    exec.set_active(1);
    let results = exec.run_batch_blocking(reqs.clone());
    assert!(results.iter().all(|r| r.outcome == Outcome::Success));
    assert_eq!(exec.placed(), vec![8, 0], "one core offered: one child");
    exec.set_active(0);
    let _ = exec.run_batch_blocking(reqs[..2].to_vec());
    assert_eq!(exec.placed(), vec![10, 0], "none offered still runs what was handed over");
    exec.set_active(5);
    let _ = exec.run_batch_blocking(reqs.clone());
    assert_eq!(exec.placed(), vec![14, 4], "both again (at most all)");
    assert_eq!(exec.in_flight(), vec![0, 0]);
}

//! Same unit ⇒ same bytes: across repeated runs, pool sizes, executors, and (for code without
//! NaNs) determinism modes. Float-heavy examples included.

use std::collections::BTreeSet;

use ova_jobs::{Determinism, Outcome, ResultHash};
use ova_worker::{Executor, ExecutorExt, UnitRequest};

use crate::common::*;

fn example_units() -> Vec<UnitRequest> {
    let mut limits = small_limits();
    limits.max_output_bytes = 1 << 20;
    let (primes, mandel, mc) = (example("primes"), example("mandelbrot"), example("montecarlo"));
    let mut v = Vec::new();
    for i in 0..3 {
        v.push(request(&primes, format!("{i}").as_bytes(), &["--span", "200000"], limits));
    }
    for t in [0, 27, 36] {
        v.push(request(&mandel, b"", &["--tile", &t.to_string()], limits));
    }
    for seed in 0..3 {
        v.push(request(&mc, seed.to_string().as_bytes(), &["--samples", "200000"], limits));
    }
    v
}

/// Runs every unit `times` times through `exec`, all submitted at once.
fn run_all(
    exec: &dyn Executor,
    units: &[UnitRequest],
    times: usize,
) -> Vec<Vec<(Vec<u8>, ResultHash)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..times {
        for (i, u) in units.iter().enumerate() {
            let tx = tx.clone();
            exec.submit(u.clone(), Box::new(move |r| tx.send((i, r)).unwrap()));
        }
    }
    drop(tx);
    let mut out = vec![Vec::new(); units.len()];
    for (i, r) in rx {
        assert_eq!(r.outcome, Outcome::Success, "{}", String::from_utf8_lossy(&r.stderr));
        assert!(r.hash_is_consistent());
        out[i].push((r.stdout, r.result_hash.unwrap()));
    }
    out
}

fn assert_all_equal(runs: &[Vec<(Vec<u8>, ResultHash)>], reference: &[(Vec<u8>, ResultHash)]) {
    for (i, unit_runs) in runs.iter().enumerate() {
        let distinct: BTreeSet<_> = unit_runs.iter().collect();
        assert_eq!(distinct.len(), 1, "unit {i} gave {} different outputs", distinct.len());
        assert_eq!(unit_runs[0], reference[i], "unit {i} differs from the reference run");
    }
}

#[test]
fn examples_are_byte_identical_across_runs_pools_and_executors() {
    let units = example_units();
    let reference: Vec<_> =
        run_all(&pool(1), &units, 1).into_iter().map(|mut v| v.remove(0)).collect();

    // Outputs are what the native kernels compute.
    assert_eq!(reference[0].0, format!("{}\n", primes::count_primes(0, 200_000)).into_bytes());
    let tile: mandelbrot::Tile = ova_guest::decode(&reference[4].0).unwrap();
    assert_eq!(tile, mandelbrot::render_tile(&mandelbrot::DEFAULT_VIEW, 27));
    let est: montecarlo::Estimate = ova_guest::decode(&reference[7].0).unwrap();
    assert_eq!(est, montecarlo::simulate(1, 200_000));

    assert_all_equal(&run_all(&pool(1), &units, 4), &reference);
    assert_all_equal(&run_all(&pool(2), &units, 4), &reference);
    assert_all_equal(&run_all(&pool(2).guard_all(true), &units, 2), &reference);
    assert_all_equal(&run_all(&supervised(1), &units, 2), &reference);
    assert_all_equal(&run_all(&supervised(2), &units, 4), &reference);

    // Fuel metering and NaN canonicalisation change the code, not these results.
    let with = |f: &dyn Fn(&mut UnitRequest)| {
        units
            .iter()
            .cloned()
            .map(|mut u| {
                f(&mut u);
                u
            })
            .collect::<Vec<_>>()
    };
    let fuel = with(&|u| u.limits.fuel = Some(u64::MAX / 2));
    assert_all_equal(&run_all(&pool(2), &fuel, 2), &reference);
    let strict = with(&|u| u.determinism = Determinism::Strict);
    assert_all_equal(&run_all(&pool(2), &strict, 2), &reference);
}

#[test]
fn fuel_used_is_deterministic() {
    let mc = example("montecarlo");
    let mut limits = small_limits();
    limits.fuel = Some(10_000_000_000);
    let exec = pool(2);
    let used: BTreeSet<_> = (0..4)
        .map(|_| exec.run_blocking(request(&mc, b"5", &["--samples", "10000"], limits)).fuel_used)
        .collect();
    assert_eq!(used.len(), 1);
    assert!(used.first().unwrap().unwrap() > 10_000);
}

#[test]
fn clocks_are_fixed_and_random_is_seeded_by_the_unit() {
    // Writes 16 random bytes and the wall clock's nanoseconds to stdout.
    let m = wat(r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $rand (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $rand (i32.const 104) (i32.const 16)))
        (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 120)))
        (i32.store (i32.const 0) (i32.const 104))
        (i32.store (i32.const 4) (i32.const 24))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#);
    let exec = pool(2);
    let a = exec.run_blocking(request(&m, b"a", &[], small_limits()));
    let a2 = exec.run_blocking(request(&m, b"a", &[], small_limits()));
    let b = exec.run_blocking(request(&m, b"b", &[], small_limits()));
    assert_eq!(a.outcome, Outcome::Success, "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout.len(), 24);
    assert_eq!(a.stdout, a2.stdout, "same unit, same random bytes");
    assert_ne!(a.stdout[..16], b.stdout[..16], "another unit, other random bytes");
    let nanos = u64::from_le_bytes(a.stdout[16..24].try_into().unwrap());
    assert_eq!(nanos, ova_worker::sandbox::wasi::FIXED_WALL_CLOCK_SECS * 1_000_000_000);
}

//! Helpers for tests that run `ova` as processes: a child that is killed on drop, output
//! checks, and polling with a deadline.
#![allow(dead_code)]

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const OVA: &str = env!("CARGO_BIN_EXE_ova");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Kills (SIGKILL) and reaps the child if the test did not stop it.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics at the deadline.
pub fn poll<T>(what: &str, cond: impl FnMut() -> Option<T>) -> T {
    poll_for(what, DEADLINE, cond)
}

/// [`poll`] with another deadline.
pub fn poll_for<T>(what: &str, limit: Duration, cond: impl FnMut() -> Option<T>) -> T {
    poll_until(limit, cond).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `cond` every 50 ms until it returns `Some`, or returns `None` at the deadline (for
/// callers that report more than "timed out").
pub fn poll_until<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `prefix` + command, e.g. `ip netns exec NS`.
pub fn ova(prefix: &[&str]) -> Command {
    let mut c = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(OVA);
            c
        }
        None => Command::new(OVA),
    };
    // OVA_TEST_LOG overrides the children's log filter when a failure needs more detail.
    let filter = std::env::var("OVA_TEST_LOG");
    c.env("RUST_LOG", filter.as_deref().unwrap_or("info,iroh=warn,iroh_gossip=warn,noq=warn"));
    c
}

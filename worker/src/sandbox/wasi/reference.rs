//! Test only: the wasmtime-wasi 48 world this host replaced, and a differential test that
//! runs the same calls under both and compares what the guest sees.
#![allow(dead_code, missing_docs)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ova_jobs::UnitId;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// The wall clock every unit sees: 2000-01-01T00:00:00Z, forever.
use super::FIXED_WALL_CLOCK_SECS;

/// What to do when a pipe is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Trap the unit (stdout: the output is the result, a cut one would be wrong).
    Trap,
    /// Keep the first bytes, drop the rest (stderr: diagnostics only).
    Truncate,
}

#[derive(Debug)]
struct PipeBuf {
    data: Vec<u8>,
    cap: usize,
    when_full: WhenFull,
    overflowed: bool,
}

/// An in-memory output pipe with a byte cap.
#[derive(Debug, Clone)]
pub struct CappedPipe(Arc<Mutex<PipeBuf>>);

/// Raised when stdout goes over its cap; the outcome mapping checks
/// [`CappedPipe::overflowed`] rather than this error's text.
#[derive(Debug, thiserror::Error)]
#[error("standard output is over its cap")]
pub struct OutputOverflow;

impl CappedPipe {
    /// A pipe holding at most `cap` bytes.
    pub fn new(cap: u64, when_full: WhenFull) -> Self {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        Self(Arc::new(Mutex::new(PipeBuf { data: Vec::new(), cap, when_full, overflowed: false })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeBuf> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a write went over the cap.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Takes the bytes written so far.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().data)
    }

    fn push(&self, bytes: &[u8]) -> Result<(), StreamError> {
        let mut b = self.lock();
        let room = b.cap - b.data.len();
        if bytes.len() <= room {
            b.data.extend_from_slice(bytes);
            return Ok(());
        }
        b.overflowed = true;
        match b.when_full {
            WhenFull::Trap => Err(StreamError::Trap(wasmtime::Error::new(OutputOverflow))),
            WhenFull::Truncate => {
                b.data.extend_from_slice(&bytes[..room]);
                Ok(())
            }
        }
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes)
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept a chunk, so that an overflowing write reaches `push` and is reported.
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.push(buf)
                .map(|()| buf.len())
                .map_err(|_| std::io::Error::other("output over its cap")),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(FIXED_WALL_CLOCK_SECS)
    }
}

struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

pub struct UnitRng(blake3::OutputReader);

impl UnitRng {
    pub fn new(unit: &UnitId, purpose: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("ova unit random v1");
        h.update(purpose.as_bytes());
        h.update(unit.as_bytes());
        Self(h.finalize_xof())
    }
}

impl rand_core::TryRng for UnitRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

/// The pipes of one unit, kept to read its output after the run.
pub struct UnitPipes {
    /// Standard output.
    pub stdout: CappedPipe,
    /// Standard error.
    pub stderr: CappedPipe,
}

/// Builds the WASI context of one unit.
pub fn unit_ctx(
    unit: &UnitId,
    input: bytes::Bytes,
    args: &[String],
    max_output: u64,
    max_stderr: u64,
) -> (WasiP1Ctx, UnitPipes) {
    let stdout = CappedPipe::new(max_output, WhenFull::Trap);
    let stderr = CappedPipe::new(max_stderr, WhenFull::Truncate);
    let mut b = WasiCtxBuilder::new();
    b.stdin(MemoryInputPipe::new(input))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .arg("unit")
        .args(args)
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        .secure_random(UnitRng::new(unit, "secure"))
        .insecure_random(UnitRng::new(unit, "insecure"))
        .insecure_random_seed(u128::from_le_bytes(unit.as_bytes()[..16].try_into().expect("16")))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    (b.build_p1(), UnitPipes { stdout, stderr })
}

#[cfg(test)]
mod differential {
    use std::sync::Arc;

    use ova_jobs::{BlobId, Determinism, Limits, Outcome, UnitId};
    use wasmtime::{Engine, Linker, Module, Store};
    use wasmtime_wasi::I32Exit;
    use wasmtime_wasi::p1::WasiP1Ctx;

    use crate::sandbox::{ModuleSource, Sandbox, SandboxConfig, UnitRequest};

    const SIGS: &[(&str, &str)] = &[
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

    /// A module importing every preview-1 function as `$name`, with `body` in `_start` and
    /// memory [0, 1024) dumped to stdout after it (through iovecs at 4096).
    fn module(body: &str, with_memory: bool) -> Vec<u8> {
        let mut m = String::from("(module\n");
        for (name, sig) in SIGS {
            m.push_str(&format!(
                "  (import \"wasi_snapshot_preview1\" \"{name}\" (func ${name} {sig}))\n"
            ));
        }
        if with_memory {
            m.push_str(
                r#"  (memory (export "memory") 1)
  (data (i32.const 1024) "\ff\fe")
  (data (i32.const 1040) "hello.txt")
  (func $dump
    (i32.store (i32.const 4096) (i32.const 0))
    (i32.store (i32.const 4100) (i32.const 1024))
    (drop (call $fd_write (i32.const 1) (i32.const 4096) (i32.const 1) (i32.const 4104))))
"#,
            );
            m.push_str(&format!("  (func (export \"_start\") {body} (call $dump)))"));
        } else {
            m.push_str(&format!("  (func (export \"_start\") {body}))"));
        }
        wat::parse_str(&m).unwrap()
    }

    fn plain_engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.gc_support(false).wasm_gc(false).wasm_function_references(false).wasm_exceptions(false);
        Engine::new(&c).unwrap()
    }

    #[derive(Debug, PartialEq)]
    enum End {
        Ok,
        Exit(i32),
        Overflow,
        Trap,
    }

    struct Old {
        wasi: WasiP1Ctx,
    }

    fn run_old(
        wasm: &[u8],
        unit: &UnitId,
        input: &[u8],
        args: &[String],
    ) -> (End, Vec<u8>, Vec<u8>) {
        let engine = plain_engine();
        let mut linker: Linker<Old> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut Old| &mut s.wasi).unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let (wasi, pipes) =
            super::unit_ctx(unit, bytes::Bytes::copy_from_slice(input), args, 4096, 1024);
        let mut store = Store::new(&engine, Old { wasi });
        let r = linker
            .instantiate(&mut store, &module)
            .and_then(|i| i.get_typed_func::<(), ()>(&mut store, "_start")?.call(&mut store, ()));
        let end = match &r {
            Ok(()) => End::Ok,
            Err(_) if pipes.stdout.overflowed() => End::Overflow,
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => End::Ok,
                Some(I32Exit(c)) => End::Exit(*c),
                None => End::Trap,
            },
        };
        let out = if end == End::Overflow { Vec::new() } else { pipes.stdout.take() };
        (end, out, pipes.stderr.take())
    }

    fn run_new(
        sb: &Sandbox,
        wasm: &[u8],
        input: &[u8],
        args: &[String],
    ) -> (UnitId, End, Vec<u8>, Vec<u8>) {
        let module = ModuleSource::new(wasm.to_vec());
        let req = UnitRequest {
            unit: UnitId::derive(&module.id(), &BlobId::of(input), args),
            module: Arc::clone(&module),
            input: bytes::Bytes::copy_from_slice(input),
            args: args.to_vec(),
            limits: Limits {
                memory_bytes: 16 << 20,
                deadline_ms: 10_000,
                fuel: None,
                max_output_bytes: 4096,
                max_stderr_bytes: 1024,
            },
            determinism: Determinism::SameArch,
            epoch_guard: false,
        };
        let r = sb.run(&req);
        let end = match r.outcome {
            Outcome::Success => End::Ok,
            Outcome::Exit { code } => End::Exit(code),
            Outcome::OutputTooLarge { .. } => End::Overflow,
            Outcome::Trap { .. } => End::Trap,
            ref o => panic!("unexpected outcome {o:?}"),
        };
        let mut stderr = r.stderr;
        if let Some(i) = stderr.windows(17).position(|w| w == b"\nova: host error:") {
            stderr.truncate(i);
        }
        (req.unit, end, r.stdout, stderr)
    }

    /// (name, body): each stores what the call returned at 0.. and its results at 16...
    fn cases() -> Vec<(&'static str, String)> {
        let e = |call: &str| format!("(i32.store (i32.const 0) {call})");
        let iov = |at: u32, buf: u32, len: u32| {
            format!(
                "(i32.store (i32.const {at}) (i32.const {buf})) (i32.store (i32.const {}) (i32.const {len}))",
                at + 4
            )
        };
        let mut v: Vec<(&'static str, String)> = vec![
            ("args sizes", e("(call $args_sizes_get (i32.const 16) (i32.const 20))")),
            ("args", e("(call $args_get (i32.const 16) (i32.const 64))")),
            ("args misaligned", e("(call $args_sizes_get (i32.const 18) (i32.const 20))")),
            ("args oob", e("(call $args_get (i32.const 16) (i32.const 65534))")),
            ("environ sizes", e("(call $environ_sizes_get (i32.const 16) (i32.const 20))")),
            ("environ", e("(call $environ_get (i32.const 16) (i32.const 64))")),
            ("sched_yield", e("(call $sched_yield)")),
            ("proc_raise", e("(call $proc_raise (i32.const 3))")),
            ("proc_raise bad", e("(call $proc_raise (i32.const 31))")),
            ("proc_raise overflow", e("(call $proc_raise (i32.const 256))")),
            ("proc_exit 0", "(call $proc_exit (i32.const 0))".into()),
            ("proc_exit 7", "(call $proc_exit (i32.const 7))".into()),
            ("proc_exit 126", "(call $proc_exit (i32.const 126))".into()),
            ("proc_exit -1", "(call $proc_exit (i32.const -1))".into()),
            ("random", e("(call $random_get (i32.const 16) (i32.const 300))")),
            (
                "random twice",
                format!(
                    "{} (drop (call $random_get (i32.const 400) (i32.const 7)))",
                    e("(call $random_get (i32.const 16) (i32.const 5))")
                ),
            ),
            ("random empty", e("(call $random_get (i32.const 16) (i32.const 0))")),
            ("random oob", e("(call $random_get (i32.const 65530) (i32.const 16))")),
            (
                "stdin read",
                format!(
                    "{} {}",
                    iov(512, 16, 100),
                    e("(call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "stdin read short",
                format!(
                    "{} {}",
                    iov(512, 16, 3),
                    e("(call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "stdin read second iovec",
                format!(
                    "{} {} {}",
                    iov(512, 16, 0),
                    iov(520, 32, 5),
                    e("(call $fd_read (i32.const 0) (i32.const 512) (i32.const 2) (i32.const 8))")
                ),
            ),
            (
                "stdin read twice",
                format!(
                    "{} (drop (call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))) {}",
                    iov(512, 16, 100),
                    e("(call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "stdout read",
                format!(
                    "{} {}",
                    iov(512, 16, 100),
                    e("(call $fd_read (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "fd 9 read",
                format!(
                    "{} {}",
                    iov(512, 16, 100),
                    e("(call $fd_read (i32.const 9) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "read iovec oob",
                e("(call $fd_read (i32.const 0) (i32.const 65532) (i32.const 1) (i32.const 8))"),
            ),
            (
                "read buf oob",
                format!(
                    "{} {}",
                    iov(512, 65530, 100),
                    e("(call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "read ret misaligned",
                format!(
                    "{} {}",
                    iov(512, 16, 100),
                    e("(call $fd_read (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 9))")
                ),
            ),
            (
                "write stderr",
                format!(
                    "{} {}",
                    iov(512, 1040, 9),
                    e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "write stdin",
                format!(
                    "{} {}",
                    iov(512, 1040, 9),
                    e("(call $fd_write (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "write fd 5",
                format!(
                    "{} {}",
                    iov(512, 1040, 9),
                    e("(call $fd_write (i32.const 5) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "write two iovecs",
                format!(
                    "{} {} {}",
                    iov(512, 1040, 5),
                    iov(520, 1040, 9),
                    e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 2) (i32.const 8))")
                ),
            ),
            (
                "write empty",
                e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 0) (i32.const 8))"),
            ),
            (
                "write buf oob",
                format!(
                    "{} {}",
                    iov(512, 65530, 100),
                    e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "write buf oob bad fd",
                format!(
                    "{} {}",
                    iov(512, 65530, 100),
                    e("(call $fd_write (i32.const 7) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "stdout flood",
                format!(
                    "{} (loop (drop (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 8))) br 0)",
                    iov(512, 0, 1000)
                ),
            ),
            (
                "stderr flood",
                format!(
                    "{} (drop (call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8))) {}",
                    iov(512, 0, 1000),
                    e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "pread stdin",
                format!(
                    "{} {}",
                    iov(512, 16, 10),
                    e(
                        "(call $fd_pread (i32.const 0) (i32.const 512) (i32.const 1) (i64.const 0) (i32.const 8))"
                    )
                ),
            ),
            (
                "pread stdout",
                format!(
                    "{} {}",
                    iov(512, 16, 10),
                    e(
                        "(call $fd_pread (i32.const 1) (i32.const 512) (i32.const 1) (i64.const 0) (i32.const 8))"
                    )
                ),
            ),
            (
                "pwrite stdout",
                format!(
                    "{} {}",
                    iov(512, 16, 10),
                    e(
                        "(call $fd_pwrite (i32.const 1) (i32.const 512) (i32.const 1) (i64.const 0) (i32.const 8))"
                    )
                ),
            ),
            (
                "pwrite stdin",
                format!(
                    "{} {}",
                    iov(512, 16, 10),
                    e(
                        "(call $fd_pwrite (i32.const 0) (i32.const 512) (i32.const 1) (i64.const 0) (i32.const 8))"
                    )
                ),
            ),
            (
                "close stderr then write",
                format!(
                    "(drop (call $fd_close (i32.const 2))) {} {}",
                    iov(512, 1040, 9),
                    e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "close twice",
                format!(
                    "(drop (call $fd_close (i32.const 2))) {}",
                    e("(call $fd_close (i32.const 2))")
                ),
            ),
            ("close 3", e("(call $fd_close (i32.const 3))")),
            (
                "renumber 2 to 0, write 0",
                format!(
                    "(i32.store (i32.const 4) (call $fd_renumber (i32.const 2) (i32.const 0))) {} {}",
                    iov(512, 1040, 9),
                    e("(call $fd_write (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            (
                "renumber then 2 gone",
                format!(
                    "(drop (call $fd_renumber (i32.const 2) (i32.const 0))) {} {}",
                    iov(512, 1040, 9),
                    e("(call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 8))")
                ),
            ),
            ("renumber to 3", e("(call $fd_renumber (i32.const 1) (i32.const 3))")),
            ("renumber same", e("(call $fd_renumber (i32.const 1) (i32.const 1))")),
            ("fdstat ret misaligned", e("(call $fd_fdstat_get (i32.const 0) (i32.const 20))")),
            ("fdstat 3", e("(call $fd_fdstat_get (i32.const 3) (i32.const 16))")),
            ("prestat 0", e("(call $fd_prestat_get (i32.const 0) (i32.const 16))")),
            ("prestat 3", e("(call $fd_prestat_get (i32.const 3) (i32.const 16))")),
            (
                "prestat name 0",
                e("(call $fd_prestat_dir_name (i32.const 0) (i32.const 16) (i32.const 8))"),
            ),
            (
                "prestat name 3",
                e("(call $fd_prestat_dir_name (i32.const 3) (i32.const 16) (i32.const 8))"),
            ),
            ("filestat 3", e("(call $fd_filestat_get (i32.const 3) (i32.const 16))")),
            ("set size", e("(call $fd_filestat_set_size (i32.const 1) (i64.const 0))")),
            (
                "seek bad whence",
                e("(call $fd_seek (i32.const 0) (i64.const 0) (i32.const 3) (i32.const 16))"),
            ),
            (
                "seek whence overflow",
                e("(call $fd_seek (i32.const 0) (i64.const 0) (i32.const 256) (i32.const 16))"),
            ),
            (
                "seek 5",
                e("(call $fd_seek (i32.const 5) (i64.const 0) (i32.const 0) (i32.const 16))"),
            ),
            ("tell 5", e("(call $fd_tell (i32.const 5) (i32.const 16))")),
            (
                "advise",
                e("(call $fd_advise (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 1))"),
            ),
            (
                "advise bad",
                e("(call $fd_advise (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 6))"),
            ),
            ("allocate", e("(call $fd_allocate (i32.const 0) (i64.const 0) (i64.const 0))")),
            ("datasync", e("(call $fd_datasync (i32.const 1))")),
            ("sync", e("(call $fd_sync (i32.const 1))")),
            (
                "readdir",
                e(
                    "(call $fd_readdir (i32.const 0) (i32.const 16) (i32.const 100) (i64.const 0) (i32.const 8))",
                ),
            ),
            ("set flags", e("(call $fd_fdstat_set_flags (i32.const 1) (i32.const 1))")),
            ("set flags bad", e("(call $fd_fdstat_set_flags (i32.const 1) (i32.const 32))")),
            (
                "set flags overflow",
                e("(call $fd_fdstat_set_flags (i32.const 1) (i32.const 65536))"),
            ),
            (
                "set rights",
                e("(call $fd_fdstat_set_rights (i32.const 1) (i64.const 0) (i64.const 0))"),
            ),
            (
                "set rights bad",
                e(
                    "(call $fd_fdstat_set_rights (i32.const 1) (i64.const 0x40000000) (i64.const 0))",
                ),
            ),
            (
                "set rights negative",
                e("(call $fd_fdstat_set_rights (i32.const 1) (i64.const -1) (i64.const 0))"),
            ),
            (
                "set times",
                e(
                    "(call $fd_filestat_set_times (i32.const 1) (i64.const 0) (i64.const 0) (i32.const 1))",
                ),
            ),
            (
                "set times both",
                e(
                    "(call $fd_filestat_set_times (i32.const 1) (i64.const 0) (i64.const 0) (i32.const 3))",
                ),
            ),
            (
                "set times bad",
                e(
                    "(call $fd_filestat_set_times (i32.const 1) (i64.const 0) (i64.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open 3",
                e(
                    "(call $path_open (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open 0",
                e(
                    "(call $path_open (i32.const 0) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open bad utf8",
                e(
                    "(call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 2) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open path oob",
                e(
                    "(call $path_open (i32.const 3) (i32.const 0) (i32.const 65530) (i32.const 20) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open bad oflags",
                e(
                    "(call $path_open (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 16) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open bad lookup",
                e(
                    "(call $path_open (i32.const 3) (i32.const 2) (i32.const 1040) (i32.const 9) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "path_open bad fdflags",
                e(
                    "(call $path_open (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 64) (i32.const 16))",
                ),
            ),
            (
                "mkdir",
                e("(call $path_create_directory (i32.const 3) (i32.const 1040) (i32.const 9))"),
            ),
            (
                "stat",
                e(
                    "(call $path_filestat_get (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 16))",
                ),
            ),
            (
                "stat bad flags",
                e(
                    "(call $path_filestat_get (i32.const 3) (i32.const 4) (i32.const 1040) (i32.const 9) (i32.const 16))",
                ),
            ),
            (
                "utimes both",
                e(
                    "(call $path_filestat_set_times (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i64.const 0) (i64.const 0) (i32.const 12))",
                ),
            ),
            (
                "utimes",
                e(
                    "(call $path_filestat_set_times (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i64.const 0) (i64.const 0) (i32.const 0))",
                ),
            ),
            (
                "link",
                e(
                    "(call $path_link (i32.const 3) (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 3) (i32.const 1040) (i32.const 9))",
                ),
            ),
            (
                "readlink",
                e(
                    "(call $path_readlink (i32.const 3) (i32.const 1040) (i32.const 9) (i32.const 16) (i32.const 10) (i32.const 8))",
                ),
            ),
            (
                "rmdir",
                e("(call $path_remove_directory (i32.const 0) (i32.const 1040) (i32.const 9))"),
            ),
            (
                "rename",
                e(
                    "(call $path_rename (i32.const 3) (i32.const 1040) (i32.const 9) (i32.const 3) (i32.const 1040) (i32.const 9))",
                ),
            ),
            (
                "symlink",
                e(
                    "(call $path_symlink (i32.const 1040) (i32.const 9) (i32.const 3) (i32.const 1040) (i32.const 9))",
                ),
            ),
            ("unlink", e("(call $path_unlink_file (i32.const 3) (i32.const 1040) (i32.const 9))")),
            ("accept 3", e("(call $sock_accept (i32.const 3) (i32.const 0) (i32.const 16))")),
            ("accept 0", e("(call $sock_accept (i32.const 0) (i32.const 0) (i32.const 16))")),
            (
                "accept bad flags",
                e("(call $sock_accept (i32.const 0) (i32.const 32) (i32.const 16))"),
            ),
            (
                "recv",
                e(
                    "(call $sock_recv (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 0) (i32.const 16) (i32.const 20))",
                ),
            ),
            (
                "recv bad flags",
                e(
                    "(call $sock_recv (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 4) (i32.const 16) (i32.const 20))",
                ),
            ),
            (
                "send",
                e(
                    "(call $sock_send (i32.const 7) (i32.const 512) (i32.const 1) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "send flags",
                e(
                    "(call $sock_send (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 1234) (i32.const 16))",
                ),
            ),
            ("shutdown", e("(call $sock_shutdown (i32.const 2) (i32.const 3))")),
            ("shutdown bad", e("(call $sock_shutdown (i32.const 2) (i32.const 4))")),
            (
                "poll none",
                e(
                    "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 0) (i32.const 16))",
                ),
            ),
            (
                "poll bad tag",
                format!(
                    "(i32.store8 (i32.const 520) (i32.const 3)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll bad fd",
                format!(
                    "(i32.store8 (i32.const 520) (i32.const 1)) (i32.store (i32.const 528) (i32.const 9)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll read stdout",
                format!(
                    "(i32.store8 (i32.const 520) (i32.const 1)) (i32.store (i32.const 528) (i32.const 1)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll cputime",
                format!(
                    "(i32.store (i32.const 528) (i32.const 2)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll bad clock flags",
                format!(
                    "(i32.store16 (i32.const 552) (i32.const 2)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll clock now",
                format!(
                    "(i64.store (i32.const 512) (i64.const 77)) (i32.store (i32.const 528) (i32.const 1)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll abs realtime past",
                format!(
                    "(i64.store (i32.const 512) (i64.const 77)) (i32.store16 (i32.const 552) (i32.const 1)) (i64.store (i32.const 536) (i64.const 5)) {}",
                    e(
                        "(call $poll_oneoff (i32.const 512) (i32.const 256) (i32.const 1) (i32.const 16))"
                    )
                ),
            ),
            (
                "poll misaligned",
                e(
                    "(call $poll_oneoff (i32.const 516) (i32.const 256) (i32.const 1) (i32.const 16))",
                ),
            ),
            (
                "poll subs oob",
                e(
                    "(call $poll_oneoff (i32.const 65520) (i32.const 256) (i32.const 1) (i32.const 16))",
                ),
            ),
        ];
        for id in [0, 1, 2, 3, 4, -1] {
            let name: &'static str = Box::leak(format!("clock {id}").into_boxed_str());
            v.push((name, format!("{} (i32.store (i32.const 4) (call $clock_res_get (i32.const {id}) (i32.const 24)))", e(&format!("(call $clock_time_get (i32.const {id}) (i64.const 1) (i32.const 16))")))));
        }
        v.push((
            "clock misaligned",
            e("(call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 20))"),
        ));
        for fd in [0, 1, 2] {
            let name: &'static str = Box::leak(format!("fdstat+filestat {fd}").into_boxed_str());
            v.push((name, format!("{} (i32.store (i32.const 4) (call $fd_filestat_get (i32.const {fd}) (i32.const 64)))", e(&format!("(call $fd_fdstat_get (i32.const {fd}) (i32.const 16))")))));
            let name: &'static str = Box::leak(format!("seek/tell {fd}").into_boxed_str());
            v.push((name, format!("{} (i32.store (i32.const 4) (call $fd_tell (i32.const {fd}) (i32.const 24)))", e(&format!("(call $fd_seek (i32.const {fd}) (i64.const 0) (i32.const 1) (i32.const 16))")))));
        }
        v
    }

    #[test]
    fn every_call_answers_as_wasmtime_wasi_did() {
        let sb = Sandbox::new(SandboxConfig { slots: 4, ..Default::default() }).unwrap();
        let args = vec!["a".to_string(), "bc".to_string(), String::new()];
        let mut diffs = Vec::new();
        let cases = cases();
        for (name, body) in &cases {
            for input in [&b"hello, world"[..], b""] {
                let wasm = module(body, true);
                let (unit, end, out, err) = run_new(&sb, &wasm, input, &args);
                let old = run_old(&wasm, &unit, input, &args);
                if (&end, &out, &err) != (&old.0, &old.1, &old.2) {
                    let first = out.iter().zip(&old.1).position(|(a, b)| a != b);
                    diffs.push(format!(
                        "{name} (input {} bytes): new {end:?} out {} err {:?} / old {:?} out {} err {:?}; first differing byte {first:?}",
                        input.len(), out.len(), String::from_utf8_lossy(&err), old.0, old.1.len(), String::from_utf8_lossy(&old.2)
                    ));
                }
            }
        }
        // A start function's calls (before the memory is cached) work the same.
        let wasm = wat::parse_str(
            r#"(module
              (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (data (i32.const 64) "from start")
              (func $s (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 10))
                (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
              (start $s)
              (func (export "_start")))"#,
        )
        .unwrap();
        let (unit, end, out, _) = run_new(&sb, &wasm, b"", &[]);
        assert_eq!((end, out.clone()), {
            let o = run_old(&wasm, &unit, b"", &[]);
            (o.0, o.1)
        });
        assert_eq!(out, b"from start");
        // Every call needs the memory export, as in wasmtime-wasi.
        let wasm = module("(drop (call $sched_yield))", false);
        let (unit, end, ..) = run_new(&sb, &wasm, b"", &[]);
        assert_eq!(end, run_old(&wasm, &unit, b"", &[]).0);
        assert_eq!(end, End::Trap);
        assert!(
            diffs.is_empty(),
            "{} of {} cases differ:\n{}",
            diffs.len(),
            cases.len(),
            diffs.join("\n")
        );
    }

    #[test]
    fn the_linker_defines_the_same_functions_with_the_same_types() {
        let engine = plain_engine();
        let mut old: Linker<Old> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut old, |s: &mut Old| &mut s.wasi).unwrap();
        let mut new: Linker<crate::sandbox::state::UnitState> = Linker::new(&engine);
        super::super::add_to_linker(&mut new, |s| &mut s.wasi).unwrap();
        let mut so =
            Store::new(&engine, Old { wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1() });
        let mut sn = Store::new(&engine, crate::sandbox::state::UnitState::empty());
        let list = |it: Vec<(String, String, wasmtime::ExternType)>| {
            let mut v: Vec<String> = it
                .into_iter()
                .map(|(m, n, t)| {
                    let f = t.unwrap_func();
                    let (p, r): (Vec<_>, Vec<_>) = (f.params().collect(), f.results().collect());
                    format!("{m}::{n} {p:?} -> {r:?}")
                })
                .collect();
            v.sort();
            v
        };
        let o: Vec<_> =
            old.iter(&mut so).map(|(m, n, e)| (m.to_string(), n.to_string(), e)).collect();
        let o = list(o.into_iter().map(|(m, n, e)| (m, n, e.ty(&so))).collect());
        let n: Vec<_> =
            new.iter(&mut sn).map(|(m, n, e)| (m.to_string(), n.to_string(), e)).collect();
        let n = list(n.into_iter().map(|(m, n, e)| (m, n, e.ty(&sn))).collect());
        assert_eq!(o, n);
        assert_eq!(n.len(), SIGS.len());
    }
}

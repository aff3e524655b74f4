//! The unit's WASI preview-1 world: stdin is the input, stdout and stderr are capped in-memory
//! pipes, args come from the unit; no preopened directories, no environment, no network;
//! clocks are fixed and randomness is a stream derived from the unit id. Identical unit,
//! identical bytes.

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
pub const FIXED_WALL_CLOCK_SECS: u64 = 946_684_800;

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

/// A deterministic random stream: BLAKE3's extendable output keyed by the unit id (and a
/// purpose string), so two runs of one unit draw the same bytes and two units do not.
pub struct UnitRng(blake3::OutputReader);

impl UnitRng {
    /// The stream for `unit` and `purpose`.
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

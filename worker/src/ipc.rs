//! Messages between the supervisor and its executor process: little-endian `u32` length, then
//! postcard. The child's stdin carries [`ToChild`], its stdout [`FromChild`]; guests never
//! touch either (their stdio is in-memory pipes). Each side's first frame is its [`Hello`].

use std::borrow::Cow;
use std::io::{self, Read, Write};

use ova_jobs::manifest::MAX_OUTPUT_CAP_BYTES;
use ova_jobs::{Determinism, Limits, UnitId, UnitResult};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::sandbox::{ENGINE_NAME, HOST_ERROR_NOTE_BYTES};

/// Bytes a [`FromChild::Done`] frame may hold besides the unit's stdout and stderr: the
/// host's note after stderr, and the outcome (its messages are cut to a few hundred bytes),
/// provenance and ids, with room to spare.
pub const RESULT_OVERHEAD_BYTES: usize = HOST_ERROR_NOTE_BYTES + (1 << 20);

/// Largest frame accepted: a result whose stdout and stderr are both at the largest caps a
/// manifest may set ([`MAX_OUTPUT_CAP_BYTES`] each), plus [`RESULT_OVERHEAD_BYTES`]. The
/// executor refuses units with larger caps, so every frame it sends fits.
pub const MAX_FRAME_BYTES: usize = 2 * MAX_OUTPUT_CAP_BYTES as usize + RESULT_OVERHEAD_BYTES;

// The length prefix is a `u32`.
const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize);

/// Which end of the pipe a [`Hello`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The worker's supervisor.
    Supervisor,
    /// The `ova-executor` child.
    Executor,
}

/// The first frame each side sends, before anything else: the other side goes on only if
/// everything but the role is the same as its own, so a supervisor and an executor from
/// different builds (different frames, or different results) refuse each other clearly
/// instead of misreading frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Who is talking.
    pub role: Role,
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The `ova-worker` crate version.
    pub version: String,
    /// The engine and WASI host results are computed with ([`ENGINE_NAME`]).
    pub engine: String,
}

/// The frame format's version: bump it whenever a frame changes.
pub const PROTOCOL: u32 = 2;

impl Hello {
    /// This build's hello, as `role`.
    pub fn ours(role: Role) -> Self {
        Self {
            role,
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
            engine: ENGINE_NAME.to_string(),
        }
    }

    /// Whether `self`, received, is a peer of this build in role `from`; else why not.
    pub fn check(&self, from: Role) -> Result<(), String> {
        let ours = Hello::ours(from);
        if *self == ours {
            return Ok(());
        }
        Err(format!(
            "expected {:?} protocol {} of ova-worker {} ({}), got {:?} protocol {} of {} ({})",
            ours.role,
            ours.protocol,
            ours.version,
            ours.engine,
            self.role,
            self.protocol,
            self.version,
            self.engine
        ))
    }
}

/// Supervisor → executor. Borrowed fields (`Cow`) let the supervisor encode a request without
/// copying its input and args; decoding always yields owned values.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild<'a> {
    /// A module's bytes; later runs refer to it by id (the child re-hashes the bytes).
    Module {
        /// The wasm bytes.
        #[serde(with = "ova_jobs::wire::byte_string")]
        bytes: Cow<'a, [u8]>,
    },
    /// Run a unit.
    Run {
        /// The supervisor's sequence number for this attempt.
        seq: u64,
        /// The unit id.
        unit: UnitId,
        /// Module id (sent before in [`ToChild::Module`]).
        module: ova_jobs::BlobId,
        /// Stdin.
        #[serde(with = "ova_jobs::wire::byte_string")]
        input: Cow<'a, [u8]>,
        /// Args.
        args: Cow<'a, [String]>,
        /// Limits.
        limits: Limits,
        /// Determinism mode.
        determinism: Determinism,
        /// Run with epoch checks (the module has misbehaved before).
        epoch_guard: bool,
    },
    /// The first frame on the pipe.
    Hello(Hello),
}

/// Executor → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromChild {
    /// A thread picked the unit and must compile its module first (compile deadline starts).
    Compiling {
        /// Sequence number.
        seq: u64,
    },
    /// The unit is instantiating/running (run deadline starts). The executor sends this
    /// only for a unit still running [`crate::supervisor::REPORT_STARTED_AFTER`] after it
    /// started; a shorter one is reported by its `Done` alone (until then the supervisor
    /// knows only that it was sent).
    Started {
        /// Sequence number.
        seq: u64,
        /// How long the unit had been running when this was written, in microseconds (the
        /// supervisor backdates the deadline by this much).
        running_us: u64,
    },
    /// The unit is done.
    Done {
        /// Sequence number.
        seq: u64,
        /// Its result.
        result: Box<UnitResult>,
    },
    /// The first frame on the pipe.
    Hello(Hello),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, msg: &T) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    postcard::to_io(msg, &mut *out).expect("encoding into a Vec cannot fail");
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends one [`FromChild::Done`] frame for `result`, borrowing it (the same bytes as
/// encoding `FromChild::Done { seq, result: Box::new(result) }`, without moving the result
/// into a box first).
pub fn encode_done_into(out: &mut Vec<u8>, seq: u64, result: &UnitResult) {
    /// [`FromChild`] with a borrowed result: postcard encodes a variant by its index and a
    /// `Box<T>` or `&T` as the `T`, so the frames are identical.
    #[derive(Serialize)]
    enum Wire<'a> {
        #[allow(dead_code)]
        Compiling {
            seq: u64,
        },
        #[allow(dead_code)]
        Started {
            seq: u64,
            running_us: u64,
        },
        Done {
            seq: u64,
            result: &'a UnitResult,
        },
    }
    encode_into(out, &Wire::Done { seq, result });
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_into(&mut buf, msg);
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    postcard::from_bytes(buf).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use ova_jobs::{Determinism, Outcome, Provenance, UnitId};

    use super::*;

    #[test]
    fn a_borrowed_done_frame_is_the_same_as_a_boxed_one() {
        let unit = UnitId::derive(&ova_jobs::BlobId::of(b"m"), &ova_jobs::BlobId::of(b"i"), &[]);
        let mut r = UnitResult::new(
            unit,
            Outcome::Exit { code: 3 },
            b"out".to_vec(),
            Provenance { determinism: Determinism::SameArch, arch: "a".into(), engine: "e".into() },
        );
        r.stderr = b"err".to_vec();
        r.fuel_used = Some(7);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_done_into(&mut a, 42, &r);
        encode_into(&mut b, &FromChild::Done { seq: 42, result: Box::new(r) });
        assert_eq!(a, b);
    }

    #[test]
    fn a_done_frame_is_its_output_plus_at_most_the_overhead() {
        // The largest outcome message the sandbox makes (cut to 500 bytes), a full stderr
        // with the host's note: MAX_FRAME_BYTES relies on this bound.
        let unit = UnitId::derive(&ova_jobs::BlobId::of(b"m"), &ova_jobs::BlobId::of(b"i"), &[]);
        let (out, err) = (100_000, 50_000 + HOST_ERROR_NOTE_BYTES);
        let mut r = UnitResult::new(
            unit,
            Outcome::InvalidModule { reason: "x".repeat(2000) },
            vec![7; out],
            Provenance {
                determinism: Determinism::Strict,
                arch: "x86_64".into(),
                engine: "e".repeat(200),
            },
        );
        r.stderr = vec![8; err];
        r.fuel_used = Some(u64::MAX);
        let mut frame = Vec::new();
        encode_done_into(&mut frame, u64::MAX, &r);
        assert!(frame.len() <= out + err + RESULT_OVERHEAD_BYTES);
        assert!(frame.len() - out - err < 4096, "{} bytes of overhead", frame.len() - out - err);
    }

    #[test]
    fn a_hello_is_accepted_only_from_the_other_side_of_this_build() {
        let from_child = Hello::ours(Role::Executor);
        assert!(from_child.check(Role::Executor).is_ok());
        assert!(from_child.check(Role::Supervisor).is_err(), "an echo of our own hello");
        let older = Hello { protocol: PROTOCOL - 1, ..from_child.clone() };
        assert!(older.check(Role::Executor).is_err());
        let other_host = Hello { engine: "wasmtime 48.0.8".into(), ..from_child };
        let why = other_host.check(Role::Executor).unwrap_err();
        assert!(why.contains("wasmtime 48.0.8)"), "{why}");
    }
}

//! Messages between the supervisor and its executor process: little-endian `u32` length, then
//! postcard. The child's stdin carries [`ToChild`], its stdout [`FromChild`]; guests never
//! touch either (their stdio is in-memory pipes).

use std::borrow::Cow;
use std::io::{self, Read, Write};

use ova_jobs::{Determinism, Limits, UnitId, UnitResult};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Largest frame accepted (a result may carry up to 1 GiB of output).
pub const MAX_FRAME_BYTES: usize = (1 << 30) + (16 << 20);

/// Supervisor → executor. Borrowed fields (`Cow`) let the supervisor encode a request without
/// copying its input and args; decoding always yields owned values.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild<'a> {
    /// A module's bytes; later runs refer to it by id (the child re-hashes the bytes).
    Module {
        /// The wasm bytes.
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
    /// only if the unit is still running when its writer gets to it: a unit whose `Done` is
    /// already queued by then needs no deadline, and its `Started` is left out.
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
}

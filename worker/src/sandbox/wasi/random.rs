//! `random_get`: a deterministic stream derived from the unit id, so two runs of one unit
//! draw the same bytes and two units do not.
//!
//! The stream is BLAKE3's extendable output, keyed by the unit id and the purpose `"secure"`,
//! and `random_get` hands out the low byte of each successive little-endian `u32` of it — the
//! exact bytes the wasmtime-wasi host this replaced gave (it drew each byte as
//! `rand::Rng::next_u32() as u8` from the same stream), so results did not change with it.

use ova_jobs::UnitId;

use super::guest::{Guest, HostTrap, Outcome};

/// Largest `random_get` served in one call, as before (64 MiB); more traps.
pub const MAX_RANDOM_GET: u32 = 64 << 20;

/// A unit's random stream, created on first use (most units never draw).
pub struct UnitRng(blake3::OutputReader);

impl UnitRng {
    /// The stream for `unit` and `purpose`.
    pub fn new(unit: &UnitId, purpose: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("ova unit random v1");
        h.update(purpose.as_bytes());
        h.update(unit.as_bytes());
        Self(h.finalize_xof())
    }

    /// Fills `out` with the next bytes `random_get` hands out (one per 4 stream bytes).
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut words = [0u8; 1024];
        for chunk in out.chunks_mut(words.len() / 4) {
            let w = &mut words[..chunk.len() * 4];
            self.0.fill(w);
            for (o, word) in chunk.iter_mut().zip(w.chunks_exact(4)) {
                *o = word[0];
            }
        }
    }
}

/// `random_get(buf, buf_len)`.
pub fn random_get(
    mem: &mut Guest<'_>,
    rng: &mut Option<UnitRng>,
    unit: &UnitId,
    buf: u32,
    len: u32,
) -> Outcome {
    if len > MAX_RANDOM_GET {
        return Err(HostTrap::TooMuchRandom(len).into());
    }
    let out = mem.bytes_mut(buf, len)?;
    rng.get_or_insert_with(|| UnitRng::new(unit, "secure")).fill(out);
    Ok(())
}

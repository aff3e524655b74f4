//! `poll_oneoff` in virtual time.
//!
//! The clocks a unit sees never move ([`super::clock`]), so waiting could not change anything
//! the unit can observe; it would only hold a core. So nothing waits: stdio is always ready
//! (stdin holds its whole input in memory, stdout and stderr take writes at once), so with any
//! descriptor subscription only clocks already due fire beside them, and without one the clock
//! subscriptions with the nearest deadline fire at once. Which events fire depends only on the
//! subscriptions, never on timing.
//!
//! Subscriptions are read in order, and the first invalid one fails the call as wasmtime-wasi
//! does: an unknown tag, clock (or a CPU-time clock) or flag bit is `EINVAL`, a descriptor
//! that is not open (or not stdin for reading, stdout or stderr for writing) is `EBADF`; no
//! subscriptions at all is `EINVAL` (it would wait forever). So many subscriptions that their
//! records and events exceed the per-call budget ([`super::guest::HOSTCALL_BUDGET`]) are
//! `ENOMEM`, before any is read.

use super::abi::{self, Errno};
use super::clock::Clock;
use super::fd::{Files, Stdio};
use super::guest::{Budget, Guest, HostTrap, Outcome, le_u32, le_u64};

/// Bytes in a `subscription` record (align 8).
const SUBSCRIPTION_SIZE: u32 = 48;
/// Bytes in an `event` record (align 8).
const EVENT_SIZE: u32 = 32;

/// `eventtype` tags.
const CLOCK: u8 = 0;
const FD_READ: u8 = 1;
const FD_WRITE: u8 = 2;

/// One subscription, decoded.
enum Sub {
    /// Fires after this many nanoseconds of (virtual) time.
    Clock(u64),
    /// Stdio ready now, with this many bytes to read or room to write.
    Ready { kind: u8, nbytes: u64, hangup: bool },
}

fn decode(rec: &[u8], f: &Files) -> Result<Sub, Errno> {
    let tag = rec[8];
    match tag {
        CLOCK => {
            let clock = Clock::from_field(le_u32(rec, 16))?;
            let timeout = le_u64(rec, 24);
            let flags = u32::from(u16::from_le_bytes([rec[40], rec[41]]));
            if flags & !abi::SUBCLOCKFLAGS != 0 {
                return Err(Errno::Inval);
            }
            let abstime = flags != 0;
            let wait = if abstime { timeout.saturating_sub(clock.now()) } else { timeout };
            Ok(Sub::Clock(wait))
        }
        FD_READ | FD_WRITE => {
            let fd = le_u32(rec, 16);
            let kind = f.get(fd).ok_or(Errno::Badf)?;
            match (tag, kind) {
                (FD_READ, Stdio::In) => {
                    let left = f.input_left() as u64;
                    Ok(Sub::Ready { kind: tag, nbytes: left, hangup: left == 0 })
                }
                (FD_WRITE, Stdio::Out | Stdio::Err) => {
                    Ok(Sub::Ready { kind: tag, nbytes: f.output_room(kind) as u64, hangup: false })
                }
                _ => Err(Errno::Badf),
            }
        }
        _ => Err(Errno::Inval),
    }
}

/// `poll_oneoff(in, out, nsubscriptions, nevents)`.
pub fn poll_oneoff(
    m: &mut Guest<'_>,
    f: &Files,
    subs: u32,
    events: u32,
    n: u32,
    ret: u32,
) -> Outcome {
    if n == 0 {
        return Err(Errno::Inval.into());
    }
    // The subscriptions read and the events that may be written, before anything is read:
    // bounds the walk below and what `decoded` holds (at most ~1.7M subscriptions).
    let mut budget = Budget::full();
    budget.spend(n, SUBSCRIPTION_SIZE)?;
    budget.spend(n, EVENT_SIZE)?;
    let mut decoded = Vec::with_capacity(n.min(64) as usize);
    for i in 0..n {
        let rec = m.record(nth(subs, i, SUBSCRIPTION_SIZE)?, SUBSCRIPTION_SIZE, 8)?;
        decoded.push((le_u64(rec, 0), decode(rec, f)?));
    }
    let any_fd = decoded.iter().any(|(_, s)| matches!(s, Sub::Ready { .. }));
    let nearest = decoded
        .iter()
        .filter_map(|(_, s)| match s {
            Sub::Clock(wait) => Some(*wait),
            Sub::Ready { .. } => None,
        })
        .min();
    let mut count = 0u32;
    for (userdata, sub) in &decoded {
        let (kind, nbytes, hangup) = match *sub {
            Sub::Ready { kind, nbytes, hangup } => (kind, nbytes, hangup),
            // With a descriptor ready, only clocks already due fire beside it.
            Sub::Clock(wait) if wait == 0 || (!any_fd && Some(wait) == nearest) => {
                (CLOCK, 0, false)
            }
            Sub::Clock(_) => continue,
        };
        // event: userdata u64 @0, error u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24.
        let mut ev = [0u8; EVENT_SIZE as usize];
        ev[0..8].copy_from_slice(&userdata.to_le_bytes());
        ev[10] = kind;
        ev[16..24].copy_from_slice(&nbytes.to_le_bytes());
        if hangup {
            ev[24..26].copy_from_slice(&abi::EVENT_HANGUP.to_le_bytes());
        }
        m.put(nth(events, count, EVENT_SIZE)?, &ev, 8)?;
        count += 1;
    }
    Ok(m.put_u32(ret, count)?)
}

/// The address of record `i` of `size` bytes in the array at `base`.
fn nth(base: u32, i: u32, size: u32) -> Result<u32, HostTrap> {
    let at = u64::from(base) + u64::from(i) * u64::from(size);
    u32::try_from(at).map_err(|_| HostTrap::OutOfBounds { ptr: base, len: at - u64::from(base) })
}

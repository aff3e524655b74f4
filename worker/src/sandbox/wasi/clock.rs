//! `clock_time_get` and `clock_res_get`: fixed clocks, so a unit's result cannot depend on
//! when or where it ran. The wall clock reads 2000-01-01T00:00:00Z and the monotonic clock
//! 0, forever; CPU-time clocks do not exist (`EBADF`).

use super::abi::{self, Errno, Repr};
use super::guest::Fail;
use super::guest::{Guest, Outcome};

/// The wall clock every unit sees: 2000-01-01T00:00:00Z, in seconds since the Unix epoch.
pub const FIXED_WALL_CLOCK_SECS: u64 = 946_684_800;

/// The two clocks a unit can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// `realtime`: the fixed wall clock.
    Realtime,
    /// `monotonic`: always 0.
    Monotonic,
}

impl Clock {
    /// The clock the argument `id` names: an unknown id traps (it is not a `clockid`), the
    /// CPU-time clocks are `EBADF`.
    pub fn from_arg(id: i32) -> Result<Clock, Fail> {
        match abi::enum_tag("id", id, Repr::U32, 3)? {
            0 => Ok(Clock::Realtime),
            1 => Ok(Clock::Monotonic),
            _ => Err(Errno::Badf.into()),
        }
    }

    /// The clock a `poll_oneoff` subscription names: only these two (else `EINVAL`).
    pub fn from_field(id: u32) -> Result<Clock, Errno> {
        match id {
            0 => Ok(Clock::Realtime),
            1 => Ok(Clock::Monotonic),
            _ => Err(Errno::Inval),
        }
    }

    /// The time now, in nanoseconds.
    pub fn now(self) -> u64 {
        match self {
            Clock::Realtime => FIXED_WALL_CLOCK_SECS * 1_000_000_000,
            Clock::Monotonic => 0,
        }
    }
}

/// `clock_res_get(id, resolution)`: 1 ns for both clocks.
pub fn clock_res_get(m: &mut Guest<'_>, id: i32, ret: u32) -> Outcome {
    Clock::from_arg(id)?;
    Ok(m.put_u64(ret, 1)?)
}

/// `clock_time_get(id, precision, time)`.
pub fn clock_time_get(m: &mut Guest<'_>, id: i32, ret: u32) -> Outcome {
    let now = Clock::from_arg(id)?.now();
    Ok(m.put_u64(ret, now)?)
}

//! Reading and writing the unit's linear memory from a host call, and how a call fails.
//!
//! As the WASI preview-1 rules say (and wasmtime-wasi does), a pointer that is out of bounds,
//! overflows, or is misaligned for the type it points to traps the unit; it is not an errno.

use std::ops::Range;

use super::abi::Errno;
use super::random::MAX_RANDOM_GET;

/// Bytes of guest memory one host call may walk or copy (iovec arrays, the buffer moved,
/// `poll_oneoff`'s subscription and event records): 128 MiB, the per-call budget
/// wasmtime-wasi 48 had. A call over it does nothing and returns `ENOMEM`, so a unit
/// cannot hold its thread in one host call, or make the host allocate, in proportion to a
/// count it chose (up to 4 GiB of memory), only to this bound.
pub const HOSTCALL_BUDGET: u64 = 128 << 20;

/// What is left of one host call's [`HOSTCALL_BUDGET`].
#[derive(Debug)]
pub struct Budget(u64);

impl Budget {
    /// A full budget, for one call.
    pub fn full() -> Self {
        Budget(HOSTCALL_BUDGET)
    }

    /// Spends `count` items of `size` bytes, or `ENOMEM` (spending nothing) if that is more
    /// than is left.
    pub fn spend(&mut self, count: u32, size: u32) -> Result<(), Errno> {
        let bytes = u64::from(count) * u64::from(size);
        if bytes > self.0 {
            return Err(Errno::Nomem);
        }
        self.0 -= bytes;
        Ok(())
    }
}

/// Why a host call trapped the unit (reported as a host error; the text goes to stderr).
#[derive(Debug, thiserror::Error)]
pub enum HostTrap {
    /// A pointer (with its length) reaches outside the unit's memory.
    #[error("pointer out of bounds: {len} bytes at {ptr:#x}")]
    OutOfBounds {
        /// The guest address.
        ptr: u32,
        /// The byte length.
        len: u64,
    },
    /// A pointer is not aligned for the type it points to.
    #[error("pointer {ptr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The guest address.
        ptr: u32,
        /// The alignment required.
        align: u32,
    },
    /// The module calls WASI but exports no memory named `memory`.
    #[error("missing required memory export")]
    NoMemory,
    /// `proc_exit` with a status WASI does not allow.
    #[error("exit with invalid exit status {0} outside of [0..126)")]
    BadExitStatus(u32),
    /// An argument its witx type rejects.
    #[error("invalid value {value} for the `{name}` argument")]
    BadArgument {
        /// The argument.
        name: &'static str,
        /// Its value.
        value: i64,
    },
    /// `random_get` asked for more than the host hands out in one call.
    #[error("random_get of {0} bytes is over the limit of {max} bytes", max = MAX_RANDOM_GET)]
    TooMuchRandom(u32),
}

/// How a host call ends when it does not succeed: an errno for the guest, or a trap.
#[derive(Debug)]
pub enum Fail {
    /// Returned to the guest.
    Errno(Errno),
    /// Ends the unit.
    Trap(wasmtime::Error),
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Fail::Errno(e)
    }
}

impl From<HostTrap> for Fail {
    fn from(t: HostTrap) -> Self {
        Fail::Trap(wasmtime::Error::new(t))
    }
}

/// What a host function body returns.
pub type Outcome<T = ()> = Result<T, Fail>;

/// The errno a finished call returns to the guest (0 on success), or its trap.
pub fn to_wasm(r: Outcome) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(0),
        Err(Fail::Errno(e)) => Ok(e as i32),
        Err(Fail::Trap(t)) => Err(t),
    }
}

/// The unit's linear memory during one host call.
pub struct Guest<'a>(pub &'a mut [u8]);

impl Guest<'_> {
    /// The byte range of `count` items of `size` bytes at `ptr`, aligned to `align`.
    fn range(&self, ptr: u32, count: u32, size: u32, align: u32) -> Result<Range<usize>, HostTrap> {
        if !ptr.is_multiple_of(align) {
            return Err(HostTrap::Misaligned { ptr, align });
        }
        let len = u64::from(count) * u64::from(size);
        let end = u64::from(ptr) + len;
        // Guest addresses are 32-bit: a region that wraps past 4 GiB overflows.
        if end > u64::from(u32::MAX) + 1 || end > self.0.len() as u64 {
            return Err(HostTrap::OutOfBounds { ptr, len });
        }
        Ok(ptr as usize..end as usize)
    }

    /// `len` bytes at `ptr`.
    pub fn bytes(&self, ptr: u32, len: u32) -> Result<&[u8], HostTrap> {
        let r = self.range(ptr, len, 1, 1)?;
        Ok(&self.0[r])
    }

    /// `len` writable bytes at `ptr`.
    pub fn bytes_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], HostTrap> {
        let r = self.range(ptr, len, 1, 1)?;
        Ok(&mut self.0[r])
    }

    /// The `size` bytes of one record at `ptr`, aligned to `align`.
    pub fn record(&self, ptr: u32, size: u32, align: u32) -> Result<&[u8], HostTrap> {
        let r = self.range(ptr, 1, size, align)?;
        Ok(&self.0[r])
    }

    /// Writes `bytes` at `ptr`, which must be aligned to `align`.
    pub fn put(&mut self, ptr: u32, bytes: &[u8], align: u32) -> Result<(), HostTrap> {
        let r = self.range(ptr, bytes.len() as u32, 1, align)?;
        self.0[r].copy_from_slice(bytes);
        Ok(())
    }

    /// Writes a `u32` at `ptr`.
    pub fn put_u32(&mut self, ptr: u32, v: u32) -> Result<(), HostTrap> {
        self.put(ptr, &v.to_le_bytes(), 4)
    }

    /// Writes a `u64` at `ptr`.
    pub fn put_u64(&mut self, ptr: u32, v: u64) -> Result<(), HostTrap> {
        self.put(ptr, &v.to_le_bytes(), 8)
    }

    /// The first non-empty buffer of the `count` iovecs (`{ buf: u32, len: u32 }`) at
    /// `iovs`, as (address, length); `(0, 0)` if all are empty. Only this one buffer is
    /// used per call, as in wasmtime-wasi: the guest's libc loops for the rest. The whole
    /// array is charged to `budget` before it is walked (`ENOMEM` if it does not fit).
    pub fn first_iovec(&self, budget: &mut Budget, iovs: u32, count: u32) -> Outcome<(u32, u32)> {
        budget.spend(count, 8)?;
        for i in 0..count {
            let at = u64::from(iovs) + u64::from(i) * 8;
            let at = u32::try_from(at)
                .map_err(|_| HostTrap::OutOfBounds { ptr: iovs, len: u64::from(count) * 8 })?;
            let iov = self.record(at, 8, 4)?;
            let (buf, len) = (le_u32(iov, 0), le_u32(iov, 4));
            if len != 0 {
                return Ok((buf, len));
            }
        }
        Ok((0, 0))
    }

    /// The UTF-8 string of `len` bytes at `ptr`: out of bounds traps, not UTF-8 is `EILSEQ`.
    pub fn str(&self, ptr: u32, len: u32) -> Outcome<&str> {
        std::str::from_utf8(self.bytes(ptr, len)?).map_err(|_| Fail::Errno(Errno::Ilseq))
    }
}

/// The little-endian `u32` at `at` in `b`.
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `at` in `b`.
pub fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

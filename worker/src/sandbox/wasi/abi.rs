//! WASI preview-1 error numbers, the bits each flags type defines, and how arguments are
//! checked against their witx types.
//!
//! As in wasmtime-wasi's generated bindings, an *argument* that its type rejects (a flags
//! value with an undefined bit, an enum tag out of range, a value too wide for the type)
//! traps the unit before the call runs; the same in a *record* the call reads from memory (a
//! `poll_oneoff` subscription) is `EINVAL`.

use super::guest::HostTrap;

/// The `errno` values this host returns (`wasi_snapshot_preview1.witx` numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Errno {
    /// Bad file descriptor: every fd but the unit's stdio, and stdio where a file is needed.
    Badf = 8,
    /// Illegal byte sequence (a path that is not UTF-8).
    Ilseq = 25,
    /// Invalid argument.
    Inval = 28,
    /// Not enough memory: a call over its per-call budget ([`super::guest::HOSTCALL_BUDGET`]).
    Nomem = 48,
    /// Not a directory (`fd_prestat_dir_name` on stdio).
    Notdir = 54,
    /// Not a socket.
    Notsock = 57,
    /// Not supported (`proc_raise`).
    Notsup = 58,
    /// Value too large (a count that does not fit 32 bits).
    Overflow = 61,
    /// Invalid seek: positioned I/O on a pipe.
    Spipe = 70,
}

/// `fdflags`: append, dsync, nonblock, rsync, sync.
pub const FDFLAGS: u32 = 0x1f;
/// `fstflags`: atim, atim_now, mtim, mtim_now.
pub const FSTFLAGS: u32 = 0xf;
/// `fstflags::atim` and `fstflags::atim_now` (both set: `EINVAL`).
pub const FST_ATIM_BOTH: u32 = 0x3;
/// `fstflags::mtim` and `fstflags::mtim_now` (both set: `EINVAL`).
pub const FST_MTIM_BOTH: u32 = 0xc;
/// `lookupflags`: symlink_follow.
pub const LOOKUPFLAGS: u32 = 0x1;
/// `oflags`: creat, directory, excl, trunc.
pub const OFLAGS: u32 = 0xf;
/// `rights`: the 30 rights preview 1 defines.
pub const RIGHTS: u64 = (1 << 30) - 1;
/// `rights::fd_read`.
pub const RIGHT_FD_READ: u64 = 1 << 1;
/// `rights::fd_write`.
pub const RIGHT_FD_WRITE: u64 = 1 << 6;
/// `riflags`: recv_peek, recv_waitall.
pub const RIFLAGS: u32 = 0x3;
/// `sdflags`: rd, wr.
pub const SDFLAGS: u32 = 0x3;
/// `subclockflags`: subscription_clock_abstime.
pub const SUBCLOCKFLAGS: u32 = 0x1;
/// `eventrwflags::fd_readwrite_hangup`.
pub const EVENT_HANGUP: u16 = 0x1;

/// The highest `advice` value (`noreuse`).
pub const MAX_ADVICE: u32 = 5;
/// The highest `whence` value (`end`).
pub const MAX_WHENCE: u32 = 2;
/// The highest `signal` value (`sys`).
pub const MAX_SIGNAL: u32 = 30;

/// An argument's integer representation in the witx (`u8`, `u16`, `u32`, `u64`).
#[derive(Debug, Clone, Copy)]
pub enum Repr {
    /// One byte.
    U8,
    /// Two bytes.
    U16,
    /// Four bytes.
    U32,
    /// Eight bytes.
    U64,
}

impl Repr {
    fn max(self) -> u64 {
        match self {
            Repr::U8 => u8::MAX.into(),
            Repr::U16 => u16::MAX.into(),
            Repr::U32 => u32::MAX.into(),
            Repr::U64 => u64::MAX,
        }
    }
}

/// The raw wasm argument as its witx representation, if it fits (the bindings convert with
/// `TryFrom`, so a negative value never does).
fn narrow(value: i64, repr: Repr) -> Option<u64> {
    u64::try_from(value).ok().filter(|v| *v <= repr.max())
}

fn bad(name: &'static str, value: i64) -> HostTrap {
    HostTrap::BadArgument { name, value }
}

/// The flags argument `name`: traps if it does not fit `repr` or sets a bit outside `defined`.
pub fn flags(name: &'static str, value: i32, repr: Repr, defined: u64) -> Result<u64, HostTrap> {
    narrow(value.into(), repr).filter(|v| v & !defined == 0).ok_or(bad(name, value.into()))
}

/// The 64-bit flags argument `name` (`rights`): traps if it sets a bit outside `defined`.
pub fn flags64(name: &'static str, value: i64, defined: u64) -> Result<u64, HostTrap> {
    narrow(value, Repr::U64).filter(|v| v & !defined == 0).ok_or(bad(name, value))
}

/// The enum argument `name`: traps if it does not fit `repr` or is above `max`.
pub fn enum_tag(name: &'static str, value: i32, repr: Repr, max: u32) -> Result<u32, HostTrap> {
    narrow(value.into(), repr)
        .filter(|v| *v <= u64::from(max))
        .map(|v| v as u32)
        .ok_or(bad(name, value.into()))
}

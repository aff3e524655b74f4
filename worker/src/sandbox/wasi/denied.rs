//! The calls a unit has no capability for: the filesystem (`path_*`) and sockets (`sock_*`).
//!
//! A unit has no preopened directory and no socket, so these fail the way wasmtime-wasi
//! fails them for such a context: flags arguments are checked first (undefined bits trap, see
//! [`super::abi`]), then the descriptor — `EBADF`, since no fd is a directory, and `ENOTSOCK`
//! for a socket call on an open stdio descriptor. A hostile unit that tries them gets a clear
//! errno back, never a hang.

use super::abi::{self, Errno, Repr};
use super::fd::{Files, check_times};
use super::guest::{Guest, Outcome};

/// `path_open`: the path is read (a bad pointer traps, non-UTF-8 is `EILSEQ`) before the
/// directory descriptor is found wanting.
#[allow(clippy::too_many_arguments)]
pub fn path_open(
    m: &mut Guest<'_>,
    dirflags: i32,
    path: u32,
    path_len: u32,
    oflags: i32,
    rights_base: i64,
    rights_inheriting: i64,
    fdflags: i32,
) -> Outcome {
    abi::flags("dirflags", dirflags, Repr::U32, abi::LOOKUPFLAGS.into())?;
    abi::flags("oflags", oflags, Repr::U16, abi::OFLAGS.into())?;
    abi::flags64("fs_rights_base", rights_base, abi::RIGHTS)?;
    abi::flags64("fs_rights_inheriting", rights_inheriting, abi::RIGHTS)?;
    abi::flags("fdflags", fdflags, Repr::U16, abi::FDFLAGS.into())?;
    m.str(path, path_len)?;
    Err(Errno::Badf.into())
}

/// A `path_*` call with lookup flags (`path_filestat_get`, `path_link`).
pub fn path_with_lookup(lookupflags: i32) -> Outcome {
    abi::flags("flags", lookupflags, Repr::U32, abi::LOOKUPFLAGS.into())?;
    Err(Errno::Badf.into())
}

/// `path_filestat_set_times`.
pub fn path_filestat_set_times(lookupflags: i32, fst_flags: i32) -> Outcome {
    abi::flags("flags", lookupflags, Repr::U32, abi::LOOKUPFLAGS.into())?;
    check_times(fst_flags)?;
    Err(Errno::Badf.into())
}

/// Every other `path_*` call: no directory to resolve it in.
pub fn path() -> Outcome {
    Err(Errno::Badf.into())
}

/// A `sock_*` call on `fd`, whose flags argument (`repr`, `defined` bits) is `flags`.
pub fn sock(f: &Files, fd: u32, flags: i32, repr: Repr, defined: u32) -> Outcome {
    abi::flags("flags", flags, repr, defined.into())?;
    match f.get(fd) {
        Some(_) => Err(Errno::Notsock.into()),
        None => Err(Errno::Badf.into()),
    }
}

//! The unit's file descriptors — only stdio — and the `fd_*` calls.
//!
//! fd 0 reads the unit's input, fd 1 writes its output (capped: going over traps, and the unit
//! ends as output too large), fd 2 its diagnostics (capped: the rest is dropped). There are no
//! other descriptors and no way to open one, so every call that needs a file or directory
//! answers `EBADF` (or `ESPIPE` for positioned I/O on stdio), as wasmtime-wasi does for a
//! context without preopens.

use bytes::{Buf, Bytes};

use super::abi::{self, Errno, Repr};
use super::guest::{Budget, Fail, Guest, Outcome};

/// What an open descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// The input (readable).
    In,
    /// The output (writable, capped; overflowing traps).
    Out,
    /// Diagnostics (writable, capped; overflowing truncates).
    Err,
}

/// Raised when stdout goes over its cap; the outcome mapping checks
/// [`OutBuf::overflowed`] rather than this error.
#[derive(Debug, thiserror::Error)]
#[error("standard output is over its cap")]
pub struct OutputOverflow;

/// A capped in-memory output stream: never more than its cap (the fields are private so
/// nothing can break that).
#[derive(Debug, Default)]
pub struct OutBuf {
    /// The bytes written (up to the cap).
    data: Vec<u8>,
    cap: usize,
    /// A write went over the cap.
    overflowed: bool,
}

impl OutBuf {
    /// An empty stream holding at most `cap` bytes.
    pub fn new(cap: u64) -> Self {
        Self {
            data: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            overflowed: false,
        }
    }

    /// Whether a write went over the cap (for stdout: the unit's output was too large; for
    /// stderr: some of it was dropped).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The bytes written.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    fn room(&self) -> usize {
        self.cap - self.data.len()
    }

    /// Appends all of `b`, or traps (and remembers it) if that would go over the cap.
    fn push_or_trap(&mut self, b: &[u8]) -> Outcome {
        if b.len() > self.room() {
            self.overflowed = true;
            return Err(Fail::Trap(wasmtime::Error::new(OutputOverflow)));
        }
        self.data.extend_from_slice(b);
        Ok(())
    }

    /// Appends what fits of `b`, remembering whether anything was dropped.
    fn push_truncating(&mut self, b: &[u8]) {
        let n = b.len().min(self.room());
        self.overflowed |= n < b.len();
        self.data.extend_from_slice(&b[..n]);
    }
}

/// The descriptor table and the stdio streams of one unit.
pub struct Files {
    /// Descriptors 0, 1 and 2 (closing or renumbering them moves these entries).
    table: [Option<Stdio>; 3],
    /// Input not read yet.
    input: Bytes,
    /// Standard output.
    pub stdout: OutBuf,
    /// Standard error.
    pub stderr: OutBuf,
}

impl Files {
    /// Stdio over `input`, with output caps.
    pub fn new(input: Bytes, max_output: u64, max_stderr: u64) -> Self {
        Self {
            table: [Some(Stdio::In), Some(Stdio::Out), Some(Stdio::Err)],
            input,
            stdout: OutBuf::new(max_output),
            stderr: OutBuf::new(max_stderr),
        }
    }

    /// What `fd` is, if it is open.
    pub fn get(&self, fd: u32) -> Option<Stdio> {
        self.table.get(fd as usize).copied().flatten()
    }

    fn open(&self, fd: u32) -> Result<Stdio, Errno> {
        self.get(fd).ok_or(Errno::Badf)
    }

    /// Input bytes not read yet.
    pub fn input_left(&self) -> usize {
        self.input.len()
    }

    /// Room left under the cap of the stream `kind` writes to (0 for the input).
    pub fn output_room(&self, kind: Stdio) -> usize {
        match kind {
            Stdio::In => 0,
            Stdio::Out => self.stdout.room(),
            Stdio::Err => self.stderr.room(),
        }
    }
}

/// `fd_read(fd, iovs, iovs_len, nread)`: stdin only; one buffer per call. The iovec array
/// and the bytes actually read count against the call's budget (not the buffer's length: a
/// large buffer for a small input is fine).
pub fn fd_read(m: &mut Guest<'_>, f: &mut Files, fd: u32, iovs: u32, n: u32, ret: u32) -> Outcome {
    let mut budget = Budget::full();
    let (buf, len) = m.first_iovec(&mut budget, iovs, n)?;
    if f.open(fd)? != Stdio::In {
        return Err(Errno::Badf.into());
    }
    let take = f.input.len().min(len as usize);
    budget.spend(take as u32, 1)?;
    m.bytes_mut(buf, take as u32)?.copy_from_slice(&f.input[..take]);
    f.input.advance(take);
    Ok(m.put_u32(ret, take as u32)?)
}

/// `fd_write(fd, iovs, iovs_len, nwritten)`: stdout and stderr; one buffer per call. The
/// iovec array and the buffer count against the call's budget.
pub fn fd_write(m: &mut Guest<'_>, f: &mut Files, fd: u32, iovs: u32, n: u32, ret: u32) -> Outcome {
    let mut budget = Budget::full();
    let (buf, len) = m.first_iovec(&mut budget, iovs, n)?;
    let kind = f.open(fd)?;
    if kind != Stdio::In {
        budget.spend(len, 1)?;
    }
    match kind {
        Stdio::In => return Err(Errno::Badf.into()),
        Stdio::Out => f.stdout.push_or_trap(m.bytes(buf, len)?)?,
        Stdio::Err => f.stderr.push_truncating(m.bytes(buf, len)?),
    }
    Ok(m.put_u32(ret, len)?)
}

/// `fd_pread`: stdin is a pipe (`ESPIPE`); nothing else reads.
pub fn fd_pread(m: &mut Guest<'_>, f: &Files, fd: u32, iovs: u32, n: u32) -> Outcome {
    m.first_iovec(&mut Budget::full(), iovs, n)?;
    match f.open(fd)? {
        Stdio::In => Err(Errno::Spipe.into()),
        _ => Err(Errno::Badf.into()),
    }
}

/// `fd_pwrite`: stdout and stderr are pipes (`ESPIPE`); nothing else writes.
pub fn fd_pwrite(m: &mut Guest<'_>, f: &Files, fd: u32, iovs: u32, n: u32) -> Outcome {
    m.first_iovec(&mut Budget::full(), iovs, n)?;
    match f.open(fd)? {
        Stdio::In => Err(Errno::Badf.into()),
        _ => Err(Errno::Spipe.into()),
    }
}

/// `fd_close(fd)`.
pub fn fd_close(f: &mut Files, fd: u32) -> Outcome {
    f.open(fd)?;
    f.table[fd as usize] = None;
    Ok(())
}

/// `fd_renumber(from, to)`: both must be open; `to` is closed and becomes `from`.
pub fn fd_renumber(f: &mut Files, from: u32, to: u32) -> Outcome {
    let kind = f.open(from)?;
    f.open(to)?;
    if from != to {
        f.table[to as usize] = Some(kind);
        f.table[from as usize] = None;
    }
    Ok(())
}

/// `fd_fdstat_get(fd, stat)`: stdio is of unknown file type (not a terminal), with the right
/// to read (stdin) or write (stdout, stderr).
pub fn fd_fdstat_get(m: &mut Guest<'_>, f: &Files, fd: u32, ret: u32) -> Outcome {
    let rights = match f.open(fd)? {
        Stdio::In => abi::RIGHT_FD_READ,
        Stdio::Out | Stdio::Err => abi::RIGHT_FD_WRITE,
    };
    // fdstat: filetype u8 @0 (0 = unknown), flags u16 @2, rights_base u64 @8,
    // rights_inheriting u64 @16.
    let mut stat = [0u8; 24];
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    stat[16..24].copy_from_slice(&rights.to_le_bytes());
    Ok(m.put(ret, &stat, 8)?)
}

/// `fd_filestat_get(fd, stat)`: all zeros for stdio (unknown file type).
pub fn fd_filestat_get(m: &mut Guest<'_>, f: &Files, fd: u32, ret: u32) -> Outcome {
    f.open(fd)?;
    Ok(m.put(ret, &[0u8; 64], 8)?)
}

/// `fd_fdstat_set_flags(fd, flags)`: only files have settable flags.
pub fn fd_fdstat_set_flags(flags: i32) -> Outcome {
    abi::flags("flags", flags, Repr::U16, abi::FDFLAGS.into())?;
    Err(Errno::Badf.into())
}

/// `fd_fdstat_set_rights(fd, base, inheriting)`: only files and directories have rights.
pub fn fd_fdstat_set_rights(base: i64, inheriting: i64) -> Outcome {
    abi::flags64("fs_rights_base", base, abi::RIGHTS)?;
    abi::flags64("fs_rights_inheriting", inheriting, abi::RIGHTS)?;
    Err(Errno::Badf.into())
}

/// `fd_filestat_set_times(fd, atim, mtim, fst_flags)`: only files have times.
pub fn fd_filestat_set_times(fst_flags: i32) -> Outcome {
    check_times(fst_flags)?;
    Err(Errno::Badf.into())
}

/// Checks an `fstflags` argument: undefined bits trap, "this time" and "now" together are
/// `EINVAL`.
pub fn check_times(fst_flags: i32) -> Outcome {
    let v = abi::flags("fst_flags", fst_flags, Repr::U16, abi::FSTFLAGS.into())? as u32;
    if v & abi::FST_ATIM_BOTH == abi::FST_ATIM_BOTH || v & abi::FST_MTIM_BOTH == abi::FST_MTIM_BOTH
    {
        return Err(Errno::Inval.into());
    }
    Ok(())
}

/// `fd_seek` and `fd_tell`: stdio cannot seek (`ESPIPE`).
pub fn fd_seek(f: &Files, fd: u32, whence: Option<i32>) -> Outcome {
    if let Some(w) = whence {
        abi::enum_tag("whence", w, Repr::U8, abi::MAX_WHENCE)?;
    }
    f.open(fd)?;
    Err(Errno::Spipe.into())
}

/// `fd_advise(fd, offset, len, advice)`: only files take advice.
pub fn fd_advise(advice: i32) -> Outcome {
    abi::enum_tag("advice", advice, Repr::U8, abi::MAX_ADVICE)?;
    Err(Errno::Badf.into())
}

/// `fd_prestat_dir_name(fd, path, len)`: there are no preopened directories.
pub fn fd_prestat_dir_name(f: &Files, fd: u32) -> Outcome {
    f.open(fd)?;
    Err(Errno::Notdir.into())
}

/// A call that needs a file or directory descriptor (`fd_sync`, `fd_readdir`,
/// `fd_prestat_get`, …): there is none, so `EBADF`.
pub fn badf() -> Outcome {
    Err(Errno::Badf.into())
}

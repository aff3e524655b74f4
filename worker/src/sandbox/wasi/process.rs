//! The process-level calls: arguments (`unit` then the unit's own), an empty environment,
//! `proc_exit`, `proc_raise` (not supported) and `sched_yield` (nothing to yield to).

use super::abi::{self, Errno, Repr};
use super::guest::{Fail, Guest, HostTrap, Outcome};

/// The program name every unit sees as `argv[0]`.
pub const PROGRAM_NAME: &str = "unit";

/// `proc_exit(status)` ends the unit with this error; the outcome mapping turns status 0 into
/// success and any other into [`ova_jobs::Outcome::Exit`].
#[derive(Debug, thiserror::Error)]
#[error("exit with status {0}")]
pub struct Exit(pub i32);

/// A unit's arguments, packed once: each is a little-endian `u32` length, then its bytes.
#[derive(Debug, Default)]
pub struct Args {
    packed: Vec<u8>,
    /// Arguments, `argv[0]` included.
    count: usize,
    /// Bytes of all arguments with their NUL terminators, `argv[0]` included.
    size: usize,
}

impl Args {
    /// `argv` = [`PROGRAM_NAME`] followed by `args`. Allocates nothing when `args` is empty.
    pub fn new(args: &[String]) -> Self {
        let mut a = Self { packed: Vec::new(), count: 0, size: 0 };
        a.push(PROGRAM_NAME);
        for s in args {
            a.push(s);
        }
        a
    }

    fn push(&mut self, s: &str) {
        self.count += 1;
        self.size += s.len() + 1;
        if self.count > 1 {
            self.packed.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.packed.extend_from_slice(s.as_bytes());
        }
    }

    fn each(&self, mut f: impl FnMut(&[u8]) -> Outcome) -> Outcome {
        f(PROGRAM_NAME.as_bytes())?;
        let mut rest = &self.packed[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let (arg, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            f(arg)?;
            rest = tail;
        }
        Ok(())
    }
}

/// `args_sizes_get(argc, argv_buf_size)`.
pub fn args_sizes_get(m: &mut Guest<'_>, a: &Args, count_ptr: u32, size_ptr: u32) -> Outcome {
    let count = u32::try_from(a.count).map_err(|_| Errno::Overflow)?;
    let size = u32::try_from(a.size).map_err(|_| Errno::Overflow)?;
    m.put_u32(count_ptr, count)?;
    Ok(m.put_u32(size_ptr, size)?)
}

/// `args_get(argv, argv_buf)`: pointers at `argv`, NUL-terminated strings at `argv_buf`.
pub fn args_get(m: &mut Guest<'_>, a: &Args, argv: u32, buf: u32) -> Outcome {
    let (mut argv, mut buf) = (argv, buf);
    let overflow = |ptr| Fail::from(HostTrap::OutOfBounds { ptr, len: 1 });
    a.each(|arg| {
        m.put_u32(argv, buf)?;
        argv = argv.checked_add(4).ok_or_else(|| overflow(argv))?;
        m.put(buf, arg, 1)?;
        let nul = buf.checked_add(arg.len() as u32).ok_or_else(|| overflow(buf))?;
        m.put(nul, &[0], 1)?;
        buf = nul.checked_add(1).ok_or_else(|| overflow(nul))?;
        Ok(())
    })
}

/// `environ_sizes_get(count, size)`: no variables.
pub fn environ_sizes_get(m: &mut Guest<'_>, count_ptr: u32, size_ptr: u32) -> Outcome {
    m.put_u32(count_ptr, 0)?;
    Ok(m.put_u32(size_ptr, 0)?)
}

/// `proc_exit(status)`: ends the unit with [`Exit`]; a status WASI does not allow (126 and
/// up) is a host error, as in wasmtime-wasi.
pub fn proc_exit(status: i32) -> wasmtime::Error {
    let s = status as u32;
    if s >= 126 {
        return wasmtime::Error::new(HostTrap::BadExitStatus(s));
    }
    wasmtime::Error::new(Exit(status))
}

/// `proc_raise(signal)`: not supported.
pub fn proc_raise(signal: i32) -> Outcome {
    abi::enum_tag("sig", signal, Repr::U8, abi::MAX_SIGNAL)?;
    Err(Errno::Notsup.into())
}

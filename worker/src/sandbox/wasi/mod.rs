//! The unit's WASI preview-1 world, served by a small host of our own.
//!
//! stdin is the unit's input, stdout and stderr are capped in-memory buffers, the arguments are
//! `unit` and then the unit's own; there are no preopened directories, no environment and no
//! sockets; clocks are fixed and randomness is a stream derived from the unit id. Identical
//! unit, identical bytes.
//!
//! # Why not wasmtime-wasi
//!
//! Work units are tiny and many, so what a unit costs before its first instruction matters
//! (issue #3, benchmark P2: ≥ 200k trivial units/s per core). On the project's 2-core machine
//! (shared and noisy), bare wasmtime instantiating and running an empty module with no WASI
//! reached ~222k units/s on one core, but with a wasmtime-wasi preview-1 context per unit
//! only ~90k/s: building a `WasiP1Ctx` (a `WasiCtxBuilder`, a `ResourceTable`, boxed pipes
//! and clocks, a seeded ChaCha generator we then replaced) and going through its p2 adapter
//! (every call resolves descriptors through the table and runs a future to completion) cost
//! more than the unit itself. A unit only ever needs stdio over memory, arguments, fixed
//! clocks and a seeded random stream, so this host serves exactly that with plain functions
//! ([`wasmtime::Linker::func_wrap`]) over a plain struct ([`UnitWasi`]); creating one per
//! unit allocates nothing unless the unit has arguments.
//!
//! Measured side by side (`benches/executor.rs` with `OVA_BENCH_ONLY=sandbox`: 64-byte echo
//! units, `Sandbox::run` in a loop on one core, least CPU time of three interleaved runs):
//! 9.9 µs per unit with wasmtime-wasi, 5.4 µs with this host; bare wasmtime without WASI
//! takes ~3.8 µs.
//!
//! Every preview-1 function is defined (with wasmtime-wasi's signatures), so a module's
//! imports resolve as before and a call that needs a capability a unit lacks gets an errno,
//! not a link error:
//!
//! - `fd`: the stdio descriptors and every `fd_*` call (`EBADF` for anything but stdio);
//! - `process`: arguments, an empty environment, `proc_exit`, `proc_raise`, `sched_yield`;
//! - `clock`: the fixed clocks; `random`: the seeded stream (the same bytes as before);
//! - `poll`: `poll_oneoff` in virtual time (never waits);
//! - `denied`: `path_*` and `sock_*` (`EBADF` / `ENOTSOCK`);
//! - `guest`: bounds- and alignment-checked access to the unit's memory (a bad pointer traps);
//! - `abi`: errno values, flag bits, and argument checks (a bad argument traps).
//!
//! Where it knowingly differs from wasmtime-wasi 48: a sleep (`poll_oneoff` on a clock)
//! returns at once instead of holding the core for real time that the unit's clocks never
//! show; `poll_oneoff` reports the bytes left to read on stdin (and hang-up at its end) and the
//! room left under the output caps instead of always 1; a zero-length read of stdin returns 0
//! instead of `EINTR`; a read's per-call budget (`guest::HOSTCALL_BUDGET`, 128 MiB) counts
//! the bytes read, not the buffer's length. So results carry [`HOST_ABI`] in their provenance.

// Private: what the rest of the crate needs is re-exported below, so the compiler sees (and
// flags) anything here that nothing uses.
mod abi;
mod clock;
mod denied;
mod fd;
mod guest;
mod poll;
mod process;
mod random;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use ova_jobs::UnitId;
use wasmtime::{Caller, Extern, Linker, Memory};

pub use clock::FIXED_WALL_CLOCK_SECS;
pub use fd::OutBuf;
pub(crate) use process::Exit;

use abi::Repr;
use fd::Files;
use guest::{Guest, HostTrap, to_wasm};
use process::Args;
use random::UnitRng;

/// The import module of WASI preview 1.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// This host's ABI version: which answers a unit gets. It is part of [`super::ENGINE_NAME`],
/// so results of hosts that answer differently are never compared. Bump the number whenever
/// any answer changes (an errno, a byte written, a budget), and pin the new answer in
/// `tests.rs`.
///
/// - 1: this host; wasmtime-wasi 48 (before it, results named only `wasmtime 48.0.8`)
///   differs from it as listed in the module docs.
pub const HOST_ABI: &str = "ova-wasi-p1 1";

/// One unit's WASI state.
pub struct UnitWasi {
    unit: UnitId,
    args: Args,
    files: Files,
    rng: Option<UnitRng>,
    /// The unit's exported `memory`, once instantiated (before that — in a start function —
    /// each call looks it up by name).
    memory: Option<Memory>,
}

impl UnitWasi {
    /// The world of `unit`: stdin is `input`, the arguments `unit` then `args`, stdout and
    /// stderr hold at most `max_output` and `max_stderr` bytes.
    pub fn new(
        unit: &UnitId,
        input: Bytes,
        args: &[String],
        max_output: u64,
        max_stderr: u64,
    ) -> Self {
        Self {
            unit: *unit,
            args: Args::new(args),
            files: Files::new(input, max_output, max_stderr),
            rng: None,
            memory: None,
        }
    }

    /// Remembers the unit's exported memory, so host calls need not look it up.
    pub fn set_memory(&mut self, memory: Option<Memory>) {
        self.memory = memory;
    }

    /// Standard output so far.
    pub fn stdout(&self) -> &OutBuf {
        &self.files.stdout
    }

    /// Standard output and standard error.
    pub fn into_output(self) -> (OutBuf, OutBuf) {
        (self.files.stdout, self.files.stderr)
    }
}

/// The unit's memory and the store's data, for one host call.
fn split<'a, T: 'static>(
    c: &'a mut Caller<'_, T>,
    get: fn(&mut T) -> &mut UnitWasi,
) -> wasmtime::Result<(&'a mut [u8], &'a mut T)> {
    let memory = match get(c.data_mut()).memory {
        Some(m) => m,
        // As in wasmtime-wasi, every call needs the export, even one that touches no memory.
        None => match c.get_export("memory") {
            Some(Extern::Memory(m)) => m,
            _ => return Err(wasmtime::Error::new(HostTrap::NoMemory)),
        },
    };
    Ok(memory.data_and_store_mut(c))
}

/// Defines host functions, each written `"name" |memory, state, args…| body;`, where `body`
/// is a `guest::Outcome` turned into the errno (or trap) the guest gets.
macro_rules! host {
    ($linker:ident, $get:ident; $(
        $name:literal |$m:pat_param, $w:pat_param $(, $a:ident: $t:ty)*| $body:expr;
    )*) => {$(
        $linker.func_wrap(
            MODULE,
            $name,
            move |mut caller: Caller<'_, T>, $($a: $t),*| -> wasmtime::Result<i32> {
                let (mem, data) = split(&mut caller, $get)?;
                let ($m, $w) = (&mut Guest(mem), $get(data));
                to_wasm($body)
            },
        )?;
    )*};
}

/// Defines every WASI preview-1 function in `linker`, over the [`UnitWasi`] that `get` finds
/// in the store's data.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut UnitWasi,
) -> wasmtime::Result<()> {
    use {clock as c, denied as d, fd as f, process as p};

    host! { linker, get;
        // Arguments, environment, clocks, random.
        "args_get" |m, w, argv: u32, buf: u32| p::args_get(m, &w.args, argv, buf);
        "args_sizes_get" |m, w, n: u32, size: u32| p::args_sizes_get(m, &w.args, n, size);
        "environ_get" |_, _, _env: u32, _buf: u32| Ok(());
        "environ_sizes_get" |m, _, n: u32, size: u32| p::environ_sizes_get(m, n, size);
        "clock_res_get" |m, _, id: i32, ret: u32| c::clock_res_get(m, id, ret);
        "clock_time_get" |m, _, id: i32, _precision: u64, ret: u32| c::clock_time_get(m, id, ret);
        "random_get" |m, w, buf: u32, len: u32| {
            random::random_get(m, &mut w.rng, &w.unit, buf, len)
        };

        // Descriptors: stdio only.
        "fd_read" |m, w, fd: u32, iovs: u32, n: u32, ret: u32| {
            f::fd_read(m, &mut w.files, fd, iovs, n, ret)
        };
        "fd_write" |m, w, fd: u32, iovs: u32, n: u32, ret: u32| {
            f::fd_write(m, &mut w.files, fd, iovs, n, ret)
        };
        "fd_pread" |m, w, fd: u32, iovs: u32, n: u32, _off: u64, _ret: u32| {
            f::fd_pread(m, &w.files, fd, iovs, n)
        };
        "fd_pwrite" |m, w, fd: u32, iovs: u32, n: u32, _off: u64, _ret: u32| {
            f::fd_pwrite(m, &w.files, fd, iovs, n)
        };
        "fd_close" |_, w, fd: u32| f::fd_close(&mut w.files, fd);
        "fd_renumber" |_, w, from: u32, to: u32| f::fd_renumber(&mut w.files, from, to);
        "fd_fdstat_get" |m, w, fd: u32, ret: u32| f::fd_fdstat_get(m, &w.files, fd, ret);
        "fd_fdstat_set_flags" |_, _, _fd: u32, flags: i32| f::fd_fdstat_set_flags(flags);
        "fd_fdstat_set_rights" |_, _, _fd: u32, base: i64, inheriting: i64| {
            f::fd_fdstat_set_rights(base, inheriting)
        };
        "fd_filestat_get" |m, w, fd: u32, ret: u32| f::fd_filestat_get(m, &w.files, fd, ret);
        "fd_filestat_set_size" |_, _, _fd: u32, _size: u64| f::badf();
        "fd_filestat_set_times" |_, _, _fd: u32, _atim: u64, _mtim: u64, fst_flags: i32| {
            f::fd_filestat_set_times(fst_flags)
        };
        "fd_seek" |_, w, fd: u32, _off: i64, whence: i32, _ret: u32| {
            f::fd_seek(&w.files, fd, Some(whence))
        };
        "fd_tell" |_, w, fd: u32, _ret: u32| f::fd_seek(&w.files, fd, None);
        "fd_advise" |_, _, _fd: u32, _off: u64, _len: u64, advice: i32| f::fd_advise(advice);
        "fd_allocate" |_, _, _fd: u32, _off: u64, _len: u64| f::badf();
        "fd_datasync" |_, _, _fd: u32| f::badf();
        "fd_sync" |_, _, _fd: u32| f::badf();
        "fd_readdir" |_, _, _fd: u32, _buf: u32, _len: u32, _cookie: u64, _ret: u32| f::badf();
        "fd_prestat_get" |_, _, _fd: u32, _ret: u32| f::badf();
        "fd_prestat_dir_name" |_, w, fd: u32, _path: u32, _len: u32| {
            f::fd_prestat_dir_name(&w.files, fd)
        };

        // The filesystem: no directory to resolve a path in.
        "path_create_directory" |_, _, _fd: u32, _path: u32, _len: u32| d::path();
        "path_filestat_get" |_, _, _fd: u32, fl: i32, _path: u32, _len: u32, _ret: u32| {
            d::path_with_lookup(fl)
        };
        "path_filestat_set_times" |_, _, _fd: u32, fl: i32, _path: u32, _len: u32,
                                   _atim: u64, _mtim: u64, fst_flags: i32| {
            d::path_filestat_set_times(fl, fst_flags)
        };
        "path_link" |_, _, _fd: u32, fl: i32, _path: u32, _len: u32,
                     _fd2: u32, _path2: u32, _len2: u32| d::path_with_lookup(fl);
        "path_open" |m, _, _fd: u32, dirflags: i32, path: u32, len: u32, oflags: i32,
                     base: i64, inheriting: i64, fdflags: i32, _ret: u32| {
            d::path_open(m, dirflags, path, len, oflags, base, inheriting, fdflags)
        };
        "path_readlink" |_, _, _fd: u32, _path: u32, _len: u32, _buf: u32, _buf_len: u32,
                         _ret: u32| d::path();
        "path_remove_directory" |_, _, _fd: u32, _path: u32, _len: u32| d::path();
        "path_rename" |_, _, _fd: u32, _path: u32, _len: u32, _fd2: u32, _path2: u32,
                       _len2: u32| d::path();
        "path_symlink" |_, _, _path: u32, _len: u32, _fd: u32, _path2: u32, _len2: u32| d::path();
        "path_unlink_file" |_, _, _fd: u32, _path: u32, _len: u32| d::path();

        // Polling, the process, sockets.
        "poll_oneoff" |m, w, subs: u32, events: u32, n: u32, ret: u32| {
            poll::poll_oneoff(m, &w.files, subs, events, n, ret)
        };
        "proc_raise" |_, _, sig: i32| p::proc_raise(sig);
        "sched_yield" |_, _| Ok(());
        "sock_accept" |_, w, fd: u32, flags: i32, _ret: u32| {
            d::sock(&w.files, fd, flags, Repr::U16, abi::FDFLAGS)
        };
        "sock_recv" |_, w, fd: u32, _data: u32, _len: u32, flags: i32, _ret: u32, _ret2: u32| {
            d::sock(&w.files, fd, flags, Repr::U16, abi::RIFLAGS)
        };
        "sock_send" |_, w, fd: u32, _data: u32, _len: u32, flags: i32, _ret: u32| {
            d::sock(&w.files, fd, flags, Repr::U16, u16::MAX.into())
        };
        "sock_shutdown" |_, w, fd: u32, how: i32| {
            d::sock(&w.files, fd, how, Repr::U8, abi::SDFLAGS)
        };
    }
    // The one function that never returns.
    linker.func_wrap(MODULE, "proc_exit", move |mut caller: Caller<'_, T>, status: i32| {
        split(&mut caller, get)?;
        Err::<(), _>(process::proc_exit(status))
    })?;
    Ok(())
}

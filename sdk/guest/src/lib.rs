//! # ova-guest — write an Ova work unit in a few lines of Rust
//!
//! A unit is a WASI preview-1 command: it reads its input on stdin, writes its result on
//! stdout, and may read its arguments. This crate wraps that so a unit is one function:
//!
//! ```no_run
//! // Raw bytes in, bytes out (the body of a unit's `main`):
//! ova_guest::run(|input: &[u8]| input.to_ascii_uppercase());
//! ```
//!
//! ```no_run
//! // Typed: postcard-encoded values in and out; the submitter decodes them with the same types.
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Range { lo: u64, hi: u64 }
//!
//! ova_guest::run_typed(|r: Range| r.hi - r.lo);
//! ```
//!
//! The same crate builds natively, so a job's types and [`encode`]/[`decode`] can be shared by
//! the submitter's code, and kernels can be tested and benchmarked natively.
//!
//! Inside Ova a unit sees: stdin = its input, args = its unit's arguments (after a program
//! name), no files, no environment, no network, a fixed clock, and random bytes that are the
//! same on every run of the same unit. Output must be deterministic: the bytes are hashed and
//! compared across peers.
//!
//! A failure ([`fail`]) writes a message to stderr and exits with a non-zero code; the unit's
//! outcome records the code.

use std::io::{Read, Write};

pub use postcard;
pub use serde;

/// Exit code used when the input cannot be decoded.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code used when the output cannot be written.
pub const EXIT_IO: i32 = 3;

/// Reads the whole of standard input.
pub fn input() -> Vec<u8> {
    let mut buf = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
        fail(EXIT_IO, &format!("cannot read stdin: {e}"));
    }
    buf
}

/// Reads standard input as UTF-8 text.
pub fn input_text() -> String {
    String::from_utf8(input()).unwrap_or_else(|_| fail(EXIT_BAD_INPUT, "input is not UTF-8"))
}

/// The unit's arguments (without the program name).
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// Writes `bytes` to standard output and flushes.
pub fn output(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        fail(EXIT_IO, &format!("cannot write stdout: {e}"));
    }
}

/// Writes `msg` to stderr and exits with `code`.
pub fn fail(code: i32, msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "{msg}");
    std::process::exit(code)
}

/// Runs a raw unit: `f` gets stdin, its return value becomes stdout.
pub fn run(f: impl FnOnce(&[u8]) -> Vec<u8>) {
    let input = input();
    output(&f(&input));
}

/// Encodes a value as the typed units of this SDK do (postcard).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding into a Vec cannot fail")
}

/// Decodes a value encoded by [`encode`] (or by a typed unit's output).
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Runs a typed unit: stdin is decoded as `I`, `f`'s result is encoded to stdout. An
/// undecodable input ends the unit with [`EXIT_BAD_INPUT`].
pub fn run_typed<I, O>(f: impl FnOnce(I) -> O)
where
    I: serde::de::DeserializeOwned,
    O: serde::Serialize,
{
    let input = input();
    let value = decode(&input)
        .unwrap_or_else(|e| fail(EXIT_BAD_INPUT, &format!("cannot decode the unit's input: {e}")));
    output(&encode(&f(value)));
}

/// Writes a typed value to stdout (for units whose input is text or args).
pub fn output_typed<O: serde::Serialize>(value: &O) {
    output(&encode(value));
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        lo: u64,
        hi: u64,
    }

    #[test]
    fn encode_decode_round_trip() {
        let r = R { lo: 1, hi: 2 };
        assert_eq!(super::decode::<R>(&super::encode(&r)).unwrap(), r);
        assert!(super::decode::<R>(&[]).is_err());
    }
}

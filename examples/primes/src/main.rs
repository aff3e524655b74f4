//! Work unit: counts the primes in a range and prints the count.
//!
//! Input (stdin, text): either `LO HI` (the range `[LO, HI)`), or `I` together with the
//! arguments `--span N` (the range `[I*N, (I+1)*N)`, handy with `[units_range]`).
fn main() {
    ova_guest::run(|input| {
        let text = std::str::from_utf8(input)
            .unwrap_or_else(|_| ova_guest::fail(ova_guest::EXIT_BAD_INPUT, "input is not text"));
        match primes::parse_unit(text, &ova_guest::args()) {
            Ok((lo, hi)) => format!("{}\n", primes::count_primes(lo, hi)).into_bytes(),
            Err(e) => ova_guest::fail(ova_guest::EXIT_BAD_INPUT, &e),
        }
    });
}

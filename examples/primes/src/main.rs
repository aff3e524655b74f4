//! Work unit: reads "LO HI" on stdin, prints the number of primes in [LO, HI).
use std::io::Read;

fn main() {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).expect("read stdin");
    let mut it = s.split_whitespace().map(|t| t.parse::<u64>().expect("LO HI as integers"));
    let (lo, hi) = (it.next().expect("LO"), it.next().expect("HI"));
    println!("{}", primes::count_primes(lo, hi));
}

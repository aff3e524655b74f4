//! Segmented prime counting: how many primes lie in `[lo, hi)`.
//!
//! Pack and run (from the repository root):
//! `scripts/build-examples.sh && ova job pack examples/primes -o primes.ova && ova run primes.ova`

/// The range a unit covers: `LO HI` on stdin, or `I` on stdin with `--span N` in the args.
pub fn parse_unit(input: &str, args: &[String]) -> Result<(u64, u64), String> {
    let nums: Vec<u64> = input
        .split_whitespace()
        .map(|t| t.parse::<u64>().map_err(|_| format!("not an integer: {t:?}")))
        .collect::<Result<_, _>>()?;
    let span = match args {
        [flag, n] if flag == "--span" => {
            Some(n.parse::<u64>().map_err(|_| format!("--span needs an integer, got {n:?}"))?)
        }
        [] => None,
        _ => return Err(format!("unexpected arguments {args:?} (expected --span N)")),
    };
    match (nums.as_slice(), span) {
        ([lo, hi], None) => Ok((*lo, *hi)),
        ([i], Some(n)) => {
            let lo = i.checked_mul(n).ok_or("range overflows u64")?;
            Ok((lo, lo.checked_add(n).ok_or("range overflows u64")?))
        }
        _ => Err("expected `LO HI`, or `I` with --span N".into()),
    }
}

/// Counts primes in `[lo, hi)` with a segmented sieve of Eratosthenes.
pub fn count_primes(lo: u64, hi: u64) -> u64 {
    if hi <= lo || hi <= 2 {
        return 0;
    }
    let lo = lo.max(2);
    let root = (hi as f64).sqrt() as u64 + 1;
    let mut small = vec![true; (root + 1) as usize];
    let mut base = Vec::new();
    for i in 2..=root {
        if small[i as usize] {
            base.push(i);
            let mut j = i * i;
            while j <= root {
                small[j as usize] = false;
                j += i;
            }
        }
    }
    const SEG: u64 = 1 << 16;
    let mut seg = vec![true; SEG as usize];
    let mut count = 0;
    let mut start = lo;
    while start < hi {
        let end = (start + SEG).min(hi);
        seg[..(end - start) as usize].fill(true);
        for &p in &base {
            if p * p >= end {
                break;
            }
            let mut m = (start.div_ceil(p) * p).max(p * p);
            while m < end {
                seg[(m - start) as usize] = false;
                m += p;
            }
        }
        count += seg[..(end - start) as usize].iter().filter(|&&b| b).count() as u64;
        start = end;
    }
    count
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_counts() {
        assert_eq!(super::count_primes(0, 100), 25);
        assert_eq!(super::count_primes(0, 1_000_000), 78_498);
        assert_eq!(super::count_primes(100, 200), 21);
        let span = vec!["--span".to_string(), "10".to_string()];
        assert_eq!(super::parse_unit("3", &span), Ok((30, 40)));
        assert_eq!(super::parse_unit("5 9", &[]), Ok((5, 9)));
        assert!(super::parse_unit("x", &[]).is_err());
    }
}

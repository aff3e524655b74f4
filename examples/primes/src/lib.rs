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
    // Marking and counting work in the segment's own index space (`usize`, bounded by the
    // segment slice's length), not in `u64` numbers: on a 32-bit target such as wasm32, a
    // `u64` difference cast to `usize` is truncated, so the compiler cannot prove the index in
    // bounds and keeps a check in the innermost loop; with the slice's length as the loop
    // bound it can drop the check on every target.
    const SEG: u64 = 1 << 16;
    let mut seg = vec![true; SEG as usize];
    let mut count = 0;
    let mut start = lo;
    while start < hi {
        let end = start.saturating_add(SEG).min(hi);
        let window = &mut seg[..(end - start) as usize];
        window.fill(true);
        for &p in &base {
            if p * p >= end {
                break;
            }
            let first = start.div_ceil(p).saturating_mul(p).max(p * p);
            if first >= end {
                continue;
            }
            // Both below the segment's length, so `i + step` cannot overflow a 32-bit `usize`.
            let (mut i, step) = ((first - start) as usize, p.min(SEG) as usize);
            while i < window.len() {
                window[i] = false;
                i += step;
            }
        }
        count += window.iter().map(|&b| u32::from(b)).sum::<u32>() as u64;
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

    #[test]
    fn ranges_across_segments_and_far_out_match_trial_division() {
        let is_prime =
            |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
        let naive = |lo: u64, hi: u64| (lo..hi).filter(|&n| is_prime(n)).count() as u64;
        // 300,000 spans several 64 Ki segments; the others start mid-segment, far out.
        assert_eq!(super::count_primes(0, 300_000), 25_997);
        for (lo, hi) in [(65_530, 65_600), (131_000, 200_000), (10_000_000_000, 10_000_000_300)] {
            assert_eq!(super::count_primes(lo, hi), naive(lo, hi), "[{lo}, {hi})");
        }
    }
}

//! Segmented prime counting: how many primes lie in `[lo, hi)`.

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

//! Seeded Monte-Carlo: each unit draws `samples` points in the unit square from a xoshiro256**
//! stream seeded by its input, and estimates π (points inside the quarter disc) and the mean
//! distance to the origin of those points (an f64 accumulation). Same seed, same bits: the
//! kernel uses only IEEE-exact operations (+, ×, √) in a fixed order, so replicas agree.
//!
//! Pack and run (from the repository root):
//! `scripts/build-examples.sh && ova job pack examples/montecarlo -o mc.ova && ova run mc.ova`

use serde::{Deserialize, Serialize};

/// A unit's output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The seed.
    pub seed: u64,
    /// Points drawn.
    pub samples: u64,
    /// Points inside the quarter disc.
    pub inside: u64,
    /// 4 · inside / samples.
    pub pi: f64,
    /// Mean distance to the origin of the points inside (→ 2/3).
    pub mean_radius: f64,
}

/// xoshiro256** seeded through splitmix64.
pub struct Rng([u64; 4]);

impl Rng {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// A uniform f64 in [0, 1).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Runs one unit's simulation.
pub fn simulate(seed: u64, samples: u64) -> Estimate {
    let mut rng = Rng::new(seed);
    let (mut inside, mut sum_r) = (0u64, 0.0f64);
    for _ in 0..samples {
        let x = rng.next_f64();
        let y = rng.next_f64();
        let r2 = x * x + y * y;
        if r2 < 1.0 {
            inside += 1;
            sum_r += r2.sqrt();
        }
    }
    Estimate {
        seed,
        samples,
        inside,
        pi: 4.0 * inside as f64 / samples.max(1) as f64,
        mean_radius: if inside == 0 { 0.0 } else { sum_r / inside as f64 },
    }
}

/// Parses a unit: the seed on stdin (text), `--samples N` in the args.
pub fn parse_unit(input: &str, args: &[String]) -> Result<(u64, u64), String> {
    let seed =
        input.trim().parse().map_err(|_| format!("seed must be an integer, got {input:?}"))?;
    let samples = match args {
        [flag, n] if flag == "--samples" => {
            n.parse().map_err(|_| format!("bad sample count {n:?}"))?
        }
        [] => 1_000_000,
        _ => return Err(format!("expected `--samples N`, got {args:?}")),
    };
    Ok((seed, samples))
}

#[cfg(test)]
mod tests {
    #[test]
    fn estimates_pi_and_is_reproducible() {
        let a = super::simulate(7, 200_000);
        assert!((a.pi - std::f64::consts::PI).abs() < 0.02, "{a:?}");
        assert!((a.mean_radius - 2.0 / 3.0).abs() < 0.01, "{a:?}");
        assert_eq!(a, super::simulate(7, 200_000));
        assert_ne!(a.inside, super::simulate(8, 200_000).inside);
    }
}

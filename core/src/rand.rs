//! Randomness is passed in: the core never draws from a global generator.
//!
//! Production drivers supply a CSPRNG: a predictable proxy port would let an attacker
//! race the data connection into the rdr-to rule. The daemon's is
//! `ftp_proxy_runtime::OsRandom` (the kernel's generator, read in buffered
//! blocks); a driver that does not link runtime-mio writes its own in a few lines
//! on the kernel's generator, as [`RandomSource`]'s example does. The simulation
//! supplies [`Pcg32`] with a seed, so a seed fixes every port the proxy ever picks.

/// A source of random 32-bit words; the proxy draws its ports through
/// [`uniform`](Self::uniform), which every source shares.
///
/// The one in production is `ftp_proxy_runtime::OsRandom`. Without runtime-mio,
/// implement [`next_u32`](Self::next_u32) on the kernel's CSPRNG: a well-kept crate
/// for OS randomness, or `/dev/urandom` read in blocks as here. Do not seed [`Pcg32`] from it instead: a PCG's output gives its
/// state away, so after a few proxy ports the next ones are known.
///
/// ```
/// use std::{fs, io::Read};
///
/// /// The kernel's CSPRNG through `/dev/urandom`, 64 words per read.
/// struct Urandom {
///     file: fs::File,
///     buf: [u8; 256],
///     left: usize,
/// }
///
/// impl Urandom {
///     fn open() -> std::io::Result<Urandom> {
///         let file = fs::File::open("/dev/urandom")?;
///         Ok(Urandom { file, buf: [0; 256], left: 0 })
///     }
/// }
///
/// impl ftp_proxy_core::RandomSource for Urandom {
///     fn next_u32(&mut self) -> u32 {
///         if self.left == 0 {
///             // No port without randomness: failing is safer than guessing.
///             self.file.read_exact(&mut self.buf).expect("/dev/urandom");
///             self.left = self.buf.len();
///         }
///         self.left -= 4;
///         let w = &self.buf[self.left..self.left + 4];
///         u32::from_ne_bytes([w[0], w[1], w[2], w[3]])
///     }
/// }
///
/// # #[cfg(unix)] {
/// let cfg = ftp_proxy_core::Config::default();
/// let proxy = ftp_proxy_core::Proxy::new(cfg, Box::new(Urandom::open().unwrap()));
/// assert!(proxy.is_ok());
/// # }
/// ```
pub trait RandomSource {
    /// The next 32 uniformly random bits.
    fn next_u32(&mut self) -> u32;

    /// A uniformly distributed value in `0..upper` (`upper > 0`), without modulo
    /// bias, like `arc4random_uniform(3)`: draws until the value falls in the
    /// largest multiple of `upper` that fits in 32 bits. Sources override it only
    /// to script exact values (tests).
    fn uniform(&mut self, upper: u32) -> u32 {
        assert!(upper > 0, "uniform(0)");
        // 2**32 % upper, computed without 64-bit arithmetic as arc4random_uniform does.
        let min = upper.wrapping_neg() % upper;
        loop {
            let r = self.next_u32();
            if r >= min {
                return r % upper;
            }
        }
    }
}

/// PCG-XSH-RR 32-bit generator (O'Neill 2014): small, fast, seedable, not
/// cryptographic. For tests and simulations only: its output reveals its state, so
/// proxy ports drawn from it can be predicted. Production drivers use a CSPRNG (see
/// [`RandomSource`]).
#[derive(Debug, Clone)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MUL: u64 = 6364136223846793005;

    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Pcg32 {
        let mut rng = Pcg32 {
            state: 0,
            inc: (seed << 1) | 1,
        };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(seed ^ 0x853c_49e6_748f_ea9b);
        rng.next_u32();
        rng
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MUL).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.uniform(den) < num
    }

    /// A value in `low..=high`.
    pub fn range(&mut self, low: u32, high: u32) -> u32 {
        low + self.uniform(high - low + 1)
    }
}

impl RandomSource for Pcg32 {
    fn next_u32(&mut self) -> u32 {
        Pcg32::next_u32(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Pcg32::new(7);
        let mut b = Pcg32::new(7);
        let mut c = Pcg32::new(8);
        let va: Vec<u32> = (0..16).map(|_| a.next_u32()).collect();
        let vb: Vec<u32> = (0..16).map(|_| b.next_u32()).collect();
        let vc: Vec<u32> = (0..16).map(|_| c.next_u32()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let mut r = Pcg32::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = r.uniform(7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn rejection_skips_biased_values() {
        // upper = 3: min = 2**32 % 3 = 1, so a draw of 0 must be rejected.
        struct Draws(Vec<u32>);
        impl RandomSource for Draws {
            fn next_u32(&mut self) -> u32 {
                self.0.pop().unwrap()
            }
        }
        assert_eq!(Draws(vec![5, 0]).uniform(3), 5 % 3);
    }
}

//! The distance kernels of the crate, chosen once per process for the CPU it runs on.
//!
//! Every distance the engine computes goes through here, so a faster kernel speeds up exact
//! search, graph construction and graph search at once. The kernels are plain loops over many
//! independent accumulators, written once and compiled several times: for AVX-512 (F + BW),
//! for AVX2 + FMA, and without extensions. On aarch64 the plain copy is already NEON (it is part
//! of the base ISA), so there is nothing to dispatch. The choice is made on first use and kept
//! in a static, so a distance costs one indirect call and no feature test.
//!
//! The f32 kernels sum in a different order than a naive loop, so results differ from it in
//! the last bits; the integer kernels are exact.

use std::sync::OnceLock;

/// Instruction set a [`Kernels`] table was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// No extension beyond the base ISA (SSE2 on x86-64, NEON on aarch64).
    Scalar,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512 F and BW (x86-64).
    Avx512,
}

impl Level {
    /// Every level, weakest first.
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512];

    /// Whether this CPU can run kernels compiled for the level.
    pub fn supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

type F32Fn = unsafe fn(&[f32], &[f32]) -> f32;
type U8Fn = unsafe fn(&[u8], &[u8]) -> u32;

/// A table of kernels compiled for one [`Level`]. Holding one is proof that the CPU supports
/// its level, which is why the methods are safe.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    level: Level,
    l2: F32Fn,
    dot: F32Fn,
    l2_u8: U8Fn,
    dot_u8: U8Fn,
}

impl Kernels {
    /// The table for `level`, or `None` where this CPU lacks it: lets tests compare every
    /// level the machine has against the scalar one.
    pub fn for_level(level: Level) -> Option<Kernels> {
        if !level.supported() {
            return None;
        }
        Some(match level {
            Level::Scalar => Kernels {
                level,
                l2: scalar::l2,
                dot: scalar::dot,
                l2_u8: scalar::l2_u8,
                dot_u8: scalar::dot_u8,
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => Kernels {
                level,
                l2: avx2::l2,
                dot: avx2::dot,
                l2_u8: avx2::l2_u8,
                dot_u8: avx2::dot_u8,
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => Kernels {
                level,
                l2: avx512::l2,
                dot: avx512::dot,
                l2_u8: avx512::l2_u8,
                dot_u8: avx512::dot_u8,
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => return None,
        })
    }

    /// The level these kernels were compiled for.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Squared Euclidean distance over the common length of `a` and `b`.
    #[inline(always)]
    pub fn l2_sq(&self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: a `Kernels` exists only for a level the CPU supports (`for_level`).
        unsafe { (self.l2)(a, b) }
    }

    /// Inner product over the common length of `a` and `b`.
    #[inline(always)]
    pub fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as in `l2_sq`.
        unsafe { (self.dot)(a, b) }
    }

    /// Squared Euclidean distance of two 8-bit code vectors, exact in integers.
    #[inline(always)]
    pub fn l2_sq_u8(&self, a: &[u8], b: &[u8]) -> u32 {
        // SAFETY: as in `l2_sq`.
        unsafe { (self.l2_u8)(a, b) }
    }

    /// Inner product of two 8-bit code vectors, exact in integers.
    #[inline(always)]
    pub fn dot_u8(&self, a: &[u8], b: &[u8]) -> u32 {
        // SAFETY: as in `l2_sq`.
        unsafe { (self.dot_u8)(a, b) }
    }
}

/// The best table this CPU supports, detected once per process.
pub fn best() -> &'static Kernels {
    static BEST: OnceLock<Kernels> = OnceLock::new();
    BEST.get_or_init(|| {
        Level::ALL
            .into_iter()
            .rev()
            .find_map(Kernels::for_level)
            .expect("the scalar level is always supported")
    })
}

/// Squared Euclidean distance over the common length of `a` and `b` (best kernel).
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    best().l2_sq(a, b)
}

/// Inner product over the common length of `a` and `b` (best kernel).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    best().dot(a, b)
}

/// Squared Euclidean distance of two code vectors over their common length (best kernel).
#[inline]
pub fn l2_sq_u8(a: &[u8], b: &[u8]) -> u32 {
    best().l2_sq_u8(a, b)
}

/// Inner product of two code vectors over their common length (best kernel).
#[inline]
pub fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    best().dot_u8(a, b)
}

/// Generic bodies, instantiated per level. `L` independent accumulators hide the latency of
/// the adds; `FMA` uses fused multiply-adds, which are only fast where the CPU has them.
mod body {
    #[inline(always)]
    fn reduce<const L: usize>(mut acc: [f32; L]) -> f32 {
        let mut w = L;
        while w > 8 {
            w /= 2;
            for i in 0..w {
                acc[i] += acc[i + w];
            }
        }
        acc[..w.min(L)].iter().sum()
    }

    #[inline(always)]
    fn step<const FMA: bool>(x: f32, y: f32, acc: f32) -> f32 {
        if FMA {
            x.mul_add(y, acc)
        } else {
            acc + x * y
        }
    }

    #[inline(always)]
    pub fn l2<const L: usize, const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; L];
        let mut ca = a.chunks_exact(L);
        let mut cb = b.chunks_exact(L);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..L {
                let d = x[i] - y[i];
                acc[i] = step::<FMA>(d, d, acc[i]);
            }
        }
        let (ra, rb) = (ca.remainder(), cb.remainder());
        let mut ca = ra.chunks_exact(8);
        let mut cb = rb.chunks_exact(8);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..8 {
                let d = x[i] - y[i];
                acc[i] = step::<FMA>(d, d, acc[i]);
            }
        }
        let mut s = 0.0;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            s += (x - y) * (x - y);
        }
        s + reduce(acc)
    }

    #[inline(always)]
    pub fn dot<const L: usize, const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; L];
        let mut ca = a.chunks_exact(L);
        let mut cb = b.chunks_exact(L);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..L {
                acc[i] = step::<FMA>(x[i], y[i], acc[i]);
            }
        }
        let (ra, rb) = (ca.remainder(), cb.remainder());
        let mut ca = ra.chunks_exact(8);
        let mut cb = rb.chunks_exact(8);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..8 {
                acc[i] = step::<FMA>(x[i], y[i], acc[i]);
            }
        }
        let mut s = 0.0;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            s += x * y;
        }
        s + reduce(acc)
    }

    // Integer sums are associative, so the compiler vectorises these plain loops by itself
    // (widening to 16 bits and multiply-adding pairs). A difference squared is at most
    // 255^2, so u32 holds the sum for any dimension below 66 000.
    #[inline(always)]
    pub fn l2_u8(a: &[u8], b: &[u8]) -> u32 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| {
                let d = x as i32 - y as i32;
                (d * d) as u32
            })
            .sum()
    }

    #[inline(always)]
    pub fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        a.iter().zip(b).map(|(&x, &y)| x as u32 * y as u32).sum()
    }
}

mod scalar {
    pub unsafe fn l2(a: &[f32], b: &[f32]) -> f32 {
        super::body::l2::<8, false>(a, b)
    }
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::body::dot::<8, false>(a, b)
    }
    pub unsafe fn l2_u8(a: &[u8], b: &[u8]) -> u32 {
        super::body::l2_u8(a, b)
    }
    pub unsafe fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        super::body::dot_u8(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2(a: &[f32], b: &[f32]) -> f32 {
        super::body::l2::<32, true>(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::body::dot::<32, true>(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2_u8(a: &[u8], b: &[u8]) -> u32 {
        super::body::l2_u8(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        super::body::dot_u8(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub unsafe fn l2(a: &[f32], b: &[f32]) -> f32 {
        super::body::l2::<64, true>(a, b)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::body::dot::<64, true>(a, b)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub unsafe fn l2_u8(a: &[u8], b: &[u8]) -> u32 {
        super::body::l2_u8(a, b)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub unsafe fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        super::body::dot_u8(a, b)
    }
}

/// Hints the CPU to start loading the cache line at `p`: the graph search calls it for the
/// vectors of the neighbours it is about to score, hiding part of the memory latency that
/// dominates HNSW search. A no-op off x86-64.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: f32) -> (Vec<f32>, Vec<f32>) {
        let a = (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
        let b = (0..n).map(|i| (i as f32 * 0.11 - seed).cos()).collect();
        (a, b)
    }

    #[test]
    fn every_supported_level_matches_the_naive_sums_on_odd_lengths() {
        let levels: Vec<Kernels> = Level::ALL
            .into_iter()
            .filter_map(Kernels::for_level)
            .collect();
        assert_eq!(levels[0].level(), Level::Scalar);
        for n in [
            0, 1, 3, 7, 8, 9, 15, 17, 31, 33, 63, 65, 100, 127, 128, 129, 300, 1031,
        ] {
            let (a, b) = data(n, n as f32);
            let l2: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) * (x - y)) as f64)
                .sum();
            let d: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
            let ca: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let cb: Vec<u8> = (0..n).map(|i| (i * 91 % 253) as u8).collect();
            let l2u: u32 = ca
                .iter()
                .zip(&cb)
                .map(|(&x, &y)| (x as i32 - y as i32).pow(2) as u32)
                .sum();
            let du: u32 = ca.iter().zip(&cb).map(|(&x, &y)| x as u32 * y as u32).sum();
            for k in &levels {
                let tol = 1e-4 * (1.0 + n as f64);
                assert!(
                    (k.l2_sq(&a, &b) as f64 - l2).abs() < tol,
                    "{:?} l2 n={n}",
                    k.level()
                );
                assert!(
                    (k.dot(&a, &b) as f64 - d).abs() < tol,
                    "{:?} dot n={n}",
                    k.level()
                );
                assert_eq!(k.l2_sq_u8(&ca, &cb), l2u, "{:?} l2_u8 n={n}", k.level());
                assert_eq!(k.dot_u8(&ca, &cb), du, "{:?} dot_u8 n={n}", k.level());
            }
        }
        // The dispatched entry points use the best level.
        let (a, b) = data(77, 0.5);
        assert_eq!(l2_sq(&a, &b), best().l2_sq(&a, &b));
        assert_eq!(
            best().level(),
            *levels
                .iter()
                .map(|k| k.level())
                .collect::<Vec<_>>()
                .last()
                .unwrap()
        );
    }

    #[test]
    fn lengths_that_differ_use_the_common_prefix() {
        assert_eq!(l2_sq(&[1.0, 2.0, 3.0], &[1.0, 2.0]), 0.0);
        assert_eq!(dot(&[1.0, 2.0], &[3.0]), 3.0);
        assert_eq!(l2_sq_u8(&[0, 255], &[255]), 65025);
        assert_eq!(dot_u8(&[2, 3], &[4]), 8);
    }
}

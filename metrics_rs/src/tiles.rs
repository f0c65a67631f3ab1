//! Blockwise squared Euclidean distances with a rigorous error bound.
//!
//! A float32 GEMM on tiles of centred rows gives an approximation `a` of the squared
//! distance `d` with `|a - d| <= margin(i, j)`, a bound that holds for any summation order
//! (Higham's gamma_D). Callers decide every comparison the bound settles and recompute the
//! rest exactly in float64 from the original rows, so results are exact while nearly all
//! of the work runs at GEMM speed. No N x M matrix is formed: each worker holds one tile.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::error::{MetricsError, Result};
use crate::progress::Progress;

/// Rows per tile side; a worker holds two (TILE x D) float32 row blocks and a TILE x TILE tile.
pub const TILE: usize = 512;
/// Unit roundoff of float32.
const U32: f64 = 1.0 / 16_777_216.0;
/// Squared centred norms above this could overflow the float32 GEMM; such data takes
/// the exact (slow) route.
pub const MAX_GEMM_SQ_NORM: f64 = 1e36;

/// A borrowed row-major (n x d) float32 matrix.
#[derive(Clone, Copy)]
pub struct Features<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub d: usize,
}

impl<'a> Features<'a> {
    /// Check shape and finiteness; `name` appears in the error messages.
    pub fn new(name: &'static str, data: &'a [f32], n: usize, d: usize) -> Result<Self> {
        if n == 0 || d == 0 {
            return Err(MetricsError::Shape(format!(
                "{name} must be a non-empty (N, D) matrix, got ({n}, {d})"
            )));
        }
        if data.len() != n * d {
            return Err(MetricsError::Shape(format!(
                "{name} has {} values, expected N*D = {n}*{d} = {}",
                data.len(),
                n * d
            )));
        }
        check_finite(name, data, d)?;
        Ok(Self { data, n, d })
    }

    #[inline]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

/// Fail on the first NaN or infinite value of an `n x d` row-major matrix.
pub fn check_finite(name: &'static str, data: &[f32], d: usize) -> Result<()> {
    if d == 0 {
        return Ok(());
    }
    let bad = data
        .par_chunks(d.max(1) * 1024)
        .enumerate()
        .filter_map(|(c, chunk)| chunk.iter().position(|v| !v.is_finite()).map(|p| c * d * 1024 + p))
        .min();
    match bad {
        Some(pos) => Err(MetricsError::NonFinite { name, row: pos / d, col: pos % d }),
        None => Ok(()),
    }
}

/// Exact squared distance in float64 (differences of float32 values are exact in float64).
#[inline]
pub fn exact_sq(a: &[f32], b: &[f32]) -> f64 {
    // lane l sums elements 8c + l; chunks_exact lets the compiler drop the bounds checks
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let diff = x[l] as f64 - y[l] as f64;
            acc[l] += diff * diff;
        }
    }
    let mut sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        let diff = *x as f64 - *y as f64;
        sum += diff * diff;
    }
    sum
}

/// The distance value `prdc` compares: scikit-learn rounds the float64 squared distance
/// to float32, clips at 0 and takes a float32 square root.
#[inline]
pub fn dist32(sq: f64) -> f32 {
    (sq.max(0.0) as f32).sqrt()
}

/// Float64 mean of the rows of all `sets`, rounded to float32: subtracting it before the
/// GEMM keeps norms (and so the error bound) at the scale of the distances.
pub fn common_centre(sets: &[Features]) -> Vec<f32> {
    let d = sets[0].d;
    let total: usize = sets.iter().map(|s| s.n).sum();
    let mut sum = vec![0.0f64; d];
    for s in sets {
        // partial sums of fixed 256-row chunks, added in chunk order: the same centre on every
        // run and thread count (the shards of a distributed run must agree on it)
        let parts: Vec<Vec<f64>> = s
            .data
            .par_chunks(d * 256)
            .map(|rows| {
                let mut acc = vec![0.0f64; d];
                for row in rows.chunks_exact(d) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v as f64;
                    }
                }
                acc
            })
            .collect();
        for part in &parts {
            sum.iter_mut().zip(part).for_each(|(x, y)| *x += y);
        }
    }
    sum.iter().map(|&v| (v / total as f64) as f32).collect()
}

/// Squared norms (float64) of the rows as the GEMM sees them (shifted by `centre` if given).
pub fn gemm_sq_norms(f: &Features, centre: Option<&[f32]>) -> Vec<f64> {
    (0..f.n).into_par_iter().map(|i| row_gemm_sq_norm(f.row(i), centre)).collect()
}

/// Squared norm (float64) of one row as the GEMM sees it (shifted by `centre` if given).
#[inline]
pub fn row_gemm_sq_norm(row: &[f32], centre: Option<&[f32]>) -> f64 {
    match centre {
        Some(c) => row
            .iter()
            .zip(c)
            .map(|(&x, &c)| {
                let v = (x - c) as f64;
                v * v
            })
            .sum(),
        None => row.iter().map(|&x| (x as f64) * (x as f64)).sum(),
    }
}

/// Squared norms (float64) of the centred rows exactly as the GEMM sees them.
pub fn centred_sq_norms(f: &Features, centre: &[f32]) -> Vec<f64> {
    gemm_sq_norms(f, Some(centre))
}

/// Error bound of `a = |x'|^2 + |y'|^2 - 2 fl(x'.y')` against the exact squared distance:
/// `margin = factor * (|x'|^2 + |y'|^2) + absolute`.
#[derive(Clone, Copy, Debug)]
pub struct Margin {
    pub factor: f64,
    pub absolute: f64,
}

/// Roundings beyond the dot product in this crate's route: the float32 centred copies
/// (<= 4.5 u); the norms and the sum are formed in float64.
pub const CRATE_EXTRA_ROUNDINGS: f64 = 4.5;
/// Roundings beyond the dot product when the norms, the sum and the subtraction are formed in
/// float32 as well (the torch and FAISS backends): 12 u.
pub const FLOAT32_EXTRA_ROUNDINGS: f64 = 12.0;

/// The one error-bound formula of every GEMM route (this crate, the torch and FAISS
/// backends): `|a - d| <= factor * (|x|^2 + |y|^2)` with
/// `factor = 1.01 * (gamma_D + extra * u)`, `gamma_D = D u / (1 - D u)` (Higham, for the dot
/// product; |x.y| <= (|x|^2+|y|^2)/2, times 2 in `a`), `extra` the further float32 roundings of
/// the route (in units of u = 2^-24) and 1% slack for the float64 arithmetic. `None` when
/// D u >= 1/4, where the bound is useless.
pub fn margin_factor(d: usize, extra_roundings: f64) -> Option<f64> {
    let du = d as f64 * U32;
    if du >= 0.25 || extra_roundings.is_nan() || extra_roundings < 0.0 {
        return None;
    }
    Some(1.01 * (du / (1.0 - du) + extra_roundings * U32))
}

impl Margin {
    /// `None` when D is so large that the float32 bound is useless (D * u >= 1/4).
    pub fn for_dim(d: usize) -> Option<Self> {
        // the absolute term covers gradual underflow of tiny products
        let factor = margin_factor(d, CRATE_EXTRA_ROUNDINGS)?;
        let absolute = d as f64 * 2f64.powi(-140);
        Some(Self { factor, absolute })
    }

    #[inline]
    pub fn of(&self, norm_sum: f64) -> f64 {
        self.factor * norm_sum + self.absolute
    }
}

/// Thresholds in squared-distance space that settle `dist32(d) < r` (or `<=`) without
/// rounding doubts: `d < lo` means the float32 distance is below `r`, `d > hi` above it.
#[inline]
pub fn settle_thresholds(r: f32) -> (f64, f64) {
    let rr = (r as f64) * (r as f64);
    if rr < 1e-30 {
        // float32 subnormals lie below: only exact recomputation decides here
        (-1.0, 1e-30)
    } else {
        (rr * (1.0 - 1e-6), rr * (1.0 + 1e-6))
    }
}

/// Per-worker scratch: two centred row blocks and one tile of dot products.
#[derive(Default)]
pub struct Scratch {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub g: Vec<f32>,
    /// (data pointer, first row) of the block held in `a`, to skip refilling it
    a_holds: Option<(usize, usize)>,
}

/// The GEMM's view of the rows: as given, or shifted by a centre.
///
/// Centring costs a copy of each block; it is only worth it when the rows share a large
/// offset (then the error bound, proportional to the norms, would otherwise be loose).
pub fn choose_centre(sets: &[Features]) -> Option<Vec<f32>> {
    let centre = common_centre(sets);
    let raw = vec![0.0f32; sets[0].d];
    let max_norm = |c: &[f32]| {
        sets.iter()
            .map(|f| centred_sq_norms(f, c).into_iter().fold(0.0f64, f64::max))
            .fold(0.0f64, f64::max)
    };
    if max_norm(&raw) <= 2.0 * max_norm(&centre) {
        None
    } else {
        Some(centre)
    }
}

/// Fill `s.g` with the dot products of rows `i0..i1` of `x` and `j0..j1` of `y`, both
/// shifted by `centre` if given. `same` says the two blocks are the same rows.
#[allow(clippy::too_many_arguments)]
pub fn tile_gram(
    s: &mut Scratch,
    x: &Features,
    (i0, i1): (usize, usize),
    y: &Features,
    (j0, j1): (usize, usize),
    centre: Option<&[f32]>,
    same: bool,
) {
    let d = x.d;
    let (na, nb) = (i1 - i0, j1 - j0);
    match centre {
        None => {
            let a = &x.data[i0 * d..i1 * d];
            let b = &y.data[j0 * d..j1 * d];
            gram(a, na, b, nb, d, &mut s.g);
        }
        Some(c) => {
            let key = (x.data.as_ptr() as usize, i0);
            if s.a_holds != Some(key) {
                fill_centred(&mut s.a, x, i0, i1, c);
                s.a_holds = Some(key);
            }
            if same {
                gram(&s.a, na, &s.a, na, d, &mut s.g);
            } else {
                fill_centred(&mut s.b, y, j0, j1, c);
                gram(&s.a, na, &s.b, nb, d, &mut s.g);
            }
        }
    }
}

/// Copy rows `start..end` of `f`, centred, into `dst`.
pub fn fill_centred(dst: &mut Vec<f32>, f: &Features, start: usize, end: usize, centre: &[f32]) {
    let d = f.d;
    dst.resize((end - start) * d, 0.0);
    for (r, out) in dst.chunks_exact_mut(d).enumerate() {
        for ((o, &x), &c) in out.iter_mut().zip(f.row(start + r)).zip(centre) {
            *o = x - c;
        }
    }
}

/// `g[r * nb + s] = a_r . b_s` for row-major `a` (na x d) and `b` (nb x d), single-threaded
/// (the callers parallelise over tiles).
pub fn gram(a: &[f32], na: usize, b: &[f32], nb: usize, d: usize, g: &mut Vec<f32>) {
    g.resize(na * nb, 0.0);
    // SAFETY: the slices hold na*d, nb*d and na*nb values and the strides below stay inside.
    unsafe {
        matrixmultiply::sgemm(
            na,
            d,
            nb,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            b.as_ptr(),
            1,
            d as isize,
            0.0,
            g.as_mut_ptr(),
            nb as isize,
            1,
        );
    }
}

/// One process's part of a tile sweep split over `world` processes: tile t of the sweep is
/// this process's when `t % world == rank` (round robin, so every part is about as large).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole sweep in one process.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    pub fn new(rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(MetricsError::InvalidArgument(format!(
                "shard rank {rank} of world size {world}: need 0 <= rank < world"
            )));
        }
        Ok(Self { rank, world })
    }

    /// This shard's tiles of `tiles`.
    pub fn select(&self, tiles: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
        if self.world == 1 {
            return tiles;
        }
        tiles.into_iter().enumerate().filter(|(t, _)| t % self.world == self.rank).map(|(_, tile)| tile).collect()
    }
}

/// Tiles of the upper triangle (bi <= bj) of an n x n block grid.
pub fn triangle_tiles(n: usize) -> Vec<(usize, usize)> {
    let nb = n.div_ceil(TILE);
    (0..nb).flat_map(|bi| (bi..nb).map(move |bj| (bi, bj))).collect()
}

/// Every tile of an n x m block grid.
pub fn rectangle_tiles(n: usize, m: usize) -> Vec<(usize, usize)> {
    let (nb, mb) = (n.div_ceil(TILE), m.div_ceil(TILE));
    (0..nb).flat_map(|bi| (0..mb).map(move |bj| (bi, bj))).collect()
}

/// Row range of block `b` for `n` rows.
#[inline]
pub fn block_rows(b: usize, n: usize) -> (usize, usize) {
    (b * TILE, ((b + 1) * TILE).min(n))
}

/// Run `work` over all tiles on one worker per rayon thread, each with its own state
/// (made by `init`), pulling tiles from a shared counter; returns the workers' states.
pub fn run_tiles<S, I, F>(
    tiles: &[(usize, usize)],
    progress: Option<&Progress>,
    init: I,
    work: F,
) -> Result<Vec<S>>
where
    S: Send,
    I: Fn() -> S + Sync,
    F: Fn(&mut S, &mut Scratch, usize, usize) + Sync,
{
    let workers = rayon::current_num_threads().clamp(1, tiles.len().max(1));
    let next = AtomicUsize::new(0);
    let cancelled = AtomicBool::new(false);
    let states: Vec<S> = (0..workers)
        .into_par_iter()
        .map(|_| {
            let mut state = init();
            let mut scratch = Scratch::default();
            loop {
                if let Some(p) = progress {
                    if p.check().is_err() {
                        cancelled.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                let t = next.fetch_add(1, Ordering::Relaxed);
                if t >= tiles.len() {
                    break;
                }
                work(&mut state, &mut scratch, tiles[t].0, tiles[t].1);
                if let Some(p) = progress {
                    p.tick();
                }
            }
            state
        })
        .collect();
    if cancelled.load(Ordering::Relaxed) {
        return Err(MetricsError::Cancelled);
    }
    Ok(states)
}

/// `dist32` of the pairs (x[rows[t]], y[cols[t]]), exactly; indices must be in range.
pub fn pair_distances(x: &[f32], y: &[f32], d: usize, rows: &[i64], cols: &[i64]) -> Vec<f32> {
    rows.par_iter()
        .zip(cols.par_iter())
        .map(|(&i, &j)| {
            let (i, j) = (i as usize, j as usize);
            dist32(exact_sq(&x[i * d..(i + 1) * d], &y[j * d..(j + 1) * d]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_formula_for_every_route() {
        let u = U32;
        let f = margin_factor(2048, CRATE_EXTRA_ROUNDINGS).unwrap();
        let du = 2048.0 * u;
        assert!((f - 1.01 * (du / (1.0 - du) + 4.5 * u)).abs() <= 1e-18);
        assert_eq!(Margin::for_dim(2048).unwrap().factor, f);
        let g = margin_factor(2048, FLOAT32_EXTRA_ROUNDINGS).unwrap();
        assert!(g > f);
        assert!(margin_factor(1 << 22, 0.0).is_none()); // D u = 1/4
        assert!(margin_factor(16, -1.0).is_none());
    }

    #[test]
    fn the_bound_holds_for_a_float32_dot_product() {
        // an f32 dot product summed in order, against the f64 one: within gamma_D (|x|^2+|y|^2)/2
        let d = 4096;
        let x: Vec<f32> = (0..d).map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.3).collect();
        let y: Vec<f32> = (0..d).map(|i| ((i * 104729 % 997) as f32 / 997.0) - 0.6).collect();
        let approx: f32 = x.iter().zip(&y).fold(0.0f32, |acc, (a, b)| acc + a * b);
        let exact: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        let norms: f64 = x.iter().chain(&y).map(|&v| (v as f64) * (v as f64)).sum();
        let bound = margin_factor(d, 0.0).unwrap() * norms / 2.0;
        assert!((approx as f64 - exact).abs() <= bound, "{} > {}", (approx as f64 - exact).abs(), bound);
    }
}

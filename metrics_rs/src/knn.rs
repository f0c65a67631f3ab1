//! Exact k-th-nearest-neighbour distances (radii), computed blockwise.
//!
//! Each worker streams tiles of the upper triangle of the distance matrix through a
//! float32 GEMM and keeps, per row, a short sorted list of the smallest approximate
//! distances (a streaming top-k). The error bound of `tiles` says which candidates could
//! still be the k-th; those are recomputed exactly in float64. A row whose candidate list
//! overflowed (many near-ties) is recomputed exactly against all rows. No N x N matrix is
//! ever formed.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{MetricsError, Result};
use crate::progress::Progress;
use crate::tiles::{
    block_rows, choose_centre, dist32, exact_sq, gemm_sq_norms, run_tiles, tile_gram, triangle_tiles,
    row_gemm_sq_norm, Features, Margin, Shard, MAX_GEMM_SQ_NORM,
};

pub use crate::tiles::check_finite;

/// Radii plus how much exact recomputation the error bound asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Radii {
    /// float32 distance (prdc's convention, see `tiles::dist32`) to the k-th nearest other row.
    pub radii: Vec<f32>,
    /// candidate pairs recomputed exactly in float64
    pub exact_pairs: u64,
    /// rows recomputed exactly against every other row
    pub exact_rows: u64,
}

/// The `cap` smallest approximate distances seen per row, sorted ascending, with indices.
struct Candidates {
    cap: usize,
    len: Vec<u32>,
    vals: Vec<f64>,
    idx: Vec<u32>,
}

impl Candidates {
    fn new(n: usize, cap: usize) -> Self {
        Self { cap, len: vec![0; n], vals: vec![f64::INFINITY; n * cap], idx: vec![0; n * cap] }
    }

    #[inline]
    fn push(&mut self, row: usize, v: f64, j: u32) {
        let cap = self.cap;
        let base = row * cap;
        let len = self.len[row] as usize;
        if len == cap && v.partial_cmp(&self.vals[base + cap - 1]) != Some(std::cmp::Ordering::Less) {
            return;
        }
        let vals = &mut self.vals[base..base + cap];
        let idx = &mut self.idx[base..base + cap];
        let mut at = len.min(cap - 1);
        while at > 0 && vals[at - 1] > v {
            vals[at] = vals[at - 1];
            idx[at] = idx[at - 1];
            at -= 1;
        }
        vals[at] = v;
        idx[at] = j;
        if len < cap {
            self.len[row] += 1;
        }
    }

    #[inline]
    fn row(&self, row: usize) -> (&[f64], &[u32]) {
        let base = row * self.cap;
        let len = self.len[row] as usize;
        (&self.vals[base..base + len], &self.idx[base..base + len])
    }
}

/// Exact k-th smallest squared distance from row `i` to every other row (the slow route).
fn brute_force_row(f: &Features, i: usize, k: usize) -> f64 {
    let x = f.row(i);
    let mut ds: Vec<f64> = (0..f.n).filter(|&j| j != i).map(|j| exact_sq(x, f.row(j))).collect();
    let (_, kth, _) = ds.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
    *kth
}

/// Distance from every row of `data` (`n x d`, row-major) to its `k`-th nearest other row.
///
/// The row itself is not counted, but duplicates of it are (at distance 0), which is what
/// `prdc`'s `(k+1)`-th smallest entry of the distance matrix (diagonal zero) gives. Distances
/// are computed exactly and reported as `prdc` rounds them (`tiles::dist32`). Requires `1 <= k < n`.
pub fn kth_neighbour_distances(data: &[f32], n: usize, d: usize, k: usize) -> Result<Vec<f32>> {
    kth_neighbour_distances_with(data, n, d, k, None)
}

/// `kth_neighbour_distances` reporting tiles to (and stopping on cancel from) `progress`.
pub fn kth_neighbour_distances_with(
    data: &[f32],
    n: usize,
    d: usize,
    k: usize,
    progress: Option<&Progress>,
) -> Result<Vec<f32>> {
    if n > 0 && d > 0 && data.len() == n * d && (k == 0 || k >= n) {
        return Err(MetricsError::InvalidK { k, n });
    }
    let f = Features::new("features", data, n, d)?;
    let centre = choose_centre(&[f]);
    Ok(radii(&f, k, centre.as_deref(), progress)?.radii)
}

/// Radii of `f` with the GEMM run on rows shifted by `centre` (see `tiles::choose_centre`).
pub fn radii(f: &Features, k: usize, centre: Option<&[f32]>, progress: Option<&Progress>) -> Result<Radii> {
    let lists = candidate_lists(f, k, centre, Shard::WHOLE, progress)?;
    finish_radii(f, k, centre, &[lists], 0, f.n)
}

/// Per row of a block of rows: the `cap` smallest approximate squared distances seen (sorted
/// ascending) with their row indices, and `floor`, a value at or below every approximate
/// distance that was seen but not kept (infinity when none was dropped; minus infinity when
/// the rows have no usable float32 bound and must be computed exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateLists {
    pub cap: usize,
    pub len: Vec<u32>,
    pub vals: Vec<f64>,
    pub idx: Vec<u32>,
    pub floor: Vec<f64>,
    /// the largest squared GEMM norm over all rows (the bound's scale)
    pub max_norm: f64,
}

impl CandidateLists {
    /// Empty lists of `n` rows, each with the given `floor`.
    fn empty(n: usize, cap: usize, floor: f64, max_norm: f64) -> Self {
        Self { cap, len: vec![0; n], vals: vec![f64::INFINITY; n * cap], idx: vec![0; n * cap], floor: vec![floor; n], max_norm }
    }

    /// The rows `r0..r1` of these lists.
    pub fn rows(&self, r0: usize, r1: usize) -> CandidateLists {
        let c = self.cap;
        CandidateLists {
            cap: c,
            len: self.len[r0..r1].to_vec(),
            vals: self.vals[r0 * c..r1 * c].to_vec(),
            idx: self.idx[r0 * c..r1 * c].to_vec(),
            floor: self.floor[r0..r1].to_vec(),
            max_norm: self.max_norm,
        }
    }
}

/// Length of the candidate lists for `k` neighbours among `n` rows.
pub fn candidate_cap(n: usize, k: usize) -> usize {
    (2 * k + 16).min(n - 1).max(k)
}

/// The first phase of `radii`, over this `shard`'s tiles of the upper triangle: per row the
/// closest candidates by the float32 GEMM. Lists of several shards are merged by `finish_radii`.
pub fn candidate_lists(
    f: &Features,
    k: usize,
    centre: Option<&[f32]>,
    shard: Shard,
    progress: Option<&Progress>,
) -> Result<CandidateLists> {
    let n = f.n;
    if k == 0 || k >= n {
        return Err(MetricsError::InvalidK { k, n });
    }
    let norms = gemm_sq_norms(f, centre);
    let max_norm = norms.iter().cloned().fold(0.0f64, f64::max);
    let cap = candidate_cap(n, k);
    if Margin::for_dim(f.d).filter(|_| max_norm <= MAX_GEMM_SQ_NORM).is_none() {
        // no useful float32 bound: every row exactly (slow, but correct)
        return Ok(CandidateLists::empty(n, cap, f64::NEG_INFINITY, max_norm));
    }
    let tiles = shard.select(triangle_tiles(n));
    if let Some(p) = progress {
        p.ensure_total(tiles.len() as u64);
    }
    let states = run_tiles(
        &tiles,
        progress,
        || Candidates::new(n, cap),
        |cand, s, bi, bj| {
            let (i0, i1) = block_rows(bi, n);
            let (j0, j1) = block_rows(bj, n);
            let (na, nb) = (i1 - i0, j1 - j0);
            tile_gram(s, f, (i0, i1), f, (j0, j1), centre, bi == bj);
            for r in 0..na {
                let i = i0 + r;
                let ni = norms[i];
                let first = if bi == bj { r + 1 } else { 0 };
                let grow = &s.g[r * nb..(r + 1) * nb];
                for (c, &g) in grow.iter().enumerate().skip(first) {
                    let j = j0 + c;
                    let a = ni + norms[j] - 2.0 * g as f64;
                    cand.push(i, a, j as u32);
                    cand.push(j, a, i as u32);
                }
            }
        },
    )?;
    // merge the workers' lists in place: keep the `cap` smallest; what a full list or the merge
    // drops lies at or above the floor
    let mut out = CandidateLists::empty(n, cap, f64::INFINITY, max_norm);
    out.vals
        .par_chunks_mut(cap)
        .zip(out.idx.par_chunks_mut(cap))
        .zip(out.len.par_iter_mut())
        .zip(out.floor.par_iter_mut())
        .enumerate()
        .for_each(|(i, (((vals, idx), len), floor))| {
            let mut all: Vec<(f64, u32)> = Vec::with_capacity(states.len() * cap);
            for st in &states {
                let (v, ix) = st.row(i);
                if v.len() == cap {
                    *floor = floor.min(v[cap - 1]);
                }
                all.extend(v.iter().cloned().zip(ix.iter().cloned()));
            }
            all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            if all.len() > cap {
                *floor = floor.min(all[cap].0);
                all.truncate(cap);
            }
            *len = all.len() as u32;
            for (c, (v, j)) in all.into_iter().enumerate() {
                vals[c] = v;
                idx[c] = j;
            }
        });
    Ok(out)
}

/// The second phase of `radii`: exact radii of rows `r0..r1` of `f` from the candidate lists
/// of those rows made by every shard (`lists`, one per shard, each of `r1 - r0` rows). A
/// candidate that could be among the k nearest is recomputed exactly; a row whose lists may
/// have dropped one (its floor is within the bound) is recomputed against every row.
pub fn finish_radii(
    f: &Features,
    k: usize,
    centre: Option<&[f32]>,
    lists: &[CandidateLists],
    r0: usize,
    r1: usize,
) -> Result<Radii> {
    let n = f.n;
    if k == 0 || k >= n {
        return Err(MetricsError::InvalidK { k, n });
    }
    if r0 > r1 || r1 > n || lists.is_empty() {
        return Err(MetricsError::Shape(format!("rows {r0}..{r1} of {n} with {} candidate lists", lists.len())));
    }
    let rows = r1 - r0;
    for l in lists {
        if l.len.len() != rows || l.floor.len() != rows || l.vals.len() != rows * l.cap || l.idx.len() != rows * l.cap {
            return Err(MetricsError::Shape(format!("candidate lists must cover the {rows} rows {r0}..{r1}")));
        }
    }
    let max_norm = lists.iter().map(|l| l.max_norm).fold(0.0f64, f64::max);
    let margin = Margin::for_dim(f.d).filter(|_| max_norm <= MAX_GEMM_SQ_NORM);
    let exact_pairs = AtomicU64::new(0);
    let exact_rows = AtomicU64::new(0);
    let radii = (r0..r1)
        .into_par_iter()
        .map(|i| {
            let r = i - r0;
            let mut all: Vec<(f64, u32)> = Vec::new();
            let mut floor = f64::INFINITY;
            for l in lists {
                let len = l.len[r] as usize;
                let base = r * l.cap;
                all.extend(l.vals[base..base + len].iter().cloned().zip(l.idx[base..base + len].iter().cloned()));
                floor = floor.min(l.floor[r]);
            }
            all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            let x = f.row(i);
            let kth = match margin {
                Some(mg) if all.len() >= k => {
                    // all k nearest (exact) have approx <= a_k + 2 * max margin of this row
                    let bound = all[k - 1].0 + 2.0 * mg.of(row_gemm_sq_norm(x, centre) + max_norm);
                    if floor <= bound {
                        None
                    } else {
                        let mut exact: Vec<f64> = all
                            .iter()
                            .take_while(|(v, _)| *v <= bound)
                            .map(|&(_, j)| exact_sq(x, f.row(j as usize)))
                            .collect();
                        exact_pairs.fetch_add(exact.len() as u64, Ordering::Relaxed);
                        let (_, kth, _) = exact.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
                        Some(*kth)
                    }
                }
                _ => None,
            };
            let kth = kth.unwrap_or_else(|| {
                exact_rows.fetch_add(1, Ordering::Relaxed);
                brute_force_row(f, i, k)
            });
            dist32(kth)
        })
        .collect();
    Ok(Radii {
        radii,
        exact_pairs: exact_pairs.into_inner(),
        exact_rows: exact_rows.into_inner(),
    })
}

/// Exact radii from candidate lists (e.g. an approximate search's neighbours).
///
/// `candidates` is row-major (n x c) with row indices of `data` (-1 = none; the row itself
/// and repeats are skipped). The k-th smallest exact distance among the candidates is
/// returned; it is the true radius whenever the true k nearest are among them.
pub fn radii_from_candidates(
    data: &[f32],
    n: usize,
    d: usize,
    candidates: &[i64],
    c: usize,
    k: usize,
) -> Result<Vec<f32>> {
    let f = Features::new("features", data, n, d)?;
    if k == 0 || k >= n {
        return Err(MetricsError::InvalidK { k, n });
    }
    if candidates.len() != n * c {
        return Err(MetricsError::Shape(format!("candidates must be ({n}, C), got {} values", candidates.len())));
    }
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut ids: Vec<usize> = candidates[i * c..(i + 1) * c]
                .iter()
                .filter(|&&j| j >= 0 && (j as usize) < n && j as usize != i)
                .map(|&j| j as usize)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() < k {
                return Err(MetricsError::InvalidArgument(format!(
                    "row {i} has {} candidate neighbours, fewer than k={k}",
                    ids.len()
                )));
            }
            let x = f.row(i);
            let mut ds: Vec<f64> = ids.iter().map(|&j| exact_sq(x, f.row(j))).collect();
            let (_, kth, _) = ds.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
            Ok(dist32(*kth))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ndarray::Array2;

    /// Reference: all pairwise distances exactly, sort, take the k-th other row.
    pub fn brute_force(x: &Array2<f32>, k: usize) -> Vec<f32> {
        let n = x.nrows();
        (0..n)
            .map(|i| {
                let mut ds: Vec<f64> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| exact_sq(x.row(i).as_slice().unwrap(), x.row(j).as_slice().unwrap()))
                    .collect();
                ds.sort_by(|a, b| a.partial_cmp(b).unwrap());
                dist32(ds[k - 1])
            })
            .collect()
    }

    /// Small deterministic generator so the crate needs no rand dependency.
    pub fn lcg_matrix(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Array2::from_shape_fn((n, d), |_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
    }

    #[test]
    fn matches_brute_force_across_sizes() {
        // 1100 rows span three tiles, so off-diagonal and ragged tiles are exercised
        for &(n, d, k) in &[(5, 1, 1), (17, 3, 4), (300, 8, 5), (700, 33, 10), (1100, 20, 3)] {
            let x = lcg_matrix(n, d, (n * d + k) as u64);
            let got = kth_neighbour_distances(x.as_slice().unwrap(), n, d, k).unwrap();
            assert_eq!(got, brute_force(&x, k), "n={n} d={d} k={k}");
        }
    }

    #[test]
    fn offset_data_is_still_exact() {
        // a large common offset: centring keeps the error bound tight
        let mut x = lcg_matrix(600, 16, 9);
        x.mapv_inplace(|v| v + 1000.0);
        let got = kth_neighbour_distances(x.as_slice().unwrap(), 600, 16, 5).unwrap();
        assert_eq!(got, brute_force(&x, 5));
    }

    #[test]
    fn many_ties_overflow_to_the_exact_route() {
        // 40 copies of each of 20 points: candidate lists overflow with equal distances
        let base = lcg_matrix(20, 4, 3);
        let x = Array2::from_shape_fn((800, 4), |(i, c)| base[[i % 20, c]]);
        for k in [1, 39, 40, 41] {
            let got = kth_neighbour_distances(x.as_slice().unwrap(), 800, 4, k).unwrap();
            assert_eq!(got, brute_force(&x, k), "k={k}");
        }
        let got = kth_neighbour_distances(x.as_slice().unwrap(), 800, 4, 39).unwrap();
        assert!(got.iter().all(|&r| r == 0.0));
    }

    #[test]
    fn sharded_candidate_lists_with_many_ties_still_give_exact_radii() {
        let base = lcg_matrix(20, 4, 3);
        let x = Array2::from_shape_fn((1200, 4), |(i, c)| base[[i % 20, c]]);
        let f = Features::new("x", x.as_slice().unwrap(), 1200, 4).unwrap();
        for k in [1, 59, 60, 61] {
            let lists: Vec<_> = (0..3).map(|r| candidate_lists(&f, k, None, Shard::new(r, 3).unwrap(), None).unwrap()).collect();
            let got = finish_radii(&f, k, None, &lists, 0, 1200).unwrap();
            assert_eq!(got.radii, brute_force(&x, k), "k={k}");
        }
    }

    #[test]
    fn radii_from_full_candidate_lists_equal_the_kernel() {
        let x = lcg_matrix(50, 6, 5);
        let cand: Vec<i64> = (0..50).flat_map(|_| (0..50).map(|j| j as i64)).collect();
        let got = radii_from_candidates(x.as_slice().unwrap(), 50, 6, &cand, 50, 4).unwrap();
        assert_eq!(got, brute_force(&x, 4));
        let few: Vec<i64> = (0..50).flat_map(|i| [i as i64, -1]).collect();
        assert!(radii_from_candidates(x.as_slice().unwrap(), 50, 6, &few, 2, 1).is_err());
    }

    #[test]
    fn duplicate_rows_count_as_neighbours_at_zero() {
        let x = Array2::from_shape_vec((4, 2), vec![0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 6.0, 8.0]).unwrap();
        let got = kth_neighbour_distances(x.as_slice().unwrap(), 4, 2, 1).unwrap();
        assert_eq!(got, vec![0.0, 0.0, 5.0, 5.0]);
        let got2 = kth_neighbour_distances(x.as_slice().unwrap(), 4, 2, 2).unwrap();
        assert_eq!(got2, vec![5.0, 5.0, 5.0, 10.0]);
    }

    #[test]
    fn rejects_bad_k_shape_and_nan() {
        let x = vec![0.0f32; 6];
        assert_eq!(kth_neighbour_distances(&x, 3, 2, 3), Err(MetricsError::InvalidK { k: 3, n: 3 }));
        assert_eq!(kth_neighbour_distances(&x, 3, 2, 0), Err(MetricsError::InvalidK { k: 0, n: 3 }));
        assert!(matches!(kth_neighbour_distances(&x, 4, 2, 1), Err(MetricsError::Shape(_))));
        assert!(matches!(kth_neighbour_distances(&[], 0, 2, 1), Err(MetricsError::Shape(_))));
        let mut y = vec![1.0f32; 6];
        y[3] = f32::NAN;
        assert_eq!(
            kth_neighbour_distances(&y, 3, 2, 1),
            Err(MetricsError::NonFinite { name: "features", row: 1, col: 1 })
        );
    }
}

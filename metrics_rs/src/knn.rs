//! Exact k-th-nearest-neighbour distances, computed blockwise.
//!
//! Memory stays bounded by the input plus one block of distances per worker: no N x N
//! matrix is ever formed. Row blocks are processed in parallel with rayon.

use rayon::prelude::*;

use crate::error::{MetricsError, Result};

/// Rows per block; a block of squared distances is `ROW_BLOCK * COL_BLOCK` f64 values.
const ROW_BLOCK: usize = 64;
const COL_BLOCK: usize = 256;

/// Fail on the first NaN or infinite value of an `n x d` row-major matrix.
pub fn check_finite(name: &'static str, data: &[f32], d: usize) -> Result<()> {
    if d == 0 {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        Some(pos) => Err(MetricsError::NonFinite { name, row: pos / d, col: pos % d }),
        None => Ok(()),
    }
}

fn check_shape(name: &str, data: &[f32], n: usize, d: usize) -> Result<()> {
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
    Ok(())
}

/// Keeps the `k` smallest values seen, sorted ascending.
struct SmallestK {
    values: Vec<f64>,
    k: usize,
}

impl SmallestK {
    fn new(k: usize) -> Self {
        Self { values: Vec::with_capacity(k + 1), k }
    }

    #[inline]
    fn push(&mut self, v: f64) {
        if self.values.len() == self.k {
            if v >= self.values[self.k - 1] {
                return;
            }
            self.values.pop();
        }
        let at = self.values.partition_point(|&x| x <= v);
        self.values.insert(at, v);
    }

    fn kth(&self) -> f64 {
        self.values[self.k - 1]
    }
}

#[inline]
fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    // f64 accumulation of exact f32 differences: no cancellation from the norm trick.
    let mut acc = [0.0f64; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            let diff = (a[4 * c + l] - b[4 * c + l]) as f64;
            acc[l] += diff * diff;
        }
    }
    let mut sum = acc[0] + acc[1] + acc[2] + acc[3];
    for i in 4 * chunks..a.len() {
        let diff = (a[i] - b[i]) as f64;
        sum += diff * diff;
    }
    sum
}

/// Distance from every row of `data` (`n x d`, row-major) to its `k`-th nearest other row.
///
/// The row itself is not counted, but duplicates of it are (at distance 0), which is what
/// `prdc`'s `np.partition(distances, k)[:, k]` gives. Requires `1 <= k < n`.
pub fn kth_neighbour_distances(data: &[f32], n: usize, d: usize, k: usize) -> Result<Vec<f32>> {
    check_shape("features", data, n, d)?;
    if k == 0 || k >= n {
        return Err(MetricsError::InvalidK { k, n });
    }
    check_finite("features", data, d)?;

    let mut radii = vec![0.0f32; n];
    radii
        .par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let row0 = block * ROW_BLOCK;
            let mut best: Vec<SmallestK> = (0..out.len()).map(|_| SmallestK::new(k)).collect();
            for col0 in (0..n).step_by(COL_BLOCK) {
                let col1 = (col0 + COL_BLOCK).min(n);
                for (r, heap) in best.iter_mut().enumerate() {
                    let i = row0 + r;
                    let a = &data[i * d..(i + 1) * d];
                    for j in col0..col1 {
                        if j != i {
                            heap.push(squared_distance(a, &data[j * d..(j + 1) * d]));
                        }
                    }
                }
            }
            for (slot, heap) in out.iter_mut().zip(&best) {
                *slot = heap.kth().sqrt() as f32;
            }
        });
    Ok(radii)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Reference: all pairwise distances, sort, take the k-th other row.
    fn brute_force(x: &Array2<f32>, k: usize) -> Vec<f32> {
        let n = x.nrows();
        (0..n)
            .map(|i| {
                let mut ds: Vec<f64> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        x.row(i)
                            .iter()
                            .zip(x.row(j).iter())
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum::<f64>()
                    })
                    .collect();
                ds.sort_by(|a, b| a.partial_cmp(b).unwrap());
                ds[k - 1].sqrt() as f32
            })
            .collect()
    }

    /// Small deterministic generator so the crate needs no rand dependency.
    fn lcg_matrix(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Array2::from_shape_fn((n, d), |_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
    }

    #[test]
    fn matches_brute_force_across_sizes() {
        for &(n, d, k) in &[(5, 1, 1), (17, 3, 4), (300, 8, 5), (700, 33, 10)] {
            let x = lcg_matrix(n, d, (n * d + k) as u64);
            let got = kth_neighbour_distances(x.as_slice().unwrap(), n, d, k).unwrap();
            assert_eq!(got, brute_force(&x, k), "n={n} d={d} k={k}");
        }
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

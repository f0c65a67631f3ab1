//! Precision, recall, density and coverage (Naeem et al. 2020), exactly as `prdc` 0.2.
//!
//! Radii come from `knn::radii`; the real-fake comparisons stream tiles of the cross
//! distance matrix through the float32 GEMM and settle each comparison with the error
//! bound, recomputing exactly only the pairs within the bound of a radius. Per worker the
//! state is O(N + M) counters; memory stays bounded by the inputs plus O(TILE * D).

use crate::error::{MetricsError, Result};
use crate::knn;
use crate::progress::Progress;
use crate::tiles::{
    block_rows, choose_centre, dist32, exact_sq, gemm_sq_norms, rectangle_tiles, run_tiles,
    settle_thresholds, tile_gram, triangle_tiles, Features, Margin, Shard, MAX_GEMM_SQ_NORM,
};

/// Counts behind the four metrics; `metrics()` turns them into the values `prdc` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct PrdcCounts {
    pub n_real: usize,
    pub n_fake: usize,
    pub k: usize,
    /// fakes inside at least one real ball
    pub precision_count: u64,
    /// reals inside at least one fake ball
    pub recall_count: u64,
    /// (real ball, fake) incidences
    pub density_count: u64,
    /// reals whose ball holds at least one fake
    pub coverage_count: u64,
    pub real_radii: Vec<f32>,
    pub fake_radii: Vec<f32>,
    /// pairs recomputed exactly (radii and comparisons)
    pub exact_pairs: u64,
    /// rows recomputed exactly against all others while finding radii
    pub exact_rows: u64,
}

impl PrdcCounts {
    /// (precision, recall, density, coverage) with the same float64 operations as `prdc`.
    pub fn metrics(&self) -> (f64, f64, f64, f64) {
        let (n, m) = (self.n_real as f64, self.n_fake as f64);
        (
            self.precision_count as f64 / m,
            self.recall_count as f64 / n,
            (1.0 / self.k as f64) * (self.density_count as f64 / m),
            self.coverage_count as f64 / n,
        )
    }
}

struct CrossState {
    /// per fake: number of real balls containing it
    ball_count: Vec<u32>,
    /// per real: inside some fake ball
    recalled: Vec<bool>,
    /// per real: its ball contains some fake
    covered: Vec<bool>,
    exact_pairs: u64,
}

#[inline]
fn within(dist: f32, radius: f32, inclusive: bool) -> bool {
    if inclusive {
        dist <= radius
    } else {
        dist < radius
    }
}

/// Per fake: real balls containing it; per real: in some fake ball, its ball holds a fake;
/// and the number of pairs recomputed exactly.
pub type BallCounts = (Vec<u32>, Vec<bool>, Vec<bool>, u64);

/// Ball-membership counts of `real` (N x D) and `fake` (M x D) for given radii, over this
/// `shard`'s tiles of the cross distance matrix (the shards' counts add up, their flags OR).
#[allow(clippy::too_many_arguments)]
pub fn ball_counts(
    real: &Features,
    fake: &Features,
    real_radii: &[f32],
    fake_radii: &[f32],
    inclusive: bool,
    centre: Option<&[f32]>,
    shard: Shard,
    progress: Option<&Progress>,
) -> Result<BallCounts> {
    let (n, m, d) = (real.n, fake.n, real.d);
    if fake.d != d {
        return Err(MetricsError::Shape(format!(
            "real and fake features must have the same dimension D, got {d} and {}",
            fake.d
        )));
    }
    if real_radii.len() != n || fake_radii.len() != m {
        return Err(MetricsError::Shape(format!(
            "radii must have one value per row: got {} for N={n} and {} for M={m}",
            real_radii.len(),
            fake_radii.len()
        )));
    }
    let nx = gemm_sq_norms(real, centre);
    let ny = gemm_sq_norms(fake, centre);
    let max_norm = nx.iter().chain(&ny).cloned().fold(0.0f64, f64::max);
    let margin = Margin::for_dim(d).filter(|_| max_norm <= MAX_GEMM_SQ_NORM);
    let thr_x: Vec<(f64, f64)> = real_radii.iter().map(|&r| settle_thresholds(r)).collect();
    let thr_y: Vec<(f64, f64)> = fake_radii.iter().map(|&r| settle_thresholds(r)).collect();

    let tiles = shard.select(rectangle_tiles(n, m));
    if let Some(p) = progress {
        p.ensure_total(tiles.len() as u64);
    }
    let states = run_tiles(
        &tiles,
        progress,
        || CrossState { ball_count: vec![0; m], recalled: vec![false; n], covered: vec![false; n], exact_pairs: 0 },
        |st, s, bi, bj| {
            let (i0, i1) = block_rows(bi, n);
            let (j0, j1) = block_rows(bj, m);
            let nb = j1 - j0;
            if margin.is_some() {
                tile_gram(s, real, (i0, i1), fake, (j0, j1), centre, false);
            }
            for i in i0..i1 {
                let x = real.row(i);
                let (lo_x, hi_x) = thr_x[i];
                let (rx, ni) = (real_radii[i], nx[i]);
                let mut recalled = false;
                let mut covered = false;
                for c in 0..nb {
                    let j = j0 + c;
                    let (lo_y, hi_y) = thr_y[j];
                    // (approximation, margin); without a usable bound everything is exact
                    let (a, e) = match margin {
                        Some(mg) => {
                            let sum = ni + ny[j];
                            (sum - 2.0 * s.g[(i - i0) * nb + c] as f64, mg.of(sum))
                        }
                        None => (0.0, f64::INFINITY),
                    };
                    let mut exact: Option<f32> = None;
                    let mut exact_dist = |st: &mut CrossState| -> f32 {
                        *exact.get_or_insert_with(|| {
                            st.exact_pairs += 1;
                            dist32(exact_sq(x, fake.row(j)))
                        })
                    };
                    let in_real_ball = if a + e < lo_x {
                        true
                    } else if a - e > hi_x {
                        false
                    } else {
                        within(exact_dist(st), rx, inclusive)
                    };
                    let in_fake_ball = if a + e < lo_y {
                        true
                    } else if a - e > hi_y {
                        false
                    } else {
                        within(exact_dist(st), fake_radii[j], inclusive)
                    };
                    if in_real_ball {
                        st.ball_count[j] += 1;
                        covered = true;
                    }
                    recalled |= in_fake_ball;
                }
                st.recalled[i] |= recalled;
                st.covered[i] |= covered;
            }
        },
    )?;

    let mut ball_count = vec![0u32; m];
    let mut recalled = vec![false; n];
    let mut covered = vec![false; n];
    let mut exact_pairs = 0;
    for st in states {
        ball_count.iter_mut().zip(&st.ball_count).for_each(|(a, b)| *a += b);
        recalled.iter_mut().zip(&st.recalled).for_each(|(a, b)| *a |= b);
        covered.iter_mut().zip(&st.covered).for_each(|(a, b)| *a |= b);
        exact_pairs += st.exact_pairs;
    }
    Ok((ball_count, recalled, covered, exact_pairs))
}

/// All four PRDC counts for `real` (n x d) and `fake` (m x d), row-major float32.
///
/// `inclusive = false` is `prdc`'s strict `distance < radius`; `true` uses `<=`.
#[allow(clippy::too_many_arguments)]
pub fn prdc_counts(
    real: &[f32],
    n: usize,
    d: usize,
    fake: &[f32],
    m: usize,
    d_fake: usize,
    k: usize,
    inclusive: bool,
    progress: Option<&Progress>,
) -> Result<PrdcCounts> {
    let x = Features::new("real features", real, n, d)?;
    let y = Features::new("fake features", fake, m, d_fake)?;
    if d_fake != d {
        return Err(MetricsError::Shape(format!(
            "real and fake features must have the same dimension D, got {d} and {d_fake}"
        )));
    }
    if k == 0 || k >= n || k >= m {
        return Err(MetricsError::InvalidArgument(format!(
            "k must satisfy 1 <= k < N and k < M (k={k}, N={n} real rows, M={m} fake rows)"
        )));
    }
    if let Some(p) = progress {
        let total = triangle_tiles(n).len() + triangle_tiles(m).len() + rectangle_tiles(n, m).len();
        p.ensure_total(total as u64);
    }
    let centre = choose_centre(&[x, y]);
    let centre = centre.as_deref();
    let rx = knn::radii(&x, k, centre, progress)?;
    let ry = knn::radii(&y, k, centre, progress)?;
    let (ball_count, recalled, covered, cross_exact) =
        ball_counts(&x, &y, &rx.radii, &ry.radii, inclusive, centre, Shard::WHOLE, progress)?;
    Ok(PrdcCounts {
        n_real: n,
        n_fake: m,
        k,
        precision_count: ball_count.iter().filter(|&&c| c > 0).count() as u64,
        recall_count: recalled.iter().filter(|&&b| b).count() as u64,
        density_count: ball_count.iter().map(|&c| c as u64).sum(),
        coverage_count: covered.iter().filter(|&&b| b).count() as u64,
        real_radii: rx.radii,
        fake_radii: ry.radii,
        exact_pairs: rx.exact_pairs + ry.exact_pairs + cross_exact,
        exact_rows: rx.exact_rows + ry.exact_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::tests::{brute_force, lcg_matrix};
    use crate::tiles::Shard;
    use ndarray::Array2;

    /// Straight from the definitions, with exact distances.
    fn reference(x: &Array2<f32>, y: &Array2<f32>, k: usize, inclusive: bool) -> (u64, u64, u64, u64) {
        let (rx, ry) = (brute_force(x, k), brute_force(y, k));
        let dist = |i: usize, j: usize| dist32(exact_sq(x.row(i).as_slice().unwrap(), y.row(j).as_slice().unwrap()));
        let (n, m) = (x.nrows(), y.nrows());
        let inside = |dd: f32, r: f32| if inclusive { dd <= r } else { dd < r };
        let mut p = 0;
        let mut dens = 0;
        for j in 0..m {
            let c = (0..n).filter(|&i| inside(dist(i, j), rx[i])).count() as u64;
            dens += c;
            p += (c > 0) as u64;
        }
        let r = (0..n).filter(|&i| (0..m).any(|j| inside(dist(i, j), ry[j]))).count() as u64;
        let cov = (0..n).filter(|&i| (0..m).any(|j| inside(dist(i, j), rx[i]))).count() as u64;
        (p, r, dens, cov)
    }

    #[test]
    fn shards_add_up_to_the_whole() {
        use crate::knn::{candidate_lists, finish_radii, radii};
        let (n, m, d, k) = (1300, 1100, 9, 5);
        let x = lcg_matrix(n, d, 11);
        let mut y = lcg_matrix(m, d, 12);
        y.mapv_inplace(|v| v * 1.1 + 0.05);
        let fx = Features::new("x", x.as_slice().unwrap(), n, d).unwrap();
        let fy = Features::new("y", y.as_slice().unwrap(), m, d).unwrap();
        let centre = choose_centre(&[fx, fy]);
        let c = centre.as_deref();
        let whole_rx = radii(&fx, k, c, None).unwrap().radii;
        let whole_ry = radii(&fy, k, c, None).unwrap().radii;
        assert_eq!(whole_rx, brute_force(&x, k));
        let whole = ball_counts(&fx, &fy, &whole_rx, &whole_ry, false, c, Shard::WHOLE, None).unwrap();
        for world in [2, 3] {
            let shards: Vec<Shard> = (0..world).map(|r| Shard::new(r, world).unwrap()).collect();
            let lists: Vec<_> = shards.iter().map(|&s| candidate_lists(&fx, k, c, s, None).unwrap()).collect();
            // finished in two row blocks, as a distributed run does
            let part = |r0: usize, r1: usize| lists.iter().map(|l| l.rows(r0, r1)).collect::<Vec<_>>();
            let mut rx = finish_radii(&fx, k, c, &part(0, 700), 0, 700).unwrap().radii;
            rx.extend(finish_radii(&fx, k, c, &part(700, n), 700, n).unwrap().radii);
            assert_eq!(rx, whole_rx, "world={world}");
            let ly: Vec<_> = shards.iter().map(|&s| candidate_lists(&fy, k, c, s, None).unwrap()).collect();
            assert_eq!(finish_radii(&fy, k, c, &ly, 0, m).unwrap().radii, whole_ry, "world={world}");
            let (mut ball, mut rec, mut cov) = (vec![0u32; m], vec![false; n], vec![false; n]);
            for &s in &shards {
                let (b, r, cv, _) = ball_counts(&fx, &fy, &rx, &whole_ry, false, c, s, None).unwrap();
                ball.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                rec.iter_mut().zip(&r).for_each(|(a, b)| *a |= b);
                cov.iter_mut().zip(&cv).for_each(|(a, b)| *a |= b);
            }
            assert_eq!((&ball, &rec, &cov), (&whole.0, &whole.1, &whole.2), "world={world}");
        }
        assert!(Shard::new(2, 2).is_err() && Shard::new(0, 0).is_err());
    }

    #[test]
    fn counts_match_the_definitions() {
        for &(n, m, d, k) in &[(40, 30, 3, 3), (600, 550, 10, 5), (200, 700, 24, 7)] {
            let x = lcg_matrix(n, d, 1 + n as u64);
            let mut y = lcg_matrix(m, d, 2 + m as u64);
            y.mapv_inplace(|v| v * 1.2 + 0.1); // overlapping but different
            for inclusive in [false, true] {
                let got = prdc_counts(x.as_slice().unwrap(), n, d, y.as_slice().unwrap(), m, d, k, inclusive, None).unwrap();
                let want = reference(&x, &y, k, inclusive);
                assert_eq!(
                    (got.precision_count, got.recall_count, got.density_count, got.coverage_count),
                    want,
                    "n={n} m={m} d={d} k={k} inclusive={inclusive}"
                );
                assert!(want.0 > 0 && want.0 < m as u64, "precision should be inside (0, 1)");
            }
        }
    }

    #[test]
    fn identical_sets_and_strictness() {
        // integer lattice: many exact ties, where `<` and `<=` differ
        let x = Array2::from_shape_fn((64, 2), |(i, c)| if c == 0 { (i % 8) as f32 } else { (i / 8) as f32 });
        let strict = prdc_counts(x.as_slice().unwrap(), 64, 2, x.as_slice().unwrap(), 64, 2, 2, false, None).unwrap();
        let incl = prdc_counts(x.as_slice().unwrap(), 64, 2, x.as_slice().unwrap(), 64, 2, 2, true, None).unwrap();
        assert_eq!((strict.precision_count, strict.recall_count, strict.coverage_count), (64, 64, 64));
        assert_eq!(
            (strict.precision_count, strict.recall_count, strict.density_count, strict.coverage_count),
            reference(&x, &x, 2, false)
        );
        assert_eq!(
            (incl.precision_count, incl.recall_count, incl.density_count, incl.coverage_count),
            reference(&x, &x, 2, true)
        );
        assert!(incl.density_count > strict.density_count);
    }

    #[test]
    fn progress_counts_tiles_and_cancel_stops_the_work() {
        let x = lcg_matrix(1100, 4, 1);
        let y = lcg_matrix(600, 4, 2);
        let p = Progress::new();
        prdc_counts(x.as_slice().unwrap(), 1100, 4, y.as_slice().unwrap(), 600, 4, 3, false, Some(&p)).unwrap();
        assert_eq!(p.snapshot(), (6 + 3 + 6, 6 + 3 + 6));
        let cancelled = Progress::new();
        cancelled.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let got = prdc_counts(x.as_slice().unwrap(), 1100, 4, y.as_slice().unwrap(), 600, 4, 3, false, Some(&cancelled));
        assert_eq!(got, Err(MetricsError::Cancelled));
    }

    #[test]
    fn rejects_mismatched_dimension_and_small_sets() {
        let x = vec![0.5f32; 12];
        assert!(matches!(prdc_counts(&x, 4, 3, &x[..6], 3, 2, 1, false, None), Err(MetricsError::Shape(_))));
        assert!(matches!(prdc_counts(&x, 4, 3, &x, 4, 3, 4, false, None), Err(MetricsError::InvalidArgument(_))));
    }
}

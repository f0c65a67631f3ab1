//! Inception Score over `splits` groups: exp(E_x KL(p(y|x) || p(y))), mean and std.

use rayon::prelude::*;

use crate::error::{MetricsError, Result};

/// Mean and (population) standard deviation of the per-split scores for class
/// probabilities `probs` (n x c, row-major, float64). Split `s` holds rows
/// `s*n/splits .. (s+1)*n/splits`, as in the original implementation. `0 * log 0 = 0`.
pub fn inception_score(probs: &[f64], n: usize, c: usize, splits: usize) -> Result<(f64, f64)> {
    if n == 0 || c == 0 || probs.len() != n * c {
        return Err(MetricsError::Shape(format!(
            "probabilities must be a non-empty (N, C) matrix, got {} values for ({n}, {c})",
            probs.len()
        )));
    }
    if splits == 0 || splits > n {
        return Err(MetricsError::InvalidArgument(format!(
            "splits must satisfy 1 <= splits <= N (splits={splits}, N={n})"
        )));
    }
    if let Some(pos) = probs.iter().position(|p| !p.is_finite() || *p < 0.0) {
        return Err(MetricsError::InvalidArgument(format!(
            "probabilities must be finite and >= 0; row {}, column {} is {}",
            pos / c,
            pos % c,
            probs[pos]
        )));
    }
    let scores: Vec<f64> = (0..splits)
        .into_par_iter()
        .map(|s| {
            let (a, b) = (s * n / splits, (s + 1) * n / splits);
            let rows = &probs[a * c..b * c];
            let count = (b - a) as f64;
            let mut marginal = vec![0.0f64; c];
            for row in rows.chunks_exact(c) {
                marginal.iter_mut().zip(row).for_each(|(m, &p)| *m += p);
            }
            marginal.iter_mut().for_each(|m| *m /= count);
            let kl_sum: f64 = rows
                .chunks_exact(c)
                .map(|row| {
                    row.iter()
                        .zip(&marginal)
                        .filter(|(&p, _)| p > 0.0)
                        .map(|(&p, &q)| p * (p.ln() - q.ln()))
                        .sum::<f64>()
                })
                .sum();
            (kl_sum / count).exp()
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / splits as f64;
    Ok((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_predictions_score_one_and_confident_distinct_ones_score_c() {
        let c = 4;
        let uniform = vec![0.25f64; 8 * c];
        let (m, s) = inception_score(&uniform, 8, c, 2).unwrap();
        assert!((m - 1.0).abs() < 1e-12 && s.abs() < 1e-12);
        // one-hot, classes evenly represented in each split: IS = C
        let onehot: Vec<f64> = (0..8).flat_map(|i| (0..c).map(move |j| if i % c == j { 1.0 } else { 0.0 })).collect();
        let (m, s) = inception_score(&onehot, 8, c, 2).unwrap();
        assert!((m - 4.0).abs() < 1e-12 && s.abs() < 1e-12, "{m} {s}");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(inception_score(&[0.5, 0.5], 1, 2, 2).is_err());
        assert!(inception_score(&[0.5, -0.5], 1, 2, 1).is_err());
        assert!(inception_score(&[], 0, 2, 1).is_err());
    }
}

//! Thin pyo3 layer: converts arrays, releases the GIL around the work, maps errors,
//! and relays progress (and Ctrl-C) between the running kernel and Python.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::MetricsError;
use crate::progress::Progress;
use crate::tiles::{Features, Shard};

impl From<MetricsError> for PyErr {
    fn from(err: MetricsError) -> PyErr {
        match err {
            MetricsError::Cancelled => PyKeyboardInterrupt::new_err("computation cancelled"),
            other => PyValueError::new_err(other.to_string()),
        }
    }
}

/// Borrow a C-contiguous (N, D) array as a slice, or explain what was expected.
fn as_matrix<'a, T: numpy::Element>(
    name: &str,
    x: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<(&'a [T], usize, usize)> {
    let shape = x.shape();
    if shape.len() != 2 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 2-D array (N, D), got {} dimension(s) with shape {:?}",
            shape.len(),
            shape
        )));
    }
    let slice = x
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))?;
    Ok((slice, shape[0], shape[1]))
}

/// Run `work` without the GIL on a helper thread; meanwhile, every 100 ms, call
/// `callback(done, total)` (if given) and check for Ctrl-C, which cancels the work.
fn run_detached<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    work: impl FnOnce(&Progress) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let progress = Progress::new();
    let mut py_error: Option<PyErr> = None;
    let result = py.detach(|| {
        std::thread::scope(|scope| {
            // the worker drops `done` when it returns (or panics), which wakes the wait below
            // at once instead of at the next 100 ms tick
            let (done, finished) = mpsc::channel::<()>();
            let shared = &progress;
            let handle = scope.spawn(move || {
                let _done = done;
                work(shared)
            });
            while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(Duration::from_millis(100)) {
                if py_error.is_some() {
                    continue;
                }
                let err = Python::attach(|py| -> Option<PyErr> {
                    if let Err(e) = py.check_signals() {
                        return Some(e);
                    }
                    if let Some(cb) = &callback {
                        let (done, total) = progress.snapshot();
                        if let Err(e) = cb.bind(py).call1((done, total)) {
                            return Some(e);
                        }
                    }
                    None
                });
                if let Some(e) = err {
                    progress.cancel.store(true, Ordering::Relaxed);
                    py_error = Some(e);
                }
            }
            handle.join().expect("metrics worker thread panicked")
        })
    });
    if let Some(e) = py_error {
        return Err(e);
    }
    if let Some(cb) = &callback {
        let (done, total) = progress.snapshot();
        cb.bind(py).call1((done, total))?;
    }
    Ok(result?)
}

/// Distance from each row of `x` to its k-th nearest other row (exact, blockwise).
#[pyfunction]
#[pyo3(signature = (x, k))]
fn kth_neighbour_distances<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (data, n, d) = as_matrix("x", &x)?;
    // run_detached, so that Ctrl-C stops a long call
    let radii = run_detached(py, None, |p| crate::knn::kth_neighbour_distances_with(data, n, d, k, Some(p)))?;
    Ok(radii.into_pyarray(py))
}

/// Exact PRDC counts and radii of `real` (N, D) and `fake` (M, D).
#[pyfunction]
#[pyo3(signature = (real, fake, k, inclusive=false, progress=None))]
fn prdc_counts<'py>(
    py: Python<'py>,
    real: PyReadonlyArrayDyn<'py, f32>,
    fake: PyReadonlyArrayDyn<'py, f32>,
    k: usize,
    inclusive: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let (xr, n, d) = as_matrix("real", &real)?;
    let (yf, m, df) = as_matrix("fake", &fake)?;
    let c = run_detached(py, progress, |p| {
        crate::prdc::prdc_counts(xr, n, d, yf, m, df, k, inclusive, Some(p))
    })?;
    let out = PyDict::new(py);
    out.set_item("n_real", c.n_real)?;
    out.set_item("n_fake", c.n_fake)?;
    out.set_item("k", c.k)?;
    out.set_item("precision_count", c.precision_count)?;
    out.set_item("recall_count", c.recall_count)?;
    out.set_item("density_count", c.density_count)?;
    out.set_item("coverage_count", c.coverage_count)?;
    out.set_item("exact_pairs", c.exact_pairs)?;
    out.set_item("exact_rows", c.exact_rows)?;
    out.set_item("real_radii", c.real_radii.into_pyarray(py))?;
    out.set_item("fake_radii", c.fake_radii.into_pyarray(py))?;
    Ok(out)
}

/// prdc's float32 distance of the row pairs (x[i[t]], y[j[t]]), computed exactly.
#[pyfunction]
#[pyo3(signature = (x, y, rows, cols))]
fn pair_distances<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    y: PyReadonlyArrayDyn<'py, f32>,
    rows: PyReadonlyArrayDyn<'py, i64>,
    cols: PyReadonlyArrayDyn<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (xs, n, d) = as_matrix("x", &x)?;
    let (ys, m, dy) = as_matrix("y", &y)?;
    if d != dy {
        return Err(PyValueError::new_err(format!("x and y must have the same D, got {d} and {dy}")));
    }
    let rows = rows.as_slice().map_err(|_| PyValueError::new_err("rows must be contiguous"))?;
    let cols = cols.as_slice().map_err(|_| PyValueError::new_err("cols must be contiguous"))?;
    if rows.len() != cols.len() {
        return Err(PyValueError::new_err("rows and cols must have the same length"));
    }
    if let Some(bad) = rows.iter().find(|&&i| i < 0 || i as usize >= n) {
        return Err(PyValueError::new_err(format!("row index {bad} out of range for {n} rows")));
    }
    if let Some(bad) = cols.iter().find(|&&j| j < 0 || j as usize >= m) {
        return Err(PyValueError::new_err(format!("column index {bad} out of range for {m} rows")));
    }
    let out = py.detach(|| crate::tiles::pair_distances(xs, ys, d, rows, cols));
    Ok(out.into_pyarray(py))
}

/// Exact radii from candidate neighbour lists: `candidates` (N, C) holds indices of rows
/// of `x` (any order, -1 for none, the row itself allowed); the k-th smallest exact
/// distance to another candidate row is returned, prdc-rounded.
#[pyfunction]
#[pyo3(signature = (x, candidates, k))]
fn radii_from_candidates<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    candidates: PyReadonlyArrayDyn<'py, i64>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (xs, n, d) = as_matrix("x", &x)?;
    let (cand, cn, cc) = as_matrix("candidates", &candidates)?;
    if cn != n {
        return Err(PyValueError::new_err(format!("candidates must have {n} rows, got {cn}")));
    }
    let out = py.detach(|| crate::knn::radii_from_candidates(xs, n, d, cand, cc, k))?;
    Ok(out.into_pyarray(py))
}

/// The centre the GEMM of `prdc_counts` subtracts from `real` and `fake` (None: none), the same
/// on every run, so that the processes of a sharded computation agree on it.
#[pyfunction]
#[pyo3(signature = (real, fake))]
fn gemm_centre<'py>(
    py: Python<'py>,
    real: PyReadonlyArrayDyn<'py, f32>,
    fake: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Option<Bound<'py, PyArray1<f32>>>> {
    let (xr, n, d) = as_matrix("real", &real)?;
    let (yf, m, df) = as_matrix("fake", &fake)?;
    let centre = py.detach(|| -> crate::Result<Option<Vec<f32>>> {
        let x = Features::new("real features", xr, n, d)?;
        let y = Features::new("fake features", yf, m, df)?;
        if df != d {
            return Err(MetricsError::Shape(format!(
                "real and fake features must have the same dimension D, got {d} and {df}"
            )));
        }
        Ok(crate::tiles::choose_centre(&[x, y]))
    })?;
    Ok(centre.map(|c| c.into_pyarray(py)))
}

fn centre_slice<'a>(centre: &'a Option<PyReadonlyArrayDyn<'_, f32>>, d: usize) -> PyResult<Option<&'a [f32]>> {
    match centre {
        None => Ok(None),
        Some(c) => {
            let c = c.as_slice().map_err(|_| PyValueError::new_err("centre must be contiguous"))?;
            if c.len() != d {
                return Err(PyValueError::new_err(format!("centre has {} values for D={d}", c.len())));
            }
            Ok(Some(c))
        }
    }
}

/// The first phase of the radii over shard `rank` of `world`: per row of `x` the closest
/// candidates by the float32 GEMM, as flat arrays (`vals`, `idx`: N x cap; `len`, `floor`: N).
#[pyfunction]
#[pyo3(signature = (x, k, centre=None, rank=0, world=1, progress=None))]
fn radii_candidates<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    k: usize,
    centre: Option<PyReadonlyArrayDyn<'py, f32>>,
    rank: usize,
    world: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let (xs, n, d) = as_matrix("x", &x)?;
    let c = centre_slice(&centre, d)?;
    let shard = Shard::new(rank, world)?;
    let lists = run_detached(py, progress, |p| {
        let f = Features::new("features", xs, n, d)?;
        crate::knn::candidate_lists(&f, k, c, shard, Some(p))
    })?;
    let out = PyDict::new(py);
    out.set_item("cap", lists.cap)?;
    out.set_item("max_norm", lists.max_norm)?;
    out.set_item("len", lists.len.into_pyarray(py))?;
    out.set_item("vals", lists.vals.into_pyarray(py))?;
    out.set_item("idx", lists.idx.into_pyarray(py))?;
    out.set_item("floor", lists.floor.into_pyarray(py))?;
    Ok(out)
}

/// The second phase: exact radii of rows `row_start .. row_start + R` of `x` from the candidate
/// lists of those rows made by each of P shards (`vals`, `idx`: P x (R cap); `len`, `floor`: P x R).
#[pyfunction]
#[pyo3(signature = (x, k, centre, vals, idx, len, floor, max_norm, cap, row_start))]
#[allow(clippy::too_many_arguments)]
fn radii_finish<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    k: usize,
    centre: Option<PyReadonlyArrayDyn<'py, f32>>,
    vals: PyReadonlyArrayDyn<'py, f64>,
    idx: PyReadonlyArrayDyn<'py, u32>,
    len: PyReadonlyArrayDyn<'py, u32>,
    floor: PyReadonlyArrayDyn<'py, f64>,
    max_norm: f64,
    cap: usize,
    row_start: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let (xs, n, d) = as_matrix("x", &x)?;
    let c = centre_slice(&centre, d)?;
    let (vs, shards, vw) = as_matrix("vals", &vals)?;
    let (is, ishards, iw) = as_matrix("idx", &idx)?;
    let (ls, lshards, rows) = as_matrix("len", &len)?;
    let (fs, fshards, fw) = as_matrix("floor", &floor)?;
    if cap == 0 || vw != rows * cap || iw != rows * cap || fw != rows || ishards != shards || lshards != shards || fshards != shards {
        return Err(PyValueError::new_err(format!(
            "candidate lists of {shards} shards: vals, idx must be (P, R*cap) and len, floor (P, R) with cap={cap}"
        )));
    }
    let lists: Vec<crate::knn::CandidateLists> = (0..shards)
        .map(|p| crate::knn::CandidateLists {
            cap,
            len: ls[p * rows..(p + 1) * rows].to_vec(),
            vals: vs[p * vw..(p + 1) * vw].to_vec(),
            idx: is[p * iw..(p + 1) * iw].to_vec(),
            floor: fs[p * rows..(p + 1) * rows].to_vec(),
            max_norm,
        })
        .collect();
    let r = run_detached(py, None, |_| {
        let f = Features::new("features", xs, n, d)?;
        crate::knn::finish_radii(&f, k, c, &lists, row_start, row_start + rows)
    })?;
    let out = PyDict::new(py);
    out.set_item("radii", r.radii.into_pyarray(py))?;
    out.set_item("exact_pairs", r.exact_pairs)?;
    out.set_item("exact_rows", r.exact_rows)?;
    Ok(out)
}

/// Ball-membership counts over shard `rank` of `world` of the real x fake tiles: `ball_count`
/// (per fake, add over shards), `recalled` and `covered` (per real, OR over shards).
#[pyfunction]
#[pyo3(signature = (real, fake, real_radii, fake_radii, inclusive=false, centre=None, rank=0, world=1, progress=None))]
#[allow(clippy::too_many_arguments)]
fn ball_counts<'py>(
    py: Python<'py>,
    real: PyReadonlyArrayDyn<'py, f32>,
    fake: PyReadonlyArrayDyn<'py, f32>,
    real_radii: PyReadonlyArrayDyn<'py, f32>,
    fake_radii: PyReadonlyArrayDyn<'py, f32>,
    inclusive: bool,
    centre: Option<PyReadonlyArrayDyn<'py, f32>>,
    rank: usize,
    world: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let (xr, n, d) = as_matrix("real", &real)?;
    let (yf, m, df) = as_matrix("fake", &fake)?;
    let c = centre_slice(&centre, d)?;
    let rr = real_radii.as_slice().map_err(|_| PyValueError::new_err("real_radii must be contiguous"))?;
    let fr = fake_radii.as_slice().map_err(|_| PyValueError::new_err("fake_radii must be contiguous"))?;
    let shard = Shard::new(rank, world)?;
    let (ball, recalled, covered, pairs) = run_detached(py, progress, |p| {
        let x = Features::new("real features", xr, n, d)?;
        let y = Features::new("fake features", yf, m, df)?;
        crate::prdc::ball_counts(&x, &y, rr, fr, inclusive, c, shard, Some(p))
    })?;
    let out = PyDict::new(py);
    out.set_item("ball_count", ball.into_pyarray(py))?;
    out.set_item("recalled", recalled.into_pyarray(py))?;
    out.set_item("covered", covered.into_pyarray(py))?;
    out.set_item("exact_pairs", pairs)?;
    Ok(out)
}

/// Inception Score (mean, std) of class probabilities `probs` (N, C) over `splits` groups.
#[pyfunction]
#[pyo3(signature = (probs, splits=10))]
fn inception_score(py: Python<'_>, probs: PyReadonlyArrayDyn<'_, f64>, splits: usize) -> PyResult<(f64, f64)> {
    let (p, n, c) = as_matrix("probs", &probs)?;
    Ok(py.detach(|| crate::inception::inception_score(p, n, c, splits))?)
}

/// The GEMM error-bound factor for dimension `d` (see `tiles::margin_factor`); infinity where
/// the bound is useless. `extra_roundings=None` gives the float32 route of the torch/FAISS backends.
#[pyfunction]
#[pyo3(signature = (d, extra_roundings=None))]
fn gemm_margin_factor(d: usize, extra_roundings: Option<f64>) -> f64 {
    let extra = extra_roundings.unwrap_or(crate::tiles::FLOAT32_EXTRA_ROUNDINGS);
    crate::tiles::margin_factor(d, extra).unwrap_or(f64::INFINITY)
}

#[pymodule]
fn _metrics_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(kth_neighbour_distances, m)?)?;
    m.add_function(wrap_pyfunction!(prdc_counts, m)?)?;
    m.add_function(wrap_pyfunction!(pair_distances, m)?)?;
    m.add_function(wrap_pyfunction!(radii_from_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(inception_score, m)?)?;
    m.add_function(wrap_pyfunction!(gemm_margin_factor, m)?)?;
    m.add_function(wrap_pyfunction!(gemm_centre, m)?)?;
    m.add_function(wrap_pyfunction!(radii_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(radii_finish, m)?)?;
    m.add_function(wrap_pyfunction!(ball_counts, m)?)?;
    m.add("CRATE_EXTRA_ROUNDINGS", crate::tiles::CRATE_EXTRA_ROUNDINGS)?;
    m.add("FLOAT32_EXTRA_ROUNDINGS", crate::tiles::FLOAT32_EXTRA_ROUNDINGS)?;
    m.add("TILE", crate::tiles::TILE)?;
    Ok(())
}

//! Thin pyo3 layer: converts arrays, releases the GIL around the work, maps errors.

use numpy::{PyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods, IntoPyArray};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::error::MetricsError;

impl From<MetricsError> for PyErr {
    fn from(err: MetricsError) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

/// Borrow a C-contiguous float32 (N, D) array as a slice, or explain what was expected.
fn as_matrix<'a>(name: &str, x: &'a PyReadonlyArrayDyn<'_, f32>) -> PyResult<(&'a [f32], usize, usize)> {
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

/// Distance from each row of `x` to its k-th nearest other row (exact, blockwise).
#[pyfunction]
#[pyo3(signature = (x, k))]
fn kth_neighbour_distances<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (data, n, d) = as_matrix("x", &x)?;
    let radii = py.detach(|| crate::knn::kth_neighbour_distances(data, n, d, k))?;
    Ok(radii.into_pyarray(py))
}

#[pymodule]
fn _metrics_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(kth_neighbour_distances, m)?)?;
    Ok(())
}

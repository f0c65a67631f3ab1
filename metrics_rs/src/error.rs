//! Errors of the metrics core; the Python layer maps each to a Python exception.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum MetricsError {
    /// The input does not have the shape the kernel needs.
    #[error("{0}")]
    Shape(String),
    /// A NaN or infinite value was found.
    #[error("{name} has a non-finite value (NaN or Inf) at row {row}, column {col}")]
    NonFinite { name: &'static str, row: usize, col: usize },
    /// k is out of range for the number of rows.
    #[error("k must satisfy 1 <= k < N (k={k}, N={n}): each row needs k neighbours other than itself")]
    InvalidK { k: usize, n: usize },
    /// Any other argument outside its valid range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller asked the computation to stop (e.g. Ctrl-C).
    #[error("computation cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, MetricsError>;

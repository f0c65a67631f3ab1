//! Pure-Rust core of the cryoet-forge metrics engine.
//!
//! Everything here works on plain row-major slices so it can be tested with `cargo test`
//! and no Python. The optional `python` feature adds the thin pyo3 layer (`python.rs`).

pub mod error;
pub mod inception;
pub mod knn;
pub mod prdc;
pub mod progress;
pub mod tiles;

#[cfg(feature = "python")]
mod python;

pub use error::{MetricsError, Result};
pub use knn::{check_finite, kth_neighbour_distances};
pub use prdc::{prdc_counts, PrdcCounts};
pub use progress::Progress;

//! Progress and cancellation shared between a running kernel and its caller.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{MetricsError, Result};

/// Work units (distance tiles) done so far and in total; `cancel` stops the kernel
/// at the next tile boundary. All fields are atomics so another thread may poll them.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub cancel: AtomicBool,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the total unless a caller that knows the whole job already did.
    pub fn ensure_total(&self, n: u64) {
        let _ = self.total.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn tick(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(MetricsError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn snapshot(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}

//! Per-run control: a cancel flag shared with whoever may cancel the run,
//! and an optional deadline. A run checks it between nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Cancels a run from another thread, or when a deadline passes. Clones
/// share the flag, so a clone handed to a run is cancelled with the original.
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    cancelled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl CancelToken {
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// The same flag with a deadline `timeout` from now (the earlier one wins).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let at = Instant::now().checked_add(timeout);
        let deadline = match (self.deadline, at) {
            (Some(d), Some(a)) => Some(d.min(a)),
            (d, a) => d.or(a),
        };
        CancelToken {
            cancelled: Arc::clone(&self.cancelled),
            deadline,
        }
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `Error::Cancelled` if cancelled or past the deadline.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::Cancelled("the run was cancelled".to_owned()));
        }
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return Err(Error::Cancelled("the run passed its deadline".to_owned()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_deadline() {
        let t = CancelToken::new();
        assert!(t.check().is_ok());
        let late = t.with_timeout(Duration::ZERO);
        assert!(matches!(late.check(), Err(Error::Cancelled(_))));
        let clone = t.clone();
        t.cancel();
        assert!(matches!(clone.check(), Err(Error::Cancelled(_))));
    }
}

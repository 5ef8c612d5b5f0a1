//! The one error type of the core. Each variant names the operation and the
//! values involved so that a message alone tells what went wrong.

use std::path::Path;

/// Every fallible function in the core returns this.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the operation, e.g. `reshape` to a different element count.
    #[error("{op}: {detail}")]
    Shape { op: String, detail: String },

    /// A dtype the operation cannot take.
    #[error("{op}: {detail}")]
    DType { op: String, detail: String },

    /// A weights file that is malformed or does not match its description.
    #[error("{file}: {}{detail}", tensor.as_ref().map(|t| format!("tensor '{t}': ")).unwrap_or_default())]
    Weights {
        file: String,
        tensor: Option<String>,
        detail: String,
    },

    /// An index outside a dimension (Python's IndexError).
    #[error("{op}: {detail}")]
    Index { op: String, detail: String },

    /// A device could not do what was asked.
    #[error("device {device}: {detail}")]
    Device { device: String, detail: String },

    /// An allocation failed or would exceed what the platform can address.
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory { what: String, bytes: u128 },

    /// A valid request that this version does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// An operating-system error on a named path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A run was cancelled or passed its deadline.
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// A broken invariant inside rtserve: always a bug.
    #[error("internal error, please report: {0}")]
    Internal(String),
}

impl Error {
    pub fn shape(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            detail: detail.into(),
        }
    }

    pub fn dtype(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::DType {
            op: op.into(),
            detail: detail.into(),
        }
    }

    pub fn index(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Index {
            op: op.into(),
            detail: detail.into(),
        }
    }

    pub fn weights(file: &Path, tensor: Option<&str>, detail: impl Into<String>) -> Self {
        Error::Weights {
            file: file.display().to_string(),
            tensor: tensor.map(str::to_owned),
            detail: detail.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

//! A dimension of a graph value: a number known when the graph is built, or a
//! symbol (`"batch"`) bound from the input shapes at run time.

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(usize),
    Sym(String),
}

impl Dim {
    pub fn sym(name: impl Into<String>) -> Dim {
        Dim::Sym(name.into())
    }

    /// The value of this dim under `bindings` (symbol name -> size).
    pub fn resolve(&self, bindings: &HashMap<String, usize>) -> Result<usize> {
        match self {
            Dim::Known(n) => Ok(*n),
            Dim::Sym(s) => bindings.get(s).copied().ok_or_else(|| {
                Error::shape("graph", format!("symbol '{s}' has no value (pass {s}=...)"))
            }),
        }
    }

    pub fn is_one(&self) -> bool {
        *self == Dim::Known(1)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Known(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_owned())
    }
}

/// `[batch, 384]`: dims as error messages and summaries print them.
pub fn format_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Concrete sizes of `dims` under `bindings`.
pub fn resolve_all(dims: &[Dim], bindings: &HashMap<String, usize>) -> Result<Vec<usize>> {
    dims.iter().map(|d| d.resolve(bindings)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_prints() {
        let dims = vec![Dim::sym("batch"), Dim::Known(384)];
        assert_eq!(format_dims(&dims), "[batch, 384]");
        let b = HashMap::from([("batch".to_owned(), 8)]);
        assert_eq!(resolve_all(&dims, &b).unwrap(), vec![8, 384]);
        let e = resolve_all(&dims, &HashMap::new()).unwrap_err().to_string();
        assert!(e.contains("batch"), "{e}");
    }
}

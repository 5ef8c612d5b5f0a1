//! A node of the graph: its op, the values it reads and the type of the one
//! value it defines. A value's id is the index of the node that defines it.

use crate::dtype::DType;

use super::dim::{format_dims, Dim};
use super::op::Op;

/// Index of a node in its graph, and so of the value it defines.
pub type ValueId = usize;

/// The static type of a value: dtype and (possibly symbolic) dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: Vec<Dim>) -> Self {
        TensorType { dtype, dims }
    }

    pub fn ndim(&self) -> usize {
        self.dims.len()
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.dtype, format_dims(&self.dims))
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub out: TensorType,
}

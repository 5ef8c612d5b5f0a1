//! The graph IR: SSA nodes (one output each) whose shapes may hold symbolic
//! dims (`"batch"`, `"seq"`). [`Graph`] checks every node's shapes and dtypes
//! when it is added, so a graph that builds is a graph that runs for any
//! binding of its symbols consistent with its inputs.

pub mod builder;
pub mod dim;
pub mod node;
pub mod op;
pub mod verify;

pub use builder::{AttentionSpec, Graph, RopeArgs};
pub use dim::{format_dims, Dim};
pub use node::{Node, TensorType, ValueId};
pub use op::{Op, Prepacked, TopKOutput};

//! Executing a graph: [`Compiled`] is the immutable, shareable program made
//! from a [`crate::graph::Graph`]; [`CancelToken`] lets another thread or a
//! deadline stop a run between nodes.

pub mod arena;
pub mod dispatch;
pub mod plan;
pub mod state;

pub use plan::{Compiled, NodeTime};
pub use state::CancelToken;

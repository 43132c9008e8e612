//! One module per workload; each adds its rows (A and B measured in pairs, A then B).

pub mod bulk;
pub mod idle;
pub mod memory;
pub mod rr;
pub mod short;

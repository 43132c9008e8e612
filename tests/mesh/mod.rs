//! The client sidecar → server sidecar → backend topology is the test kit's
//! (`testkit::mesh`); `mod mesh;` brings it in under the name the tests use.

#![allow(unused_imports)]
pub use testkit::mesh::*;
pub use testkit::prometheus;

//! The end-to-end tests' harness is the test kit (`testkit/`, shared with the demo and the
//! bench); `mod support;` brings its real-Envoy part in under the name the tests use.

// Each test binary uses only part of the kit.
#![allow(unused_imports)]
pub use testkit::backend::*;
pub use testkit::bookinfo::*;
pub use testkit::certs::*;
pub use testkit::client::*;
pub use testkit::envoy::*;
pub use testkit::files::*;
pub use testkit::http::*;
pub use testkit::render::*;

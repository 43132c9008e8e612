//! The test kit: what the native tests, fuzz targets, end-to-end tests, the demo and the
//! bench share. Dev-only: never part of the shipped module.
//!
//! Natively, without Envoy:
//! - [`fake_envoy`]: a [`istio_tcp_telemetry::host::Host`] with Envoy 1.40's measured buffer,
//!   property, filter-state, metric and close rules, running the *shipped* filters
//!   (`istio_tcp_telemetry::filters`) in listener chains;
//! - [`fake_mesh`]: two fake sidecars back to back, both filters in each chain, with a builder;
//! - [`metadata`]: node, endpoint and cluster metadata in the encodings Envoy hands to Wasm.
//!
//! With the real Envoy (every helper panics when a tool is missing: tests fail, never skip):
//! - [`files`]: locating the project, Envoy and the module; free ports; [`files::TempDir`];
//! - [`render`]: the shipped `envoy/` templates, `envoy --mode validate`;
//! - [`envoy`]: an Envoy process and its admin API ([`http`] underneath);
//! - [`client`]: the one client, with an explicit [`client::HalfClose`];
//! - [`backend`]: loopback backends; [`certs`]: SPIFFE certificates made with `openssl`;
//! - [`bookinfo`]: ratings-v2 → mongodb as Istio's TCP metrics task deploys them;
//! - [`mesh`]: client sidecar → server sidecar → backend from the shipped templates, with a
//!   builder ([`mesh::MeshOptions`]); [`prometheus`]: a real Prometheus scraping it;
//! - [`summary`]: one sidecar's Istio TCP metrics as a short table (the demo's last step).
//!
//! Ports: templates accept port 0 for both the admin and the listeners. The kit reads the admin
//! address back (`--admin-address-path`) and the listener ports from `GET /listeners`, so no
//! port is ever guessed.

pub mod backend;
pub mod bookinfo;
pub mod certs;
pub mod client;
pub mod envoy;
pub mod fake_envoy;
pub mod fake_mesh;
pub mod files;
pub mod http;
pub mod mesh;
pub mod metadata;
pub mod prometheus;
pub mod render;
pub mod summary;

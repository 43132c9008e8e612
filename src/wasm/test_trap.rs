//! TEST BUILDS ONLY (cargo feature `test-trap`, never in the shipped module): traps the VM, as a
//! bug would, when a connection's downstream bytes contain [`TRAP_MARKER`]. The failure-policy
//! tests (`tests/e2e_failure.rs`) use it to see what Envoy does with live and new connections
//! after a trap; `make build` never enables the feature, and a test checks the shipped `.wasm`
//! does not contain the marker.

use super::abi::WasmHost;
use crate::host::{Buffer, Host};

/// The bytes that make a test build trap.
pub const TRAP_MARKER: &[u8] = b"ISTIO_TCP_TELEMETRY_TEST_TRAP";

/// Called by the stream adapter before the filter sees downstream bytes.
pub fn trap_on_marker(data_size: usize) {
    let data = WasmHost
        .buffer(Buffer::Downstream, 0, data_size)
        .unwrap_or_default();
    if data.windows(TRAP_MARKER.len()).any(|w| w == TRAP_MARKER) {
        panic!("test-trap: trap marker seen"); // ok: test-only build; trapping is its purpose
    }
}

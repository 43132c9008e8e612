//! TEST BUILDS ONLY (cargo feature `test-trap`, never in the shipped module): traps the VM, as a
//! bug would, when a connection's downstream bytes contain [`TRAP_MARKER`]. The failure-policy
//! tests (`tests/e2e_failure.rs`) use it to see what Envoy does with live and new connections
//! after a trap; `make build` never enables the feature, and a test checks the shipped `.wasm`
//! does not contain the marker.

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, PeerType};

use super::host::{self, Buffer};

/// The bytes that make a test build trap.
pub const TRAP_MARKER: &[u8] = b"ISTIO_TCP_TELEMETRY_TEST_TRAP";

/// Wraps a filter's stream context; every callback is passed on unchanged.
pub struct TrapTrigger(pub Box<dyn StreamContext>);

impl Context for TrapTrigger {}

impl StreamContext for TrapTrigger {
    fn on_new_connection(&mut self) -> Action {
        self.0.on_new_connection()
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        let data = host::get_buffer(Buffer::Downstream, 0, data_size).unwrap_or_default();
        if data.windows(TRAP_MARKER.len()).any(|w| w == TRAP_MARKER) {
            // ok: test-only build (feature test-trap); trapping the VM is its purpose
            panic!("test-trap: trap marker seen");
        }
        self.0.on_downstream_data(data_size, end_of_stream)
    }

    fn on_downstream_close(&mut self, peer_type: PeerType) {
        self.0.on_downstream_close(peer_type)
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.0.on_upstream_data(data_size, end_of_stream)
    }

    fn on_upstream_close(&mut self, peer_type: PeerType) {
        self.0.on_upstream_close(peer_type)
    }

    fn on_log(&mut self) {
        self.0.on_log()
    }
}

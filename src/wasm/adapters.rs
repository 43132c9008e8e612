//! proxy-wasm's contexts as tiny adapters: every callback goes to [`crate::filters`], run with
//! the [`WasmHost`].

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

use super::abi::{self, WasmHost};
use crate::filters::{Dispatch, Stream};
use crate::host::{Action, PeerType};

pub struct Root(Dispatch<WasmHost>);

impl Root {
    pub fn new() -> Self {
        Root(Dispatch::new(WasmHost))
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, config_size: usize) -> bool {
        abi::refresh_log_level();
        self.0.on_configure(config_size)
    }

    fn on_tick(&mut self) {
        self.0.on_tick();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        // Never None: the SDK panics on it (an unconfigured root gives a pass-through stream).
        Some(Box::new(Connection(self.0.create_stream(context_id))))
    }
}

struct Connection(Stream<WasmHost>);

fn action(action: Action) -> proxy_wasm::types::Action {
    match action {
        Action::Continue => proxy_wasm::types::Action::Continue,
        Action::Pause => proxy_wasm::types::Action::Pause,
    }
}

fn peer(peer_type: proxy_wasm::types::PeerType) -> PeerType {
    match peer_type {
        proxy_wasm::types::PeerType::Local => PeerType::Local,
        proxy_wasm::types::PeerType::Remote => PeerType::Remote,
        _ => PeerType::Unknown,
    }
}

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_downstream_data(
        &mut self,
        data_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        #[cfg(feature = "test-trap")]
        super::test_trap::trap_on_marker(data_size);
        action(self.0.on_downstream_data(data_size, end_of_stream))
    }

    fn on_upstream_data(
        &mut self,
        data_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        action(self.0.on_upstream_data(data_size, end_of_stream))
    }

    fn on_downstream_close(&mut self, peer_type: proxy_wasm::types::PeerType) {
        self.0.on_downstream_close(peer(peer_type));
    }

    fn on_upstream_close(&mut self, peer_type: proxy_wasm::types::PeerType) {
        self.0.on_upstream_close(peer(peer_type));
    }

    fn on_log(&mut self) {
        self.0.on_log();
    }
}

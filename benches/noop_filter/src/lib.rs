//! Variant F of `make bench`: the floor of any proxy-wasm network filter in Envoy. One root
//! context and one stream context per connection, built with the same SDK, profile and
//! wasm-opt as the shipped module; every callback returns at once (the SDK's defaults:
//! `Continue`). What B costs above this is our own work; what this costs above A is Envoy's
//! price for a Wasm filter.

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(NoopRoot));
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _config_size: usize) -> bool {
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(NoopStream))
    }
}

struct NoopStream;

impl Context for NoopStream {}

impl StreamContext for NoopStream {}

//! The Wasm side (wasm32 only): [`abi`] implements [`crate::host::Host`] over the proxy-wasm
//! ABI (the only code that calls the host), and [`adapters`] are proxy-wasm's root and stream
//! contexts, each a few lines handing the callback to [`crate::filters`].

// The raw ABI calls and the SDK's exported entry points.
#![allow(unsafe_code)]

mod abi;
mod adapters;
#[cfg(feature = "test-trap")]
mod test_trap;

proxy_wasm::main! {{
    // The SDK's own messages; `on_configure` narrows the level to the host's.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| Box::new(adapters::Root::new()));
}}

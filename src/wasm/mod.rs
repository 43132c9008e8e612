//! The proxy-wasm glue: thin contexts that feed host events to [`crate::logic`] and apply what
//! it decides. Every fallible host call goes through [`host`], which never panics.

mod dispatch;
mod exchange;
mod host;
mod node;
mod stats;
#[cfg(feature = "test-trap")]
mod test_trap;

proxy_wasm::main! {{
    // Host calls are restricted here; `on_configure` narrows the level to the host's own.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| Box::new(dispatch::DispatchRoot::new()));
}}

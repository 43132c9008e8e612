//! Declaring the peer filter-state keys as typed values, so other filters can read a field.
//!
//! Envoy 1.40's Wasm host offers the foreign function `declare_property`. Its argument is the
//! protobuf `envoy.source.extensions.common.wasm.DeclarePropertyArguments` (name = 1,
//! readonly = 2, type = 3, schema = 4, span = 5). A key declared with type `Protobuf` and the
//! schema `type.googleapis.com/google.protobuf.Struct` is then stored by `set_property` as a
//! typed `CelState`: its bytes are unchanged (`%FILTER_STATE(wasm.KEY:PLAIN)%` and
//! `get_property(["KEY"])` still give the serialized Struct), and in addition
//! `%FILTER_STATE(wasm.KEY:TYPED)%` prints it as JSON, and CEL
//! (`filter_state['wasm.KEY'].workload`, the `%CEL(...)%` formatter, RBAC conditions) and Wasm
//! (`get_property(["KEY", "workload"])`) read one field of it.

use super::frame::STRUCT_TYPE_URL;

/// `WasmType.Protobuf` in Envoy's `declare_property.proto`.
const WASM_TYPE_PROTOBUF: i32 = 3;
/// `LifeSpan.FilterChain`: the default for `set_property`, i.e. the connection here.
const LIFE_SPAN_FILTER_CHAIN: i32 = 0;

/// The foreign function's name.
pub const DECLARE_PROPERTY: &str = "declare_property";

/// The argument message, field for field as Envoy's `DeclarePropertyArguments`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeclarePropertyArguments {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bool, tag = "2")]
    pub readonly: bool,
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub schema: Vec<u8>,
    #[prost(int32, tag = "5")]
    pub span: i32,
}

/// Arguments declaring `name` as a `google.protobuf.Struct`.
pub fn declare_struct(name: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&DeclarePropertyArguments {
        name: name.to_string(),
        readonly: false,
        r#type: WASM_TYPE_PROTOBUF,
        schema: STRUCT_TYPE_URL.as_bytes().to_vec(),
        span: LIFE_SPAN_FILTER_CHAIN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_a_struct_typed_property_in_envoys_wire_format() {
        let bytes = declare_struct("downstream_peer");
        let mut want = vec![0x0A, 15];
        want.extend_from_slice(b"downstream_peer");
        want.extend_from_slice(&[0x18, 3, 0x22, STRUCT_TYPE_URL.len() as u8]);
        want.extend_from_slice(STRUCT_TYPE_URL.as_bytes());
        assert_eq!(bytes, want);
    }
}

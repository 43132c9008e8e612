//! The contract between the two filters, as Istio keeps it in `metadata_object.h`: the
//! filter-state keys the exchange writes, what it writes when the peer is found, decidedly
//! absent or untrusted, and how the stats filter reads it back.
//!
//! Keys are Istio's names; Envoy stores `set_property([key])` as `wasm.<key>`, so an access log
//! reads `%FILTER_STATE(wasm.downstream_peer:PLAIN)%`.
//!
//! The peer key is declared typed ([`declare_struct`]): Envoy 1.40's Wasm host offers the
//! foreign function `declare_property`, whose argument is the protobuf
//! `envoy.source.extensions.common.wasm.DeclarePropertyArguments` (name = 1, readonly = 2,
//! type = 3, schema = 4, span = 5). A key declared with type `Protobuf` and the schema
//! `type.googleapis.com/google.protobuf.Struct` is then stored by `set_property` as a typed
//! `CelState`: its bytes are unchanged (`%FILTER_STATE(wasm.KEY:PLAIN)%` and
//! `get_property(["KEY"])` still give the serialized Struct), and in addition
//! `%FILTER_STATE(wasm.KEY:TYPED)%` prints it as JSON, and CEL (`filter_state['wasm.KEY'].workload`,
//! the `%CEL(...)%` formatter, RBAC conditions) and Wasm (`get_property(["KEY", "workload"])`)
//! read one field of it.

#![forbid(unsafe_code)]

use prost::Message;

use super::exchange::config::{PeerTrust, Side};
use super::exchange::frame::STRUCT_TYPE_URL;
use super::stats::Reporter;
use super::workload::WorkloadMetadata;

pub const DOWNSTREAM_PEER: &str = "downstream_peer";
pub const DOWNSTREAM_PEER_ID: &str = "downstream_peer_id";
pub const UPSTREAM_PEER: &str = "upstream_peer";
pub const UPSTREAM_PEER_ID: &str = "upstream_peer_id";
pub const PEER_NOT_FOUND: &str = "peer_not_found";
/// The value of [`PEER_NOT_FOUND`].
pub const TRUE: &[u8] = b"true";

/// Which peer a filter deals with: the server learns its downstream, the client its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSlot {
    Downstream,
    Upstream,
}

impl PeerSlot {
    /// The exchange filter's side decides which peer it writes.
    pub fn of_side(side: Side) -> Self {
        match side {
            Side::Server => PeerSlot::Downstream,
            Side::Client => PeerSlot::Upstream,
        }
    }

    /// The stats filter's reporter decides which peer it reads.
    pub fn of_reporter(reporter: Reporter) -> Self {
        match reporter {
            Reporter::Destination => PeerSlot::Downstream,
            Reporter::Source => PeerSlot::Upstream,
        }
    }

    pub fn peer_key(self) -> &'static str {
        match self {
            PeerSlot::Downstream => DOWNSTREAM_PEER,
            PeerSlot::Upstream => UPSTREAM_PEER,
        }
    }

    pub fn id_key(self) -> &'static str {
        match self {
            PeerSlot::Downstream => DOWNSTREAM_PEER_ID,
            PeerSlot::Upstream => UPSTREAM_PEER_ID,
        }
    }

    /// Every key whose presence means the exchange has decided about this peer.
    pub fn decision_keys(self) -> [&'static str; 3] {
        [self.peer_key(), self.id_key(), PEER_NOT_FOUND]
    }
}

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

/// One filter-state write.
pub type Write = (&'static str, Vec<u8>);

/// What the exchange writes for a peer whose frame arrived (the peer's Struct with Istio's
/// field names, then its node id when it sent one).
pub fn found(slot: PeerSlot, peer: &WorkloadMetadata, id: Option<&str>) -> Vec<Write> {
    let mut writes = vec![(slot.peer_key(), peer.to_peer_struct().encode_to_vec())];
    if let Some(id) = id {
        writes.push((slot.id_key(), id.as_bytes().to_vec()));
    }
    writes
}

/// What the exchange writes when the peer is decidedly absent (gate closed, no frame, a bad
/// frame) or untrusted.
pub fn not_found() -> Vec<Write> {
    vec![(PEER_NOT_FOUND, TRUE.to_vec())]
}

/// Whether a server accepts a peer's claims: with `trust: mtls_only`, only over mutual TLS
/// (`mutual_tls` is asked only then). A client always does (its peer is the endpoint it chose).
pub fn trusted(side: Side, trust: PeerTrust, mutual_tls: impl FnOnce() -> bool) -> bool {
    side == Side::Client || trust == PeerTrust::Any || mutual_tls()
}

/// `connection.mtls` as the host returns it: one byte, 1 for mutual TLS.
pub fn is_mutual_tls(property: Option<&[u8]>) -> bool {
    property.and_then(|b| b.first()) == Some(&1)
}

/// The peer, read back from the bytes under [`PeerSlot::peer_key`]; `None` when absent or
/// not a Struct.
pub fn read_peer(bytes: Option<&[u8]>) -> Option<WorkloadMetadata> {
    let s = prost_types::Struct::decode(bytes?).ok()?;
    Some(WorkloadMetadata::from_peer_struct(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> WorkloadMetadata {
        WorkloadMetadata {
            workload_name: "ratings-v2".into(),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    #[test]
    fn what_the_exchange_writes_the_stats_filter_reads() {
        for (side, reporter) in [
            (Side::Server, Reporter::Destination),
            (Side::Client, Reporter::Source),
        ] {
            let writes = found(PeerSlot::of_side(side), &peer(), Some("sidecar~1"));
            let read = PeerSlot::of_reporter(reporter);
            let value = |key: &str| writes.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            let back = read_peer(value(read.peer_key()).map(Vec::as_slice)).unwrap();
            assert_eq!(back.workload_name, "ratings-v2");
            assert_eq!(value(read.id_key()).unwrap(), b"sidecar~1");
            assert!(read
                .decision_keys()
                .iter()
                .any(|k| writes.iter().any(|(w, _)| w == k)));
        }
    }

    #[test]
    fn not_found_is_a_decision_for_both_slots() {
        let writes = not_found();
        for slot in [PeerSlot::Downstream, PeerSlot::Upstream] {
            assert!(slot.decision_keys().contains(&writes[0].0));
        }
        assert_eq!(writes[0].1, TRUE);
    }

    #[test]
    fn declares_a_struct_typed_property_in_envoys_wire_format() {
        let bytes = declare_struct("downstream_peer");
        let mut want = vec![0x0A, 15];
        want.extend_from_slice(b"downstream_peer");
        want.extend_from_slice(&[0x18, 3, 0x22, STRUCT_TYPE_URL.len() as u8]);
        want.extend_from_slice(STRUCT_TYPE_URL.as_bytes());
        assert_eq!(bytes, want);
    }

    #[test]
    fn trust_and_mtls() {
        assert!(trusted(Side::Server, PeerTrust::Any, || panic!()));
        assert!(!trusted(Side::Server, PeerTrust::MtlsOnly, || false));
        assert!(trusted(Side::Server, PeerTrust::MtlsOnly, || true));
        assert!(trusted(Side::Client, PeerTrust::MtlsOnly, || panic!()));
        assert!(is_mutual_tls(Some(&[1])));
        assert!(!is_mutual_tls(Some(&[0])) && !is_mutual_tls(None));
        assert_eq!(read_peer(Some(&[0xFF, 0xFF])), None);
        assert_eq!(read_peer(None), None);
    }
}

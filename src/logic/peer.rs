//! The contract between the two filters, as Istio keeps it in `metadata_object.h`: the
//! filter-state keys the exchange writes, what it writes when the peer is found, decidedly
//! absent or untrusted, and how the stats filter reads it back.
//!
//! Keys are Istio's names; Envoy stores `set_property([key])` as `wasm.<key>`, so an access log
//! reads `%FILTER_STATE(wasm.downstream_peer:PLAIN)%`.

#![forbid(unsafe_code)]

use prost::Message;

use super::exchange::config::{PeerTrust, Side};
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

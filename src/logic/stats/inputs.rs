//! From the raw properties of one connection (as the host returns them) to the
//! [`ConnectionFacts`] its labels are derived from, and the cache key that identifies them.
//!
//! The glue reads [`LabelInputs`] (a fixed set of properties, see [`LabelInputs::PATHS`]) and
//! nothing else decides: decoding, fallbacks and what may be cached are here.

use super::labels::{ConnectionFacts, Reporter};
use super::response_flags;
use std::rc::Rc;

use crate::logic::endpoint;
use crate::logic::handover::PublishedPeer;
use crate::logic::peer;
use crate::logic::workload::WorkloadMetadata;

/// `xds.listener_direction`: 8 bytes little-endian, 1 inbound, 2 outbound. Anything but
/// outbound reports as the destination, as Istio's inbound default.
pub fn reporter_of_direction(property: Option<&[u8]>) -> Reporter {
    let direction = property
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes);
    match direction {
        Some(2) => Reporter::Source,
        _ => Reporter::Destination,
    }
}

/// Property paths the glue reads for the labels (besides filter state).
pub mod paths {
    pub const LISTENER_DIRECTION: &[&str] = &["xds", "listener_direction"];
    pub const UPSTREAM_HOST_METADATA: &[&str] = &["xds", "upstream_host_metadata"];
    pub const CLUSTER_METADATA: &[&str] = &["xds", "cluster_metadata"];
    pub const CLUSTER_NAME: &[&str] = &["xds", "cluster_name"];
    pub const RESPONSE_FLAGS: &[&str] = &["response", "flags"];
    /// Read at close, for the close attributes.
    pub const TERMINATION_DETAILS: &[&str] = &["connection", "termination_details"];
    pub const TRANSPORT_FAILURE_REASON: &[&str] = &["upstream", "transport_failure_reason"];
    pub const PEER_SAN: &str = "uri_san_peer_certificate";
    pub const LOCAL_SAN: &str = "uri_san_local_certificate";

    /// Whose certificates: the downstream connection's on the server, the upstream's on the
    /// client.
    pub fn tls_prefix(reporter: super::Reporter) -> &'static str {
        match reporter {
            super::Reporter::Destination => "connection",
            super::Reporter::Source => "upstream",
        }
    }
}

/// The connection's properties the labels come from, as the host returned them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelInputs {
    pub reporter: Option<Reporter>,
    /// The peer's Struct from the exchange filter's filter state.
    pub peer: Option<Vec<u8>>,
    /// The same peer handed over in memory by the combined filter (`peer` holds its bytes, for
    /// the key): used instead of decoding `peer`.
    pub handed_peer: Option<Rc<PublishedPeer>>,
    /// Client only, when there is no peer in filter state: the endpoint's metadata.
    pub upstream_host: Option<Vec<u8>>,
    pub peer_principal: String,
    pub local_principal: String,
    pub cluster_name: String,
    pub cluster_metadata: Option<Vec<u8>>,
    /// `response.flags` as read (8 bytes little-endian).
    pub flags: Option<Vec<u8>>,
}

/// Whether the endpoint's metadata is read up front: on the client, when filter state has no peer.
pub fn wants_upstream_host(reporter: Reporter, peer: Option<&[u8]>) -> bool {
    peer.is_none() && reporter == Reporter::Source
}

impl LabelInputs {
    fn reporter(&self) -> Reporter {
        self.reporter.unwrap_or(Reporter::Destination)
    }

    /// Every input, length-prefixed, so that different inputs never make the same key.
    pub fn key(&self) -> Vec<u8> {
        let flags = self
            .flags
            .as_deref()
            .map(response_flags::from_property)
            .unwrap_or(0);
        let parts: [Option<&[u8]>; 6] = [
            self.peer.as_deref(),
            self.upstream_host.as_deref(),
            Some(self.peer_principal.as_bytes()),
            Some(self.local_principal.as_bytes()),
            Some(self.cluster_name.as_bytes()),
            self.cluster_metadata.as_deref(),
        ];
        let mut key =
            Vec::with_capacity(64 + parts.iter().flatten().map(|p| p.len()).sum::<usize>());
        key.push(self.reporter() as u8);
        key.extend_from_slice(&flags.to_le_bytes());
        for part in parts {
            match part {
                Some(p) => {
                    key.extend_from_slice(&(p.len() as u32).to_le_bytes());
                    key.extend_from_slice(p);
                }
                None => key.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
        }
        key
    }

    /// Everything the labels are derived from, and whether the result may be cached under
    /// [`LabelInputs::key`]: not when the facts depend on a property the key does not hold (a
    /// peer Struct that does not decode, on the client, falls back to the endpoint's metadata,
    /// read through `read_upstream_host` only then).
    pub fn into_facts(
        self,
        local: &WorkloadMetadata,
        read_upstream_host: impl FnOnce() -> Option<Vec<u8>>,
    ) -> (ConnectionFacts, bool) {
        let reporter = self.reporter();
        let mut cacheable = true;
        let mut peer = match &self.handed_peer {
            Some(handed) => Some(handed.metadata.clone()),
            None => peer::read_peer(self.peer.as_deref()),
        };
        if peer.is_none() && reporter == Reporter::Source {
            let upstream_host = match self.peer {
                None => self.upstream_host,
                Some(_) => {
                    cacheable = false;
                    read_upstream_host()
                }
            };
            peer = upstream_host
                .as_deref()
                .and_then(endpoint::decode_metadata)
                .as_ref()
                .and_then(endpoint::istio_workload)
                .and_then(WorkloadMetadata::from_endpoint_encoding);
        }
        let service = self
            .cluster_metadata
            .as_deref()
            .and_then(endpoint::decode_metadata)
            .and_then(|md| endpoint::istio_service(&md));
        let flags = self
            .flags
            .as_deref()
            .map(response_flags::from_property)
            .unwrap_or(0);
        let facts = ConnectionFacts {
            reporter,
            local: local.clone(),
            peer,
            peer_principal: self.peer_principal,
            local_principal: self.local_principal,
            cluster_name: self.cluster_name,
            service,
            response_flags: response_flags::short_string(flags),
        };
        (facts, cacheable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::stats::test_fixtures::{ratings, RATINGS_SAN};

    fn inputs(reporter: Reporter, peer: Option<Vec<u8>>) -> LabelInputs {
        LabelInputs {
            reporter: Some(reporter),
            peer,
            peer_principal: RATINGS_SAN.into(),
            cluster_name: "inbound|27017||".into(),
            ..Default::default()
        }
    }

    #[test]
    fn listener_direction() {
        assert_eq!(
            reporter_of_direction(Some(&2u64.to_le_bytes())),
            Reporter::Source
        );
        assert_eq!(
            reporter_of_direction(Some(&1u64.to_le_bytes())),
            Reporter::Destination
        );
        assert_eq!(reporter_of_direction(Some(b"x")), Reporter::Destination);
        assert_eq!(reporter_of_direction(None), Reporter::Destination);
    }

    #[test]
    fn peer_struct_becomes_the_peer_and_is_cacheable() {
        let writes = peer::found(peer::PeerSlot::Downstream, &ratings(), None);
        let i = inputs(Reporter::Destination, Some(writes[0].1.clone()));
        let (facts, cacheable) = i.into_facts(&WorkloadMetadata::default(), || panic!());
        assert!(cacheable);
        assert_eq!(facts.peer.unwrap().workload_name, "ratings-v2");
        assert_eq!(facts.response_flags, "-");
    }

    #[test]
    fn undecodable_peer_on_the_client_falls_back_uncached() {
        let i = inputs(Reporter::Source, Some(vec![0xFF, 0xFF]));
        let mut read = false;
        let (facts, cacheable) = i.into_facts(&WorkloadMetadata::default(), || {
            read = true;
            None
        });
        assert!(read && !cacheable && facts.peer.is_none());
    }

    #[test]
    fn keys_differ_whenever_an_input_does() {
        let a = inputs(Reporter::Destination, None);
        let mut b = a.clone();
        b.cluster_name.push('x');
        let mut c = a.clone();
        c.peer = Some(Vec::new());
        let mut d = a.clone();
        d.reporter = Some(Reporter::Source);
        let mut e = a.clone();
        e.flags = Some(1u64.to_le_bytes().to_vec());
        let keys = [a.key(), b.key(), c.key(), d.key(), e.key()];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }
}

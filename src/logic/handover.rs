//! What the exchange decided about a connection's peer, as values: published in filter state
//! (for other filters and access logs) and, in the combined filter, handed to the stats in
//! memory, so the stats never polls filter state nor decodes the Struct back.
//!
//! A [`PublishMemo`] (owned by the exchange's root, one per Wasm VM) converts and encodes each
//! distinct peer once: every connection from one workload carries the same metadata, and the
//! conversion plus the Struct encoding were the largest part of publishing.

use std::rc::Rc;

use prost_types::Struct;

use super::peer::{self, PeerSlot, Write};
use super::workload::WorkloadMetadata;

/// A peer that sent its metadata, ready to publish and to label with.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedPeer {
    pub metadata: WorkloadMetadata,
    /// The filter-state writes ([`peer::found`]), encoded once.
    pub writes: Vec<Write>,
    slot: PeerSlot,
}

impl PublishedPeer {
    pub fn new(slot: PeerSlot, metadata: WorkloadMetadata, id: Option<&str>) -> Self {
        let writes = peer::found(slot, &metadata, id);
        PublishedPeer {
            metadata,
            writes,
            slot,
        }
    }

    /// The bytes other filters read under the peer key (the stats' cache key uses them).
    pub fn peer_bytes(&self) -> Option<&[u8]> {
        let key = self.slot.peer_key();
        self.writes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// The exchange's decision about the peer.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerDecision {
    Found(Rc<PublishedPeer>),
    /// Gate closed, no frame, a bad frame, or an untrusted peer.
    NotFound,
}

/// Distinct peers remembered per VM (the workloads a worker talks to most).
pub const PUBLISH_ENTRIES: usize = 4;

/// The last [`PUBLISH_ENTRIES`] peers, by the frame they sent (its Struct and id). The result
/// depends only on the frame and the slot (fixed per root), so a hit is exactly what a fresh
/// conversion would give; nothing from the connection or xDS goes in. Correct under xDS updates
/// (a new filter configuration is a new root with an empty memo; clusters and listeners play no
/// part) and certificate rotation (certificates are not in it: trust is decided per connection
/// before the memo, and the principals are read per connection by the stats).
#[derive(Debug)]
pub struct PublishMemo {
    slot: PeerSlot,
    entries: Vec<(Struct, Option<String>, Rc<PublishedPeer>)>,
}

impl PublishMemo {
    pub fn new(slot: PeerSlot) -> Self {
        PublishMemo {
            slot,
            entries: Vec::new(),
        }
    }

    pub fn publish(&mut self, metadata: &Struct, id: Option<&str>) -> Rc<PublishedPeer> {
        if let Some((_, _, p)) = self
            .entries
            .iter()
            .find(|(m, i, _)| i.as_deref() == id && m == metadata)
        {
            return Rc::clone(p);
        }
        let found = WorkloadMetadata::from_exchange_struct(metadata);
        let published = Rc::new(PublishedPeer::new(self.slot, found, id));
        if self.entries.len() >= PUBLISH_ENTRIES {
            let _evicted = self.entries.remove(0);
        }
        self.entries.push((
            metadata.clone(),
            id.map(str::to_string),
            Rc::clone(&published),
        ));
        published
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::workload::string_value;

    fn frame(workload: &str) -> Struct {
        let mut s = Struct::default();
        s.fields
            .insert("WORKLOAD_NAME".into(), string_value(workload));
        s
    }

    #[test]
    fn a_hit_is_what_a_fresh_conversion_gives_and_bounded() {
        let mut memo = PublishMemo::new(PeerSlot::Downstream);
        for round in 0..3 {
            for i in 0..PUBLISH_ENTRIES + 2 {
                let md = frame(&format!("w{i}"));
                for id in [None, Some("sidecar~1")] {
                    let got = memo.publish(&md, id);
                    let fresh = PublishedPeer::new(
                        PeerSlot::Downstream,
                        WorkloadMetadata::from_exchange_struct(&md),
                        id,
                    );
                    assert_eq!(*got, fresh, "round {round}");
                    assert!(memo.len() <= PUBLISH_ENTRIES);
                }
            }
        }
        let a = memo.publish(&frame("x"), None);
        let b = memo.publish(&frame("x"), None);
        assert!(Rc::ptr_eq(&a, &b), "encoded once per distinct peer");
        assert_eq!(peer::read_peer(a.peer_bytes()).unwrap().workload_name, "x");
    }
}

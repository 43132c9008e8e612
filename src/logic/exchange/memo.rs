//! A memo of [`parse_payload`] for the few payloads a worker sees again and again.
//!
//! Every connection from one workload carries the same frame byte for byte (the encoding is
//! deterministic), and decoding it (protobuf `Any`, then a `Struct`, in Wasm) was the largest
//! single cost of a connection in `make bench`. A [`PayloadMemo`] keeps the last [`ENTRIES`]
//! payloads of up to [`MAX_PAYLOAD`] bytes with their result. Its owner is the exchange filter's
//! root (one per Wasm VM), which lends it to each connection's decoder: no hidden global state.
//! A hit returns a clone of the same result, so callers see exactly what [`parse_payload`] says.
//! It holds only bytes from the wire and their decoding: no xDS value or certificate goes in, so
//! updates and rotations cannot make an entry stale (a new configuration also gets a new root).

use prost_types::Struct;

use super::frame::{parse_payload, Malformed};

/// Distinct payloads remembered (the peers a worker talks to most).
pub const ENTRIES: usize = 4;
/// Larger payloads are decoded every time (real frames are a few hundred bytes).
pub const MAX_PAYLOAD: usize = 4096;

pub type Parsed = Result<(Struct, Option<String>), Malformed>;

#[derive(Debug, Default)]
pub struct PayloadMemo {
    entries: Vec<(Vec<u8>, Parsed)>,
}

impl PayloadMemo {
    /// [`parse_payload`], remembered.
    pub fn parse(&mut self, payload: &[u8]) -> Parsed {
        if payload.len() > MAX_PAYLOAD {
            return parse_payload(payload);
        }
        if let Some((_, parsed)) = self.entries.iter().find(|(seen, _)| seen == payload) {
            return parsed.clone();
        }
        let parsed = parse_payload(payload);
        if self.entries.len() >= ENTRIES {
            let _evicted = self.entries.remove(0);
        }
        self.entries.push((payload.to_vec(), parsed.clone()));
        parsed
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
    use crate::logic::exchange::frame::encode_payload;

    #[test]
    fn same_answers_as_parse_payload_and_bounded() {
        let mut md = Struct::default();
        md.fields.insert(
            "WORKLOAD_NAME".into(),
            crate::logic::workload::string_value("ratings-v2"),
        );
        let payloads: Vec<Vec<u8>> = (0..ENTRIES + 2)
            .map(|i| encode_payload(&md, &format!("node-{i}")))
            .chain([vec![0xFF; 16], vec![0u8; MAX_PAYLOAD + 1]])
            .collect();
        let mut memo = PayloadMemo::default();
        for _round in 0..3 {
            for p in &payloads {
                assert_eq!(memo.parse(p), parse_payload(p));
                assert!(memo.len() <= ENTRIES);
            }
        }
    }
}

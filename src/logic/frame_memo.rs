//! A memo of [`parse_payload`] for the few payloads a worker sees again and again.
//!
//! Every connection from one workload carries the same frame byte for byte (the encoding is
//! deterministic), and decoding it (protobuf `Any`, then a `Struct`, in Wasm) was the largest
//! single cost of a connection in `make bench`. The memo keeps the last [`ENTRIES`] payloads of
//! up to [`MAX_PAYLOAD`] bytes with their result, per thread (one per Wasm VM); a hit returns a
//! clone of the same result, so callers see exactly what [`parse_payload`] says.

use std::cell::RefCell;

use prost_types::Struct;

use super::frame::{parse_payload, Malformed};

/// Distinct payloads remembered (the peers a worker talks to most).
pub const ENTRIES: usize = 4;
/// Larger payloads are decoded every time (real frames are a few hundred bytes).
pub const MAX_PAYLOAD: usize = 4096;

type Parsed = Result<(Struct, Option<String>), Malformed>;

thread_local! {
    static MEMO: RefCell<Vec<(Vec<u8>, Parsed)>> = const { RefCell::new(Vec::new()) };
}

/// [`parse_payload`], remembered.
pub fn parse_payload_memo(payload: &[u8]) -> Parsed {
    if payload.len() > MAX_PAYLOAD {
        return parse_payload(payload);
    }
    let hit = MEMO.with(|m| {
        let m = m.borrow();
        m.iter()
            .find(|(seen, _)| seen.as_slice() == payload)
            .map(|(_, parsed)| parsed.clone())
    });
    if let Some(parsed) = hit {
        return parsed;
    }
    let parsed = parse_payload(payload);
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= ENTRIES {
            let _evicted = m.remove(0);
        }
        m.push((payload.to_vec(), parsed.clone()));
    });
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::frame::{encode_payload, PEER_METADATA_KEY};

    #[test]
    fn same_answers_as_parse_payload() {
        let mut md = Struct::default();
        md.fields.insert(
            "WORKLOAD_NAME".into(),
            crate::logic::workload::string_value("ratings-v2"),
        );
        let payloads: Vec<Vec<u8>> = (0..ENTRIES + 2)
            .map(|i| encode_payload(&md, &format!("node-{i}")))
            .chain([vec![0xFF; 16], vec![0u8; MAX_PAYLOAD + 1]])
            .collect();
        for _round in 0..3 {
            for p in &payloads {
                assert_eq!(parse_payload_memo(p), parse_payload(p));
            }
        }
        assert!(!PEER_METADATA_KEY.is_empty());
    }
}

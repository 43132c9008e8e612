//! The `istio-peer-exchange` frame: what each side sends first on a mesh TCP connection.
//!
//! ```text
//! +----------------+----------------+--------------------------------------------+
//! | magic (u32 BE) | length (u32 BE)| google.protobuf.Any { Struct }  (length B) |
//! |   0x3D230467   |                |                                            |
//! +----------------+----------------+--------------------------------------------+
//! ```
//! The Struct carries `x-envoy-peer-metadata` (a Struct of workload metadata) and, when the node
//! id is not empty, `x-envoy-peer-metadata-id`. Encoding is deterministic (map keys sorted), as
//! Istio's is, so the same metadata always gives the same bytes.
//!
//! [`FrameDecoder`] is incremental: it is fed the bytes of one direction in whatever pieces they
//! arrive, decides "not a frame" at the first byte that breaks the magic, buffers at most
//! `max_payload` bytes, and never reads past the end of the frame.

use prost::Message;
use prost_types::{value::Kind, Any, Struct, Value};

use super::memo::PayloadMemo;

pub const MAGIC: u32 = 0x3D23_0467;
pub const MAGIC_BYTES: [u8; 4] = MAGIC.to_be_bytes();
pub const HEADER_LEN: usize = 8;
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
pub const PEER_METADATA_KEY: &str = "x-envoy-peer-metadata";
pub const PEER_METADATA_ID_KEY: &str = "x-envoy-peer-metadata-id";
/// Istio accepts any length; we refuse payloads over this by default so a peer cannot make us
/// buffer without bound.
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 * 1024;

/// A fully received, well-formed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerFrame {
    /// The `x-envoy-peer-metadata` Struct (empty when the peer sent none).
    pub metadata: Struct,
    /// The `x-envoy-peer-metadata-id` string, if the peer sent one.
    pub id: Option<String>,
    /// Header plus payload: how many bytes of the stream the frame occupied.
    pub frame_len: usize,
}

/// Why a frame with a good magic and length could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// The payload is not a protobuf `Any`.
    BadAny,
    /// The `Any` does not hold a `google.protobuf.Struct`.
    WrongTypeUrl(String),
    /// The `Any` value is not a valid `Struct` (or is nested deeper than prost allows).
    BadStruct,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::BadAny => write!(f, "payload is not a google.protobuf.Any"),
            Malformed::WrongTypeUrl(url) => {
                write!(f, "Any type_url is {url:?}, expected {STRUCT_TYPE_URL:?}")
            }
            Malformed::BadStruct => write!(f, "Any value is not a valid google.protobuf.Struct"),
        }
    }
}

/// What the decoder knows after the bytes fed so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Every byte so far is a prefix of a frame: feed more.
    NeedMore,
    /// The bytes do not start with the magic; nothing of them belongs to a frame.
    NotAFrame,
    /// Magic matched but the declared payload length is over the cap.
    TooLarge { declared: u32 },
    /// A whole frame arrived (`frame_len` bytes) but its payload is unusable.
    Malformed { frame_len: usize, reason: Malformed },
    /// A whole, valid frame arrived.
    Complete(PeerFrame),
}

impl Decoded {
    /// True once the decoder will not change its answer.
    pub fn is_final(&self) -> bool {
        !matches!(self, Decoded::NeedMore)
    }
}

/// Incremental decoder for one direction of one connection.
#[derive(Debug)]
pub struct FrameDecoder {
    max_payload: u32,
    header: [u8; HEADER_LEN],
    header_len: usize,
    payload: Vec<u8>,
    outcome: Option<Decoded>,
}

impl FrameDecoder {
    pub fn new(max_payload: u32) -> Self {
        FrameDecoder {
            max_payload,
            header: [0; HEADER_LEN],
            header_len: 0,
            payload: Vec::new(),
            outcome: None,
        }
    }

    /// Bytes consumed so far (all of them belong to the frame while the answer is `NeedMore`).
    pub fn consumed(&self) -> usize {
        self.header_len + self.payload.len()
    }

    /// Feeds the next bytes of the stream. Returns how many of `bytes` were taken and the answer.
    /// After a final answer, further calls take nothing and repeat it. A whole payload is parsed
    /// through `memo` (owned by the filter's root).
    pub fn feed(&mut self, bytes: &[u8], memo: &mut PayloadMemo) -> (usize, Decoded) {
        if let Some(done) = &self.outcome {
            return (0, done.clone());
        }
        let mut taken = 0;
        while self.header_len < HEADER_LEN {
            let Some(&byte) = bytes.get(taken) else {
                return (taken, Decoded::NeedMore);
            };
            if self.header_len < MAGIC_BYTES.len() && byte != MAGIC_BYTES[self.header_len] {
                return (taken, self.finish(Decoded::NotAFrame));
            }
            self.header[self.header_len] = byte;
            self.header_len += 1;
            taken += 1;
        }
        let declared = self.declared_len();
        if declared > self.max_payload {
            return (taken, self.finish(Decoded::TooLarge { declared }));
        }
        let wanted = declared as usize - self.payload.len();
        let chunk = &bytes[taken..];
        let take = wanted.min(chunk.len());
        // Grow with the bytes that arrived, never to the declared length up front: 8 bytes
        // declaring the cap must not make a stalled peer cost the cap in the VM's heap.
        self.payload.extend_from_slice(&chunk[..take]);
        taken += take;
        if self.payload.len() < declared as usize {
            return (taken, Decoded::NeedMore);
        }
        let frame_len = HEADER_LEN + declared as usize;
        let answer = match memo.parse(&self.payload) {
            Ok((metadata, id)) => Decoded::Complete(PeerFrame {
                metadata,
                id,
                frame_len,
            }),
            Err(reason) => Decoded::Malformed { frame_len, reason },
        };
        self.payload = Vec::new();
        (taken, self.finish(answer))
    }

    /// True if a frame header has started (magic bytes matched so far) but no answer is final.
    pub fn is_mid_frame(&self) -> bool {
        self.outcome.is_none() && self.header_len > 0
    }

    fn declared_len(&self) -> u32 {
        u32::from_be_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }

    fn finish(&mut self, answer: Decoded) -> Decoded {
        self.outcome = Some(answer.clone());
        answer
    }
}

/// Decodes one whole payload: `Any { type_url: Struct, value }` → (metadata, id).
pub fn parse_payload(payload: &[u8]) -> Result<(Struct, Option<String>), Malformed> {
    let any = Any::decode(payload).map_err(|_| Malformed::BadAny)?;
    if any.type_url != STRUCT_TYPE_URL {
        return Err(Malformed::WrongTypeUrl(truncate_for_log(&any.type_url)));
    }
    let mut outer = Struct::decode(any.value.as_slice()).map_err(|_| Malformed::BadStruct)?;
    let metadata = match outer.fields.remove(PEER_METADATA_KEY).and_then(|v| v.kind) {
        Some(Kind::StructValue(s)) => s,
        _ => Struct::default(),
    };
    let id = match outer
        .fields
        .remove(PEER_METADATA_ID_KEY)
        .and_then(|v| v.kind)
    {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    };
    Ok((metadata, id))
}

/// Encodes a whole frame: header plus deterministic `Any { Struct }`.
pub fn encode_frame(metadata: &Struct, id: &str) -> Vec<u8> {
    let payload = encode_payload(metadata, id);
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&MAGIC_BYTES);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// The `Any` payload alone. prost-types keeps `Struct.fields` in a `BTreeMap`, so map entries are
/// written in key order: the same bytes as protobuf's deterministic serialization.
pub fn encode_payload(metadata: &Struct, id: &str) -> Vec<u8> {
    let mut outer = Struct::default();
    outer.fields.insert(
        PEER_METADATA_KEY.to_string(),
        Value {
            kind: Some(Kind::StructValue(metadata.clone())),
        },
    );
    if !id.is_empty() {
        outer.fields.insert(
            PEER_METADATA_ID_KEY.to_string(),
            Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        );
    }
    Any {
        type_url: STRUCT_TYPE_URL.to_string(),
        value: outer.encode_to_vec(),
    }
    .encode_to_vec()
}

fn truncate_for_log(s: &str) -> String {
    s.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_string())),
        }
    }

    fn sample() -> Struct {
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), string("ratings"));
        labels.fields.insert("version".into(), string("v2"));
        let mut md = Struct::default();
        md.fields.insert("NAMESPACE".into(), string("default"));
        md.fields
            .insert("WORKLOAD_NAME".into(), string("ratings-v2"));
        md.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        md
    }

    fn feed_all(decoder: &mut FrameDecoder, bytes: &[u8], piece: usize) -> (usize, Decoded) {
        let mut total = 0;
        let mut last = Decoded::NeedMore;
        for chunk in bytes.chunks(piece.max(1)) {
            let (taken, answer) = decoder.feed(chunk, &mut PayloadMemo::default());
            total += taken;
            last = answer;
            if last.is_final() {
                break;
            }
        }
        (total, last)
    }

    #[test]
    fn round_trips_in_every_fragmentation() {
        let frame = encode_frame(&sample(), "sidecar~10.0.0.1~ratings-v2.default~default.svc");
        for piece in 1..=frame.len() {
            let mut d = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
            let (taken, answer) = feed_all(&mut d, &frame, piece);
            assert_eq!(taken, frame.len(), "piece {piece}");
            let Decoded::Complete(peer) = answer else {
                panic!("piece {piece}: {answer:?}")
            };
            assert_eq!(peer.metadata, sample());
            assert_eq!(peer.frame_len, frame.len());
            assert_eq!(
                peer.id.as_deref(),
                Some("sidecar~10.0.0.1~ratings-v2.default~default.svc")
            );
        }
    }

    #[test]
    fn never_takes_bytes_after_the_frame() {
        let mut stream = encode_frame(&sample(), "");
        let frame_len = stream.len();
        stream.extend_from_slice(b"PING\r\n");
        let mut d = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        let (taken, answer) = d.feed(&stream, &mut PayloadMemo::default());
        assert_eq!(taken, frame_len);
        assert!(matches!(answer, Decoded::Complete(ref p) if p.id.is_none()));
        assert_eq!(d.feed(b"more", &mut PayloadMemo::default()), (0, answer));
    }

    #[test]
    fn empty_id_is_not_written() {
        let payload = encode_payload(&sample(), "");
        assert_eq!(parse_payload(&payload).unwrap().1, None);
    }

    #[test]
    fn magic_mismatch_is_decided_at_the_first_wrong_byte() {
        let mut d = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        assert_eq!(
            d.feed(&[0x3D], &mut PayloadMemo::default()),
            (1, Decoded::NeedMore)
        );
        assert!(d.is_mid_frame());
        assert_eq!(
            d.feed(b"GET /", &mut PayloadMemo::default()),
            (0, Decoded::NotAFrame)
        );
        let mut d = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        assert_eq!(
            d.feed(b"*1\r\n", &mut PayloadMemo::default()),
            (0, Decoded::NotAFrame)
        );
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut header = MAGIC_BYTES.to_vec();
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut d = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        assert_eq!(
            d.feed(&header, &mut PayloadMemo::default()),
            (8, Decoded::TooLarge { declared: u32::MAX })
        );
        assert_eq!(d.payload.capacity(), 0);
    }

    #[test]
    fn memory_follows_the_bytes_that_arrived_not_the_declared_length() {
        // A header declaring the whole cap, then a stall: nothing reserved for the payload.
        let mut d = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        let mut header = MAGIC_BYTES.to_vec();
        header.extend_from_slice(&DEFAULT_MAX_PAYLOAD.to_be_bytes());
        assert_eq!(
            d.feed(&header, &mut PayloadMemo::default()),
            (8, Decoded::NeedMore)
        );
        assert_eq!(d.payload.capacity(), 0);
        assert_eq!(
            d.feed(&[0u8; 100], &mut PayloadMemo::default()),
            (100, Decoded::NeedMore)
        );
        assert!(d.payload.capacity() < 1024, "{}", d.payload.capacity());
    }

    #[test]
    fn garbage_payload_is_malformed() {
        let garbage = [0xFFu8; 16];
        let mut frame = MAGIC_BYTES.to_vec();
        frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
        frame.extend_from_slice(&garbage);
        let (_, answer) =
            FrameDecoder::new(DEFAULT_MAX_PAYLOAD).feed(&frame, &mut PayloadMemo::default());
        assert_eq!(
            answer,
            Decoded::Malformed {
                frame_len: 24,
                reason: Malformed::BadAny
            }
        );
    }

    #[test]
    fn wrong_type_url_is_malformed() {
        let any = Any {
            type_url: "type.googleapis.com/google.protobuf.Duration".into(),
            value: vec![],
        }
        .encode_to_vec();
        assert!(matches!(
            parse_payload(&any),
            Err(Malformed::WrongTypeUrl(_))
        ));
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_crash() {
        // A Struct nested 10_000 deep, built as raw bytes from the inside out:
        // Struct { fields (1) = entry { key (1) "a", value (2) = Value { struct_value (5) } } }
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..10_000 {
            let mut value = vec![0x2A];
            encode_varint(inner.len() as u64, &mut value);
            value.extend_from_slice(&inner);
            let mut entry = vec![0x0A, 0x01, b'a', 0x12];
            encode_varint(value.len() as u64, &mut entry);
            entry.extend_from_slice(&value);
            let mut strukt = vec![0x0A];
            encode_varint(entry.len() as u64, &mut strukt);
            strukt.extend_from_slice(&entry);
            inner = strukt;
        }
        let any = Any {
            type_url: STRUCT_TYPE_URL.into(),
            value: inner,
        }
        .encode_to_vec();
        assert_eq!(parse_payload(&any), Err(Malformed::BadStruct));
    }

    fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    #[test]
    fn same_metadata_same_bytes() {
        assert_eq!(encode_frame(&sample(), "x"), encode_frame(&sample(), "x"));
    }
}

//! Golden `istio-peer-exchange` frames written by an independent encoder (Google's `protobuf`
//! package for Python, see `tests/fixtures/golden/README.md`), checked against our decoder,
//! our workload model and our deterministic encoder. No Envoy needed.
//!
//! For every `tests/fixtures/golden/<case>.bin` (the whole frame) and its `<case>.json`
//! (`{"id", "metadata", "expect"}`):
//! - the frame decodes, whole and one byte at a time, to `Complete` with the file's length and id;
//! - the metadata Struct equals the JSON that protobuf's `json_format` wrote;
//! - the workload model reads the fields listed under `expect`;
//! - re-encoding the decoded metadata and id gives the file's bytes exactly.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use istio_tcp_telemetry::logic::exchange::frame::{
    encode_frame, Decoded, FrameDecoder, PeerFrame, DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAGIC_BYTES,
};
use istio_tcp_telemetry::logic::exchange::memo::PayloadMemo;
use istio_tcp_telemetry::logic::workload::WorkloadMetadata;
use prost_types::{value::Kind, Struct, Value};
use serde_json::Value as Json;

/// Every case `make_golden.py` writes. A fixture deleted, renamed or added without updating this
/// list fails `every_fixture_is_present`.
const CASES: &[&str] = &[
    "large_labels",
    "legacy_1_9",
    "modern_mongodb_empty_id",
    "modern_ratings",
    "numbers_bools_nulls",
    "unicode",
];

struct Case {
    name: String,
    frame: Vec<u8>,
    json: Json,
}

impl Case {
    fn expected_id(&self) -> Option<&str> {
        match &self.json["id"] {
            Json::Null => None,
            Json::String(s) => Some(s),
            other => panic!(
                "{}: \"id\" is neither null nor a string: {other}",
                self.name
            ),
        }
    }

    fn expect_str(&self, field: &str) -> &str {
        self.json["expect"][field]
            .as_str()
            .unwrap_or_else(|| panic!("{}: expect.{field} is not a string", self.name))
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// Every `*.bin` in the golden folder with its `.json`, in name order.
fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let mut bins: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "bin"))
        .collect();
    bins.sort();
    bins.into_iter()
        .map(|bin| {
            let name = bin.file_stem().unwrap().to_string_lossy().into_owned();
            let frame = fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            let json_path = bin.with_extension("json");
            let text = fs::read_to_string(&json_path)
                .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
            Case { name, frame, json }
        })
        .collect()
}

fn decode_whole(case: &Case) -> PeerFrame {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
    let (taken, answer) = decoder.feed(&case.frame, &mut PayloadMemo::default());
    assert_eq!(taken, case.frame.len(), "{}: bytes taken", case.name);
    match answer {
        Decoded::Complete(frame) => frame,
        other => panic!("{}: expected Complete, got {other:?}", case.name),
    }
}

/// A Struct as JSON, the way protobuf's `json_format` writes it; numbers as f64.
fn struct_to_json(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::NumberValue(n)) => Json::Number(
            serde_json::Number::from_f64(*n)
                .unwrap_or_else(|| panic!("{n} has no JSON form (json_format refuses it too)")),
        ),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// Structural equality that compares every number as f64 (`15020` and `15020.0` are equal) and
/// names the path of the first difference.
fn assert_json_eq(case: &str, path: &str, got: &Json, want: &Json) {
    match (got, want) {
        (Json::Number(g), Json::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(g == w, "{case}: {path}: got {g:e}, want {w:e}");
        }
        (Json::Array(g), Json::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{case}: {path}: list length");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_json_eq(case, &format!("{path}[{i}]"), g, w);
            }
        }
        (Json::Object(g), Json::Object(w)) => {
            let g_keys: BTreeSet<&String> = g.keys().collect();
            let w_keys: BTreeSet<&String> = w.keys().collect();
            assert_eq!(g_keys, w_keys, "{case}: {path}: keys");
            for (k, w) in w {
                assert_json_eq(case, &format!("{path}.{k}"), &g[k], w);
            }
        }
        _ => assert_eq!(got, want, "{case}: {path}"),
    }
}

#[test]
fn every_fixture_is_present() {
    let all = cases();
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, CASES, "golden cases in {}", golden_dir().display());
    for case in &all {
        assert!(
            case.frame.len() > HEADER_LEN && case.frame[..4] == MAGIC_BYTES,
            "{}: not a frame",
            case.name
        );
    }
}

#[test]
fn decodes_whole_and_byte_by_byte() {
    for case in cases() {
        let whole = decode_whole(&case);
        assert_eq!(
            whole.frame_len,
            case.frame.len(),
            "{}: frame_len",
            case.name
        );
        assert_eq!(whole.id.as_deref(), case.expected_id(), "{}: id", case.name);

        let mut decoder = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        let mut memo = PayloadMemo::default();
        let (last, rest) = case.frame.split_last().unwrap();
        for (i, byte) in rest.iter().enumerate() {
            let answer = decoder.feed(std::slice::from_ref(byte), &mut memo);
            assert_eq!(answer, (1, Decoded::NeedMore), "{}: byte {i}", case.name);
        }
        let (taken, answer) = decoder.feed(std::slice::from_ref(last), &mut memo);
        assert_eq!(taken, 1, "{}: last byte", case.name);
        assert_eq!(
            answer,
            Decoded::Complete(whole.clone()),
            "{}: byte by byte",
            case.name
        );

        // Bytes after the frame belong to the application: not one is taken.
        let mut stream = case.frame.clone();
        stream.extend_from_slice(b"\x00PING\r\n");
        let (taken, answer) =
            FrameDecoder::new(DEFAULT_MAX_PAYLOAD).feed(&stream, &mut PayloadMemo::default());
        assert_eq!(
            taken,
            case.frame.len(),
            "{}: bytes after the frame",
            case.name
        );
        assert_eq!(
            answer,
            Decoded::Complete(whole),
            "{}: with a tail",
            case.name
        );
    }
}

#[test]
fn metadata_matches_protobuf_json() {
    for case in cases() {
        let frame = decode_whole(&case);
        assert_json_eq(
            &case.name,
            "metadata",
            &struct_to_json(&frame.metadata),
            &case.json["metadata"],
        );
    }
}

#[test]
fn model_reads_the_expected_fields() {
    for case in cases() {
        let frame = decode_whole(&case);
        let w = WorkloadMetadata::from_exchange_struct(&frame.metadata);
        let fields: [(&str, &str); 8] = [
            ("workload_name", &w.workload_name),
            ("namespace", &w.namespace),
            ("canonical_name", &w.canonical_name),
            ("canonical_revision", &w.canonical_revision),
            ("app_name", &w.app_name),
            ("app_version", &w.app_version),
            ("cluster_id", &w.cluster_id),
            ("identity", &w.identity),
        ];
        for (field, got) in fields {
            assert_eq!(got, case.expect_str(field), "{}: {field}", case.name);
        }
        let want_type = match &case.json["expect"]["workload_type"] {
            Json::Null => None,
            Json::String(s) => Some(s.as_str()),
            other => panic!("{}: expect.workload_type is {other}", case.name),
        };
        assert_eq!(
            w.workload_type.as_str(),
            want_type,
            "{}: workload_type",
            case.name
        );
        let expect = case.json["expect"].as_object().unwrap();
        assert_eq!(
            expect.len(),
            fields.len() + 1,
            "{}: expect fields",
            case.name
        );
    }
}

#[test]
fn re_encoding_is_byte_identical_to_protobuf() {
    for case in cases() {
        let frame = decode_whole(&case);
        let ours = encode_frame(&frame.metadata, frame.id.as_deref().unwrap_or(""));
        if ours != case.frame {
            let at = ours
                .iter()
                .zip(&case.frame)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(case.frame.len()));
            let window = |b: &[u8]| b[at.saturating_sub(16)..(at + 16).min(b.len())].to_vec();
            panic!(
                "{}: our encoding differs from protobuf's at byte {at} (ours {} B, protobuf {} B)\n\
                 ours:     {:02x?}\nprotobuf: {:02x?}",
                case.name,
                ours.len(),
                case.frame.len(),
                window(&ours),
                window(&case.frame),
            );
        }
    }
}

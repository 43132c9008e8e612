//! The proxy-wasm pairs decoding (`xds.node.metadata` and friends) on arbitrary bytes.
//!
//! Invariants: no panic; a blob that decodes re-encodes to exactly the same bytes (the format
//! has one encoding per value); the tree stays within `MAX_DEPTH`; the node-metadata model
//! built from any tree yields well-formed stat names.

#![no_main]

mod common;

use istio_tcp_telemetry::logic::pairs::{
    decode_pairs, decode_tree, encode_pairs, NodeValue, MAX_DEPTH,
};
use istio_tcp_telemetry::logic::stats::MetricPlan;
use istio_tcp_telemetry::logic::workload::WorkloadMetadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = decode_pairs(data) {
        assert_eq!(
            encode_pairs(&pairs),
            data,
            "decode then encode is the identity"
        );
    }
    if let Ok(tree) = decode_tree(data) {
        assert!(depth(&tree) <= MAX_DEPTH + 1, "depth cap");
        // Every accessor on every node is total.
        visit(&tree);
        let local = WorkloadMetadata::from_node_metadata(&tree);
        common::check_series(&MetricPlan::standard(), &local, "", true);
    }
});

fn depth(node: &NodeValue) -> usize {
    match node.as_map() {
        Some(entries) => 1 + entries.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
        None => 0,
    }
}

fn visit(node: &NodeValue) {
    let _ = (node.as_str(), node.as_f64(), node.as_bool(), node.as_list());
    let _ = node.get_str("NAMESPACE");
    if let Some(entries) = node.as_map() {
        for (_, v) in entries {
            visit(v);
        }
    }
}

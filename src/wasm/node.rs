//! The local node, read once per plugin configuration.

use crate::logic::pairs::decode_tree;
use crate::logic::workload::WorkloadMetadata;

use super::host;

/// The local workload from `xds.node.metadata` (pairs-encoded in Envoy 1.40). Unreadable
/// metadata is logged and read as empty: the filters still run, with `unknown` labels.
pub fn local_workload() -> WorkloadMetadata {
    match host::get_property(&["xds", "node", "metadata"]) {
        Ok(Some(bytes)) => match decode_tree(&bytes) {
            Ok(tree) => WorkloadMetadata::from_node_metadata(&tree),
            Err(e) => {
                log::warn!("xds.node.metadata is not a pairs blob ({e}); node metadata ignored");
                WorkloadMetadata::default()
            }
        },
        Ok(None) => WorkloadMetadata::default(),
        Err(e) => {
            log::warn!("reading xds.node.metadata failed: {e}; node metadata ignored");
            WorkloadMetadata::default()
        }
    }
}

/// The node id (`xds.node.id`), empty if unknown.
pub fn node_id() -> String {
    host::get_property_string(&["xds", "node", "id"]).unwrap_or_default()
}

//! The local node, read once per plugin configuration.

use crate::host::Host;
use crate::host_log;
use crate::logic::pairs::decode_tree;
use crate::logic::workload::WorkloadMetadata;

/// The local workload from `xds.node.metadata` (pairs-encoded in Envoy 1.40). Unreadable
/// metadata is logged and read as empty: the filters still run, with `unknown` labels.
pub fn local_workload(host: &impl Host) -> WorkloadMetadata {
    match host.property(&["xds", "node", "metadata"]) {
        Ok(Some(bytes)) => match decode_tree(&bytes) {
            Ok(tree) => WorkloadMetadata::from_node_metadata(&tree),
            Err(e) => {
                host_log!(
                    host,
                    Warn,
                    "xds.node.metadata is not a pairs blob ({e}); node metadata ignored"
                );
                WorkloadMetadata::default()
            }
        },
        Ok(None) => WorkloadMetadata::default(),
        Err(e) => {
            host_log!(
                host,
                Warn,
                "reading xds.node.metadata failed: {e}; node metadata ignored"
            );
            WorkloadMetadata::default()
        }
    }
}

/// The node id (`xds.node.id`), empty if unknown.
pub fn node_id(host: &impl Host) -> String {
    host.property_string(&["xds", "node", "id"])
        .unwrap_or_default()
}

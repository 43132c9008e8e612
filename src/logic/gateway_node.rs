//! Is this Envoy an Istio gateway? Istio names every proxy's node `<type>~<ip>~<id>~<domain>`,
//! and gateways (ingress, egress, east-west) have the type `router`
//! (`pkg/model/proxy.go`'s `Router` node type in istio/istio).
//!
//! On a gateway the module stays inert: a gateway is not a sidecar, its listeners are not a
//! workload's, and an east-west gateway's `AUTO_PASSTHROUGH` chains carry another proxy's mutual
//! TLS untouched, so a frame written in front of that ClientHello would break cross-network
//! traffic. Root-namespace WasmPlugins reach gateways unless they are scoped; this rule is the
//! second line of defence.

/// The node-id prefix of Istio gateways.
pub const GATEWAY_NODE_PREFIX: &str = "router~";

/// True when `node_id` is an Istio gateway's (`router~…`).
pub fn is_gateway_node(node_id: &str) -> bool {
    node_id.starts_with(GATEWAY_NODE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_router_nodes() {
        assert!(is_gateway_node(
            "router~10.0.0.9~istio-ingressgateway-7d9f-x.istio-system~istio-system.svc.cluster.local"
        ));
        assert!(is_gateway_node(
            "router~10.0.0.8~istio-eastwestgateway-5c-x.istio-system~istio-system.svc.cluster.local"
        ));
    }

    #[test]
    fn sidecars_and_others_are_not() {
        for id in [
            "sidecar~10.0.0.2~mongodb-v1-xxx.default~default.svc.cluster.local",
            "",
            "router",
            "Router~10.0.0.9~x.y~y.svc.cluster.local",
            "sidecar~10.0.0.2~router~x",
            "waypoint~10.0.0.3~waypoint-x.default~default.svc.cluster.local",
        ] {
            assert!(!is_gateway_node(id), "{id}");
        }
    }
}

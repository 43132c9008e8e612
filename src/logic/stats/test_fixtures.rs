//! Connections the stats tests share: Bookinfo's `ratings-v2` talking to `mongodb-v1`, seen
//! from either sidecar.

use std::collections::BTreeMap;

use super::labels::{ConnectionFacts, Reporter};
use crate::logic::endpoint::ServiceRef;
use crate::logic::workload::{WorkloadMetadata, WorkloadType};

pub const RATINGS_SAN: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings";
pub const MONGODB_SAN: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-mongodb";
pub const MONGODB_CLUSTER: &str = "outbound|27017||mongodb.default.svc.cluster.local";

fn workload(name: &str, app: &str, version: &str, extra: &[(&str, &str)]) -> WorkloadMetadata {
    let mut labels: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert("app".into(), app.into());
    labels.insert("version".into(), version.into());
    WorkloadMetadata {
        instance_name: format!("{name}-7d9f8"),
        namespace: "default".into(),
        workload_name: name.into(),
        cluster_id: "Kubernetes".into(),
        owner: format!("kubernetes://apis/apps/v1/namespaces/default/deployments/{name}"),
        workload_type: WorkloadType::Deployment,
        canonical_name: app.into(),
        canonical_revision: version.into(),
        app_name: app.into(),
        app_version: version.into(),
        labels,
        ..Default::default()
    }
}

pub fn ratings() -> WorkloadMetadata {
    workload("ratings-v2", "ratings", "v2", &[("team", "reviews")])
}

pub fn mongodb() -> WorkloadMetadata {
    workload("mongodb-v1", "mongodb", "v1", &[("team", "db")])
}

pub fn mongodb_service() -> ServiceRef {
    ServiceRef {
        host: "mongodb.default.svc.cluster.local".into(),
        name: "mongodb".into(),
        namespace: "default".into(),
    }
}

/// The mongodb sidecar's view of an mTLS connection from ratings.
pub fn server_facts() -> ConnectionFacts {
    ConnectionFacts {
        reporter: Reporter::Destination,
        local: mongodb(),
        peer: Some(ratings()),
        peer_principal: RATINGS_SAN.into(),
        local_principal: MONGODB_SAN.into(),
        cluster_name: "inbound|27017||".into(),
        service: Some(mongodb_service()),
        response_flags: "-".into(),
    }
}

/// The ratings sidecar's view of the same connection.
pub fn client_facts() -> ConnectionFacts {
    ConnectionFacts {
        reporter: Reporter::Source,
        local: ratings(),
        peer: Some(mongodb()),
        peer_principal: MONGODB_SAN.into(),
        local_principal: RATINGS_SAN.into(),
        cluster_name: MONGODB_CLUSTER.into(),
        service: Some(mongodb_service()),
        response_flags: "-".into(),
    }
}

/// The value of `name` in a stat name, as the bootstrap's tag regex would extract it.
pub fn tag<'a>(stat_name: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=.=");
    let mut offset = 0;
    // Only a match at the start of a label part counts (names never end with another).
    loop {
        let i = offset + stat_name.get(offset..)?.find(&key)?;
        if i == 0 || stat_name[..i].ends_with(";.;") {
            let rest = &stat_name[i + key.len()..];
            return rest.find(";.;").map(|end| &rest[..end]);
        }
        offset = i + key.len();
    }
}

//! The host-call budget of one connection (docs/BENCHMARKS.md, "Host-call budget"), pinned as
//! counts: every VM callback and host call a request/response connection costs each sidecar,
//! for the combined filter and the two separate filters, plaintext and mutual TLS, once the
//! worker has seen the peer before (the steady state of `make bench`). A change that adds a host
//! call to the per-connection path fails here and must update the budget in the docs.

use std::collections::BTreeMap;

use testkit::fake_mesh::{Mesh, MeshBuilder};

fn one_connection(mesh: &mut Mesh) {
    let mut link = mesh.connect();
    mesh.client_sends(&mut link, b"world\n", false);
    mesh.backend_sends(&mut link, b"hello world\n", false);
    mesh.close(&mut link);
}

/// Callbacks and host calls of the second connection (the first fills the per-VM caches).
/// Plaintext with the default client gate (`tls_mode_istio`); mutual TLS with Istio's
/// (`istio_mtls`, as the shipped Istio manifests).
fn budget(combined: bool, mtls: bool) -> [BTreeMap<(&'static str, String), u64>; 2] {
    let gate = if mtls {
        r#"{"side": "client", "client_gate": "istio_mtls"}"#
    } else {
        r#"{"side": "client"}"#
    };
    let mut mesh = MeshBuilder::new()
        .combined(combined)
        .mtls(mtls)
        .client_exchange(Some(gate))
        .build()
        .unwrap();
    one_connection(&mut mesh);
    mesh.client.reset_calls();
    mesh.server.reset_calls();
    one_connection(&mut mesh);
    [mesh.client.calls(), mesh.server.calls()]
}

/// (combined, mtls) and [(callbacks, host calls)] of the client and the server sidecar.
type Pinned = ((bool, bool), [(u64, u64); 2]);

fn totals(calls: &BTreeMap<(&'static str, String), u64>) -> (u64, u64) {
    let callbacks = calls
        .iter()
        .filter(|((_, call), _)| call == "callback")
        .map(|(_, n)| n)
        .sum();
    let host_calls = calls
        .iter()
        .filter(|((_, call), _)| call != "callback" && call != "log")
        .map(|(_, n)| n)
        .sum();
    (callbacks, host_calls)
}

fn print(name: &str, calls: &BTreeMap<(&'static str, String), u64>) {
    println!("== {name}: (callbacks, host calls) = {:?}", totals(calls));
    for ((callback, call), n) in calls {
        println!("   {callback:20} {call:50} {n}");
    }
}

#[test]
fn per_connection_budget_of_each_variant() {
    // (combined, mtls) → [(client callbacks, client host calls), (server …)]
    let pinned: [Pinned; 4] = [
        ((false, false), [(18, 25), (18, 21)]),
        ((false, true), [(18, 26), (18, 21)]),
        ((true, false), [(9, 19), (9, 18)]),
        ((true, true), [(9, 19), (9, 18)]),
    ];
    let mut got = Vec::new();
    for ((combined, mtls), _) in pinned {
        let [client, server] = budget(combined, mtls);
        let variant = if combined { "combined" } else { "separate" };
        let tls = if mtls { "mTLS" } else { "plaintext" };
        print(&format!("{variant} {tls} client"), &client);
        print(&format!("{variant} {tls} server"), &server);
        got.push(((combined, mtls), [totals(&client), totals(&server)]));
    }
    assert_eq!(got, pinned.to_vec());
}

#[test]
fn the_combined_filter_never_polls_filter_state_nor_reads_the_direction() {
    for mtls in [false, true] {
        for calls in budget(true, mtls) {
            for (callback, call) in calls.keys() {
                let polled = ["upstream_peer", "downstream_peer", "peer_not_found"]
                    .iter()
                    .any(|key| {
                        call.starts_with("get_property")
                            && call.contains(key)
                            && !call.contains("certificate")
                    });
                assert!(!polled, "{callback}: {call}");
                assert!(!call.contains("listener_direction"), "{callback}: {call}");
            }
        }
    }
}

//! Every host call can fail (proxy-wasm statuses); the shipped glue logs, falls back, and never
//! panics or alters an application byte. Failures injected in the fake Envoy.

use istio_tcp_telemetry::host::LogLevel;
use istio_tcp_telemetry::{EXCHANGE_ROOT_ID, STATS_ROOT_ID};
use testkit::fake_envoy::{Direction, FakeEnvoy, HostCall};

const GOLDEN: &[u8] = include_bytes!("fixtures/golden/modern_ratings.bin");

fn server() -> (FakeEnvoy, usize) {
    let mut e = FakeEnvoy::new("sidecar~s", None);
    let l = e
        .add_listener(&[
            (EXCHANGE_ROOT_ID, r#"{"side": "server"}"#),
            (STATS_ROOT_ID, "{}"),
        ])
        .unwrap();
    (e, l)
}

#[test]
fn a_failed_buffer_read_gives_up_and_delivers_the_bytes() {
    let (mut e, l) = server();
    let c = e.connect(l, &[]);
    e.fail(HostCall::Buffer);
    let bytes = [GOLDEN, b"app"].concat();
    e.downstream(c, &bytes, false);
    assert_eq!(e.take_delivered(c, Direction::Downstream), bytes);
    assert_eq!(e.logged(LogLevel::Error, "giving up"), 1);
    assert_eq!(
        e.filter_state(c, "wasm.peer_not_found"),
        Some(b"true".to_vec())
    );
    e.close(c);
    assert_eq!(e.lost(c), 0);
}

#[test]
fn a_failed_strip_or_prepend_is_logged_not_fatal() {
    let (mut e, l) = server();
    let c = e.connect(l, &[]);
    e.fail(HostCall::SetBuffer);
    e.downstream(c, &[GOLDEN, b"app"].concat(), false);
    assert_eq!(e.logged(LogLevel::Error, "stripping"), 1);
    e.upstream(c, b"reply", false);
    assert_eq!(e.take_delivered(c, Direction::Upstream), b"reply");
    assert_eq!(
        e.logged(LogLevel::Error, "prepending our exchange frame failed"),
        1
    );
}

#[test]
fn failed_filter_state_and_counters_do_not_stop_the_connection() {
    let (mut e, l) = server();
    let c = e.connect(l, &[]);
    e.fail(HostCall::SetProperty);
    e.fail(HostCall::Increment);
    e.fail(HostCall::Property);
    e.downstream(c, &[GOLDEN, b"app"].concat(), false);
    assert_eq!(e.take_delivered(c, Direction::Downstream), b"app");
    assert!(e.logged(LogLevel::Error, "setting filter state") >= 1);
    e.tick();
    e.close(c);
    assert_eq!(e.lost(c), 0);
}

#[test]
fn failed_metric_definitions_and_ticks() {
    let mut e = FakeEnvoy::new("sidecar~s", None);
    e.fail(HostCall::DefineMetric);
    let l = e.add_listener(&[(STATS_ROOT_ID, "{}")]).unwrap();
    let c = e.connect(l, &[]);
    e.downstream(c, b"x", false);
    e.close(c);
    assert!(e.logged(LogLevel::Warn, "defining metric") >= 1);
    assert!(e.counters().is_empty());
    // A root that cannot get its tick refuses its configuration, loudly.
    let mut e = FakeEnvoy::new("sidecar~s", None);
    e.fail(HostCall::SetTickPeriod);
    let err = e.add_listener(&[(STATS_ROOT_ID, "{}")]).unwrap_err();
    assert!(err.contains("reporting tick"), "{err}");
}

#[test]
fn a_tick_that_cannot_reach_a_connection_skips_it() {
    let (mut e, l) = server();
    let c = e.connect(l, &[]);
    e.downstream(c, b"plain", false);
    e.fail(HostCall::SetEffectiveContext);
    e.tick();
    e.heal();
    e.close(c);
    assert_eq!(
        e.series("istio_tcp_received_bytes_total")
            .iter()
            .map(|(_, v)| v)
            .sum::<u64>(),
        5
    );
}

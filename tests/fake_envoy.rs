//! The fake Envoy itself keeps Envoy 1.40's measured rules (docs/ENVOY-NOTES.md), checked here
//! through its `Host` as a filter would see it. Each rule is re-measured in real Envoy by the
//! end-to-end test the notes name.

use std::cell::RefCell;
use std::rc::Rc;

use istio_tcp_telemetry::host::{Action, Buffer, Host, HostError};
use testkit::fake_envoy::{Direction, FakeEnvoy, FakeHost, StreamFilter};

fn connection() -> (FakeEnvoy, u32) {
    let mut e = FakeEnvoy::new("sidecar~t", None);
    // A filter that passes every byte on: a client exchange whose gate is closed.
    let l = e
        .add_listener(&[(
            istio_tcp_telemetry::EXCHANGE_ROOT_ID,
            r#"{"side": "client", "client_gate": "never"}"#,
        )])
        .unwrap();
    let c = e.connect(
        l,
        &[
            ("xds.cluster_name", b"outbound|80||x".to_vec()),
            ("xds.listener_direction", 2u64.to_le_bytes().to_vec()),
            ("connection.mtls", vec![1]),
        ],
    );
    (e, c)
}

#[test]
fn upstream_and_tls_properties_exist_only_after_the_first_data_callback() {
    let (mut e, c) = connection();
    let host = e.host_of(c);
    assert_eq!(host.property(&["xds", "cluster_name"]), Ok(None));
    assert_eq!(host.property(&["connection", "mtls"]), Ok(Some(vec![0])));
    assert_eq!(
        host.property(&["xds", "listener_direction"]),
        Ok(Some(2u64.to_le_bytes().to_vec())),
        "known at accept"
    );
    assert_eq!(
        host.property(&["node", "id"]),
        Ok(None),
        "no `node` in 1.40"
    );
    e.downstream(c, b"x", false);
    let host = e.host_of(c);
    assert_eq!(host.property(&["connection", "mtls"]), Ok(Some(vec![1])));
    assert_eq!(
        host.property_string(&["xds", "cluster_name"]).as_deref(),
        Some("outbound|80||x")
    );
}

#[test]
fn buffer_edits_only_inside_a_data_callback_and_only_at_the_front() {
    let (e, c) = connection();
    let host = e.host_of(c);
    assert_eq!(
        host.set_buffer(Buffer::Downstream, 0, 0, b"frame"),
        Err(HostError::BAD_ARGUMENT),
        "no buffer outside a data callback (as in on_new_connection)"
    );
}

#[test]
fn filter_state_is_shared_under_its_wasm_name() {
    let (mut e, c) = connection();
    e.downstream(c, b"x", false);
    let host = e.host_of(c);
    host.set_property(&["downstream_peer"], b"v").unwrap();
    assert_eq!(host.property(&["downstream_peer"]), Ok(Some(b"v".to_vec())));
    assert_eq!(
        host.property(&["filter_state", "wasm.downstream_peer"]),
        Ok(Some(b"v".to_vec()))
    );
    assert_eq!(
        e.filter_state(c, "wasm.downstream_peer"),
        Some(b"v".to_vec())
    );
}

#[test]
fn one_stat_per_name_and_a_half_close_passes_on() {
    let (mut e, c) = connection();
    let host = e.host_of(c);
    let a = host.define_counter("x").unwrap();
    assert_eq!(host.define_counter("x"), Ok(a));
    host.increment(a, 3).unwrap();
    assert_eq!(e.counter("x"), Some(3));
    e.downstream(c, b"bye", true);
    assert_eq!(e.take_delivered(c, Direction::Downstream), b"bye");
    assert!(e.ended(c, Direction::Downstream) && !e.is_closed(c));
    e.close(c);
    assert!(e.is_closed(c));
}

/// A test filter: on each downstream callback, applies `edit` to the buffer and answers
/// `action` (end of stream included); records what it saw.
struct Scripted {
    host: FakeHost,
    edit: Option<Edit>,
    action: Action,
    seen: Seen,
}

impl StreamFilter for Scripted {
    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        let result = match self.edit {
            Some((start, len, value)) => {
                self.host.set_buffer(Buffer::Downstream, start, len, value)
            }
            None => Ok(()),
        };
        self.seen
            .borrow_mut()
            .push((data_size, end_of_stream, result));
        self.action
    }

    fn on_upstream_data(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }
}

/// Each callback's data size, end of stream, and the edit's result.
type Seen = Rc<RefCell<Vec<(usize, bool, Result<(), HostError>)>>>;
/// A `set_buffer(start, len, value)` call.
type Edit = (usize, usize, &'static [u8]);

fn scripted(edit: Option<Edit>, action: Action) -> (FakeEnvoy, u32, Seen) {
    let seen: Seen = Rc::default();
    let mut e = FakeEnvoy::new("sidecar~t", None);
    let record = Rc::clone(&seen);
    let l = e.add_test_listener(vec![Box::new(move |host| {
        Box::new(Scripted {
            host,
            edit,
            action,
            seen: Rc::clone(&record),
        }) as Box<dyn StreamFilter>
    })]);
    let c = e.connect(l, &[]);
    (e, c, seen)
}

#[test]
fn a_paused_buffer_accumulates_and_pausing_at_end_of_stream_loses_it() {
    let (mut e, c, seen) = scripted(None, Action::Pause);
    for chunk in [b"abcdef", b"ghijkl", b"mnopqr"] {
        e.downstream(c, chunk, false);
    }
    let sizes: Vec<usize> = seen.borrow().iter().map(|s| s.0).collect();
    assert_eq!(
        sizes,
        vec![6, 12, 18],
        "nothing lost or doubled while paused"
    );
    assert_eq!(e.held(c, Direction::Downstream), 18);
    e.downstream(c, b"", true);
    assert_eq!(e.lost(c), 18, "held bytes lost at end of stream");
    assert!(e.is_closed(c), "and the connection closed");
    assert!(e.take_delivered(c, Direction::Downstream).is_empty());
}

#[test]
fn buffer_edits_follow_envoys_table() {
    let cases: [(Edit, &[u8]); 5] = [
        ((0, 0, b"F"), b"Fabcdef"),   // prepend
        ((0, 2, b""), b"cdef"),       // drop a prefix
        ((0, 2, b"XY"), b"XYcdef"),   // drop a prefix, then prepend
        ((0, 6, b"new"), b"new"),     // replace all
        ((6, 0, b"++"), b"abcdef++"), // append
    ];
    for (edit, want) in cases {
        let (mut e, c, seen) = scripted(Some(edit), Action::Continue);
        e.downstream(c, b"abcdef", false);
        assert_eq!(seen.borrow()[0].2, Ok(()), "{edit:?}");
        assert_eq!(e.take_delivered(c, Direction::Downstream), want, "{edit:?}");
    }
    let (mut e, c, seen) = scripted(Some((2, 1, b"x")), Action::Continue);
    e.downstream(c, b"abcdef", false);
    assert_eq!(
        seen.borrow()[0].2,
        Err(HostError::BAD_ARGUMENT),
        "start inside"
    );
    assert_eq!(e.take_delivered(c, Direction::Downstream), b"abcdef");
}

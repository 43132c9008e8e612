//! Helpers shared by the fuzz targets (included with `mod common;`).

#![allow(dead_code)]

use istio_tcp_telemetry::logic::stats::stat_name::{
    is_valid_name, LABEL_TERMINATOR, MAX_VALUE_BYTES, NAME_VALUE_SEPARATOR,
};
use istio_tcp_telemetry::logic::stats::{ConnectionFacts, MetricPlan, Reporter};
use istio_tcp_telemetry::logic::workload::WorkloadMetadata;

/// A little-endian cursor over the fuzzer's bytes: every read succeeds (0 once exhausted), so a
/// target never rejects an input for being short.
pub struct Bytes<'a> {
    pub data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Every series of `plan` for a connection whose peer is `peer` (from the network), checked
/// with [`check_stat_name`]: whatever the peer sent, each value is sanitized and bounded and no
/// label is forged. `standard`: `plan` is the standard one (see `check_stat_name`).
pub fn check_series(plan: &MetricPlan, peer: &WorkloadMetadata, principal: &str, standard: bool) {
    for reporter in [Reporter::Source, Reporter::Destination] {
        let facts = ConnectionFacts {
            reporter,
            local: WorkloadMetadata::default(),
            peer: Some(peer.clone()),
            peer_principal: principal.to_string(),
            local_principal: String::new(),
            cluster_name: "outbound|27017||mongodb.default.svc.cluster.local".into(),
            service: None,
            response_flags: "-".into(),
        };
        for series in plan.series(&facts) {
            check_stat_name(
                &series.stat_name,
                &series.metric,
                standard.then_some(reporter),
            );
        }
    }
}

/// `name=.=value;.;…;.;metric`: every part well formed, values from the safe set, the metric
/// name last, and (with `reporter`) the `reporter` label exactly that. Only the standard plan is
/// held to the last rule: a config may legitimately set `reporter` to another attribute.
pub fn check_stat_name(stat: &str, metric: &str, reporter: Option<Reporter>) {
    let parts: Vec<&str> = stat.split(LABEL_TERMINATOR).collect();
    let (last, labels) = parts.split_last().expect("at least the metric");
    assert_eq!(*last, metric, "metric name last: {stat:?}");
    for part in labels {
        let (name, value) = part
            .split_once(NAME_VALUE_SEPARATOR)
            .unwrap_or_else(|| panic!("label without separator in {stat:?}"));
        assert!(is_valid_name(name), "label name {name:?} in {stat:?}");
        assert!(value.len() <= MAX_VALUE_BYTES, "value too long in {stat:?}");
        assert!(
            !value.contains('=') && !value.contains(';'),
            "separator characters in value {value:?}"
        );
        assert!(
            value.bytes().all(|b| b.is_ascii_graphic()),
            "non-printable value {value:?}"
        );
        if let (Some(reporter), "reporter") = (reporter, name) {
            assert_eq!(value, reporter.as_str(), "forged reporter in {stat:?}");
        }
    }
}

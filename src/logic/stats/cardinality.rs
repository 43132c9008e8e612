//! A cap on distinct series per metric.
//!
//! A Wasm module cannot delete a stat, and label values come from peers, so without a cap a
//! stream of distinct peers would grow Envoy's stat store (and `/stats/prometheus`) forever.
//! [`SeriesLimiter`] admits the first `max_per_metric` distinct stat names of each metric; the
//! rest fold into one overflow series per metric, `overflow=.=true;.;<metric>`, so their counts
//! stay visible under a valid Prometheus name. [`SeriesLimiter::folded`] counts the distinct
//! label sets folded (exported by the glue as [`FOLDED_SERIES_METRIC`]).
//!
//! Memory: each admitted series is remembered as a 64-bit hash of its stat name, not the name
//! itself (stat names are hundreds of bytes; a hash is 8). Two different names with the same
//! hash would let the second through uncounted, at most one extra series per collision; at
//! 100 000 series per metric the chance of any collision is about 3 in 10^10. The hasher is
//! std's SipHash with fixed keys, which needs no randomness from the host. Folded label sets are
//! remembered the same way, up to `max(max_per_metric, 1024)` per metric; past that each fold of a
//! label set not remembered counts again (an over-count, never an under-count), so memory stays
//! bounded by about 8 bytes × (cap + max(cap, 1024)) per metric, whatever the peers send.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::stat_name::{LABEL_TERMINATOR, NAME_VALUE_SEPARATOR};

/// The label every folded series carries instead of its own.
pub const OVERFLOW_LABEL: &str = "overflow";
/// Counter the glue exports with [`SeriesLimiter::folded`].
pub const FOLDED_SERIES_METRIC: &str = "istio_tcp_stats_series_folded_total";

/// Folded label sets remembered per metric at least, so small caps still count exactly.
pub const MIN_FOLDED_MEMORY: usize = 1024;

type HashSet64 = HashSet<u64, BuildHasherDefault<DefaultHasher>>;

/// Where a series' counts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Under the cap (or seen before): its own stat name.
    Own(String),
    /// Over the cap: the metric's overflow series.
    Folded(String),
}

impl Admitted {
    pub fn stat_name(&self) -> &str {
        match self {
            Admitted::Own(s) | Admitted::Folded(s) => s,
        }
    }

    pub fn into_stat_name(self) -> String {
        match self {
            Admitted::Own(s) | Admitted::Folded(s) => s,
        }
    }

    pub fn is_folded(&self) -> bool {
        matches!(self, Admitted::Folded(_))
    }
}

#[derive(Debug, Default)]
struct MetricSeries {
    admitted: HashSet64,
    folded: HashSet64,
}

/// Per-metric admission of series (see the module docs).
#[derive(Debug)]
pub struct SeriesLimiter {
    max_per_metric: usize,
    folded_memory: usize,
    seen: BTreeMap<String, MetricSeries>,
    folded: u64,
}

/// The overflow stat name of `metric`.
pub fn overflow_stat_name(metric: &str) -> String {
    format!("{OVERFLOW_LABEL}{NAME_VALUE_SEPARATOR}true{LABEL_TERMINATOR}{metric}")
}

fn hash_of(stat_name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    stat_name.hash(&mut h);
    h.finish()
}

impl SeriesLimiter {
    /// `max_per_metric` of 0 is read as 1.
    pub fn new(max_per_metric: usize) -> Self {
        Self::with_folded_memory(max_per_metric, max_per_metric.max(MIN_FOLDED_MEMORY))
    }

    fn with_folded_memory(max_per_metric: usize, folded_memory: usize) -> Self {
        SeriesLimiter {
            max_per_metric: max_per_metric.max(1),
            folded_memory,
            seen: BTreeMap::new(),
            folded: 0,
        }
    }

    /// The stat name to count `stat_name` (a series of `metric`) under.
    pub fn admit(&mut self, metric: &str, stat_name: String) -> Admitted {
        let hash = hash_of(&stat_name);
        if !self.seen.contains_key(metric) {
            self.seen
                .insert(metric.to_string(), MetricSeries::default());
        }
        let Some(series) = self.seen.get_mut(metric) else {
            return Admitted::Folded(overflow_stat_name(metric));
        };
        if series.admitted.contains(&hash) {
            return Admitted::Own(stat_name);
        }
        if series.admitted.len() < self.max_per_metric {
            series.admitted.insert(hash);
            return Admitted::Own(stat_name);
        }
        let remembered = series.folded.contains(&hash);
        if !remembered {
            self.folded = self.folded.saturating_add(1);
            if series.folded.len() < self.folded_memory {
                series.folded.insert(hash);
            }
        }
        Admitted::Folded(overflow_stat_name(metric))
    }

    /// Distinct label sets folded so far, over all metrics.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Series admitted under their own name for `metric`.
    pub fn admitted(&self, metric: &str) -> usize {
        self.seen.get(metric).map_or(0, |s| s.admitted.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> String {
        format!("source_app=.=app{i};.;m")
    }

    #[test]
    fn admits_up_to_the_cap_then_folds() {
        let mut l = SeriesLimiter::new(2);
        assert_eq!(l.admit("m", name(0)), Admitted::Own(name(0)));
        assert_eq!(l.admit("m", name(1)), Admitted::Own(name(1)));
        let third = l.admit("m", name(2));
        assert!(third.is_folded());
        assert_eq!(third.stat_name(), "overflow=.=true;.;m");
        assert_eq!(l.folded(), 1);
        assert_eq!(l.admitted("m"), 2);
    }

    #[test]
    fn admitted_series_stay_admitted() {
        let mut l = SeriesLimiter::new(1);
        assert!(!l.admit("m", name(0)).is_folded());
        assert!(l.admit("m", name(1)).is_folded());
        assert_eq!(l.admit("m", name(0)), Admitted::Own(name(0)));
    }

    #[test]
    fn folded_counts_distinct_label_sets() {
        let mut l = SeriesLimiter::new(1);
        l.admit("m", name(0));
        for _ in 0..5 {
            l.admit("m", name(1));
        }
        assert_eq!(l.folded(), 1);
        l.admit("m", name(2));
        l.admit("m", name(2));
        assert_eq!(l.folded(), 2);
    }

    #[test]
    fn caps_are_per_metric() {
        let mut l = SeriesLimiter::new(1);
        assert!(!l.admit("a", name(0)).is_folded());
        assert!(!l.admit("b", name(0)).is_folded());
        assert!(l.admit("a", name(1)).is_folded());
        assert_eq!(
            l.admit("b", name(1)).into_stat_name(),
            "overflow=.=true;.;b"
        );
        assert_eq!(l.folded(), 2);
    }

    #[test]
    fn folded_memory_is_bounded_and_over_counts_beyond() {
        let mut l = SeriesLimiter::with_folded_memory(2, 2);
        l.admit("m", name(0));
        l.admit("m", name(1));
        for i in 2..10 {
            l.admit("m", name(i));
        }
        assert_eq!(l.folded(), 8);
        // Remembered folds (the first two) do not count again; forgotten ones do.
        l.admit("m", name(2));
        l.admit("m", name(3));
        assert_eq!(l.folded(), 8);
        l.admit("m", name(9));
        assert_eq!(l.folded(), 9);
    }

    #[test]
    fn small_caps_still_count_folds_exactly() {
        let mut l = SeriesLimiter::new(1);
        for round in 0..2 {
            for i in 0..=MIN_FOLDED_MEMORY {
                l.admit("m", name(i));
            }
            assert_eq!(l.folded(), MIN_FOLDED_MEMORY as u64, "round {round}");
        }
    }

    #[test]
    fn zero_cap_means_one() {
        let mut l = SeriesLimiter::new(0);
        assert!(!l.admit("m", name(0)).is_folded());
        assert!(l.admit("m", name(1)).is_folded());
    }
}

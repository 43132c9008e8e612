//! Per-VM series bookkeeping: which metric each of a connection's values goes to.
//!
//! [`SeriesBook`] resolves the [`Series`] of a connection through the cardinality cap
//! ([`SeriesLimiter`]) to metric handles (of any type `C`: the glue's host handle, a counter,
//! gauge or histogram by the value's [`super::plan::MetricType`]), defining each stat name
//! once, and says how many label sets were folded by it. It also remembers the handles by the
//! raw label inputs ([`super::inputs::LabelInputs::key`]; for the series resolved at close,
//! with the close attributes' values, [`super::close::CloseFacts::cache_key`]): connections
//! between the same workloads skip decoding, 23 labels, four ~700-byte stat names and the
//! counter lookups. Only results where every series got its own counter are remembered, so the cap
//! behaves exactly as without the cache; the cache is emptied when full. Correct under xDS
//! updates and certificate rotation: the key holds every property the labels come from, as read
//! on that connection (cluster name and metadata, both principals, the peer, the flags), so a
//! changed cluster or a rotated certificate is a new key; a new configuration is a new root.

use std::collections::HashMap;

use super::cardinality::SeriesLimiter;
use super::plan::{Series, ValueKind};

/// Distinct label inputs whose handles are remembered.
pub const CACHE_ENTRIES: usize = 1024;

/// The handles of one connection's values.
pub type Handles<C> = Vec<(ValueKind, C)>;

/// What resolving a connection's series gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<C> {
    pub handles: Handles<C>,
    /// Label sets newly folded into an overflow series (add to the folded-series counter).
    pub newly_folded: u64,
    /// Stat names the host failed to define (their values are not counted).
    pub failed: Vec<String>,
}

#[derive(Debug)]
pub struct SeriesBook<C> {
    limiter: SeriesLimiter,
    defined: HashMap<String, C>,
    cache: HashMap<Vec<u8>, Handles<C>>,
}

impl<C: Copy> SeriesBook<C> {
    pub fn new(max_series_per_metric: usize) -> Self {
        SeriesBook {
            limiter: SeriesLimiter::new(max_series_per_metric),
            defined: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The handles remembered for these label inputs.
    pub fn cached(&self, key: &[u8]) -> Option<Handles<C>> {
        self.cache.get(key).cloned()
    }

    /// Admits each series past the cap and finds (or `define`s, given the value it counts) its
    /// metric; remembers the result under `key` when `cacheable` and every series got its own.
    pub fn resolve(
        &mut self,
        key: Vec<u8>,
        cacheable: bool,
        series: Vec<Series>,
        mut define: impl FnMut(&str, ValueKind) -> Option<C>,
    ) -> Resolved<C> {
        let folded_before = self.limiter.folded();
        let mut handles = Vec::with_capacity(series.len());
        let mut failed = Vec::new();
        let mut all_own = true;
        for Series {
            metric,
            value,
            stat_name,
        } in series
        {
            let admitted = self.limiter.admit(&metric, stat_name);
            all_own &= !admitted.is_folded();
            let name = admitted.into_stat_name();
            let handle = match self.defined.get(name.as_str()) {
                Some(handle) => *handle,
                None => match define(&name, value) {
                    Some(handle) => {
                        self.defined.insert(name, handle);
                        handle
                    }
                    None => {
                        failed.push(name);
                        all_own = false;
                        continue;
                    }
                },
            };
            handles.push((value, handle));
        }
        if cacheable && all_own {
            if self.cache.len() >= CACHE_ENTRIES {
                self.cache.clear();
            }
            self.cache.insert(key, handles.clone());
        }
        Resolved {
            handles,
            newly_folded: self.limiter.folded() - folded_before,
            failed,
        }
    }

    /// Distinct label sets folded so far.
    pub fn folded(&self) -> u64 {
        self.limiter.folded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str) -> Vec<Series> {
        vec![Series {
            metric: "m".into(),
            value: ValueKind::ConnectionsOpened,
            stat_name: format!("l=.={name};.;m"),
        }]
    }

    #[test]
    fn defines_once_caches_own_series_and_says_what_folded() {
        let mut book = SeriesBook::<u32>::new(1);
        let mut defined = Vec::new();
        let mut define = |n: &str, _| {
            defined.push(n.to_string());
            Some(defined.len() as u32)
        };
        let a = book.resolve(b"a".to_vec(), true, series("a"), &mut define);
        assert_eq!(a.handles, vec![(ValueKind::ConnectionsOpened, 1)]);
        assert_eq!(a.newly_folded, 0);
        assert_eq!(book.cached(b"a"), Some(a.handles.clone()));
        let b = book.resolve(b"b".to_vec(), true, series("b"), &mut define);
        assert_eq!(b.newly_folded, 1, "over the cap of 1");
        assert_eq!(book.cached(b"b"), None, "folded series are never cached");
        let b2 = book.resolve(b"b".to_vec(), true, series("b"), &mut define);
        assert_eq!(b2.newly_folded, 0, "the same label set folds once");
        assert_eq!(b2.handles, b.handles);
        assert_eq!(defined, vec!["l=.=a;.;m", "overflow=.=true;.;m"]);
        assert_eq!(book.folded(), 1);
    }

    #[test]
    fn failures_are_reported_and_not_cached() {
        let mut book = SeriesBook::<u32>::new(10);
        let r = book.resolve(b"k".to_vec(), true, series("a"), |_, _| None);
        assert!(r.handles.is_empty());
        assert_eq!(r.failed, vec!["l=.=a;.;m"]);
        assert_eq!(book.cached(b"k"), None);
        let r = book.resolve(b"k".to_vec(), false, series("a"), |_, _| Some(7));
        assert_eq!(r.handles.len(), 1);
        assert_eq!(book.cached(b"k"), None, "not cacheable");
    }
}

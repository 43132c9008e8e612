//! At most one warning per interval: what a peer on the network can cause on every connection
//! must not flood the log. The counters count every case; the log says it once in a while.

/// Default interval between two warnings of one kind on one worker.
pub const WARN_INTERVAL_NANOS: u64 = 60 * 1_000_000_000;

#[derive(Debug, Default)]
pub struct WarnLimiter {
    last: Option<u64>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(suppressed since the last warning)` when a warning may be written at `now_nanos`.
    pub fn allow(&mut self, now_nanos: u64, interval_nanos: u64) -> Option<u64> {
        match self.last {
            Some(last) if now_nanos.saturating_sub(last) < interval_nanos => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now_nanos);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_and_the_count_of_the_rest() {
        let mut l = WarnLimiter::default();
        assert_eq!(l.allow(5, 100), Some(0));
        assert_eq!(l.allow(6, 100), None);
        assert_eq!(l.allow(104, 100), None);
        assert_eq!(l.allow(105, 100), Some(2));
        assert_eq!(l.allow(106, 100), None);
    }

    #[test]
    fn a_clock_that_goes_back_does_not_unlock_it() {
        let mut l = WarnLimiter::default();
        assert_eq!(l.allow(1_000, 100), Some(0));
        assert_eq!(l.allow(10, 100), None);
    }
}

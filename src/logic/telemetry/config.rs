//! Configuration of the combined filter (`root_id: istio_tcp_telemetry`): the exchange's and the
//! stats filter's configurations side by side, each parsed and validated exactly as the
//! separate filters do, with errors naming the field under its part (`exchange.side: …`,
//! `stats.metrics[0].drop: …`).
//!
//! ```json
//! {"exchange": {"side": "server", "server_mode": "detect"},
//!  "stats": {"tcp_reporting_duration": "15s"}}
//! ```
//! The reporter follows from the side (client → `source`, server → `destination`); a `stats`
//! `reporter` that says otherwise is refused, since one context cannot be both.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::logic::config_error::ConfigError;
use crate::logic::exchange::config::{ExchangeConfig, Side};
use crate::logic::stats::{Reporter, StatsConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub exchange: ExchangeConfig,
    /// `reporter` is always set (from the side).
    pub stats: StatsConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetryConfig<'a> {
    #[serde(borrow)]
    exchange: Option<&'a RawValue>,
    #[serde(borrow)]
    stats: Option<&'a RawValue>,
}

/// The reporter of a connection whose exchange runs on `side`.
pub fn reporter_of_side(side: Side) -> Reporter {
    match side {
        Side::Client => Reporter::Source,
        Side::Server => Reporter::Destination,
    }
}

/// `part.` in front of a part's error, so that it names the field from the top.
fn under(part: &str, e: ConfigError) -> ConfigError {
    match e.0.strip_prefix("configuration: ") {
        Some(rest) => ConfigError::field(part, rest),
        None => ConfigError(format!("{part}.{}", e.0)),
    }
}

impl TelemetryConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            bytes
        };
        let raw: RawTelemetryConfig = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError(format!("configuration: {e}")))?;
        let exchange = raw.exchange.ok_or_else(|| {
            ConfigError::field("exchange", "missing (it holds at least \"side\")")
        })?;
        let exchange =
            ExchangeConfig::parse(exchange.get().as_bytes()).map_err(|e| under("exchange", e))?;
        let mut stats = match raw.stats {
            Some(stats) => {
                StatsConfig::parse(stats.get().as_bytes()).map_err(|e| under("stats", e))?
            }
            None => StatsConfig::default(),
        };
        let reporter = reporter_of_side(exchange.side);
        if stats.reporter.is_some_and(|r| r != reporter) {
            return Err(ConfigError::field(
                "stats.reporter",
                format!("contradicts exchange.side {:?}", exchange.side),
            ));
        }
        stats.reporter = Some(reporter);
        Ok(TelemetryConfig { exchange, stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::exchange::config::Role;

    #[test]
    fn both_parts_and_the_reporter_from_the_side() {
        let c = TelemetryConfig::parse(
            br#"{"exchange":{"side":"server","server_mode":"detect"},
                 "stats":{"tcp_reporting_duration":"2s"}}"#,
        )
        .unwrap();
        assert_eq!(c.exchange.role, Role::ServerDetect);
        assert_eq!(c.stats.tcp_reporting_duration.as_secs(), 2);
        assert_eq!(c.stats.reporter, Some(Reporter::Destination));
        let c = TelemetryConfig::parse(br#"{"exchange":{"side":"client"}}"#).unwrap();
        assert_eq!(c.stats.reporter, Some(Reporter::Source));
        assert_eq!(c.stats.plan, StatsConfig::default().plan);
        let c = TelemetryConfig::parse(
            br#"{"exchange":{"side":"client"},"stats":{"reporter":"source"}}"#,
        )
        .unwrap();
        assert_eq!(c.stats.reporter, Some(Reporter::Source));
    }

    #[test]
    fn errors_name_the_field_from_the_top() {
        let err = |json: &str| TelemetryConfig::parse(json.as_bytes()).unwrap_err().0;
        assert!(err("{}").starts_with("exchange: "), "{}", err("{}"));
        assert!(err("").starts_with("exchange: "));
        assert!(
            err(r#"{"exchange":{}}"#).starts_with("exchange: "),
            "{}",
            err(r#"{"exchange":{}}"#)
        );
        assert!(err(r#"{"exchange":{"side":"sideways"}}"#).starts_with("exchange.side: "));
        assert!(err(r#"{"exchange":{"side":"client","max_frame_bytes":1}}"#)
            .starts_with("exchange.max_frame_bytes: "));
        assert!(
            err(r#"{"exchange":{"side":"client"},"stats":{"metrics":[{"drop":"yes"}]}}"#)
                .starts_with("stats.metrics[0].drop: ")
        );
        assert!(
            err(r#"{"exchange":{"side":"client"},"stats":{"tcp_reporting_duration":"1ms"}}"#)
                .starts_with("stats.tcp_reporting_duration: ")
        );
        assert!(
            err(r#"{"exchange":{"side":"server"},"stats":{"reporter":"source"}}"#)
                .starts_with("stats.reporter: ")
        );
        assert!(err(r#"{"exchange":{"side":"client"},"colour":1}"#).contains("colour"));
        assert!(err(r#"{"exchange":{"side":"client"},"stats":7}"#).starts_with("stats: "));
        assert!(err("not json").starts_with("configuration: "));
    }
}

//! Configuration of the metadata-exchange filter (`root_id: istio_metadata_exchange`).
//!
//! ```json
//! {"side": "client", "client_gate": "tls_mode_istio", "max_frame_bytes": 65536,
//!  "additional_labels": ["team"], "stat_prefix": "metadata_exchange"}
//! {"side": "server", "server_mode": "detect"}
//! ```
//! Every field is documented in the README; unknown fields and bad values are errors.

use serde::Deserialize;

use super::config_error::{parse_json, ConfigError};
use super::frame::DEFAULT_MAX_PAYLOAD;

/// Smallest and largest accepted `max_frame_bytes`: a real Istio frame is a few hundred bytes;
/// above 1 MiB a peer could make every connection hold a megabyte.
pub const MIN_FRAME_CAP: u32 = 256;
pub const MAX_FRAME_CAP: u32 = 1024 * 1024;
pub const DEFAULT_STAT_PREFIX: &str = "metadata_exchange";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Outbound listener: our frame rides on the application's first bytes; the server's frame
    /// is stripped from the bytes coming back.
    Client,
    /// Inbound listener: the client's frame is stripped from the incoming bytes; our frame rides
    /// on the first bytes going back.
    Server,
}

/// How the server side knows that the client speaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServerMode {
    /// The chain was selected by ALPN `istio-peer-exchange`: a frame is expected, like Istio.
    #[default]
    Expect,
    /// Plaintext: only bytes that start with the magic are a frame, and only then do we answer.
    Detect,
}

/// When the client sends its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientGate {
    /// Only to endpoints whose metadata `envoy.transport_socket_match` has `tlsMode: istio`:
    /// exactly the endpoints Istio would negotiate `istio-peer-exchange` with.
    #[default]
    TlsModeIstio,
    /// When the upstream connection is TLS and the server's certificate carries a SPIFFE URI
    /// SAN: the connection is Istio mutual TLS, whatever the endpoint's labels say (headless
    /// services / ORIGINAL_DST clusters have none; a `tlsMode: istio` label reached over
    /// plaintext gets nothing).
    IstioMtls,
    Always,
    Never,
}

/// What a server should conclude from the peer side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeerTrust {
    /// Accept the peer's frame on any connection.
    #[default]
    Any,
    /// Accept it only on a mutual-TLS connection; elsewhere the frame is stripped but ignored.
    MtlsOnly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExchangeConfig {
    side: Side,
    server_mode: Option<ServerMode>,
    client_gate: Option<ClientGate>,
    #[serde(default = "default_cap")]
    max_frame_bytes: u32,
    #[serde(default)]
    additional_labels: Vec<String>,
    #[serde(default = "default_prefix")]
    stat_prefix: String,
    #[serde(default)]
    trust: PeerTrust,
}

fn default_cap() -> u32 {
    DEFAULT_MAX_PAYLOAD
}

fn default_prefix() -> String {
    DEFAULT_STAT_PREFIX.to_string()
}

/// The role a connection plays, derived from side and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client(ClientGate),
    ServerExpect,
    ServerDetect,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeConfig {
    pub side: Side,
    pub role: Role,
    pub max_frame_bytes: u32,
    pub additional_labels: Vec<String>,
    pub stat_prefix: String,
    pub trust: PeerTrust,
}

impl ExchangeConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawExchangeConfig = parse_json(bytes)?;
        let role = match raw.side {
            Side::Client => {
                if raw.server_mode.is_some() {
                    return Err(ConfigError::field(
                        "server_mode",
                        "only valid with \"side\": \"server\"",
                    ));
                }
                Role::Client(raw.client_gate.unwrap_or_default())
            }
            Side::Server => {
                if raw.client_gate.is_some() {
                    return Err(ConfigError::field(
                        "client_gate",
                        "only valid with \"side\": \"client\"",
                    ));
                }
                match raw.server_mode.unwrap_or_default() {
                    ServerMode::Expect => Role::ServerExpect,
                    ServerMode::Detect => Role::ServerDetect,
                }
            }
        };
        if !(MIN_FRAME_CAP..=MAX_FRAME_CAP).contains(&raw.max_frame_bytes) {
            return Err(ConfigError::field(
                "max_frame_bytes",
                format!(
                    "{} is outside {MIN_FRAME_CAP}..={MAX_FRAME_CAP}",
                    raw.max_frame_bytes
                ),
            ));
        }
        if let Some(bad) = raw.additional_labels.iter().find(|l| l.is_empty()) {
            return Err(ConfigError::field(
                "additional_labels",
                format!("label names must not be empty ({bad:?})"),
            ));
        }
        if raw.stat_prefix.is_empty()
            || !raw
                .stat_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(ConfigError::field(
                "stat_prefix",
                format!("{:?} must be non-empty [A-Za-z0-9_.]", raw.stat_prefix),
            ));
        }
        Ok(ExchangeConfig {
            side: raw.side,
            role,
            max_frame_bytes: raw.max_frame_bytes,
            additional_labels: raw.additional_labels,
            stat_prefix: raw.stat_prefix,
            trust: raw.trust,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_configs() {
        let c = ExchangeConfig::parse(br#"{"side":"client"}"#).unwrap();
        assert_eq!(c.role, Role::Client(ClientGate::TlsModeIstio));
        assert_eq!(c.max_frame_bytes, DEFAULT_MAX_PAYLOAD);
        assert_eq!(c.stat_prefix, "metadata_exchange");
        let c = ExchangeConfig::parse(br#"{"side":"server","server_mode":"detect"}"#).unwrap();
        assert_eq!(c.role, Role::ServerDetect);
        let c = ExchangeConfig::parse(br#"{"side":"server"}"#).unwrap();
        assert_eq!(c.role, Role::ServerExpect);
        let c = ExchangeConfig::parse(br#"{"side":"client","client_gate":"istio_mtls"}"#).unwrap();
        assert_eq!(c.role, Role::Client(ClientGate::IstioMtls));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |json: &str| ExchangeConfig::parse(json.as_bytes()).unwrap_err().0;
        assert!(err(r#"{}"#).contains("side"), "{}", err("{}"));
        assert!(err(r#"{"side":"sideways"}"#).starts_with("side: "));
        assert!(err(r#"{"side":"client","colour":1}"#).contains("colour"));
        assert!(
            err(r#"{"side":"client","max_frame_bytes":"big"}"#).starts_with("max_frame_bytes: ")
        );
        assert!(err(r#"{"side":"client","max_frame_bytes":1}"#).starts_with("max_frame_bytes: "));
        assert!(err(r#"{"side":"client","server_mode":"detect"}"#).starts_with("server_mode: "));
        assert!(err(r#"{"side":"server","client_gate":"always"}"#).starts_with("client_gate: "));
        assert!(err(r#"{"side":"client","stat_prefix":"a b"}"#).starts_with("stat_prefix: "));
        assert!(
            err(r#"{"side":"client","additional_labels":[""]}"#).starts_with("additional_labels")
        );
        assert!(err(r#"{"side":"client","trust":"nobody"}"#).starts_with("trust: "));
        assert!(err("not json").starts_with("configuration: "));
    }
}

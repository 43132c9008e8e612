//! One error type and one parser for every filter's JSON configuration, so that each rejection
//! names the field at fault (e.g. `metrics[1].drop: invalid type: string "yes", expected a
//! boolean`) and Envoy refuses the config with that line in its log.

use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError(format!("{field}: {problem}"))
    }
}

/// Parses JSON into `T`, naming the path of the first field that does not fit. An empty
/// configuration is read as `{}`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ConfigError(format!("configuration: {inner}"))
        } else {
            ConfigError::field(&path, inner)
        }
    })
}

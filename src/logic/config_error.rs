//! One error type and one parser for every filter's JSON configuration, so that each rejection
//! names the field at fault (e.g. `metrics[1].drop: invalid type: string "yes", expected a
//! boolean`) and Envoy refuses the config with that line in its log.
//!
//! The field's path comes from where serde_json stopped: its error carries a line and column,
//! and [`path_at`] walks the JSON text up to there, keeping the keys and indices of the
//! containers it is in. One small function for every configuration type, instead of a
//! path-tracking deserializer instantiated for each of them (that was ~28 KB of the module).

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
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        // serde_json appends " at line L column C" when it knows where it stopped.
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message);
        // serde_json stops inside a container it refuses as a whole (at its first element):
        // the field at fault is the container's.
        let whole = message.starts_with("invalid type: sequence")
            || message.starts_with("invalid type: map");
        let path = if e.line() == 0 {
            String::new()
        } else {
            let offset = offset_of(bytes, e.line(), e.column());
            let entered = !matches!(bytes.get(offset), Some(b'{' | b'['));
            if whole && entered {
                path_at(bytes, container_start(bytes, offset))
            } else {
                path_at(bytes, offset)
            }
        };
        if path.is_empty() {
            ConfigError(format!("configuration: {message}"))
        } else {
            ConfigError::field(&path, message)
        }
    })
}

/// The byte offset just past (1-based) `column` of (1-based) `line`.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match bytes[start..].iter().position(|b| *b == b'\n') {
            Some(i) => start += i + 1,
            None => return bytes.len(),
        }
    }
    (start + column).min(bytes.len())
}

/// The offset of the opening bracket or brace of the innermost container open at `offset`.
fn container_start(bytes: &[u8], offset: usize) -> usize {
    let text = &bytes[..offset.min(bytes.len())];
    let mut opens: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' | b'[' => opens.push(i),
            b'}' | b']' => {
                opens.pop();
            }
            b'"' => {
                i = read_string(text, i + 1).1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    opens.last().copied().unwrap_or(0)
}

/// One container the walk is inside.
enum Frame {
    /// The key being read or whose value is being read (`None` before the first key).
    Object(Option<String>),
    /// The index of the element being read.
    Array(usize),
}

/// The path (`metrics[1].drop`; empty at the top level) of the value the JSON text is in at
/// `offset`: the keys and indices of the containers still open there. Malformed text gives
/// whatever was open when it stopped making sense.
pub fn path_at(bytes: &[u8], offset: usize) -> String {
    let text = &bytes[..offset.min(bytes.len())];
    let mut stack: Vec<Frame> = Vec::new();
    // In an object: true after the key's colon (a string is then a value, not a key).
    let mut after_colon = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' => {
                stack.push(Frame::Object(None));
                after_colon = false;
            }
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
                after_colon = true;
            }
            b':' => after_colon = true,
            b',' => match stack.last_mut() {
                Some(Frame::Array(index)) => *index += 1,
                Some(Frame::Object(_)) => after_colon = false,
                None => {}
            },
            b'"' => {
                let (string, end) = read_string(text, i + 1);
                if let (Some(Frame::Object(key)), false) = (stack.last_mut(), after_colon) {
                    *key = Some(string);
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object(None) => {}
            Frame::Array(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// A JSON string's text from `start` (just past its opening quote); the offset past its closing
/// quote (or the end). Escapes are kept as the single character after the backslash: enough to
/// name a key.
fn read_string(text: &[u8], start: usize) -> (String, usize) {
    let mut out = Vec::new();
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'"' => return (String::from_utf8_lossy(&out).into_owned(), i + 1),
            b'\\' => {
                if let Some(c) = text.get(i + 1) {
                    out.push(*c);
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_offsets() {
        let json = br#"{"metrics": [{"name": "a"}, {"drop": "yes"}], "x": {"y": [1, 2]}}"#;
        let at = |needle: &str| {
            let text = std::str::from_utf8(json).unwrap();
            path_at(json, text.find(needle).unwrap() + needle.len())
        };
        assert_eq!(at(r#""yes""#), "metrics[1].drop");
        assert_eq!(at(r#""a""#), "metrics[0].name");
        assert_eq!(at("2"), "x.y[1]");
        assert_eq!(at(r#""y""#), "x.y");
        assert_eq!(path_at(json, 0), "");
        assert_eq!(path_at(json, json.len()), "");
        assert_eq!(path_at(br#"{"a\"b": 1"#, 10), "a\"b");
        assert_eq!(offset_of(b"{\n  \"a\": 1\n}", 2, 5), 7);
    }

    #[test]
    fn errors_name_the_field_from_where_serde_json_stopped() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            drop: bool,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            #[serde(default)]
            metrics: Vec<Inner>,
        }
        let err = |json: &str| parse_json::<Outer>(json.as_bytes()).unwrap_err().0;
        assert_eq!(
            err(r#"{"metrics": [{"drop": true}, {"drop": "yes"}]}"#),
            r#"metrics[1].drop: invalid type: string "yes", expected a boolean"#
        );
        assert!(err("{\n \"metrics\": [\n {\"drop\": 1}]}").starts_with("metrics[0].drop: "));
        assert!(err(r#"{"metrics": [{}]}"#).starts_with("metrics[0]: missing field `drop`"));
        assert!(err(r#"{"metrics": [{"drop": true, "x": 1}]}"#).starts_with("metrics[0].x: "));
        assert!(err(r#"{"colour": 1}"#).starts_with("colour: unknown field"));
        assert!(err("not json").starts_with("configuration: expected"));
        assert!(err(r#"{"metrics": {"drop": true}}"#).starts_with("metrics: invalid type: map"));
        assert!(err(r#"{"metrics": [{"drop": [true]}]}"#)
            .starts_with("metrics[0].drop: invalid type: sequence"));
        assert!(err(r#"{"metrics": [{"drop": {"a": 1}}]}"#)
            .starts_with("metrics[0].drop: invalid type: map"));
        assert!(parse_json::<Outer>(b"  ").is_ok());
    }
}

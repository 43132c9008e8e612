//! The proxy-wasm "pairs" encoding, which Envoy uses for map-valued properties such as
//! `xds.node.metadata` (measured in Envoy 1.40, see docs/ENVOY-NOTES.md):
//!
//! ```text
//! u32 LE count
//! count × (u32 LE key length, u32 LE value length)
//! count × (key bytes, NUL, value bytes, NUL)
//! ```
//! Values carry no type tag. Envoy writes a nested map as another pairs blob, a list as pairs
//! whose keys are the elements and whose values are empty, a number as 8 bytes of f64 LE, a bool
//! as one byte and a string as its raw bytes. [`decode_tree`] therefore reads a value as a map
//! only when it is an exact, valid pairs blob, and as a string otherwise; callers that know a
//! field's type (the metadata model) ask for it explicitly.

use std::fmt;

/// How deep [`decode_tree`] follows nested maps before it keeps a value as raw bytes.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairsError {
    /// Shorter than the count, the size table or the data it announces.
    Truncated,
    /// A key or value is not followed by its NUL.
    MissingNul,
    /// Bytes are left after the last pair.
    TrailingBytes,
}

impl fmt::Display for PairsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            PairsError::Truncated => "pairs blob is truncated",
            PairsError::MissingNul => "pairs blob entry is not NUL-terminated",
            PairsError::TrailingBytes => "pairs blob has trailing bytes",
        };
        f.write_str(what)
    }
}

impl std::error::Error for PairsError {}

/// One (key, value) entry of a pairs blob.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Splits a pairs blob into (key, value) byte slices, in the order Envoy wrote them.
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<Pair<'_>>, PairsError> {
    let count = read_u32(bytes, 0)? as usize;
    // Each pair needs 8 bytes of sizes and 2 NULs: refuse counts the blob cannot hold before
    // allocating for them.
    if count > bytes.len() / 10 {
        return Err(PairsError::Truncated);
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        sizes.push((
            read_u32(bytes, at)? as usize,
            read_u32(bytes, at + 4)? as usize,
        ));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (key_len, value_len) in sizes {
        let key = take_terminated(bytes, &mut at, key_len)?;
        let value = take_terminated(bytes, &mut at, value_len)?;
        pairs.push((key, value));
    }
    if at != bytes.len() {
        return Err(PairsError::TrailingBytes);
    }
    Ok(pairs)
}

/// Encodes pairs the way Envoy does; used by tests and by tools that fake a host property.
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// A value read out of a pairs blob, typed as far as the bytes allow.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    /// An exact pairs blob: a map (or a list: keys are the elements, values empty).
    Map(Vec<(String, NodeValue)>),
    /// Anything else, kept as bytes; see [`NodeValue::as_str`], [`NodeValue::as_f64`],
    /// [`NodeValue::as_bool`].
    Leaf(Vec<u8>),
}

impl NodeValue {
    /// The value as text, if it is a leaf of valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            NodeValue::Leaf(bytes) => std::str::from_utf8(bytes).ok(),
            NodeValue::Map(_) => None,
        }
    }

    /// The value as a number: Envoy writes Struct numbers as 8 bytes of f64 LE.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            NodeValue::Leaf(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .ok()
                .map(f64::from_le_bytes),
            NodeValue::Map(_) => None,
        }
    }

    /// The value as a bool: one byte, 0 or 1.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            NodeValue::Leaf(bytes) if bytes.as_slice() == [0] => Some(false),
            NodeValue::Leaf(bytes) if bytes.as_slice() == [1] => Some(true),
            _ => None,
        }
    }

    /// The entries, if the value is a map.
    pub fn as_map(&self) -> Option<&[(String, NodeValue)]> {
        match self {
            NodeValue::Map(entries) => Some(entries),
            NodeValue::Leaf(_) => None,
        }
    }

    /// The elements, if the value is a list: a map whose values are all empty.
    pub fn as_list(&self) -> Option<Vec<&str>> {
        let entries = self.as_map()?;
        entries
            .iter()
            .all(|(_, v)| matches!(v, NodeValue::Leaf(b) if b.is_empty()))
            .then(|| entries.iter().map(|(k, _)| k.as_str()).collect())
    }

    /// Looks up a key of a map value.
    pub fn get(&self, key: &str) -> Option<&NodeValue> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Looks up a key and reads it as text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
}

/// Decodes a pairs blob into a tree. The top level must be a valid blob; below it a value
/// becomes a [`NodeValue::Map`] when it is itself an exact pairs blob, else a
/// leaf (text practically never lines up as an exact blob). Depth is capped at [`MAX_DEPTH`]; deeper values stay leaves.
pub fn decode_tree(bytes: &[u8]) -> Result<NodeValue, PairsError> {
    decode_map(bytes, 0)
}

fn decode_map(bytes: &[u8], depth: usize) -> Result<NodeValue, PairsError> {
    let pairs = decode_pairs(bytes)?;
    let entries = pairs
        .into_iter()
        .map(|(k, v)| {
            let key = String::from_utf8_lossy(k).into_owned();
            (key, decode_value(v, depth + 1))
        })
        .collect();
    Ok(NodeValue::Map(entries))
}

fn decode_value(bytes: &[u8], depth: usize) -> NodeValue {
    // Short values (a bool, a number, a short string) could never hold a non-empty blob; an
    // empty map is the 4 zero bytes of a zero count.
    if depth < MAX_DEPTH && bytes.len() >= 4 {
        if let Ok(map) = decode_map(bytes, depth) {
            return map;
        }
    }
    NodeValue::Leaf(bytes.to_vec())
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, PairsError> {
    let end = at.checked_add(4).ok_or(PairsError::Truncated)?;
    let word = bytes.get(at..end).ok_or(PairsError::Truncated)?;
    Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

fn take_terminated<'a>(
    bytes: &'a [u8],
    at: &mut usize,
    len: usize,
) -> Result<&'a [u8], PairsError> {
    let end = at.checked_add(len).ok_or(PairsError::Truncated)?;
    let data = bytes.get(*at..end).ok_or(PairsError::Truncated)?;
    match bytes.get(end) {
        Some(0) => {}
        Some(_) => return Err(PairsError::MissingNul),
        None => return Err(PairsError::Truncated),
    }
    *at = end + 1;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_flat_pairs_in_order() {
        let blob = encode_pairs(&[("NAME", "ratings-v2-abc"), ("NAMESPACE", "default")]);
        let pairs = decode_pairs(&blob).unwrap();
        assert_eq!(
            pairs,
            vec![
                (&b"NAME"[..], &b"ratings-v2-abc"[..]),
                (&b"NAMESPACE"[..], &b"default"[..])
            ]
        );
    }

    #[test]
    fn decodes_nested_maps_numbers_bools_and_lists() {
        let labels = encode_pairs(&[("app", "ratings"), ("version", "v2")]);
        let list = encode_pairs(&[("ratings", ""), ("istio-proxy", "")]);
        let number = 15021f64.to_le_bytes();
        let blob = encode_pairs::<&[u8], &[u8]>(&[
            (b"LABELS", &labels),
            (b"APP_CONTAINERS", &list),
            (b"STATUS_PORT", &number),
            (b"INTERCEPTION", &[1u8]),
            (b"EMPTY", &[0, 0, 0, 0]),
        ]);
        let tree = decode_tree(&blob).unwrap();
        assert_eq!(tree.get("LABELS").unwrap().get_str("version"), Some("v2"));
        assert_eq!(
            tree.get("APP_CONTAINERS").unwrap().as_list(),
            Some(vec!["ratings", "istio-proxy"])
        );
        assert_eq!(tree.get("STATUS_PORT").unwrap().as_f64(), Some(15021.0));
        assert_eq!(tree.get("INTERCEPTION").unwrap().as_bool(), Some(true));
        assert_eq!(tree.get("EMPTY").unwrap().as_map(), Some(&[][..]));
    }

    #[test]
    fn plain_text_stays_text() {
        let blob = encode_pairs(&[("CLUSTER_ID", "Kubernetes"), ("X", "abcd")]);
        let tree = decode_tree(&blob).unwrap();
        assert_eq!(tree.get_str("CLUSTER_ID"), Some("Kubernetes"));
        assert_eq!(tree.get_str("X"), Some("abcd"));
    }

    #[test]
    fn rejects_truncated_and_lying_blobs() {
        assert_eq!(decode_pairs(&[]), Err(PairsError::Truncated));
        assert_eq!(decode_pairs(&[1, 0, 0]), Err(PairsError::Truncated));
        // Count says a billion pairs: refused before allocating.
        assert_eq!(
            decode_pairs(&0x4000_0000u32.to_le_bytes()),
            Err(PairsError::Truncated)
        );
        let mut blob = encode_pairs(&[("a", "b")]);
        let last = blob.len() - 1;
        blob[last] = b'x';
        assert_eq!(decode_pairs(&blob), Err(PairsError::MissingNul));
        let mut blob = encode_pairs(&[("a", "b")]);
        blob.push(0);
        assert_eq!(decode_pairs(&blob), Err(PairsError::TrailingBytes));
        // Sizes near u32::MAX must not overflow the cursor.
        let mut blob = 1u32.to_le_bytes().to_vec();
        blob.extend_from_slice(&u32::MAX.to_le_bytes());
        blob.extend_from_slice(&u32::MAX.to_le_bytes());
        blob.extend_from_slice(&[0, 0]);
        assert_eq!(decode_pairs(&blob), Err(PairsError::Truncated));
    }

    #[test]
    fn depth_is_capped() {
        let mut blob = encode_pairs(&[("leaf", "x")]);
        for _ in 0..(MAX_DEPTH + 4) {
            blob = encode_pairs::<&[u8], &[u8]>(&[(b"k", &blob)]);
        }
        let mut node = decode_tree(&blob).unwrap();
        let mut depth = 0;
        while let Some(next) = node.get("k") {
            node = next.clone();
            depth += 1;
        }
        assert!(depth <= MAX_DEPTH, "followed {depth} levels");
        assert!(matches!(node, NodeValue::Leaf(_)));
    }
}

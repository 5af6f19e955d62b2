//! The MMDS data store: one JSON document, with a size limit, that the host replaces (`PUT
//! /mmds`), merges into (`PATCH /mmds`, RFC 7396 JSON merge patch) and reads (`GET /mmds`),
//! and that the guest reads by path (`GET /latest/meta-data/...`).
//!
//! Firecracker's rules: the store starts empty (`{}`); a document whose serialized size is over
//! the limit is refused and the store keeps what it had; the limit defaults to the API
//! server's payload limit (51200 bytes, Firecracker's `--mmds-size-limit` default).

use serde_json::Value;

/// Firecracker's default data-store limit in bytes (its `--mmds-size-limit` default, the same
/// as its `--http-api-max-payload-size` default).
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;

/// Why the store refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The document would be larger than the limit (serialized, compact).
    #[error("the MMDS data store would be {size} bytes, over its limit of {limit} bytes")]
    TooLarge {
        /// The serialized size the change would have given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The data store must be a JSON object.
    #[error("the MMDS data store must be a JSON object, not {0}")]
    NotAnObject(&'static str),
}

/// The store: a JSON object and its size limit.
#[derive(Debug, Clone, PartialEq)]
pub struct DataStore {
    data: Value,
    limit: usize,
}

impl Default for DataStore {
    fn default() -> Self {
        DataStore::new(DEFAULT_SIZE_LIMIT)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl DataStore {
    /// An empty store (`{}`) that holds at most `limit` bytes of compact JSON.
    pub fn new(limit: usize) -> Self {
        DataStore {
            data: Value::Object(Default::default()),
            limit,
        }
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The whole document.
    pub fn data(&self) -> &Value {
        &self.data
    }

    fn checked(&self, candidate: Value) -> Result<Value, StoreError> {
        if !candidate.is_object() {
            return Err(StoreError::NotAnObject(kind(&candidate)));
        }
        let size = serde_json::to_vec(&candidate).map_or(usize::MAX, |v| v.len());
        if size > self.limit {
            return Err(StoreError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(candidate)
    }

    /// Replaces the document (`PUT /mmds`). Refused, leaving the store as it was, when `data`
    /// is not an object or is over the limit.
    pub fn put(&mut self, data: Value) -> Result<(), StoreError> {
        self.data = self.checked(data)?;
        Ok(())
    }

    /// Merges `patch` into the document (`PATCH /mmds`, RFC 7396: `null` removes a member,
    /// objects merge member by member, anything else replaces). Refused, leaving the store as
    /// it was, when the result would be over the limit or not an object.
    pub fn patch(&mut self, patch: Value) -> Result<(), StoreError> {
        let mut merged = self.data.clone();
        json_patch::merge(&mut merged, &patch);
        self.data = self.checked(merged)?;
        Ok(())
    }

    /// The value at a `/`-separated path (`/latest/meta-data/ami-id`; `/` or `` is the whole
    /// document). Empty segments from doubled or trailing slashes are ignored, as IMDS does.
    /// Array elements are addressed by index.
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .try_fold(&self.data, |v, seg| match v {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn starts_empty_and_put_replaces() {
        let mut s = DataStore::default();
        assert_eq!(s.data(), &json!({}));
        assert_eq!(s.limit(), DEFAULT_SIZE_LIMIT);
        s.put(json!({"a": 1})).unwrap();
        s.put(json!({"b": 2})).unwrap();
        assert_eq!(s.data(), &json!({"b": 2}));
    }

    #[test]
    fn patch_merges_as_rfc_7396_says() {
        let mut s = DataStore::default();
        s.put(json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"}))
            .unwrap();
        s.patch(json!({"a": {"b": null, "z": 3}, "d": [3], "e": null}))
            .unwrap();
        assert_eq!(s.data(), &json!({"a": {"c": 2, "z": 3}, "d": [3]}));
    }

    #[test]
    fn over_the_limit_or_not_an_object_is_refused_and_nothing_changes() {
        let mut s = DataStore::new(16);
        s.put(json!({"k": "v"})).unwrap();
        let err = s.put(json!({"k": "a much longer value"})).unwrap_err();
        assert_eq!(
            err,
            StoreError::TooLarge {
                size: 27,
                limit: 16
            }
        );
        assert_eq!(s.data(), &json!({"k": "v"}));
        assert!(s.patch(json!({"other": "value!"})).is_err());
        assert_eq!(s.data(), &json!({"k": "v"}));
        assert_eq!(s.put(json!([1])), Err(StoreError::NotAnObject("an array")));
        // A merge patch that is not an object replaces the whole document: refused.
        assert_eq!(s.patch(json!(5)), Err(StoreError::NotAnObject("a number")));
        assert_eq!(s.data(), &json!({"k": "v"}));
    }

    #[test]
    fn paths_reach_members_and_array_elements() {
        let mut s = DataStore::default();
        s.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "list": ["a", "b"]}}}))
            .unwrap();
        assert_eq!(s.get("/latest/meta-data/ami-id"), Some(&json!("ami-1")));
        assert_eq!(s.get("latest//meta-data/ami-id/"), Some(&json!("ami-1")));
        assert_eq!(s.get("/latest/meta-data/list/1"), Some(&json!("b")));
        assert_eq!(s.get("/latest/meta-data/list/x"), None);
        assert_eq!(s.get("/missing"), None);
        assert_eq!(s.get("/"), Some(s.data()));
    }
}

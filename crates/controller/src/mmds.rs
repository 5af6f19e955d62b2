//! The MMDS's host side: the data store that `PUT`, `PATCH` and `GET /mmds` act on, before and
//! after the guest starts, shared with the VM that answers the guest from it.
//!
//! Firecracker's rules: the store starts empty and answers `{}`; a `PATCH` before the first
//! `PUT` is refused ("The MMDS data store is not initialized."); a document over the size limit
//! (`--mmds-size-limit`, default 51200 bytes) is refused with `413 Payload Too Large` and "The
//! MMDS patch request doesn't fit.", the store keeping what it had. Petrel also refuses a
//! document that is not a JSON object (the guest reads the store by path). The store is not
//! saved in snapshots: a restored VM starts with an empty one.

use std::sync::{Arc, Mutex};

use petrel_api::http::Response;
use petrel_api::routes::ok_json;
use petrel_mmds::{DataStore, StoreError};
use petrel_util::lock_ignoring_poison;
use serde_json::Value;

/// Firecracker's message when the data store has never been `PUT`.
pub const NOT_INITIALIZED: &str = "MMDS error: The MMDS data store is not initialized.";

/// Firecracker's message when a document is over the size limit (answered `413`).
pub const LIMIT_EXCEEDED: &str = "MMDS limit exceeded error: The MMDS patch request doesn't fit.";

/// The data store and whether a `PUT` has filled it yet.
#[derive(Debug)]
pub struct MmdsStore {
    store: Arc<Mutex<DataStore>>,
    initialized: bool,
}

impl MmdsStore {
    /// An empty store holding at most `limit` bytes of compact JSON.
    pub fn new(limit: usize) -> Self {
        MmdsStore {
            store: Arc::new(Mutex::new(DataStore::new(limit))),
            initialized: false,
        }
    }

    /// The store, for the VM that answers the guest from it.
    pub fn shared(&self) -> Arc<Mutex<DataStore>> {
        self.store.clone()
    }

    /// `GET /mmds`: the whole document (`{}` while empty).
    pub fn get(&self) -> Response {
        ok_json(lock_ignoring_poison(&self.store).data())
    }

    /// `PUT /mmds`: replaces the document.
    pub fn put(&mut self, data: Value) -> Response {
        let result = lock_ignoring_poison(&self.store).put(data);
        if result.is_ok() {
            self.initialized = true;
        }
        answer(result)
    }

    /// `PATCH /mmds`: merges `patch` into the document (RFC 7396).
    pub fn patch(&mut self, patch: Value) -> Response {
        if !self.initialized {
            return Response::fault(NOT_INITIALIZED);
        }
        answer(lock_ignoring_poison(&self.store).patch(patch))
    }
}

/// The answer to a change of the store: `204`, `413` over the limit, `400` otherwise.
fn answer(result: Result<(), StoreError>) -> Response {
    match result {
        Ok(()) => Response::no_content(),
        Err(e @ StoreError::TooLarge { .. }) => {
            Response::fault_with_status(413, format!("{LIMIT_EXCEEDED} ({e}: --mmds-size-limit)"))
        }
        Err(e) => Response::fault(format!("MMDS error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(r: &Response) -> Value {
        serde_json::from_str(r.body.as_deref().unwrap_or("null")).unwrap()
    }

    #[test]
    fn empty_then_put_then_patch() {
        let mut m = MmdsStore::new(petrel_mmds::store::DEFAULT_SIZE_LIMIT);
        let r = m.get();
        assert_eq!((r.status, body(&r)), (200, json!({})));
        let r = m.patch(json!({"a": 1}));
        assert_eq!(r.status, 400);
        assert_eq!(body(&r)["fault_message"], NOT_INITIALIZED);
        assert_eq!(m.put(json!({"a": {"b": 1}})).status, 204);
        assert_eq!(m.patch(json!({"a": {"c": 2}})).status, 204);
        assert_eq!(body(&m.get()), json!({"a": {"b": 1, "c": 2}}));
        assert_eq!(
            lock_ignoring_poison(&m.shared()).get("/a/c"),
            Some(&json!(2))
        );
    }

    #[test]
    fn over_the_limit_is_413_and_changes_nothing() {
        let mut m = MmdsStore::new(20);
        assert_eq!(m.put(json!({"k": "v"})).status, 204);
        for r in [
            m.put(json!({"k": "a much longer value"})),
            m.patch(json!({"other": "a much longer value"})),
        ] {
            assert_eq!(r.status, 413);
            let text = body(&r)["fault_message"].as_str().unwrap().to_owned();
            assert!(text.starts_with(LIMIT_EXCEEDED), "{text}");
            assert!(text.contains("over its limit of 20 bytes"), "{text}");
        }
        assert_eq!(body(&m.get()), json!({"k": "v"}));
    }

    #[test]
    fn a_failed_first_put_leaves_it_uninitialized() {
        let mut m = MmdsStore::new(petrel_mmds::store::DEFAULT_SIZE_LIMIT);
        let r = m.put(json!(["not", "an", "object"]));
        assert_eq!(r.status, 400);
        assert_eq!(
            body(&r)["fault_message"],
            "MMDS error: the MMDS data store must be a JSON object, not an array"
        );
        assert_eq!(m.patch(json!({})).status, 400);
    }
}

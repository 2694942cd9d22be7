//! The lease calls: grant, keepalive, revoke, read one, list.
//!
//! A keepalive is sent once per call, never retried here: it is only acknowledged once the
//! renewal is committed, and a caller that keeps a lease alive decides itself how long to
//! go on retrying (no longer than the lease may live: see `palisade lease keepalive`).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{num, query_string, Client, Error, Reply};
use crate::wire::lease::{
    GrantResponse, KeepaliveResponse, LeaseListResponse, LeaseResponse, RevokeResponse,
};

/// The URL path of lease `id`.
fn lease_path(id: u64) -> String {
    format!("/v1/leases/{id}")
}

/// A TTL as the wire takes it: whole milliseconds (`"1500ms"`). A TTL that is not a whole
/// number of milliseconds is refused here; zero and the server's bounds are the server's to
/// refuse (400 `invalid_argument`).
fn ttl_text(ttl: Duration) -> Result<String, Error> {
    if !ttl.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::Other(format!("a lease TTL is a whole number of milliseconds, not {ttl:?}")));
    }
    Ok(format!("{}ms", ttl.as_millis()))
}

impl Client {
    /// `POST /v1/leases`: a new lease of `ttl`, under `id` when given (else the cluster
    /// picks one). An `id` in use is `Error::Api` 409 `lease_exists`; a TTL outside the
    /// cluster's bounds is 400 `invalid_argument`.
    pub async fn lease_grant(
        &self,
        ttl: Duration,
        id: Option<u64>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<GrantResponse>, Error> {
        let mut body = json!({ "ttl": ttl_text(ttl)? });
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        self.write_typed(Method::POST, "/v1/leases", Some(body), idempotency_key).await
    }

    /// `POST /v1/leases/{id}/keepalive`: the lease gets its whole TTL again. Answered once
    /// the renewal is committed; an unknown or expired lease is 404 `lease_not_found`.
    pub async fn lease_keepalive(&self, id: u64) -> Result<Reply<KeepaliveResponse>, Error> {
        self.call_typed(Method::POST, &format!("{}/keepalive", lease_path(id)), None).await
    }

    /// `DELETE /v1/leases/{id}`: ends the lease now; its keys are deleted at one revision.
    pub async fn lease_revoke(
        &self,
        id: u64,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<RevokeResponse>, Error> {
        self.write_typed(Method::DELETE, &lease_path(id), None, idempotency_key).await
    }

    /// `GET /v1/leases/{id}`: its TTL, time left and (the first 1000 of) its keys.
    pub async fn lease_get(&self, id: u64) -> Result<Reply<LeaseResponse>, Error> {
        self.call_typed(Method::GET, &lease_path(id), None).await
    }

    /// `GET /v1/leases`: one page of leases in id order, those after `after`, at most
    /// `limit` (server default and maximum apply).
    pub async fn lease_list(
        &self,
        after: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Reply<LeaseListResponse>, Error> {
        let q = query_string(&[("limit", num(limit)), ("after", num(after))]);
        self.call_typed(Method::GET, &format!("/v1/leases{q}"), None).await
    }

    /// Every page of the lease listing, merged (`limit` is the page size).
    pub async fn lease_list_all(&self, limit: Option<u64>) -> Result<Reply<LeaseListResponse>, Error> {
        let mut all = self.lease_list(None, limit).await?;
        while all.more {
            let Some(next) = all.next.take() else {
                return Err(Error::Other("the server said more leases follow but gave no page token".into()));
            };
            let Reply { body, meta } = self.lease_list(Some(next), limit).await?;
            all.leases.extend(body.leases);
            all.more = body.more;
            all.next = body.next;
            all.meta = meta;
        }
        all.count = all.leases.len() as u64;
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_travel_as_whole_milliseconds() {
        assert_eq!(ttl_text(Duration::from_secs(10)).unwrap(), "10000ms");
        assert_eq!(ttl_text(Duration::from_millis(750)).unwrap(), "750ms");
        assert_eq!(ttl_text(Duration::ZERO).unwrap(), "0ms");
        assert!(ttl_text(Duration::from_micros(1500)).is_err());
    }

    #[test]
    fn replies_decode_and_reencode_faithfully() {
        fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(v: serde_json::Value) -> T {
            let t: T = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&t).unwrap(), v);
            t
        }
        let g: GrantResponse = round_trip(json!({"id": 7, "ttl_ms": 10000}));
        assert_eq!((g.id, g.ttl_ms), (7, 10000));
        let k: KeepaliveResponse = round_trip(json!({"id": 7, "ttl_ms": 10000, "remaining_ms": 9998}));
        assert_eq!(k.remaining_ms, 9998);
        let l: LeaseResponse =
            round_trip(json!({"id": 7, "ttl_ms": 10000, "remaining_ms": 5000, "key_count": 2,
            "keys": ["/a", "/b"], "locks": [{"kind": "lock", "name": "db", "owner": "7-9"}]}));
        assert_eq!(l.keys, vec!["/a", "/b"]);
        assert_eq!(l.locks[0].owner, "7-9");
        let page: LeaseListResponse = round_trip(json!({"leases": [
            {"id": 7, "ttl_ms": 10000, "remaining_ms": 5000, "key_count": 2}], "count": 1, "more": true, "next": 7}));
        assert_eq!(page.next, Some(7));
        let last: LeaseListResponse = round_trip(json!({"leases": [], "count": 0, "more": false}));
        assert_eq!(last.next, None);
        let r: RevokeResponse = round_trip(json!({"revision": 12, "id": 7, "deleted": 2}));
        assert_eq!(r.deleted, 2);
    }
}

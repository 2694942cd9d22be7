//! The key-value calls: get, put, delete, listings and counts.

use reqwest::Method;

use super::{flag, kv_path, num, query_string, Client, Error, Reply};
use crate::wire::{ChildrenResponse, CountResponse, DeleteResponse, GetResponse, ListResponse, PutResponse};

/// Options of [`Client::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Read the key as of this revision (history).
    pub revision: Option<u64>,
    /// Read the local replica (`?consistency=serializable`): fast, possibly stale.
    pub consistency_serializable: bool,
}

/// Options of [`Client::put`]. The conditions all must hold, or the reply is 409
/// `condition_failed` (see [`Error::current_kv`]).
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// `Some(0)`: create only.
    pub if_version: Option<u64>,
    pub if_mod_revision: Option<u64>,
    pub if_value: Option<String>,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Attach the key to this lease.
    pub lease: Option<u64>,
    /// Applied at most once under this key (and retried when the outcome is unknown).
    pub idempotency_key: Option<String>,
}

/// Conditions of a write.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub if_version: Option<u64>,
    pub if_mod_revision: Option<u64>,
    pub if_value: Option<String>,
}

/// Options of [`Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Delete the key and everything below it.
    pub recursive: bool,
    pub conditions: Conditions,
    /// Return the deleted key-values.
    pub prev_kv: bool,
    /// Applied at most once under this key (and retried when the outcome is unknown).
    pub idempotency_key: Option<String>,
}

/// Options of [`Client::list`] (a recursive listing).
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Keys per page (server default and maximum apply).
    pub limit: Option<u64>,
    /// A page token: the `next` of the previous page.
    pub after: Option<String>,
    pub keys_only: bool,
    pub revision: Option<u64>,
    pub serializable: bool,
}

/// Options of [`Client::children`].
#[derive(Debug, Clone, Default)]
pub struct ChildrenOptions {
    pub limit: Option<u64>,
    pub after: Option<String>,
    pub revision: Option<u64>,
    pub serializable: bool,
}

fn conditions(c: &Conditions) -> [(&'static str, Option<String>); 3] {
    [
        ("if_version", num(c.if_version)),
        ("if_mod_revision", num(c.if_mod_revision)),
        ("if_value", c.if_value.clone()),
    ]
}

impl Client {
    /// `GET /v1/kv/{key}`: one key. A missing key is `Error::Api` with code `key_not_found`.
    pub async fn get(&self, key: &str, opts: GetOptions) -> Result<Reply<GetResponse>, Error> {
        let q = query_string(&[
            ("revision", num(opts.revision)),
            ("consistency", opts.consistency_serializable.then(|| "serializable".to_string())),
        ]);
        self.call_typed(Method::GET, &format!("{}{q}", kv_path(key)?), None).await
    }

    /// `PUT /v1/kv/{key}`: writes `value` (sent as `value` when UTF-8, else `value_base64`).
    pub async fn put(&self, key: &str, value: &[u8], opts: PutOptions) -> Result<Reply<PutResponse>, Error> {
        let c = Conditions {
            if_version: opts.if_version,
            if_mod_revision: opts.if_mod_revision,
            if_value: opts.if_value,
        };
        let mut params = conditions(&c).to_vec();
        params.push(("prev_kv", flag(opts.prev_kv)));
        let path = format!("{}{}", kv_path(key)?, query_string(&params));
        let body = Some(crate::wire::put_body(value, opts.lease));
        self.write_typed(Method::PUT, &path, body, opts.idempotency_key.as_deref()).await
    }

    /// `POST /v1/kv/{parent}?sequential`: creates the next sequential child of `parent`
    /// (the reply's `kv.key` names it).
    pub async fn put_sequential(
        &self,
        parent: &str,
        value: &[u8],
        lease: Option<u64>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<PutResponse>, Error> {
        let path = format!("{}?sequential", kv_path(parent)?);
        self.write_typed(Method::POST, &path, Some(crate::wire::put_body(value, lease)), idempotency_key)
            .await
    }

    /// `DELETE /v1/kv/{key}`: `deleted` is 0 (not an error) when nothing matched.
    pub async fn delete(&self, key: &str, opts: DeleteOptions) -> Result<Reply<DeleteResponse>, Error> {
        let mut params = vec![("recursive", flag(opts.recursive))];
        params.extend(conditions(&opts.conditions));
        params.push(("prev_kv", flag(opts.prev_kv)));
        let path = format!("{}{}", kv_path(key)?, query_string(&params));
        self.write_typed(Method::DELETE, &path, None, opts.idempotency_key.as_deref()).await
    }

    /// `GET /v1/kv/{key}?recursive`: one page of the key and everything below it, sorted.
    pub async fn list(&self, key: &str, opts: ListOptions) -> Result<Reply<ListResponse>, Error> {
        let q = query_string(&[
            ("recursive", flag(true)),
            ("limit", num(opts.limit)),
            ("after", opts.after),
            ("keys_only", flag(opts.keys_only)),
            ("revision", num(opts.revision)),
            ("consistency", opts.serializable.then(|| "serializable".to_string())),
        ]);
        self.call_typed(Method::GET, &format!("{}{q}", kv_path(key)?), None).await
    }

    /// Every page of a recursive listing, merged (all pages read at the first page's
    /// revision). `opts.limit` is the page size.
    pub async fn list_all(&self, key: &str, mut opts: ListOptions) -> Result<Reply<ListResponse>, Error> {
        let mut all = self.list(key, opts.clone()).await?;
        while all.more {
            let Some(next) = all.next.take() else {
                return Err(Error::Other("the server said more keys follow but gave no page token".into()));
            };
            opts.after = Some(next);
            let page = self.list(key, opts.clone()).await?;
            let Reply { body, meta } = page;
            all.kvs.extend(body.kvs);
            all.more = body.more;
            all.next = body.next;
            all.meta = meta;
        }
        Ok(all)
    }

    /// `GET /v1/kv/{key}?recursive&count_only`: how many keys the subtree holds.
    pub async fn count(
        &self,
        key: &str,
        revision: Option<u64>,
        serializable: bool,
    ) -> Result<Reply<CountResponse>, Error> {
        let q = query_string(&[
            ("recursive", flag(true)),
            ("count_only", flag(true)),
            ("revision", num(revision)),
            ("consistency", serializable.then(|| "serializable".to_string())),
        ]);
        self.call_typed(Method::GET, &format!("{}{q}", kv_path(key)?), None).await
    }

    /// `GET /v1/kv/{key}?children`: one page of the direct children (an empty list when
    /// nothing is below `key`).
    pub async fn children(&self, key: &str, opts: ChildrenOptions) -> Result<Reply<ChildrenResponse>, Error> {
        let q = query_string(&[
            ("children", flag(true)),
            ("limit", num(opts.limit)),
            ("after", opts.after),
            ("revision", num(opts.revision)),
            ("consistency", opts.serializable.then(|| "serializable".to_string())),
        ]);
        self.call_typed(Method::GET, &format!("{}{q}", kv_path(key)?), None).await
    }

    /// Every page of the direct children, merged.
    pub async fn children_all(
        &self,
        key: &str,
        mut opts: ChildrenOptions,
    ) -> Result<Reply<ChildrenResponse>, Error> {
        let mut all = self.children(key, opts.clone()).await?;
        while all.more {
            let Some(next) = all.next.take() else {
                return Err(Error::Other(
                    "the server said more children follow but gave no page token".into(),
                ));
            };
            opts.after = Some(next);
            let page = self.children(key, opts.clone()).await?;
            let Reply { body, meta } = page;
            all.children.extend(body.children);
            all.more = body.more;
            all.next = body.next;
            all.meta = meta;
        }
        Ok(all)
    }
}

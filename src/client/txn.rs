//! Transactions and compaction.

use reqwest::Method;

use super::{Client, Error, Reply};
use crate::wire::txn::{CompactRequest, CompactResponse, TxnRequest, TxnResponse};

impl Client {
    /// `POST /v1/txn`. A failed compare is not an error: `succeeded` is false.
    pub async fn txn(
        &self,
        txn: &TxnRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<TxnResponse>, Error> {
        let body = serde_json::to_value(txn)
            .map_err(|e| Error::Other(format!("cannot encode the transaction: {e}")))?;
        self.write_typed(Method::POST, "/v1/txn", Some(body), idempotency_key).await
    }

    /// `POST /v1/maintenance/compact`: drops the history below `revision`.
    pub async fn compact(
        &self,
        revision: u64,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<CompactResponse>, Error> {
        let body = serde_json::to_value(CompactRequest { revision }).expect("a number encodes");
        self.write_typed(Method::POST, "/v1/maintenance/compact", Some(body), idempotency_key).await
    }
}

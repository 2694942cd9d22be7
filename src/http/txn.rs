//! `POST /v1/txn`: compares, then the `success` or the `failure` operations, at one revision.
//!
//! The handler turns the JSON into a [`Txn`] (shape and types checked here, with the get
//! page size and read budget filled in from this node's settings); the node checks the
//! policy (keys, sizes, counts, a key written twice in a branch, the quota) before
//! proposing. A failed compare is not an error: 200 with `succeeded: false` and the
//! failure branch's results.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::write;
use crate::auth::Caller;
use crate::error::Error;
use crate::node::Node;
use crate::store::{Command, Compare, CompareOp, CompareTarget, Outcome, Txn, TxnOp, TxnResult};
use crate::wire::{self, txn as w};

/// Turns the request body into a transaction, refusing what is malformed.
fn parse_txn(node: &Node, req: w::TxnRequest) -> Result<Txn, ApiError> {
    let cfg = node.config();
    let compare: Result<Vec<Compare>, ApiError> =
        req.compare.iter().enumerate().map(|(i, c)| compare(c).map_err(|m| at("compare", i, m))).collect();
    let ops = |branch: &'static str, ops: Vec<w::OpSpec>| -> Result<Vec<TxnOp>, ApiError> {
        ops.into_iter().enumerate().map(|(i, op)| txn_op(op).map_err(|m| at(branch, i, m))).collect()
    };
    Ok(Txn {
        compare: compare?,
        success: ops("success", req.success)?,
        failure: ops("failure", req.failure)?,
        max_read_bytes: cfg.max_page_bytes as u64,
        default_get_limit: cfg.max_list_limit as u64,
    })
}

fn at(list: &str, i: usize, message: String) -> ApiError {
    ApiError::invalid(format!("{list}[{i}]: {message}"))
}

fn compare(c: &w::CompareSpec) -> Result<Compare, String> {
    let op = match c.op.as_str() {
        "==" => CompareOp::Eq,
        "!=" => CompareOp::Ne,
        "<" => CompareOp::Lt,
        ">" => CompareOp::Gt,
        other => return Err(format!("unknown compare op {other:?}: one of ==, !=, <, >")),
    };
    if c.target == "fence" {
        // `{"target": "fence", "lock": NAME, "op": "==", "value": TOKEN}`.
        if c.key.is_some() {
            return Err("a fence compare names its lock (\"lock\"), not a key".into());
        }
        let lock = c.lock.clone().ok_or("a fence compare needs the lock's name (\"lock\")")?;
        let w::Operand::Number(token) = c.operand()? else {
            return Err("a fence compare takes a fencing token (an integer) as its value".into());
        };
        return Ok(Compare { key: lock, op, target: CompareTarget::Fence(token) });
    }
    if c.lock.is_some() {
        return Err("lock belongs to fence compares; a key compare names its key".into());
    }
    let key = c.key.clone().ok_or("a compare needs a key")?;
    let target = match (c.target.as_str(), c.operand()?) {
        ("value", w::Operand::Value(v)) => CompareTarget::Value(v),
        ("version", w::Operand::Number(n)) => CompareTarget::Version(n),
        ("create_revision", w::Operand::Number(n)) => CompareTarget::CreateRevision(n),
        ("mod_revision", w::Operand::Number(n)) => CompareTarget::ModRevision(n),
        ("lease", w::Operand::Number(n)) => CompareTarget::Lease(n),
        (target, _) => return Err(format!("the operand does not fit target {target:?}")),
    };
    Ok(Compare { key, op, target })
}

fn txn_op(op: w::OpSpec) -> Result<TxnOp, String> {
    Ok(match op {
        w::OpSpec::Put(p) => {
            let value = wire::decode_value(p.value, p.value_base64)?
                .ok_or("a put needs a value (or value_base64)")?;
            if p.sequential && p.prev_kv {
                return Err("a sequential create has no previous value (prev_kv)".into());
            }
            TxnOp::Put { key: p.key, value, lease: p.lease, sequential: p.sequential, prev_kv: p.prev_kv }
        }
        w::OpSpec::Delete(d) => TxnOp::Delete { key: d.key, recursive: d.recursive, prev_kv: d.prev_kv },
        w::OpSpec::Get(g) => {
            if !g.recursive && g.limit.is_some() {
                return Err("limit applies to a recursive get".into());
            }
            TxnOp::Get { key: g.key, recursive: g.recursive, limit: g.limit, keys_only: g.keys_only }
        }
    })
}

/// The wire form of one result (`keys_only`: the get that made it left values out).
fn result(r: TxnResult, keys_only: bool) -> w::OpResult {
    match r {
        TxnResult::Put { revision, kv, prev_kv } => {
            w::OpResult::Put(w::PutResult { revision, key: kv.key, prev_kv: prev_kv.map(Into::into) })
        }
        TxnResult::Delete { deleted, prev_kvs } => w::OpResult::Delete(w::DeleteResult {
            deleted,
            prev_kvs: prev_kvs.into_iter().map(Into::into).collect(),
        }),
        TxnResult::Get { kvs, more } => {
            let kvs = kvs
                .into_iter()
                .map(|kv| if keys_only { wire::KeyValue::from(kv).without_value() } else { kv.into() })
                .collect();
            w::OpResult::Get(w::GetResult { kvs, more })
        }
    }
}

/// `POST /v1/txn`.
pub async fn txn(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, once): (w::TxnRequest, _) = write::json_write(&node, &uri, &headers, body).await?;
    let txn = parse_txn(&node, req)?;
    let keys_only = |ops: &[TxnOp]| -> Vec<bool> {
        ops.iter().map(|op| matches!(op, TxnOp::Get { keys_only: true, .. })).collect()
    };
    let (success_keys_only, failure_keys_only) = (keys_only(&txn.success), keys_only(&txn.failure));
    let outcome = write::send(&node, &caller, once, Command::Txn(txn)).await?;
    let term = node.term();
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    let reply = match outcome {
        Outcome::Txn { revision, succeeded, results } => {
            let keys_only = if succeeded { success_keys_only } else { failure_keys_only };
            let flags = keys_only.into_iter().chain(std::iter::repeat(false));
            let results = results.into_iter().zip(flags).map(|(r, k)| result(r, k)).collect();
            let body = w::TxnResponse { revision, succeeded, results };
            let mut resp = (StatusCode::OK, super::json_body(&body)).into_response();
            super::state_headers(resp.headers_mut(), revision, term);
            Ok(resp)
        }
        Outcome::LeaseNotFound { revision, lease } => {
            Err(ApiError::from(Error::LeaseNotFound(lease)).at(revision, term))
        }
        other => Err(Error::Internal(format!("a transaction was decided as {other:?}")).into()),
    };
    write::mark_replayed(reply, replayed)
}

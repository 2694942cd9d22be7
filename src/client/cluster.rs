//! Cluster calls: the cluster's status, and membership changes (admin).

use reqwest::Method;
use serde_json::json;

use super::{Client, Error, Reply};
use crate::wire::{ClusterResponse, MemberResponse, UpdateMemberRequest};

impl Client {
    /// `GET /v1/cluster`: the answering node's view of the cluster.
    pub async fn cluster(&self) -> Result<Reply<ClusterResponse>, Error> {
        self.call_typed(Method::GET, "/v1/cluster", None).await
    }

    /// `POST /v1/cluster/members`: adds node `id` as a learner.
    pub async fn add_member(
        &self,
        id: u64,
        peer_url: &str,
        client_url: &str,
    ) -> Result<Reply<MemberResponse>, Error> {
        let body = json!({ "id": id, "peer_url": peer_url, "client_url": client_url });
        self.call_typed(Method::POST, "/v1/cluster/members", Some(body)).await
    }

    /// `POST /v1/cluster/members/{id}/promote`: makes learner `id` a voter (409
    /// `learner_behind` until it has caught up).
    pub async fn promote_member(&self, id: u64) -> Result<Reply<MemberResponse>, Error> {
        self.call_typed(Method::POST, &format!("/v1/cluster/members/{id}/promote"), None).await
    }

    /// `DELETE /v1/cluster/members/{id}`: removes member `id` (the leader too).
    pub async fn remove_member(&self, id: u64) -> Result<Reply<MemberResponse>, Error> {
        self.call_typed(Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await
    }

    /// `PUT /v1/cluster/members/{id}`: moves member `id` to new URLs (a URL not given stays).
    pub async fn update_member(
        &self,
        id: u64,
        peer_url: Option<&str>,
        client_url: Option<&str>,
    ) -> Result<Reply<MemberResponse>, Error> {
        let body = UpdateMemberRequest {
            peer_url: peer_url.map(str::to_string),
            client_url: client_url.map(str::to_string),
        };
        let body = serde_json::to_value(body).map_err(|e| Error::Other(e.to_string()))?;
        self.call_typed(Method::PUT, &format!("/v1/cluster/members/{id}"), Some(body)).await
    }
}

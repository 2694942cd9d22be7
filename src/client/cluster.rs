//! Cluster calls.

use reqwest::Method;

use super::{Client, Error, Reply};
use crate::wire::ClusterResponse;

impl Client {
    /// `GET /v1/cluster`: the answering node's view of the cluster.
    pub async fn cluster(&self) -> Result<Reply<ClusterResponse>, Error> {
        self.call_typed(Method::GET, "/v1/cluster", None).await
    }
}

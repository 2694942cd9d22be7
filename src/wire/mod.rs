//! The JSON shapes of the client API, shared by the server (`http/`) and the client
//! (`client/`), so each exists once. Leaf-level: serde only, no behaviour beyond
//! encoding (a value is `value` when its bytes are UTF-8, else `value_base64`).

pub mod cluster;
pub mod error;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod txn;
pub mod watch;
pub mod whole;

pub use cluster::{
    AddMemberRequest, ClusterResponse, HealthResponse, LeaseStats, LockStats, MemberResponse,
    UpdateMemberRequest,
};
pub use error::{ErrorBody, ErrorDetail};
pub use kv::{
    decode_value, put_body, Child, ChildrenResponse, CountResponse, DeleteResponse, GetResponse, KeyValue,
    ListResponse, PutBody, PutResponse,
};

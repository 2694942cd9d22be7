//! openraft glue only: the type config, the durable log store, the state machine adapter
//! and the peer network. Every openraft type stays behind this module.

pub mod log_store;
pub mod network;
pub mod sim_network;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;

pub use types::*;

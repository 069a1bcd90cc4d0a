//! Control module: several gateway nodes as one system (issue 6).
//!
//! - [`machine`]: the sans-IO state machine of one node — election by (configuration version,
//!   score, node id) with VRRP timers, fencing epochs, replication of the show, channel
//!   placement and client takeover.
//! - [`show`]: the replicated configuration and its version.
//! - [`wire`]: the message codec with HMAC-SHA256 and a per-sender monotonic counter.
//! - [`store`]: the state directory (fsync'd epoch and show).
//! - [`transport`]: the tokio glue: UDP socket, timers, the gateway's channels, the API.

pub mod api;
pub mod machine;
pub mod show;
#[cfg(test)]
pub(crate) mod sim;
pub mod store;
pub mod transport;
pub mod wire;

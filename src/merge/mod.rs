//! Sans-IO merge state machines. Nothing here reads a clock or touches a socket:
//! `now` is always a parameter, and the glue in `runtime` moves the packets.
//!
//! - [`seq2022_7`]: SMPTE ST 2022-7 seamless protection switching by RTP sequence number.
//! - [`switch`]: stream switch between different sources by priority and health (failover
//!   channel).

pub mod content;
pub mod seq2022_7;
#[cfg(test)]
pub(crate) mod sim;
pub mod switch;

/// Index of a leg (source) within its channel, in configuration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub usize);

/// What happened to a pushed packet. Duplicates and late packets are results, not errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Next in sequence: ready for `poll_output` at once.
    Forwarded,
    /// Held behind a gap until the missing packet arrives or the window expires.
    Queued,
    /// Another leg already delivered this packet.
    Duplicate,
    /// Older than what was already released.
    Late,
}

//! Operator tools behind the CLI: `send` (paced, impaired test sender), `recv` (capture and
//! check). They are how engineers test a failover set-up and how our tests drive the gateway.

pub mod analyze;
mod common;
pub mod demo;
pub mod impair;
pub mod pace;
pub mod recv;
pub mod send;
mod sendmmsg;

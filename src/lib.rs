//! `hitless`: a hitless stream-merge packet gateway for MPEG-TS over UDP and RTP.
//!
//! Layout follows the architecture: pure, sans-IO logic (`rtp`, `ts`, `merge`, `config`)
//! never touches a socket or a clock; the glue (`net`, `ingest`, `output`, `runtime`,
//! `http`, `metrics`) moves bytes and reads time.
#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod http;
pub mod ingest;
pub mod merge;
pub mod metrics;
pub mod net;
pub mod output;
pub mod rtp;
pub mod rules;
pub mod runtime;
pub mod slate;
pub mod tools;
pub mod ts;
pub mod url;

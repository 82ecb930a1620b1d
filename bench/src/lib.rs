//! Benchmark suite for the Konnectivity proxy-server and proxy-agent.
//!
//! Starts the real binaries on loopback with a freshly generated PKI and measures, for the
//! direct path (no proxy) and for each frontend (HTTP CONNECT over mTLS TCP, HTTP CONNECT over
//! a Unix socket, gRPC over a Unix socket) × agent transport (gRPC, QUIC): single-stream and
//! parallel throughput with server + agent CPU per GiB, dial latency, small-message round
//! trips, thousands of idle tunnels, and head-of-line blocking between tunnels. Every byte a
//! figure counts is verified at its receiver against a deterministic pattern; a transfer
//! that fails verification yields a failure, never a figure.
//!
//! Entry point: [`runner::run`] with a [`BenchConfig`]; [`report::table`] renders the result
//! and the [`report::Report`] serialises to JSON.

#![forbid(unsafe_code)]

pub mod bins;
pub mod config;
pub mod conn;
pub mod error;
pub mod harness;
pub mod pattern;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod sinks;
pub mod stats;

pub use bins::Binaries;
pub use config::{BenchConfig, Frontend, PathSpec, ScenarioKind, Transport};
pub use error::{BenchError, Result};
pub use report::Report;

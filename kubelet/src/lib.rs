//! The kubelet's streaming API as wire protocol, on both ends.
//!
//! kube-apiserver reaches a node's kubelet (through the Konnectivity tunnel) for `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward`. This crate speaks that HTTPS API:
//!
//! * [`standin`]: a kubelet stand-in server with the real wire protocols (chunked logs,
//!   WebSocket `v5.channel.k8s.io` / `v4.channel.k8s.io` exec with real processes, v4 channel
//!   port-forward to real TCP ports), requiring a client certificate from the kubelet CA.
//! * [`client`]: the kube-apiserver side — [`client::connect_tls`] verifies the kubelet's
//!   certificate over any already-dialled stream (e.g. a Konnectivity tunnel) and
//!   [`client::logs`], [`client::exec`], [`client::port_forward`] speak the protocols over it.
//! * [`protocol`] and [`request`]: the framing, status encoding and URL building both share.
//!
//! The protocols are written up in `kubelet-reference.md` (sections 1–4); SPDY/3.1, which a
//! real kube-apiserver still uses towards kubelets, is not implemented.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod protocol;
pub mod request;
pub mod standin;

pub use client::{
    connect_tls, exec, logs, port_forward, ExecSession, KubeletError, KubeletTls, KubeletTlsError,
    LogStream, PortForwardStream,
};
pub use protocol::ExitStatus;
pub use request::{ExecOptions, LogOptions};
pub use standin::{run, Standin, StandinConfig, StandinError, StandinStats};

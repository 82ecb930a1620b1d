//! End-to-end harness for the Konnectivity proxy-server and proxy-agent.
//!
//! The tests in `tests/` run the REAL binaries on loopback; the demo binary
//! (`konnectivity-demo`) runs the same components in-process. Both build on this library:
//!
//! * [`TestEnv`]: a per-test temporary directory with a freshly generated PKI (three CAs and
//!   their leaves, from `konnectivity-certs`) and the processes' logs; kept on failure.
//! * [`Server`] / [`Agent`]: the binaries as child processes with upstream's flags, their logs
//!   captured and printed when a test fails, killed on drop; readiness helpers, `/metrics`.
//! * [`Kubelet`]: an HTTPS stand-in with the kubelet serving certificate that requires the
//!   kubelet-client certificate; [`KubeletClient`] speaks HTTPS to it over any byte stream
//!   (normally a tunnel), verifying its certificate end to end.
//! * [`EchoServer`], [`Blackhole`]: plain TCP destinations (echo; connects that hang).
//! * [`RawGrpc`]: a raw HTTP/2 gRPC client for malformed input; [`metrics`] parsing.
//!
//! Binaries are found next to the test executable and built on first use (see [`bins`]).

#![forbid(unsafe_code)]

pub mod bins;
pub mod cluster;
pub mod connect;
pub mod env;
pub mod error;
pub mod grpc_raw;
pub mod http;
pub mod https;
pub mod kubelet;
pub mod metrics;
pub mod netutil;
pub mod ports;
pub mod process;
pub mod report;
pub mod tls;
pub mod wait;

pub use cluster::Cluster;
pub use env::TestEnv;
pub use error::{HarnessError, Result};
pub use grpc_raw::{Event, RawGrpc, RawStream};
pub use http::{HttpConn, HttpResponse};
pub use https::KubeletClient;
pub use kubelet::Kubelet;
pub use netutil::{Blackhole, EchoServer};
pub use process::{
    Agent, AgentOptions, FrontendAddr, Mode, OpenFiles, Server, ServerOptions, ServerPorts,
    Transport,
};
pub use report::e2e;

use konnectivity_client::{Dialer, ProxyProtocol, ProxyTransport};

/// A `konnectivity-client` dialer for `server`'s frontend, as kube-apiserver would configure
/// it (Unix socket, or mTLS TCP with the frontend-client certificate verifying the server as
/// `127.0.0.1`).
pub fn dialer_for(env: &TestEnv, server: &Server) -> Result<Dialer> {
    let protocol = match server.mode {
        Mode::Grpc => ProxyProtocol::Grpc,
        Mode::HttpConnect => ProxyProtocol::HttpConnect,
    };
    let transport = match &server.frontend {
        FrontendAddr::Uds(path) => ProxyTransport::Uds(path.clone()),
        FrontendAddr::Tcp(addr) => ProxyTransport::Tcp {
            addr: addr.to_string(),
            server_name: "127.0.0.1".to_string(),
            ca: env.pki.frontend_ca.cert.clone(),
            client_cert: env.pki.frontend_client.cert.clone(),
            client_key: env.pki.frontend_client.key.clone(),
        },
    };
    Dialer::new(protocol, transport)
        .map_err(|e| HarnessError::Process(format!("building the client dialer: {e}")))
}

/// Installs a `tracing` subscriber writing to the test output (filtered by `RUST_LOG`,
/// default `warn`); idempotent, so every test may call it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

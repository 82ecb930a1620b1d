//! proxy-server: the control-plane half of the Konnectivity tunnel.
//!
//! It runs beside kube-apiserver. Its *frontend* ([`frontend`]) takes the apiserver's egress
//! traffic (gRPC `ProxyService` or HTTP CONNECT, over a Unix socket or mTLS TCP); its *backend*
//! ([`backend`]) accepts agents' `AgentService.Connect` streams. Routing decisions live in plain
//! data structures ([`backends`], [`router`]) with no I/O; [`state`] is the thin shell that
//! applies them.
//!
//! [`run`] is the whole server; the binary only parses flags into a [`config::ServerConfig`].

#![forbid(unsafe_code)]

pub mod backend;
pub mod backends;
pub mod config;
pub mod flags;
pub mod frontend;
pub mod grpc_method;
pub mod identifiers;
pub mod listen;
pub mod metrics;
pub mod quic;
pub mod router;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{FrontendListen, FrontendMode, ServerConfig};
use crate::state::Shared;

/// ALPN of every gRPC listener: grpc-go clients refuse a connection without it.
const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP CONNECT listener (Go's net/http server with HTTP/2 disabled).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Most concurrent `Proxy` streams on one frontend HTTP/2 connection. grpc-go's server has no
/// limit; a reusable-tunnel client multiplexes every dial on one connection. Cost: each open
/// stream holds one frontend queue.
pub const FRONTEND_MAX_CONCURRENT_STREAMS: u32 = 1_000_000;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}; is another process using it?")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Certificates or keys could not be loaded.
    #[error("{what}: {source}")]
    Tls {
        what: &'static str,
        /// Boxed: TLS errors are large and this enum travels in every start-up `Result`.
        #[source]
        source: Box<konnectivity_tls::TlsError>,
    },
    /// The TLS configuration cannot be used for QUIC (it needs TLS 1.3 with AES-128-GCM).
    #[error("QUIC agent listener: the TLS configuration cannot be used for QUIC: {0}; pass --enable-quic=false to run without it")]
    Quic(String),
}

fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    listen::bind_tcp(addr).map_err(|source| ServerError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

/// Addresses the server actually listens on (useful when a configured port is 0).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub agent: SocketAddr,
    /// The QUIC (UDP) agent listener, unless `--enable-quic=false`.
    pub agent_quic: Option<SocketAddr>,
    pub frontend: Option<SocketAddr>,
    pub health: SocketAddr,
    pub admin: SocketAddr,
}

/// Runs the server until `shutdown` is cancelled, then stops as upstream does: with a zero
/// `--graceful-shutdown-timeout` at once; otherwise listeners close first and open frontend
/// connections get that long to finish before everything is cut.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let (bound, shared) = start(&config, shutdown.clone()).await?;
    info!(?bound, server_id = %config.server_id, "proxy-server running");
    shutdown.cancelled().await;
    stop(&shared, &config).await;
    Ok(())
}

/// Starts every listener and returns once they are bound (for tests and the demo, which need
/// the addresses). Everything stops when `shutdown` is cancelled; call [`stop`] to also cut
/// the open streams.
pub async fn start(
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<(BoundAddrs, Arc<Shared>), ServerError> {
    let extensions = &config.extensions;
    let metrics = metrics::Metrics::new();
    let shared = Shared::new(config, metrics.clone());

    // Agent listener: TLS, ALPN h2 required, client certificates if --cluster-ca-cert is set.
    let b = &config.backend;
    let agent_tls = konnectivity_tls::server_config(
        &b.cert,
        &b.key,
        b.client_ca.as_deref(),
        &[ALPN_H2],
        &config.tls,
    )
    .map_err(|source| ServerError::Tls {
        source: Box::new(source),
        what: "agent listener (--cluster-cert/--cluster-key/--cluster-ca-cert)",
    })?;
    let agent_listener = bind_tcp("agents", b.addr)?;
    let agent_addr = agent_listener.local_addr().unwrap_or(b.addr);
    let incoming = listen::tls_incoming(
        agent_listener,
        tokio_rustls::TlsAcceptor::from(agent_tls),
        Some(ALPN_H2),
        konnectivity_tls::READ_AHEAD_BYTES,
        "agent",
        shutdown.clone(),
    );
    let agent_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive(b.keepalive_time))
        .max_frame_size(konnectivity_tunnel::H2_MAX_FRAME_BYTES)
        .add_service(grpc_method::RawService(backend::Backend::new(Arc::clone(
            &shared,
        ))))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::spawn(async move {
        if let Err(e) = agent_server.await {
            warn!(error = %e, "agent gRPC server ended with an error");
        }
    });
    // QUIC on UDP at the very address the TCP listener got (also when the port was 0).
    let agent_quic = if extensions.enable_quic {
        let listener = quic::bind(config, agent_addr)?;
        let addr = listener.endpoint.local_addr().unwrap_or(agent_addr);
        info!(%addr, "accepting agents over QUIC");
        quic::spawn(Arc::clone(&shared), listener, shutdown.clone());
        Some(addr)
    } else {
        None
    };

    let frontend_addr = start_frontend(config, &shared, shutdown.clone()).await?;

    let health_listener = bind_tcp("health", config.health_addr)?;
    let admin_listener = bind_tcp("admin", config.admin_addr)?;
    let bound = BoundAddrs {
        agent: agent_addr,
        agent_quic,
        frontend: frontend_addr,
        health: health_listener.local_addr().unwrap_or(config.health_addr),
        admin: admin_listener.local_addr().unwrap_or(config.admin_addr),
    };
    health::spawn(
        Arc::clone(&shared),
        health_listener,
        admin_listener,
        shutdown,
    );
    Ok((bound, shared))
}

async fn start_frontend(
    config: &ServerConfig,
    shared: &Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<Option<SocketAddr>, ServerError> {
    let f = &config.frontend;
    match (&f.listen, f.mode) {
        (
            FrontendListen::Uds {
                path,
                delete_existing,
            },
            mode,
        ) => {
            let listener =
                listen::bind_uds(path, *delete_existing).map_err(|source| ServerError::Bind {
                    what: "frontend (--uds-name)",
                    addr: path.display().to_string(),
                    source,
                })?;
            info!(path = %path.display(), ?mode, "frontend listening on Unix socket");
            match mode {
                FrontendMode::Grpc => {
                    let incoming = listen::uds_incoming(listener, "frontend");
                    let server = grpc_frontend_server(config, shared)
                        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
                    tokio::spawn(async move {
                        if let Err(e) = server.await {
                            warn!(error = %e, "frontend gRPC server ended with an error");
                        }
                    });
                }
                FrontendMode::HttpConnect => {
                    let shared = Arc::clone(shared);
                    tokio::spawn(async move {
                        loop {
                            let conn = tokio::select! {
                                _ = shutdown.cancelled() => break,
                                c = listen::accept_or_pause(listener.accept(), "frontend") => c,
                            };
                            if let Some((stream, _)) = conn {
                                tokio::spawn(frontend::http_connect::serve(
                                    Arc::clone(&shared),
                                    stream,
                                ));
                            }
                        }
                    });
                }
            }
            Ok(None)
        }
        (
            FrontendListen::Tcp {
                addr,
                cert,
                key,
                client_ca,
            },
            mode,
        ) => {
            let alpn: &'static [u8] = match mode {
                FrontendMode::Grpc => ALPN_H2,
                FrontendMode::HttpConnect => ALPN_HTTP1,
            };
            let tls =
                konnectivity_tls::server_config(cert, key, Some(client_ca), &[alpn], &config.tls)
                    .map_err(|source| ServerError::Tls {
                    source: Box::new(source),
                    what: "frontend listener (--server-cert/--server-key/--server-ca-cert)",
                })?;
            let tls = {
                let mut tls = (*tls).clone();
                tls.send_tls13_tickets = config.extensions.frontend_session_tickets;
                Arc::new(tls)
            };
            let listener = bind_tcp("frontend", *addr)?;
            let local = listener.local_addr().unwrap_or(*addr);
            info!(addr = %local, ?mode, "frontend listening on mTLS TCP");
            let required = match mode {
                FrontendMode::Grpc => Some(ALPN_H2),
                // Go's net/http serves HTTP/1.1 to clients that offer no ALPN at all.
                FrontendMode::HttpConnect => None,
            };
            let incoming = listen::tls_incoming(
                listener,
                tokio_rustls::TlsAcceptor::from(tls),
                required,
                // One tunnel per connection (apiserver dials are single-use): no read-ahead.
                0,
                "frontend",
                shutdown.clone(),
            );
            match mode {
                FrontendMode::Grpc => {
                    let server = grpc_frontend_server(config, shared)
                        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
                    tokio::spawn(async move {
                        if let Err(e) = server.await {
                            warn!(error = %e, "frontend gRPC server ended with an error");
                        }
                    });
                }
                FrontendMode::HttpConnect => {
                    let shared = Arc::clone(shared);
                    tokio::spawn(async move {
                        use futures::StreamExt;
                        let mut incoming = incoming;
                        while let Some(conn) = incoming.next().await {
                            if let Ok(conn) = conn {
                                tokio::spawn(frontend::http_connect::serve(
                                    Arc::clone(&shared),
                                    conn,
                                ));
                            }
                        }
                    });
                }
            }
            Ok(Some(local))
        }
    }
}

/// `--keepalive-time=0` means grpc-go's default on a server, which is two hours.
fn keepalive(interval: std::time::Duration) -> Option<std::time::Duration> {
    if interval.is_zero() {
        Some(std::time::Duration::from_secs(2 * 60 * 60))
    } else {
        Some(interval)
    }
}

fn grpc_frontend_server(
    config: &ServerConfig,
    shared: &Arc<Shared>,
) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive(config.frontend.keepalive_time))
        .max_concurrent_streams(Some(FRONTEND_MAX_CONCURRENT_STREAMS))
        // Same frame limit as the agent listener: a client that honours it (h2, tonic) sends a
        // DATA packet in one frame, which is then decoded without copying its payload; grpc-go
        // keeps to 16 KiB frames, which is always allowed.
        .max_frame_size(konnectivity_tunnel::H2_MAX_FRAME_BYTES)
        .add_service(grpc_method::RawService(frontend::grpc::GrpcFrontend::new(
            Arc::clone(shared),
        )))
}

/// Cuts every open stream, after `--graceful-shutdown-timeout` if it is non-zero.
pub async fn stop(shared: &Arc<Shared>, config: &ServerConfig) {
    let grace = config.graceful_shutdown_timeout;
    if !grace.is_zero() {
        info!(
            ?grace,
            "shutting down: listeners closed, waiting for open connections"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while shared.has_open_frontends() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    info!("shutting down: closing every agent and frontend stream");
    shared.hard_stop.cancel();
}

mod health {
    //! Health, readiness and metrics endpoints.
    use super::*;

    /// Serves `/healthz`, `/readyz` (500 until the first strategy has an agent) and `/metrics`
    /// on the health port, and `/metrics` on the admin port.
    pub fn spawn(
        shared: Arc<Shared>,
        health: TcpListener,
        admin: TcpListener,
        shutdown: CancellationToken,
    ) {
        let registry = shared.metrics.registry();
        let ready = Arc::clone(&shared);
        let readiness = konnectivity_health::Readiness::proxy_server(vec![(
            "agent-connected".to_string(),
            Arc::new(move || ready.ready()),
        )]);
        tokio::spawn(konnectivity_health::serve_health(
            health,
            registry.clone(),
            readiness,
            shutdown.clone(),
        ));
        tokio::spawn(konnectivity_health::serve_server_admin(
            admin, registry, shutdown,
        ));
    }
}

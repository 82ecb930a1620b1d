//! proxy-agent: the node half of the Konnectivity tunnel.
//!
//! The agent dials *into* the proxy-server(s) ([`server`]), keeps one connection per server
//! ([`sync`]), and on each serves the server's requests ([`session`]): it dials destinations
//! ([`dial`], with Go's error wording), pumps bytes both ways and closes on request. The
//! bookkeeping of one server connection is plain data ([`connections`]).

#![forbid(unsafe_code)]

pub mod config;
pub mod flags;
pub mod metrics;

pub mod connections;
pub mod dial;
pub mod quic;
pub mod server;
pub mod session;
pub mod sync;

#[cfg(test)]
mod testutil;

use std::net::SocketAddr;
use std::sync::Arc;

use konnectivity_health::{Readiness, ReadinessCheck};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::server::SetupError;
use crate::session::SessionConfig;
use crate::sync::{Connector, Manager, ServerStatus};

/// Why the agent could not start (once running, it only stops when asked).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS material, the server address or the agent's metadata is unusable.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for the {what} server: {source}; is the port in use or the address not local?")]
    Bind {
        /// "health" or "admin".
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A configured agent whose listeners are bound, ready to [`Agent::run`].
///
/// Split from [`run`] so callers (and tests) can learn the actual listener addresses (port 0)
/// and observe metrics and readiness.
pub struct Agent {
    config: config::AgentConfig,
    connector: Connector,
    metrics: Metrics,
    status: ServerStatus,
    health: TcpListener,
    admin: TcpListener,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("server", &self.connector.address())
            .field("health", &self.health.local_addr().ok())
            .field("admin", &self.admin.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Validates the configuration (loads TLS material) and binds the health and admin ports.
    pub async fn bind(config: config::AgentConfig) -> Result<Self, AgentError> {
        let connector = Connector::new(&config)?;
        let health = bind("health", config.health_addr).await?;
        let admin = bind("admin", config.admin_addr).await?;
        Ok(Agent {
            config,
            connector,
            metrics: Metrics::new(),
            status: ServerStatus::default(),
            health,
            admin,
        })
    }

    /// The bound health address (`/healthz`, `/readyz`, `/ready`, `/metrics`).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.local_addr().ok()
    }

    /// The bound admin address (`/metrics` redirect).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Live server connections (what `/readyz` reports).
    pub fn status(&self) -> ServerStatus {
        self.status.clone()
    }

    /// Runs until `shutdown`: `drain` makes every server connection send DRAIN and stops
    /// opening new ones, while existing tunnels keep being served.
    pub async fn run(
        self,
        drain: CancellationToken,
        shutdown: CancellationToken,
    ) -> Result<(), AgentError> {
        let Agent {
            config,
            connector,
            metrics,
            status,
            health,
            admin,
        } = self;
        let health_port = health
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(config.health_addr.port());
        let ready = status.clone();
        let checks: Vec<ReadinessCheck> = vec![
            ("ping".to_string(), Arc::new(|| Ok(()))),
            (
                "server-connected".to_string(),
                Arc::new(move || ready.check()),
            ),
        ];
        let servers = shutdown.child_token();
        let health_task = tokio::spawn(konnectivity_health::serve_health(
            health,
            metrics.registry(),
            Readiness::proxy_agent(checks),
            servers.clone(),
        ));
        let admin_task = tokio::spawn(konnectivity_health::serve_agent_admin(
            admin,
            health_port,
            servers.clone(),
        ));
        tracing::info!(
            server = connector.address(),
            agent_id = %config.identity.agent_id,
            health = ?config.health_addr,
            admin = ?config.admin_addr,
            "proxy-agent started"
        );
        let manager = Manager::new(
            connector,
            config.sync.clone(),
            SessionConfig::new(config.xfr_channel_size),
            metrics,
            status,
        );
        manager.run(drain, shutdown.clone()).await;
        servers.cancel();
        for task in [health_task, admin_task] {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "health/admin server task failed");
            }
        }
        tracing::info!("proxy-agent stopped");
        Ok(())
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { what, addr, source })
}

/// Runs the agent: `drain` is cancelled on the first SIGTERM/SIGINT (send DRAIN, keep serving),
/// `shutdown` on the second (exit).
pub async fn run(
    config: config::AgentConfig,
    drain: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    Agent::bind(config).await?.run(drain, shutdown).await
}

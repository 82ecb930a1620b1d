//! The usual test topology in one value: a server, N agents, a kubelet stand-in and a
//! client dialer for the server's frontend.

use std::time::Duration;

use konnectivity_client::{Dialer, Tunnel};

use crate::error::{HarnessError, Result};
use crate::http::HttpConn;
use crate::https::KubeletClient;
use crate::kubelet::Kubelet;
use crate::process::{server_with_agents, Agent, Server, ServerOptions};
use crate::{dialer_for, TestEnv};

/// Name the kubelet certificate is verified against through the tunnel (a DNS SAN of the
/// test PKI; the dial itself goes to 127.0.0.1).
pub const KUBELET_SERVER_NAME: &str = "localhost";

/// Upper bound on one dial through the proxy in tests: the agent's own dial timeout is 5 s.
pub const TEST_DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Server + agents + kubelet + dialer. Fields drop in declaration order: processes first,
/// the test directory (with their logs) last.
pub struct Cluster {
    /// The client side (kube-apiserver's role).
    pub dialer: Dialer,
    /// HTTPS client for the kubelet (kube-apiserver's kubelet client certificate).
    pub kubelet_client: KubeletClient,
    /// The kubelet stand-in.
    pub kubelet: Kubelet,
    /// The agents, all connected.
    pub agents: Vec<Agent>,
    /// The server.
    pub server: Server,
    /// The test directory and PKI.
    pub env: TestEnv,
}

impl Cluster {
    /// Starts everything and waits until the server and every agent are ready.
    pub async fn start(opts: ServerOptions, agents: usize) -> Result<Cluster> {
        let env = TestEnv::new()?;
        let (server, agents) = server_with_agents(&env, opts, agents).await?;
        let kubelet = Kubelet::start_default(&env.pki).await?;
        let dialer = dialer_for(&env, &server)?.with_dial_timeout(TEST_DIAL_TIMEOUT);
        let kubelet_client = KubeletClient::from_pki(&env.pki)?;
        Ok(Cluster {
            dialer,
            kubelet_client,
            kubelet,
            agents,
            server,
            env,
        })
    }

    /// A tunnel to `address` through the proxy.
    pub async fn dial(&self, address: &str) -> Result<Tunnel> {
        self.dialer
            .dial(address)
            .await
            .map_err(|e| HarnessError::Process(format!("dial {address} through the proxy: {e}")))
    }

    /// A new tunnel to the kubelet, TLS verified end to end, HTTP/1.1 on top.
    pub async fn kubelet_conn(&self) -> Result<HttpConn> {
        let tunnel = self.dial(&self.kubelet.address()).await?;
        self.kubelet_client
            .connect(tunnel, KUBELET_SERVER_NAME)
            .await
    }
}

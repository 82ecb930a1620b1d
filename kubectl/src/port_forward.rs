//! `port-forward`: listen on 127.0.0.1, and for every accepted connection open a new tunnel
//! and a WebSocket v4 port-forward stream to the pod port, then copy both ways.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use konnectivity_kubelet::client::PortForwardStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::cli::PortForwardArgs;
use crate::connect::KubeletConnector;
use crate::error::KubectlError;
use crate::target::{PodRef, PortPair};

/// After the local client closes its sending side, how long data from the pod is still
/// relayed before the connection is dropped. The v4 port-forward protocol cannot pass a
/// half-close on, so without this bound a pod that waits for EOF would pin the tunnel
/// forever. Cost: a pod answering later than this after the client's EOF loses the answer.
pub const LOCAL_EOF_LINGER: Duration = Duration::from_secs(2);

/// Buffer per copy direction. Cost: memory per forwarded connection.
pub const COPY_BUFFER: usize = 32 * 1024;

/// Serves every pair until interrupted (the caller drops this future on SIGINT, which closes
/// the listeners and every forwarded connection with its tunnel).
pub async fn run(
    kubelet: Arc<KubeletConnector>,
    args: PortForwardArgs,
) -> Result<ExitCode, KubectlError> {
    let mut listeners = Vec::with_capacity(args.ports.len());
    for pair in &args.ports {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, pair.local)))
            .await
            .map_err(|source| KubectlError::Listen {
                port: pair.local,
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| KubectlError::io("reading the listening address", e))?;
        // kubectl's wording, so scripts that wait for it keep working.
        println!("Forwarding from {local} -> {}", pair.remote);
        listeners.push((listener, *pair));
    }
    let pod = Arc::new(args.pod);
    // Owns every task: dropping it (on interrupt) aborts them all, closing their tunnels.
    let mut tasks = JoinSet::new();
    for (listener, pair) in listeners {
        tasks.spawn(accept_loop(listener, pair, kubelet.clone(), pod.clone()));
    }
    // The accept loops only end on a listener failure.
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            return Err(e);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Accepts connections on one local port; each gets its own task (owned here, so they end
/// with the loop).
async fn accept_loop(
    listener: TcpListener,
    pair: PortPair,
    kubelet: Arc<KubeletConnector>,
    pod: Arc<PodRef>,
) -> Result<(), KubectlError> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (local, peer) = accepted.map_err(|e| KubectlError::io(
                    format!("accepting on 127.0.0.1:{}", pair.local), e))?;
                let _ = local.set_nodelay(true);
                println!("Handling connection for {}", pair.local);
                let kubelet = kubelet.clone();
                let pod = pod.clone();
                connections.spawn(async move {
                    if let Err(e) = forward(local, &kubelet, &pod, pair.remote).await {
                        eprintln!("error: port-forward of {peer} to {pod} port {}: {e}", pair.remote);
                    }
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One forwarded connection: a new tunnel, TLS, the port-forward upgrade, then bytes both ways.
async fn forward(
    local: TcpStream,
    kubelet: &KubeletConnector,
    pod: &PodRef,
    remote_port: u16,
) -> Result<(), KubectlError> {
    let stream = kubelet.connect().await?;
    let remote = konnectivity_kubelet::port_forward(
        stream,
        kubelet.address(),
        &pod.namespace,
        &pod.pod,
        remote_port,
    )
    .await
    .map_err(KubectlError::kubelet)?;
    relay(local, remote)
        .await
        .map_err(|e| KubectlError::StreamBroken {
            what: "port-forward",
            address: kubelet.address().to_string(),
            detail: crate::error::chain(&e),
        })
}

/// Copies both ways until the pod side ends, or the local side ends and
/// [`LOCAL_EOF_LINGER`] has passed. A local reset simply ends the connection.
async fn relay(local: TcpStream, remote: PortForwardStream) -> std::io::Result<()> {
    let (mut local_rx, mut local_tx) = local.into_split();
    let (mut remote_rx, mut remote_tx) = tokio::io::split(remote);
    let upstream = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = match local_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if remote_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = remote_rx.read(&mut buf).await?;
            if n == 0 {
                let _ = local_tx.shutdown().await;
                return Ok(());
            }
            if let Err(e) = local_tx.write_all(&buf[..n]).await {
                // The local client is gone: nothing left to deliver to.
                return if is_disconnect(&e) { Ok(()) } else { Err(e) };
            }
        }
    };
    tokio::pin!(downstream);
    tokio::select! {
        result = &mut downstream => return result,
        () = upstream => {}
    }
    match tokio::time::timeout(LOCAL_EOF_LINGER, downstream).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Errors that only mean "the local peer went away".
fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
    )
}

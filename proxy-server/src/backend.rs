//! The agent-facing gRPC service, `AgentService.Connect`: one stream per agent connection.
//!
//! Served as a [`StreamingMethod`] (packets framed without tonic's codec); on the wire it is the
//! same gRPC method, headers and trailers.

use std::sync::Arc;

use futures::StreamExt;
use konnectivity_proto::CONNECT_PATH;
use konnectivity_tunnel::grpc::PacketStream;
use konnectivity_tunnel::{credit, outbound};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::grpc_method::{self, StreamingMethod};
use crate::identifiers::AgentIdentifiers;
use crate::state::{BackendHandle, BackendLink, Shared};

/// Request header carrying the agent's id (exactly one value required).
pub const AGENT_ID_HEADER: &str = "agentid";
/// Request header carrying the agent's identifiers (at most one value).
pub const AGENT_IDENTIFIERS_HEADER: &str = "agentidentifiers";
/// Response header: this server's id, so agents can tell servers apart behind a load balancer.
pub const SERVER_ID_HEADER: &str = "serverid";
/// Response header: how many servers the agent should connect to.
pub const SERVER_COUNT_HEADER: &str = "servercount";

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct Backend {
    shared: Arc<Shared>,
}

impl Backend {
    pub fn new(shared: Arc<Shared>) -> Self {
        Backend { shared }
    }
}

/// The identity rules every transport applies: exactly one non-empty agent id, at most one
/// identifiers value (parsed leniently, as upstream). The `Err` is the refusal message.
pub fn validate_identity(
    ids: &[String],
    identifiers: &[&str],
) -> Result<(String, AgentIdentifiers), String> {
    let [agent_id] = ids else {
        return Err(format!("expected one agent ID in the context, got {ids:?}"));
    };
    if agent_id.is_empty() {
        return Err("agent ID must not be empty".to_string());
    }
    if identifiers.len() > 1 {
        return Err(format!(
            "expected at most one set of agent identifiers in the context, got {}",
            identifiers.len()
        ));
    }
    let identifiers = AgentIdentifiers::parse(identifiers.first().copied().unwrap_or(""));
    Ok((agent_id.clone(), identifiers))
}

/// Reads the agent's identity headers, refusing the stream with a clear status if they are
/// not as the protocol requires.
fn identity<T>(request: &Request<T>) -> Result<(String, AgentIdentifiers), Status> {
    let md = request.metadata();
    let ids: Vec<String> = md
        .get_all(AGENT_ID_HEADER)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
        .collect();
    let raw: Vec<&str> = md
        .get_all(AGENT_IDENTIFIERS_HEADER)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    validate_identity(&ids, &raw).map_err(Status::invalid_argument)
}

impl StreamingMethod for Backend {
    const SERVICE: &'static str = "AgentService";
    const PATH: &'static str = CONNECT_PATH;

    fn call(&self, request: Request<Body>) -> Result<http::Response<Body>, Status> {
        self.connect(request)
    }
}

impl Backend {
    /// Accepts one agent stream: registers the agent, spawns its receive loop and answers with
    /// the outbound packets as the response body.
    fn connect(&self, request: Request<Body>) -> Result<http::Response<Body>, Status> {
        let peer = request.remote_addr();
        let (agent_id, identifiers) = identity(&request).inspect_err(|status| {
            warn!(?peer, message = status.message(), "refused agent stream");
        })?;
        let shared = Arc::clone(&self.shared);
        // Per-connection flow control if the agent asks (only agents of ours do) and this
        // server grants it; the answer is the echoed header.
        let flow_control = shared.flow_control
            && request
                .metadata()
                .get(credit::FLOW_CONTROL_HEADER)
                .is_some_and(|v| v.as_bytes() == credit::FLOW_CONTROL_VERSION.as_bytes());
        let (tx, outbound) = outbound::channel(outbound::DEFAULT_DATA_LANE_PACKETS);
        let retire: CancellationToken = shared.hard_stop.child_token();
        let id = shared.add_backend(
            agent_id.clone(),
            identifiers.clone(),
            BackendHandle {
                link: BackendLink::Grpc(tx.clone()),
                retire: retire.clone(),
                flow_control,
            },
        );
        info!(backend = %id, %agent_id, ?identifiers, ?peer, flow_control, "agent connected");
        shared
            .metrics
            .grpc_connection_opened(crate::metrics::ServiceMethod::Connect);

        let mut inbound = PacketStream::new(request.into_inner());
        let loop_retire = retire.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = loop_retire.cancelled() => break,
                    m = inbound.next() => m,
                };
                match msg {
                    Some(Ok(packet)) => shared.on_agent_packet(id, &tx, packet),
                    None => {
                        info!(backend = %id, "agent closed its stream");
                        break;
                    }
                    Some(Err(status)) => {
                        warn!(backend = %id, code = ?status.code(), message = status.message(), "agent stream failed; closing it");
                        break;
                    }
                }
            }
            loop_retire.cancel();
            shared.remove_backend(id);
            shared
                .metrics
                .grpc_connection_closed(crate::metrics::ServiceMethod::Connect);
        });

        let packets = outbound.take_until(retire.cancelled_owned());
        let mut md = MetadataMap::with_capacity(3);
        let server_id = MetadataValue::try_from(self.shared.server_id.as_str())
            .map_err(|_| Status::internal("server id is not a valid header value"))?;
        md.insert(SERVER_ID_HEADER, server_id);
        md.insert(
            SERVER_COUNT_HEADER,
            MetadataValue::from(self.shared.server_count),
        );
        if flow_control {
            md.insert(
                credit::FLOW_CONTROL_HEADER,
                MetadataValue::from_static(credit::FLOW_CONTROL_VERSION),
            );
        }
        Ok(grpc_method::response(md, packets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_needs_exactly_one_non_empty_agent_id() {
        let one = |s: &str| vec![s.to_string()];
        assert_eq!(
            validate_identity(&[], &[]).expect_err("none"),
            "expected one agent ID in the context, got []"
        );
        assert_eq!(
            validate_identity(&[String::from("a"), String::from("b")], &[]).expect_err("two"),
            "expected one agent ID in the context, got [\"a\", \"b\"]"
        );
        assert_eq!(
            validate_identity(&one(""), &[]).expect_err("empty"),
            "agent ID must not be empty"
        );
        let (id, ids) =
            validate_identity(&one("n1"), &["host=node1&default-route=true"]).expect("valid");
        assert_eq!(id, "n1");
        assert_eq!(ids.hosts, ["node1"]);
        assert!(ids.default_route);
        assert!(validate_identity(&one("n1"), &["a", "b"]).is_err());
    }
}

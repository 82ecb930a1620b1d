//! File names of the generated PKI. Prefer the paths in [`crate::PkiPaths`]; these constants
//! exist for callers that must name a file without having generated anything (docs, scripts).
//!
//! Every pair is `<stem>.crt` + `<stem>.key`. Agents are `agent-<name>` (default name `client`),
//! kubelet serving certificates `kubelet-<name>` (default name `server`).

/// Extension of certificate files.
pub const CERT_EXT: &str = "crt";
/// Extension of private-key files.
pub const KEY_EXT: &str = "key";

/// Stem of the frontend CA.
pub const FRONTEND_CA: &str = "frontend-ca";
/// Stem of the proxy-server frontend serving certificate.
pub const FRONTEND_SERVER: &str = "frontend-server";
/// Stem of the kube-apiserver's client certificate for the proxy frontend.
pub const FRONTEND_CLIENT: &str = "frontend-client";
/// Stem of the agent-side (cluster) CA.
pub const AGENT_CA: &str = "agent-ca";
/// Stem of the proxy-server agent-listener serving certificate.
pub const AGENT_SERVER: &str = "agent-server";
/// Stem of the kubelet CA.
pub const KUBELET_CA: &str = "kubelet-ca";
/// Stem of the kube-apiserver's kubelet-client certificate.
pub const KUBELET_CLIENT: &str = "kubelet-client";
/// Stem of the default kubelet serving certificate.
pub const KUBELET_DEFAULT_SERVER: &str = "kubelet-server";

/// Name of the single agent issued when no agent name is given (`agent-client.crt`).
pub const DEFAULT_AGENT_NAME: &str = "client";
/// Name of the single kubelet issued when no node is given (`kubelet-server.crt`).
pub const DEFAULT_KUBELET_NAME: &str = "server";
/// Agent names that would collide with the agent CA / server files.
pub const AGENT_RESERVED: [&str; 2] = ["ca", "server"];
/// Kubelet-node names that would collide with the kubelet CA / client files.
pub const KUBELET_RESERVED: [&str; 2] = ["ca", "client"];

/// `frontend-ca.crt`: proxy-server `--server-ca-cert`; kube-apiserver egress `caBundle`.
pub const FRONTEND_CA_CERT: &str = "frontend-ca.crt";
/// `frontend-ca.key`: not used at run time; keep it to sign more frontend certificates.
pub const FRONTEND_CA_KEY: &str = "frontend-ca.key";
/// `frontend-server.crt`: proxy-server `--server-cert`.
pub const FRONTEND_SERVER_CERT: &str = "frontend-server.crt";
/// `frontend-server.key`: proxy-server `--server-key`.
pub const FRONTEND_SERVER_KEY: &str = "frontend-server.key";
/// `frontend-client.crt`: kube-apiserver egress `clientCert`.
pub const FRONTEND_CLIENT_CERT: &str = "frontend-client.crt";
/// `frontend-client.key`: kube-apiserver egress `clientKey`.
pub const FRONTEND_CLIENT_KEY: &str = "frontend-client.key";
/// `agent-ca.crt`: proxy-agent `--ca-cert`; proxy-server `--cluster-ca-cert`.
pub const AGENT_CA_CERT: &str = "agent-ca.crt";
/// `agent-ca.key`: not used at run time; keep it to sign more agent certificates.
pub const AGENT_CA_KEY: &str = "agent-ca.key";
/// `agent-server.crt`: proxy-server `--cluster-cert`.
pub const AGENT_SERVER_CERT: &str = "agent-server.crt";
/// `agent-server.key`: proxy-server `--cluster-key`.
pub const AGENT_SERVER_KEY: &str = "agent-server.key";
/// `agent-client.crt`: the default agent's `--agent-cert`.
pub const AGENT_CLIENT_CERT: &str = "agent-client.crt";
/// `agent-client.key`: the default agent's `--agent-key`.
pub const AGENT_CLIENT_KEY: &str = "agent-client.key";
/// `kubelet-ca.crt`: kube-apiserver `--kubelet-certificate-authority`; kubelet `--client-ca-file`.
pub const KUBELET_CA_CERT: &str = "kubelet-ca.crt";
/// `kubelet-ca.key`: not used at run time; keep it to sign more kubelet certificates.
pub const KUBELET_CA_KEY: &str = "kubelet-ca.key";
/// `kubelet-server.crt`: the default kubelet's `--tls-cert-file`.
pub const KUBELET_SERVER_CERT: &str = "kubelet-server.crt";
/// `kubelet-server.key`: the default kubelet's `--tls-private-key-file`.
pub const KUBELET_SERVER_KEY: &str = "kubelet-server.key";
/// `kubelet-client.crt`: kube-apiserver `--kubelet-client-certificate`.
pub const KUBELET_CLIENT_CERT: &str = "kubelet-client.crt";
/// `kubelet-client.key`: kube-apiserver `--kubelet-client-key`.
pub const KUBELET_CLIENT_KEY: &str = "kubelet-client.key";

/// File stem of agent `name` (`agent-node1`).
pub fn agent_stem(name: &str) -> String {
    format!("agent-{name}")
}

/// File stem of the kubelet serving certificate of node `name` (`kubelet-node1`).
pub fn kubelet_stem(name: &str) -> String {
    format!("kubelet-{name}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn full_file_names_agree_with_stems() {
        let pairs = [
            (FRONTEND_CA, FRONTEND_CA_CERT, FRONTEND_CA_KEY),
            (FRONTEND_SERVER, FRONTEND_SERVER_CERT, FRONTEND_SERVER_KEY),
            (FRONTEND_CLIENT, FRONTEND_CLIENT_CERT, FRONTEND_CLIENT_KEY),
            (AGENT_CA, AGENT_CA_CERT, AGENT_CA_KEY),
            (AGENT_SERVER, AGENT_SERVER_CERT, AGENT_SERVER_KEY),
            (KUBELET_CA, KUBELET_CA_CERT, KUBELET_CA_KEY),
            (KUBELET_CLIENT, KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY),
            (
                KUBELET_DEFAULT_SERVER,
                KUBELET_SERVER_CERT,
                KUBELET_SERVER_KEY,
            ),
        ];
        for (stem, cert, key) in pairs {
            assert_eq!(format!("{stem}.{CERT_EXT}"), cert);
            assert_eq!(format!("{stem}.{KEY_EXT}"), key);
        }
        assert_eq!(
            format!("{}.{CERT_EXT}", agent_stem(DEFAULT_AGENT_NAME)),
            AGENT_CLIENT_CERT
        );
        assert_eq!(kubelet_stem(DEFAULT_KUBELET_NAME), KUBELET_DEFAULT_SERVER);
        for reserved in AGENT_RESERVED {
            assert!([AGENT_CA, AGENT_SERVER].contains(&agent_stem(reserved).as_str()));
        }
        for reserved in KUBELET_RESERVED {
            assert!([KUBELET_CA, KUBELET_CLIENT].contains(&kubelet_stem(reserved).as_str()));
        }
    }
}

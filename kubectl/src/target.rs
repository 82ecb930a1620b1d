//! Parsing what the user names: `NAMESPACE/POD`, `LOCAL:REMOTE` port pairs, the kubelet's
//! `host:port`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Default kubelet HTTPS port (`--kubelet-port`), as kube-apiserver's.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// A pod, named `NAMESPACE/POD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The namespace.
    pub namespace: String,
    /// The pod name.
    pub pod: String,
}

impl FromStr for PodRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, pod) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not NAMESPACE/POD (e.g. default/nginx); the kubelet API needs both")
        })?;
        for (what, value) in [("namespace", namespace), ("pod name", pod)] {
            check_path_segment(what, value)?;
        }
        Ok(PodRef {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        })
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// Refuses values that cannot be a Kubernetes object name and would corrupt the kubelet URL
/// path (empty, `/`, `..`, whitespace, control characters, `?`, `#`, `%`).
pub fn check_path_segment(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if value == "." || value == ".." {
        return Err(format!("the {what} {value:?} is not a valid name"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%'))
    {
        return Err(format!(
            "the {what} {value:?} contains {c:?}, which no Kubernetes name contains"
        ));
    }
    Ok(())
}

/// One `LOCAL:REMOTE` (or just `PORT`, meaning the same on both sides) port-forward pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    /// Port listened on at 127.0.0.1 (0 = pick a free one).
    pub local: u16,
    /// Port in the pod (on the node side).
    pub remote: u16,
}

impl FromStr for PortPair {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |what: &str, v: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("{what} port {v:?} in {s:?} is not a number in 0-65535"))
        };
        let (local, remote) = match s.split_once(':') {
            Some((l, r)) => (
                if l.is_empty() { 0 } else { parse("local", l)? },
                parse("remote", r)?,
            ),
            None => {
                let p = parse("the", s)?;
                (p, p)
            }
        };
        if remote == 0 {
            return Err(format!(
                "remote port in {s:?} must be > 0 (the kubelet refuses port 0)"
            ));
        }
        Ok(PortPair { local, remote })
    }
}

/// The kubelet's node address as kube-apiserver uses it: an IP literal or a host name
/// (`10.1.0.11`, `node1`, `fd00::11`, `[fd00::11]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The host without brackets.
    pub host: String,
}

impl FromStr for NodeAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let host = s
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(s);
        if host.is_empty() {
            return Err("the node address is empty".to_string());
        }
        if host.parse::<IpAddr>().is_ok() {
            return Ok(NodeAddress {
                host: host.to_string(),
            });
        }
        let valid_name = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if !valid_name || host.len() > 253 {
            return Err(format!(
                "{s:?} is neither an IP address nor a host name; give the node's address as kube-apiserver would use it (e.g. 10.1.0.11 or node1), without a port (see --kubelet-port)"
            ));
        }
        Ok(NodeAddress {
            host: host.to_string(),
        })
    }
}

impl NodeAddress {
    /// `host:port` as Go's `net.JoinHostPort` writes it (IPv6 in brackets): the exact string
    /// kube-apiserver hands its egress dialer.
    pub fn join_port(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_ref_needs_namespace_and_name() {
        assert_eq!(
            "default/nginx".parse::<PodRef>().unwrap(),
            PodRef {
                namespace: "default".into(),
                pod: "nginx".into()
            }
        );
        assert!("nginx"
            .parse::<PodRef>()
            .unwrap_err()
            .contains("NAMESPACE/POD"));
        assert!("default/".parse::<PodRef>().is_err());
        assert!("/nginx".parse::<PodRef>().is_err());
        assert!("a/b/c".parse::<PodRef>().is_err());
        assert!("a/b?x=1".parse::<PodRef>().is_err());
        assert!("../x".parse::<PodRef>().is_err());
    }

    #[test]
    fn port_pairs_parse_like_kubectl() {
        assert_eq!(
            "8080:80".parse::<PortPair>().unwrap(),
            PortPair {
                local: 8080,
                remote: 80
            }
        );
        assert_eq!(
            "5432".parse::<PortPair>().unwrap(),
            PortPair {
                local: 5432,
                remote: 5432
            }
        );
        assert_eq!(
            ":80".parse::<PortPair>().unwrap(),
            PortPair {
                local: 0,
                remote: 80
            }
        );
        assert!("80:0".parse::<PortPair>().is_err());
        assert!("x:80".parse::<PortPair>().is_err());
        assert!("1:70000".parse::<PortPair>().is_err());
    }

    #[test]
    fn node_address_joins_like_go_join_host_port() {
        let ip: NodeAddress = "10.1.0.11".parse().unwrap();
        assert_eq!(ip.join_port(10250), "10.1.0.11:10250");
        let v6: NodeAddress = "[fd00::11]".parse().unwrap();
        assert_eq!(v6.host, "fd00::11");
        assert_eq!(v6.join_port(10250), "[fd00::11]:10250");
        let name: NodeAddress = "node1".parse().unwrap();
        assert_eq!(name.join_port(1), "node1:1");
        assert!("node1:10250".parse::<NodeAddress>().is_err());
        assert!("".parse::<NodeAddress>().is_err());
        assert!("a b".parse::<NodeAddress>().is_err());
    }
}

//! Bind-address flags (`--agent-bind-address`, `--health-server-host`, …) turned into socket
//! addresses with Go's `net.Listen(JoinHostPort(host, port))` meaning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::OnceLock;

/// A bind address that cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum BindAddrError {
    /// The host is not an IP literal and did not resolve.
    #[error("--{flag}={host}: cannot resolve bind address: {source}; use an IP address of this host, or \"\" for all interfaces")]
    Resolve {
        /// Flag name without dashes.
        flag: &'static str,
        /// The value given.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The host resolved to nothing.
    #[error("--{flag}={host}: bind address resolved to no addresses; use an IP address of this host, or \"\" for all interfaces")]
    NoAddress {
        /// Flag name without dashes.
        flag: &'static str,
        /// The value given.
        host: String,
    },
}

/// The address that means "all interfaces", as Go picks it: `[::]` (dual-stack, so IPv4
/// clients are accepted too on Linux' default `bindv6only=0`) when this host can open IPv6
/// sockets, else `0.0.0.0`. Probed once by binding an ephemeral `[::]` port, as Go's own
/// `ipStackCapabilities` probe does.
pub fn unspecified_ip() -> IpAddr {
    static PROBED: OnceLock<IpAddr> = OnceLock::new();
    *PROBED.get_or_init(|| {
        match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)) {
            Ok(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    })
}

/// Resolves `host:port` for listening. `""` means all interfaces ([`unspecified_ip`]); an IP
/// literal (IPv6 with or without brackets) is used as is; anything else is resolved with the
/// system resolver and the first address is taken, as Go's listener does.
pub fn bind_addr(flag: &'static str, host: &str, port: u16) -> Result<SocketAddr, BindAddrError> {
    if host.is_empty() {
        return Ok(SocketAddr::new(unspecified_ip(), port));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (bare, port)
        .to_socket_addrs()
        .map_err(|source| BindAddrError::Resolve {
            flag,
            host: host.to_string(),
            source,
        })?;
    addrs.next().ok_or_else(|| BindAddrError::NoAddress {
        flag,
        host: host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_host_means_all_interfaces() {
        let addr = bind_addr("health-bind-address", "", 8092).expect("empty host");
        assert!(addr.ip().is_unspecified(), "{addr}");
        assert_eq!(addr.port(), 8092);
    }

    #[test]
    fn ip_literals_are_used_verbatim() {
        assert_eq!(
            bind_addr("admin-bind-address", "127.0.0.1", 8095).expect("v4"),
            "127.0.0.1:8095".parse::<SocketAddr>().expect("literal")
        );
        assert_eq!(
            bind_addr("admin-bind-address", "::1", 8095).expect("v6"),
            "[::1]:8095".parse::<SocketAddr>().expect("literal")
        );
        assert_eq!(
            bind_addr("admin-bind-address", "[::1]", 8095).expect("bracketed v6"),
            "[::1]:8095".parse::<SocketAddr>().expect("literal")
        );
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let addr = bind_addr("agent-bind-address", "localhost", 8091).expect("localhost");
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    #[test]
    fn unresolvable_host_names_the_flag() {
        // A NUL byte fails before any resolver is consulted, so this needs no network.
        let err = bind_addr("agent-bind-address", "bad\0host", 8091).expect_err("invalid host");
        assert!(
            err.to_string()
                .starts_with("--agent-bind-address=bad\0host"),
            "{err}"
        );
    }
}

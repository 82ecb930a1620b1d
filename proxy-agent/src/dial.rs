//! Dialing destinations on behalf of the proxy-server, with Go's error wording.
//!
//! The agent reports a failed dial to the server as the text of the error, and that text travels
//! on: the proxy-server derives HTTP-CONNECT status codes from substrings of it, and upstream's
//! tests (and users' scripts) look for `connection refused`, `no such host`, `i/o timeout`. So the
//! messages here reproduce Go's `net.Dial` errors (`*net.OpError` around a `*os.SyscallError`,
//! `*net.DNSError` or `*net.AddrError`), e.g. `dial tcp 127.0.0.1:18999: connect: connection
//! refused`.
//!
//! Known, documented differences from Go:
//! * DNS failures read `dial tcp: lookup <host>: no such host`; Go's pure resolver appends
//!   ` on <resolver address>` after the host, which the system resolver we use does not reveal.
//! * A non-numeric port (a service name such as `http`) is not looked up in `/etc/services`; it
//!   fails with `dial tcp: lookup tcp/<port>: unknown port`, Go's wording for an unknown service.
//! * Only stream networks are dialed (`tcp`, `tcp4`, `tcp6`); upstream would also dial `udp`
//!   (no Kubernetes client ever asks for it). Other networks Go knows are refused with an
//!   explicit "not supported by this agent" message.
//! * With several resolved addresses they are tried one after another, each with a share of the
//!   remaining time (as Go's sequential dialer does); Go's 300 ms "happy eyeballs" race between
//!   IPv6 and IPv4 is not reproduced.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Upstream's fixed endpoint dial timeout (`net.DialTimeout(…, 5*time.Second)`). Covers name
/// resolution and every connect attempt. Cost: a destination that answers its SYN more slowly
/// than this is unreachable through the agent; a blackholed destination holds one pending dial
/// (a socket and a task) for this long.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Smallest share of the remaining time given to one address when a name resolves to several
/// (Go's `partialDeadline` floor). Cost: with many unreachable addresses the later ones may not
/// be tried before [`DIAL_TIMEOUT`] expires.
const MIN_PER_ADDRESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The networks this agent dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `tcp`: IPv4 or IPv6.
    Tcp,
    /// `tcp4`: IPv4 only.
    Tcp4,
    /// `tcp6`: IPv6 only.
    Tcp6,
}

impl Network {
    fn name(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Tcp4 => "tcp4",
            Network::Tcp6 => "tcp6",
        }
    }

    fn accepts(self, ip: &IpAddr) -> bool {
        match self {
            Network::Tcp => true,
            Network::Tcp4 => ip.is_ipv4(),
            Network::Tcp6 => ip.is_ipv6(),
        }
    }
}

/// Parses DialRequest.protocol. The `Err` is the complete error text for the DIAL_RSP.
pub fn parse_network(protocol: &str, address: &str) -> Result<Network, DialError> {
    match protocol {
        "tcp" => Ok(Network::Tcp),
        "tcp4" => Ok(Network::Tcp4),
        "tcp6" => Ok(Network::Tcp6),
        // Networks Go's net.Dial knows: say honestly that we could parse it but do not dial it.
        "udp" | "udp4" | "udp6" | "ip" | "ip4" | "ip6" | "unix" | "unixgram" | "unixpacket" => {
            Err(DialError::other(format!(
                "dial {protocol} {address}: network {protocol} is not supported by this agent (only tcp, tcp4, tcp6)"
            )))
        }
        // Go: `dial foo: unknown network foo`.
        _ => Err(DialError::other(format!(
            "dial {protocol}: unknown network {protocol}"
        ))),
    }
}

/// A failed dial: the Go-worded message and whether it was the dial timeout (the
/// `endpoint_dial_failure_total{reason="timeout"}` label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError {
    message: String,
    timeout: bool,
}

impl DialError {
    fn other(message: String) -> Self {
        DialError {
            message,
            timeout: false,
        }
    }

    fn timed_out(message: String) -> Self {
        DialError {
            message,
            timeout: true,
        }
    }

    /// True if the dial ran out of time (Go: `net.Error.Timeout()`).
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }

    /// The text sent in `DialResponse.error`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DialError {}

/// Go's `net.SplitHostPort`, with its `*net.AddrError` texts
/// (`address <addr>: missing port in address`, …).
pub fn split_host_port(hostport: &str) -> Result<(&str, &str), String> {
    let addr_err = |why: &str| Err(format!("address {hostport}: {why}"));
    const MISSING_PORT: &str = "missing port in address";
    const TOO_MANY_COLONS: &str = "too many colons in address";
    let Some(i) = hostport.rfind(':') else {
        return addr_err(MISSING_PORT);
    };
    let (host, j, k);
    if hostport.starts_with('[') {
        let Some(end) = hostport.find(']') else {
            return addr_err("missing ']' in address");
        };
        if end + 1 == hostport.len() {
            return addr_err(MISSING_PORT);
        } else if end + 1 != i {
            if hostport.as_bytes().get(end + 1) == Some(&b':') {
                return addr_err(TOO_MANY_COLONS);
            }
            return addr_err(MISSING_PORT);
        }
        host = &hostport[1..end];
        j = 1;
        k = end + 1;
    } else {
        host = &hostport[..i];
        if host.contains(':') {
            return addr_err(TOO_MANY_COLONS);
        }
        j = 0;
        k = 0;
    }
    if hostport[j..].contains('[') {
        return addr_err("unexpected '[' in address");
    }
    if hostport[k..].contains(']') {
        return addr_err("unexpected ']' in address");
    }
    Ok((host, &hostport[i + 1..]))
}

/// Go's port parsing for dials: decimal 0–65535 (empty means 0); a name is a service lookup,
/// which this agent does not perform.
fn parse_port(network: Network, port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Ok(0);
    }
    let digits = port.strip_prefix(['+', '-']).unwrap_or(port);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match port.parse::<i64>() {
            Ok(n) if (0..=65535).contains(&n) => {
                u16::try_from(n).map_err(|_| format!("address {port}: invalid port"))
            }
            _ => Err(format!("address {port}: invalid port")),
        };
    }
    Err(format!("lookup {}/{port}: unknown port", network.name()))
}

/// Go's spelling of an errno (`syscall.Errno.Error()`), e.g. `connection refused`.
pub fn errno_text(err: &io::Error) -> String {
    let Some(code) = err.raw_os_error() else {
        return err.to_string();
    };
    let known = match code {
        libc::ECONNREFUSED => "connection refused",
        libc::ENETUNREACH => "network is unreachable",
        libc::EHOSTUNREACH => "no route to host",
        libc::ETIMEDOUT => "connection timed out",
        libc::EMFILE => "too many open files",
        libc::ENFILE => "too many open files in system",
        libc::EADDRNOTAVAIL => "cannot assign requested address",
        libc::EADDRINUSE => "address already in use",
        libc::EACCES => "permission denied",
        libc::EPERM => "operation not permitted",
        libc::ECONNRESET => "connection reset by peer",
        libc::ECONNABORTED => "software caused connection abort",
        libc::EAFNOSUPPORT => "address family not supported by protocol",
        libc::ENOBUFS => "no buffer space available",
        libc::ENOMEM => "cannot allocate memory",
        libc::EINVAL => "invalid argument",
        libc::EPROTONOSUPPORT => "protocol not supported",
        libc::EHOSTDOWN => "host is down",
        libc::ENETDOWN => "network is down",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    // Go's table is the C library's strerror with a lower-case first letter; Rust renders
    // strerror followed by " (os error N)".
    let text = err.to_string();
    let text = text
        .strip_suffix(&format!(" (os error {code})"))
        .unwrap_or(&text)
        .to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {code}"),
    }
}

/// Go's `*net.DNSError` text for a failed lookup of `host`, from the system resolver's error.
///
/// Rust's standard library reports getaddrinfo failures as `failed to lookup address
/// information: <gai_strerror>`; the resolver's verdict is recognised from that text.
pub fn lookup_error_text(host: &str, err: &io::Error) -> String {
    let text = err.to_string();
    let detail = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    let lower = detail.to_ascii_lowercase();
    let reason = if lower.contains("name or service not known")
        || lower.contains("no address associated with hostname")
        || lower.contains("nodename nor servname provided")
        || lower.contains("name does not resolve")
    {
        // EAI_NONAME / EAI_NODATA: Go's errNoSuchHost.
        "no such host".to_string()
    } else if lower.contains("temporary failure in name resolution") {
        // EAI_AGAIN: Go (cgo resolver) reports it as a temporary DNS error with this text.
        "temporary failure in name resolution".to_string()
    } else if err.raw_os_error().is_some() {
        errno_text(err)
    } else {
        detail.to_string()
    };
    format!("lookup {host}: {reason}")
}

/// Formats a socket address as Go does (`1.2.3.4:80`, `[::1]:80`).
fn go_addr(addr: &SocketAddr) -> String {
    addr.to_string()
}

/// Dials `address` over `protocol` within `timeout`, returning the connected socket (with
/// `TCP_NODELAY`, as Go sets it) or Go's error text.
pub async fn dial(
    protocol: &str,
    address: &str,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let network = parse_network(protocol, address)?;
    let deadline = Instant::now() + timeout;
    let net = network.name();
    let (host, port) =
        split_host_port(address).map_err(|e| DialError::other(format!("dial {net}: {e}")))?;
    let port =
        parse_port(network, port).map_err(|e| DialError::other(format!("dial {net}: {e}")))?;

    let addrs = resolve(network, host, port, deadline).await?;
    let mut first_err: Option<DialError> = None;
    let count = addrs.len();
    for (i, addr) in addrs.into_iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let remaining = deadline - now;
        let share = remaining / u32::try_from(count - i).unwrap_or(u32::MAX);
        let per_addr = share.max(MIN_PER_ADDRESS_TIMEOUT).min(remaining);
        match connect_one(net, addr, per_addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    Err(first_err
        .unwrap_or_else(|| DialError::timed_out(format!("dial {net} {address}: i/o timeout"))))
}

/// Resolves `host` to the addresses `network` may use (IP literals without a lookup; an empty
/// host is the local system, as in Go).
async fn resolve(
    network: Network,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, DialError> {
    let net = network.name();
    let candidates: Vec<SocketAddr> = if host.is_empty() {
        match network {
            Network::Tcp6 => vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))],
            _ => vec![SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))],
        }
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        // Names, and IPv6 literals with a zone (`fe80::1%eth0`), go through the system resolver.
        let lookup = tokio::net::lookup_host((host, port));
        match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                return Err(DialError::other(format!(
                    "dial {net}: {}",
                    lookup_error_text(host, &e)
                )))
            }
            Err(_) => {
                return Err(DialError::timed_out(format!(
                    "dial {net}: lookup {host}: i/o timeout"
                )))
            }
        }
    };
    let usable: Vec<SocketAddr> = candidates
        .into_iter()
        .filter(|a| network.accepts(&a.ip()))
        .collect();
    if usable.is_empty() {
        return Err(DialError::other(format!(
            "dial {net}: address {host}: no suitable address found"
        )));
    }
    Ok(usable)
}

/// One connect attempt, with Go's `socket:` / `connect:` prefixes and `i/o timeout`.
async fn connect_one(
    net: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let shown = go_addr(&addr);
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| DialError::other(format!("dial {net} {shown}: socket: {}", errno_text(&e))))?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => {
            // Latency over throughput, as Go's default; failure only costs batching.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(address = %shown, error = %e, "cannot set TCP_NODELAY on endpoint socket");
            }
            Ok(stream)
        }
        Ok(Err(e)) => Err(DialError::other(format!(
            "dial {net} {shown}: connect: {}",
            errno_text(&e)
        ))),
        Err(_) => Err(DialError::timed_out(format!(
            "dial {net} {shown}: i/o timeout"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_matches_go_for_common_dial_failures() {
        let cases = [
            (libc::ECONNREFUSED, "connection refused"),
            (libc::ENETUNREACH, "network is unreachable"),
            (libc::EHOSTUNREACH, "no route to host"),
            (libc::EMFILE, "too many open files"),
            (libc::ETIMEDOUT, "connection timed out"),
            (libc::EADDRNOTAVAIL, "cannot assign requested address"),
        ];
        for (code, want) in cases {
            assert_eq!(errno_text(&io::Error::from_raw_os_error(code)), want);
        }
    }

    #[test]
    fn errno_text_lowercases_strerror_for_unlisted_codes() {
        // EPIPE is not in the table: "Broken pipe (os error 32)" ⇒ Go's "broken pipe".
        assert_eq!(
            errno_text(&io::Error::from_raw_os_error(libc::EPIPE)),
            "broken pipe"
        );
    }

    #[test]
    fn errno_text_keeps_non_os_errors_verbatim() {
        let e = io::Error::other("custom failure");
        assert_eq!(errno_text(&e), "custom failure");
    }

    #[test]
    fn lookup_errors_map_to_go_no_such_host() {
        let e = io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(
            lookup_error_text("doesnotexist.invalid", &e),
            "lookup doesnotexist.invalid: no such host"
        );
        let e = io::Error::other(
            "failed to lookup address information: No address associated with hostname",
        );
        assert_eq!(lookup_error_text("h", &e), "lookup h: no such host");
        let e = io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        assert_eq!(
            lookup_error_text("h", &e),
            "lookup h: temporary failure in name resolution"
        );
    }

    #[test]
    fn split_host_port_reproduces_go_address_errors() {
        assert_eq!(split_host_port("1.2.3.4:80"), Ok(("1.2.3.4", "80")));
        assert_eq!(split_host_port("[::1]:443"), Ok(("::1", "443")));
        assert_eq!(split_host_port("host:"), Ok(("host", "")));
        assert_eq!(
            split_host_port("foo"),
            Err("address foo: missing port in address".to_string())
        );
        assert_eq!(
            split_host_port("::1:80"),
            Err("address ::1:80: too many colons in address".to_string())
        );
        assert_eq!(
            split_host_port("[::1]"),
            Err("address [::1]: missing port in address".to_string())
        );
        assert_eq!(
            split_host_port("[::1]:80:90"),
            Err("address [::1]:80:90: too many colons in address".to_string())
        );
        assert_eq!(
            split_host_port("[::1:80"),
            Err("address [::1:80: missing ']' in address".to_string())
        );
        assert_eq!(
            split_host_port("a[b:80"),
            Err("address a[b:80: unexpected '[' in address".to_string())
        );
        assert_eq!(
            split_host_port("a]b:80"),
            Err("address a]b:80: unexpected ']' in address".to_string())
        );
    }

    #[test]
    fn ports_parse_like_go() {
        assert_eq!(parse_port(Network::Tcp, "443"), Ok(443));
        assert_eq!(parse_port(Network::Tcp, ""), Ok(0));
        assert_eq!(
            parse_port(Network::Tcp, "70000"),
            Err("address 70000: invalid port".to_string())
        );
        assert_eq!(
            parse_port(Network::Tcp, "-1"),
            Err("address -1: invalid port".to_string())
        );
        assert_eq!(
            parse_port(Network::Tcp, "http"),
            Err("lookup tcp/http: unknown port".to_string())
        );
    }

    #[test]
    fn unknown_and_unsupported_networks_are_refused_with_their_name() {
        assert_eq!(
            parse_network("foo", "a:1").expect_err("unknown").message(),
            "dial foo: unknown network foo"
        );
        let udp = parse_network("udp", "10.0.0.1:53").expect_err("unsupported");
        assert!(udp
            .message()
            .starts_with("dial udp 10.0.0.1:53: network udp is not supported"));
        assert!(!udp.is_timeout());
        assert_eq!(parse_network("tcp6", "x"), Ok(Network::Tcp6));
    }

    #[tokio::test]
    async fn dialing_a_closed_port_reports_connection_refused() {
        // Bind then drop to find a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = dial("tcp", &format!("127.0.0.1:{port}"), DIAL_TIMEOUT)
            .await
            .expect_err("nothing listens");
        assert_eq!(
            err.message(),
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        assert!(!err.is_timeout());
    }

    #[tokio::test]
    async fn dialing_a_listener_succeeds_and_bad_addresses_fail_before_connecting() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let s = dial("tcp", &addr.to_string(), DIAL_TIMEOUT)
            .await
            .expect("dial");
        assert!(s.nodelay().expect("nodelay"));
        assert_eq!(
            dial("tcp", "127.0.0.1", DIAL_TIMEOUT)
                .await
                .expect_err("no port")
                .message(),
            "dial tcp: address 127.0.0.1: missing port in address"
        );
        assert_eq!(
            dial("tcp6", &addr.to_string(), DIAL_TIMEOUT)
                .await
                .expect_err("v4 literal on tcp6")
                .message(),
            "dial tcp6: address 127.0.0.1: no suitable address found"
        );
    }

    /// A listener whose accept queue is full makes connects hang (the kernel drops SYNs):
    /// only loopback traffic, yet a real timeout.
    #[tokio::test]
    async fn dialing_a_full_backlog_times_out_with_io_timeout() {
        let (addr, _listener, _fillers) = crate::testutil::blackhole_listener().await;
        let started = std::time::Instant::now();
        let err = dial("tcp", &addr.to_string(), Duration::from_millis(300))
            .await
            .expect_err("backlog full");
        assert!(err.is_timeout(), "{err}");
        assert_eq!(err.message(), format!("dial tcp {addr}: i/o timeout"));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// `.invalid` never resolves (RFC 6761); the system resolver answers "Name or service not
    /// known", which must read as Go's `no such host`.
    #[tokio::test]
    async fn unresolvable_host_reports_no_such_host() {
        let err = dial("tcp", "doesnotexist.invalid:80", DIAL_TIMEOUT)
            .await
            .expect_err("must not resolve");
        assert_eq!(
            err.message(),
            "dial tcp: lookup doesnotexist.invalid: no such host"
        );
        assert!(!err.is_timeout());
    }
}

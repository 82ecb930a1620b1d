//! QUIC path-MTU discovery over real paths, with the endpoints both binaries use
//! (`quic::udp::endpoint`) and a verified bulk transfer:
//! * loopback: discovery must find loopback's 64 KiB MTU and keep it while a stream moves bytes
//!   (with GSO batches over the kernel's limit dropped, it would fall back to 1,200 bytes);
//! * a veth pair with a 1,500-byte MTU into a network namespace: discovery probes only up to
//!   what the route to the peer carries, so the connection settles on the Ethernet MTU at once,
//!   losing (almost) no probe. This one needs root and `ip` (iproute2), as CI has; it creates
//!   and deletes its own namespace.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use konnectivity_tunnel::quic;

/// The namespace and veth pair of one test run, deleted on drop.
struct EthernetPath {
    namespace: String,
    host_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2 is needed, and root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl EthernetPath {
    /// A namespace reached over a veth pair whose both ends have a 1,500-byte MTU.
    fn create() -> Self {
        let pid = std::process::id();
        let namespace = format!("kq-mtu-{pid}");
        let (host_if, peer_if) = (format!("kqa{pid}"), format!("kqb{pid}"));
        // A /30 of 10.202.0.0/16 per process, so parallel runs do not collide.
        let net = (pid % 16_000) * 4;
        let octets = |host: u32| {
            let n = net + host;
            Ipv4Addr::new(10, 202, (n >> 8) as u8, (n & 0xff) as u8)
        };
        let (host_ip, peer_ip) = (octets(1), octets(2));
        let path = EthernetPath {
            namespace: namespace.clone(),
            host_ip,
            peer_ip,
        };
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_if, "mtu", "1500", "type", "veth", "peer", "name", &peer_if,
            "mtu", "1500",
        ]);
        ip(&["link", "set", &peer_if, "netns", &namespace]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &namespace, "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        in_ns(&["addr", "add", &format!("{peer_ip}/30"), "dev", &peer_if]);
        in_ns(&["link", "set", &peer_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        path
    }

    /// A QUIC UDP socket bound inside the namespace (a socket keeps its namespace for life, so
    /// only the binding thread has to enter it), and the transport config towards the host
    /// side, as seen from inside (its route is the veth's).
    fn bind_inside(&self) -> (std::net::UdpSocket, quinn::TransportConfig) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.namespace)).unwrap();
        let addr = SocketAddr::from((self.peer_ip, 0));
        let host_side = SocketAddr::from((self.host_ip, 9));
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            (
                quic::udp::bind(addr).unwrap(),
                quic::transport_config(Duration::ZERO, host_side),
            )
        })
        .join()
        .unwrap()
    }
}

impl Drop for EthernetPath {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host's end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

/// What a transfer left behind: the sender's connection statistics and the receiver's MTU.
struct Transferred {
    sender: quinn::ConnectionStats,
    receiver_mtu: u16,
}

/// Sends `bytes` of a pattern over one stream from a client endpoint on `client_socket` to a
/// server endpoint on `server_socket` (with `server_transport`; the client's is derived from
/// the server's address, as the agent's is), checks every byte arrived, and reports.
async fn transfer(
    server_socket: std::net::UdpSocket,
    server_transport: quinn::TransportConfig,
    client_socket: std::net::UdpSocket,
    bytes: usize,
) -> Transferred {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server_config =
        quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).unwrap();
    server_config.transport_config(Arc::new(server_transport));
    let server = quic::udp::endpoint(server_socket, Some(server_config)).unwrap();
    let server_addr = server.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    client_config.transport_config(Arc::new(quic::transport_config(
        Duration::ZERO,
        server_addr,
    )));
    let client = quic::udp::endpoint(client_socket, None).unwrap();

    let receiving = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (_, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(bytes).await.unwrap();
        (got, conn.stats().path.current_mtu)
    });
    let conn = client
        .connect_with(client_config, server_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    for chunk in data.chunks(1 << 20) {
        send.write_all(chunk).await.unwrap();
    }
    send.finish().unwrap();
    let (got, receiver_mtu) = tokio::time::timeout(Duration::from_secs(60), receiving)
        .await
        .expect("the transfer finished within 60 s")
        .unwrap();
    assert_eq!(got.len(), bytes);
    assert!(got == data, "bytes differ after crossing the path");
    Transferred {
        sender: conn.stats(),
        receiver_mtu,
    }
}

#[tokio::test]
async fn loopback_carries_packets_far_above_ethernet_size() {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let done = transfer(
        quic::udp::bind(loopback).unwrap(),
        quic::transport_config(Duration::ZERO, loopback),
        quic::udp::bind(loopback).unwrap(),
        64 << 20,
    )
    .await;
    let mtu = done.sender.path.current_mtu;
    assert!(
        mtu > 16_384,
        "sender's path MTU is {mtu} bytes after 64 MiB"
    );
}

#[tokio::test]
async fn an_ethernet_path_settles_on_its_mtu_and_carries_every_byte() {
    let path = EthernetPath::create();
    let (socket, transport) = path.bind_inside();
    let done = transfer(
        socket,
        transport,
        quic::udp::bind((path.host_ip, 0).into()).unwrap(),
        32 << 20,
    )
    .await;
    let (stats, receiver_mtu) = (done.sender, done.receiver_mtu);
    let mtu = stats.path.current_mtu;
    // The bound is 1,500 − 48 (IPv6 + UDP, the larger header) = 1,452; up to 1,472 would
    // still fit an IPv4 path. A black hole would have sent it back to 1,200.
    assert!(
        (1_400..=1_472).contains(&mtu),
        "sender's path MTU is {mtu} bytes; expected the Ethernet path's (≤ 1,472)"
    );
    assert!(
        receiver_mtu <= 1_472,
        "receiver's path MTU is {receiver_mtu}"
    );
    assert_eq!(
        stats.path.black_holes_detected, 0,
        "a black hole was declared"
    );
    // The search stays below the first hop's MTU, so (almost) no probe is lost: with a fixed
    // 64 KiB bound 18–22 were, and the transfer ran at 1,200-byte packets for seconds.
    assert!(
        stats.path.lost_plpmtud_probes <= 3,
        "{} MTU probes lost: {:?}",
        stats.path.lost_plpmtud_probes,
        stats.path
    );
}

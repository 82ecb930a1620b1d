//! The UDP side of the QUIC endpoints: the socket, the largest datagram either side accepts, and
//! a wrapper that keeps quinn's segmentation-offload (GSO) batches within what the kernel sends.
//!
//! Why large datagrams: quinn's cost is mostly per packet (header protection, ACK bookkeeping,
//! one AEAD call), so at Ethernet's 1,472 bytes a loopback tunnel spent ~6 s of CPU per GiB and
//! ran at ~270 MiB/s. Where the path allows more (loopback, jumbo frames), path-MTU discovery
//! now finds it: on loopback, 64 KiB packets moved ~2.6× the bytes at a third of the CPU.
//!
//! Why the wrapper: quinn hands the socket up to 10 packets of one size to send as a single GSO
//! batch, without checking the batch's total; Linux refuses a batch above 64 KiB (`EMSGSIZE`),
//! which quinn-udp drops silently as if sent. With packets above ~6.5 KiB every batch would
//! vanish, MTU discovery would declare a black hole and fall back to 1,200 bytes. The wrapper
//! splits such a batch into several sends that each fit.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Largest UDP payload either side accepts, announced to the peer (`max_udp_payload_size`):
/// the most a datagram can carry over IPv6 (65,535 − 8-byte UDP header). Path-MTU discovery
/// still decides what is sent. Cost: quinn sizes its receive buffer as this × 64 (GRO) × 32
/// (batch), i.e. 128 MiB of *address space* per endpoint; only the pages the kernel fills
/// become resident (a GRO batch is at most 64 KiB per slot). Seen during a 64 KiB-packet bulk
/// transfer on loopback: ≈ 280 MiB address space and 27 MiB resident per process, all told.
pub const MAX_UDP_PAYLOAD_BYTES: u16 = 65_527;

/// Largest number of bytes one GSO send may carry. Linux builds the batch as one IP packet
/// before segmenting it, so the batch must fit IPv4's 16-bit total length (65,535 − 20-byte IP
/// header − 8-byte UDP header). Cost: batches above it take one extra `sendmsg` each.
pub const MAX_GSO_BATCH_BYTES: usize = 65_507;

/// Kernel buffer size asked for on the UDP socket, each direction. Cost: this much kernel
/// memory per endpoint (one per server, one per agent connection); the kernel may grant less
/// (`net.core.rmem_max`/`wmem_max`). Large buffers absorb bursts at GiB/s without drops.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// IPv6 and UDP headers: what a datagram adds to its payload (IPv4 adds 28; taking the
/// larger keeps one bound right for both families).
const IP_UDP_HEADER_BYTES: u32 = 48;

/// Upper bound of path-MTU discovery when the route to the peer is unknown (the lookup
/// failed): quinn's own default, which fits IPv6 on Ethernet.
pub const FALLBACK_DISCOVERY_UPPER_BOUND: u16 = 1_452;

/// The MTU of this host's route to `peer`, found with a connected UDP socket (no packet is
/// sent). IPv4: the route's MTU as the kernel knows it (`IP_MTU`: the outgoing interface's, a
/// route's `mtu`, or a smaller one it learnt). IPv6: the MTU of the interface holding the
/// source address the kernel picked (nix offers no `IPV6_MTU`). `None` if the lookup fails.
pub fn route_mtu(peer: SocketAddr) -> Option<u32> {
    let peer = match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => return interface_mtu_towards(peer),
        },
        v4 => v4,
    };
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(peer).ok()?;
    let mtu = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::IpMtu).ok()?;
    u32::try_from(mtu).ok()
}

/// The MTU of the interface an IPv6 datagram to `peer` would leave from.
fn interface_mtu_towards(peer: SocketAddr) -> Option<u32> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(peer).ok()?;
    let local = socket.local_addr().ok()?.ip();
    let interface = nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let address = a.address?;
        let ip = address.as_sockaddr_in6()?.ip();
        (std::net::IpAddr::V6(ip) == local).then_some(a.interface_name)
    })?;
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{interface}/mtu")).ok()?;
    mtu.trim().parse().ok()
}

/// How far path-MTU discovery towards `peer` probes: the largest payload the local route
/// carries, at most [`super::MTU_DISCOVERY_UPPER_BOUND`]. Searching above what the first hop
/// carries only loses probes: with 64 KiB as the bound, an Ethernet path took seconds of
/// lost probes (~20) to leave 1,200-byte packets.
pub fn discovery_upper_bound(peer: SocketAddr) -> u16 {
    bound_for_route(route_mtu(peer))
}

/// [`discovery_upper_bound`] for a known (or unknown) route MTU.
fn bound_for_route(mtu: Option<u32>) -> u16 {
    match mtu {
        Some(mtu) => {
            let payload = mtu.saturating_sub(IP_UDP_HEADER_BYTES);
            let capped = payload.min(u32::from(super::MTU_DISCOVERY_UPPER_BOUND));
            // quinn never goes below 1,200 bytes (QUIC's minimum); a smaller route is
            // someone else's problem (quinn then simply does not grow).
            u16::try_from(capped).map_or(FALLBACK_DISCOVERY_UPPER_BOUND, |b| b.max(1_200))
        }
        None => FALLBACK_DISCOVERY_UPPER_BOUND,
    }
}

/// Binds the UDP socket of a QUIC endpoint: non-blocking, with [`UDP_SOCKET_BUFFER_BYTES`]
/// buffers, and dual-stack when bound to the IPv6 wildcard (as Go's listeners are).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Best effort: some systems forbid dual-stack sockets; IPv6 then still works.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps the sizes; smaller buffers only cost throughput.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The endpoint settings both sides use: quinn's defaults, accepting datagrams of up to
/// [`MAX_UDP_PAYLOAD_BYTES`].
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // Invariant: quinn accepts any value from 1,200 to 65,527 bytes; this constant is in range
    // (checked by a unit test), and on refusal the default 1,472 still works.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD_BYTES);
    config
}

/// A QUIC endpoint on `socket` (a server one if `server` is given), with the settings of
/// [`endpoint_config`] and GSO batches kept within [`MAX_GSO_BATCH_BYTES`].
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = BatchLimited::wrap(runtime.wrap_udp_socket(socket)?);
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(), server, socket, runtime)
}

/// The sends one transmit of `len` bytes becomes: each a byte range of the transmit and the
/// segment size to send it with (`None`: a single datagram). Packets are never split, only
/// batches: every range starts on a segment boundary.
pub fn batches(len: usize, segment_size: Option<usize>) -> Batches {
    let per_send = match segment_size {
        // Whole segments per send, at least one (a lone packet may be up to 64 KiB itself).
        Some(size) if size > 0 && len > MAX_GSO_BATCH_BYTES => (MAX_GSO_BATCH_BYTES / size).max(1),
        _ => 0,
    };
    Batches {
        len,
        segment_size,
        per_send,
        next: 0,
    }
}

/// Iterator of [`batches`].
#[derive(Debug, Clone)]
pub struct Batches {
    len: usize,
    segment_size: Option<usize>,
    /// Segments per send; 0 means the transmit goes out as it is.
    per_send: usize,
    next: usize,
}

impl Iterator for Batches {
    type Item = (Range<usize>, Option<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.len {
            return None;
        }
        let start = self.next;
        let (Some(size), true) = (self.segment_size, self.per_send > 0) else {
            self.next = self.len;
            return Some((0..self.len, self.segment_size));
        };
        let end = (start + size * self.per_send).min(self.len);
        self.next = end;
        let segment_size = (end - start > size).then_some(size);
        Some((start..end, segment_size))
    }
}

/// quinn's socket, with each transmit sent in [`batches`] the kernel accepts.
struct BatchLimited {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl BatchLimited {
    fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(Self { inner })
    }
}

impl fmt::Debug for BatchLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLimited")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for BatchLimited {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        for (i, (range, segment_size)) in
            batches(transmit.contents.len(), transmit.segment_size).enumerate()
        {
            let part = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: &transmit.contents[range],
                segment_size,
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Nothing sent yet: quinn keeps the transmit and retries it when writable.
                Err(e) if i == 0 => return Err(e),
                // Part sent: report success, so a retry does not send those packets twice; the
                // rest count as lost and QUIC's loss recovery resends them, with the congestion
                // window reduced, which a full socket buffer calls for anyway.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all(len: usize, segment_size: Option<usize>) -> Vec<(Range<usize>, Option<usize>)> {
        batches(len, segment_size).collect()
    }

    #[test]
    fn a_batch_within_the_limit_goes_out_as_it_is() {
        assert_eq!(all(14_720, Some(1_472)), vec![(0..14_720, Some(1_472))]);
        assert_eq!(all(1_000, None), vec![(0..1_000, None)]);
        assert_eq!(
            all(MAX_GSO_BATCH_BYTES, Some(8_000)),
            vec![(0..MAX_GSO_BATCH_BYTES, Some(8_000))]
        );
    }

    #[test]
    fn a_large_batch_is_split_on_segment_boundaries() {
        // 10 packets of 16 KiB: 3 per send (48 KiB), the last send holds one.
        let got = all(10 * 16_384, Some(16_384));
        assert_eq!(
            got,
            vec![
                (0..49_152, Some(16_384)),
                (49_152..98_304, Some(16_384)),
                (98_304..147_456, Some(16_384)),
                (147_456..163_840, None),
            ]
        );
    }

    #[test]
    fn packets_above_half_the_limit_go_one_per_send() {
        // 3 full packets and a short last one.
        let got = all(3 * 60_000 + 100, Some(60_000));
        assert_eq!(
            got,
            vec![
                (0..60_000, None),
                (60_000..120_000, None),
                (120_000..180_000, None),
                (180_000..180_100, None),
            ]
        );
    }

    #[test]
    fn every_send_fits_the_kernel_and_the_bytes_are_covered_once() {
        for size in [1_200, 1_472, 6_000, 8_973, 16_384, 32_768, 65_000] {
            for count in 1..=10 {
                let len = size * count - 7;
                let mut next = 0;
                for (range, segment_size) in batches(len, Some(size)) {
                    assert_eq!(range.start, next, "size {size} count {count}");
                    assert_eq!(range.start % size, 0, "packet split at {}", range.start);
                    assert!(range.len() <= MAX_GSO_BATCH_BYTES.max(size));
                    if len > MAX_GSO_BATCH_BYTES {
                        assert_eq!(segment_size.is_some(), range.len() > size);
                    }
                    next = range.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(all(0, Some(1_472)), vec![]);
    }

    #[test]
    fn discovery_stays_within_the_first_hop() {
        assert_eq!(bound_for_route(Some(1_500)), 1_452);
        assert_eq!(bound_for_route(Some(9_001)), 8_953);
        assert_eq!(
            bound_for_route(Some(65_536)),
            crate::quic::MTU_DISCOVERY_UPPER_BOUND
        );
        assert_eq!(bound_for_route(Some(576)), 1_200);
        assert_eq!(bound_for_route(None), FALLBACK_DISCOVERY_UPPER_BOUND);
    }

    #[test]
    fn loopback_routes_report_loopback_mtu() {
        // lo's MTU is 65,536 on Linux unless an operator changed it.
        let mtu = route_mtu("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(mtu > 1_500, "route MTU to 127.0.0.1 is {mtu}");
        assert_eq!(
            route_mtu("[::ffff:127.0.0.1]:9".parse().unwrap()),
            Some(mtu)
        );
        // ::1 lives on lo too, when the host has IPv6 at all.
        if let Some(v6) = route_mtu("[::1]:9".parse().unwrap()) {
            assert!(v6 > 1_500, "route MTU to ::1 is {v6}");
        }
    }

    #[test]
    fn the_payload_limit_is_one_quinn_accepts() {
        let mut config = quinn::EndpointConfig::default();
        assert!(config.max_udp_payload_size(MAX_UDP_PAYLOAD_BYTES).is_ok());
        assert_eq!(
            endpoint_config().get_max_udp_payload_size(),
            u64::from(MAX_UDP_PAYLOAD_BYTES)
        );
    }

    /// Without the split, Linux refuses a 10 × 16 KiB GSO batch (`EMSGSIZE`) and quinn-udp
    /// drops it silently: nothing would arrive.
    #[tokio::test]
    async fn an_oversized_batch_arrives_whole_over_loopback() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let sender = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = BatchLimited::wrap(runtime.wrap_udp_socket(sender).unwrap());
        const SIZE: usize = 16_384;
        const COUNT: usize = 10;
        let contents: Vec<u8> = (0..SIZE * COUNT).map(|i| (i / SIZE) as u8).collect();
        let segments = if socket.max_transmit_segments() >= COUNT {
            Some(SIZE)
        } else {
            // No GSO here: quinn would send packets one at a time; so do we.
            None
        };
        let chunk = if segments.is_some() {
            SIZE * COUNT
        } else {
            SIZE
        };
        let mut poller = socket.clone().create_io_poller();
        for part in contents.chunks(chunk) {
            let transmit = Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents: part,
                segment_size: segments,
                src_ip: None,
            };
            loop {
                std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                    .await
                    .unwrap();
                match socket.try_send(&transmit) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    sent => break sent.unwrap(),
                }
            }
        }
        let mut buf = vec![0u8; 65_536];
        for packet in 0..COUNT {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(n, SIZE, "packet {packet}");
            assert!(
                buf[..n].iter().all(|&b| b as usize == packet),
                "packet {packet}"
            );
        }
    }
}

//! Remembers client certificate chains that already passed verification.
//!
//! kube-apiserver opens a new mTLS connection for every HTTP CONNECT tunnel and presents the same
//! client certificate each time, so the server verified the same chain over and over: on this
//! machine kind the CA's signature over that certificate was a quarter of the proxy-server's
//! instructions per dial (callgrind). [`CachingClientVerifier`] verifies a chain once and then
//! answers from memory for as long as every certificate in it is within its validity period.
//!
//! What is NOT cached: the handshake signature (`CertificateVerify`) that proves the peer holds
//! the certificate's private key. It is checked on every handshake, so a copied certificate
//! without its key is refused exactly as before.
//!
//! Soundness rests on the wrapped verifier being a pure function of the chain's bytes and the
//! time: the roots are fixed when the server starts and no revocation list is consulted (none
//! is configured; upstream has no flag for one). A chain is only ever cached after the wrapped
//! verifier accepted it, and is matched byte for byte.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// Distinct client chains remembered per server configuration. A control plane presents a
/// handful (one per kube-apiserver client certificate, plus rotations). Cost: each entry holds
/// its chain's DER, typically 0.5–2 KiB (≈ 64 KiB for a full cache, 512 KiB at most since
/// chains above [`MAX_CACHED_CHAIN_BYTES`] are never kept); a client cycling through more
/// distinct chains than this evicts the oldest and is simply verified in full, never wrongly
/// accepted. The agent listener has its own cache: thousands of agents each with their own
/// certificate just keep evicting each other there, at the cost of a certificate parse each.
pub const VERIFIED_CHAINS: usize = 32;

/// Largest chain (end-entity plus intermediates, DER bytes) that is remembered. Cost: a client
/// with a larger chain is verified in full on every handshake, as without the cache.
pub const MAX_CACHED_CHAIN_BYTES: usize = 16 * 1024;

/// A chain that passed verification and the time span in which that answer holds.
struct Verified {
    /// End-entity certificate first, then the intermediates in the order presented.
    chain: Vec<CertificateDer<'static>>,
    /// Latest `notBefore` in the chain, seconds since the Unix epoch.
    not_before: u64,
    /// Earliest `notAfter` in the chain, seconds since the Unix epoch.
    not_after: u64,
}

impl Verified {
    fn matches(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> bool {
        self.chain.len() == intermediates.len() + 1
            && self.chain[0].as_ref() == end_entity.as_ref()
            && self.chain[1..]
                .iter()
                .zip(intermediates)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    }

    /// Same bounds as webpki: valid from `notBefore` through `notAfter`, both inclusive.
    fn holds_at(&self, now: UnixTime) -> bool {
        (self.not_before..=self.not_after).contains(&now.as_secs())
    }
}

/// The span in which every certificate of the chain is valid, or `None` when a certificate
/// cannot be parsed or the chain is too large to keep (then it is simply not cached).
fn validity(chain: &[&CertificateDer<'_>]) -> Option<(u64, u64)> {
    let total: usize = chain.iter().map(|c| c.len()).sum();
    if total > MAX_CACHED_CHAIN_BYTES {
        return None;
    }
    let mut span = (0u64, u64::MAX);
    for der in chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let v = cert.validity();
        // A notBefore before 1970 is no later bound than 0; a notAfter before 1970 never holds.
        let not_before = u64::try_from(v.not_before.timestamp()).unwrap_or(0);
        let not_after = u64::try_from(v.not_after.timestamp()).ok()?;
        span = (span.0.max(not_before), span.1.min(not_after));
    }
    Some(span)
}

/// A [`ClientCertVerifier`] that remembers which client chains the wrapped verifier accepted
/// (see the module documentation). Everything else, including the handshake signature, is
/// passed through unchanged.
pub struct CachingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    verified: Mutex<VecDeque<Verified>>,
}

impl fmt::Debug for CachingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingClientVerifier")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CachingClientVerifier {
    /// Wraps `inner`, which must judge a chain by its bytes and the time alone (no revocation
    /// lists that change while the server runs).
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        CachingClientVerifier {
            inner,
            verified: Mutex::new(VecDeque::with_capacity(VERIFIED_CHAINS)),
        }
    }

    fn remembered(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        // A poisoned lock only means another handshake panicked mid-lookup; the list itself is
        // always consistent (entries are pushed and popped whole), so keep using it.
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified
            .iter()
            .any(|v| v.matches(end_entity, intermediates) && v.holds_at(now))
    }

    fn remember(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let chain: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let Some((not_before, not_after)) = validity(&chain) else {
            return;
        };
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        // An entry for the same chain that no longer holds (checked before the inner verifier
        // accepted it again) is replaced rather than duplicated.
        verified.retain(|v| !v.matches(end_entity, intermediates));
        if verified.len() >= VERIFIED_CHAINS {
            verified.pop_front();
        }
        verified.push_back(Verified {
            chain: chain.into_iter().map(|c| c.clone().into_owned()).collect(),
            not_before,
            not_after,
        });
    }
}

impl ClientCertVerifier for CachingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.remembered(end_entity, intermediates, now) {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.remember(end_entity, intermediates);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair};

    /// A wrapped verifier that counts its calls and accepts chains while `accept` says so.
    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
        reject: std::sync::atomic::AtomicBool,
    }

    impl Counting {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.reject.load(Ordering::SeqCst) {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))
            } else {
                Ok(ClientCertVerified::assertion())
            }
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            unreachable!("not exercised")
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            unreachable!("not exercised")
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            Vec::new()
        }
    }

    /// A self-signed certificate valid from `from` to `to` (seconds since the epoch).
    fn cert(name: &str, from: u64, to: u64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        let at = |s: u64| time::OffsetDateTime::from_unix_timestamp(s as i64).unwrap();
        params.not_before = at(from);
        params.not_after = at(to);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn setup() -> (Arc<Counting>, CachingClientVerifier) {
        let inner = Arc::new(Counting::default());
        let cache = CachingClientVerifier::new(inner.clone());
        (inner, cache)
    }

    const DAY: u64 = 86_400;
    const T0: u64 = 1_800_000_000;

    #[test]
    fn repeated_chain_is_verified_once_while_valid() {
        let (inner, cache) = setup();
        let leaf = cert("apiserver", T0, T0 + DAY);
        for t in [T0, T0 + 1, T0 + DAY] {
            cache.verify_client_cert(&leaf, &[], at(t)).unwrap();
        }
        assert_eq!(inner.calls(), 1);
    }

    #[test]
    fn rejected_chain_is_not_remembered() {
        let (inner, cache) = setup();
        inner.reject.store(true, Ordering::SeqCst);
        let leaf = cert("stranger", T0, T0 + DAY);
        for _ in 0..3 {
            assert!(cache.verify_client_cert(&leaf, &[], at(T0 + 1)).is_err());
        }
        assert_eq!(inner.calls(), 3);
    }

    #[test]
    fn remembered_chain_goes_back_to_the_verifier_outside_its_validity() {
        let (inner, cache) = setup();
        let leaf = cert("apiserver", T0, T0 + DAY);
        cache.verify_client_cert(&leaf, &[], at(T0 + 1)).unwrap();
        inner.reject.store(true, Ordering::SeqCst);
        // One second past notAfter, and before notBefore: the wrapped verifier decides (and
        // here refuses), the remembered answer is not used.
        assert!(cache
            .verify_client_cert(&leaf, &[], at(T0 + DAY + 1))
            .is_err());
        assert!(cache.verify_client_cert(&leaf, &[], at(T0 - 1)).is_err());
        assert_eq!(inner.calls(), 3);
    }

    #[test]
    fn validity_is_the_narrowest_span_of_the_chain() {
        let (inner, cache) = setup();
        let leaf = cert("apiserver", T0, T0 + 10 * DAY);
        let intermediate = cert("intermediate", T0 + DAY, T0 + 2 * DAY);
        let chain = [intermediate];
        cache
            .verify_client_cert(&leaf, &chain, at(T0 + DAY))
            .unwrap();
        cache
            .verify_client_cert(&leaf, &chain, at(T0 + 2 * DAY))
            .unwrap();
        assert_eq!(inner.calls(), 1);
        // Past the intermediate's notAfter, though the leaf is still valid.
        cache
            .verify_client_cert(&leaf, &chain, at(T0 + 3 * DAY))
            .unwrap();
        assert_eq!(inner.calls(), 2);
    }

    #[test]
    fn same_leaf_with_other_intermediates_is_verified_afresh() {
        let (inner, cache) = setup();
        let leaf = cert("apiserver", T0, T0 + DAY);
        let a = cert("a", T0, T0 + DAY);
        let b = cert("b", T0, T0 + DAY);
        cache
            .verify_client_cert(&leaf, std::slice::from_ref(&a), at(T0))
            .unwrap();
        cache.verify_client_cert(&leaf, &[b], at(T0)).unwrap();
        cache.verify_client_cert(&leaf, &[], at(T0)).unwrap();
        cache
            .verify_client_cert(&leaf, &[a.clone(), a], at(T0))
            .unwrap();
        assert_eq!(inner.calls(), 4);
    }

    #[test]
    fn at_most_verified_chains_are_remembered_oldest_evicted_first() {
        let (inner, cache) = setup();
        let leaves: Vec<_> = (0..=VERIFIED_CHAINS)
            .map(|i| cert(&format!("client-{i}"), T0, T0 + DAY))
            .collect();
        for leaf in &leaves {
            cache.verify_client_cert(leaf, &[], at(T0)).unwrap();
        }
        assert_eq!(inner.calls(), VERIFIED_CHAINS + 1);
        assert_eq!(cache.verified.lock().unwrap().len(), VERIFIED_CHAINS);
        // The newest is remembered, the first one was evicted.
        cache
            .verify_client_cert(&leaves[VERIFIED_CHAINS], &[], at(T0))
            .unwrap();
        assert_eq!(inner.calls(), VERIFIED_CHAINS + 1);
        cache.verify_client_cert(&leaves[0], &[], at(T0)).unwrap();
        assert_eq!(inner.calls(), VERIFIED_CHAINS + 2);
    }

    #[test]
    fn oversized_or_unparsable_chain_is_verified_every_time() {
        let (inner, cache) = setup();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let big = CertificateDer::from(vec![0u8; MAX_CACHED_CHAIN_BYTES + 1]);
        let leaf = cert("apiserver", T0, T0 + DAY);
        for _ in 0..2 {
            cache.verify_client_cert(&garbage, &[], at(T0)).unwrap();
            cache
                .verify_client_cert(&leaf, std::slice::from_ref(&big), at(T0))
                .unwrap();
        }
        assert_eq!(inner.calls(), 4);
        assert!(cache.verified.lock().unwrap().is_empty());
    }
}

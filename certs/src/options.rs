//! What to generate: key type, validity, SANs and the named agents / kubelet nodes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{SanType, SignatureAlgorithm};

use crate::CertsError;

/// SANs of every serving certificate unless configured otherwise: enough for an all-on-one-host
/// demo reached by name, IPv4 or IPv6 loopback.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Default validity of leaf certificates, in days.
pub const DEFAULT_LEAF_DAYS: u32 = 365;

/// Default validity of CA certificates, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;

/// Upper bound for any validity period (100 years). It keeps the date arithmetic far from
/// overflow; the cost is that nobody can ask for a longer-lived certificate.
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

/// Longest agent / kubelet-node name, the Kubernetes limit for a node name (DNS subdomain).
/// Longer names are refused; the cost is nothing, no valid node name is longer.
pub const MAX_NAME_LEN: usize = 253;

/// The key algorithm of every key in the PKI (CAs and leaves alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: the default, accepted by every TLS stack.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519: accepted by Go and rustls, not by some older TLS stacks.
    Ed25519,
}

impl KeyType {
    /// Every supported key type, in the order shown to users.
    pub const ALL: [KeyType; 3] = [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519];

    /// The canonical name, as accepted by `--key-type` and printed by `Display`.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// The rcgen signature algorithm used for keys of this type and the certificates they sign.
    pub(crate) fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = CertsError;

    /// Accepts the canonical names plus the obvious aliases (`p256`, `ecdsa`, `p384`),
    /// case-insensitively; anything starting with `rsa` gets a dedicated error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" | "p-256" | "ecdsa-p-256" => Ok(KeyType::EcdsaP256),
            "ecdsa-p384" | "p384" | "p-384" | "ecdsa-p-384" => Ok(KeyType::EcdsaP384),
            "ed25519" => Ok(KeyType::Ed25519),
            _ if lower.starts_with("rsa") => Err(CertsError::RsaUnsupported { value: s.into() }),
            _ => Err(CertsError::UnknownKeyType { value: s.into() }),
        }
    }
}

/// One kubelet serving certificate for a named node (`--kubelet-node NAME[=SAN,SAN…]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletNode {
    /// Node name; the files are `kubelet-<name>.crt/.key` and the CN is `system:node:<name>`.
    pub name: String,
    /// SANs of this node's certificate. Empty means "the node name plus
    /// [`PkiOptions::kubelet_sans`]", which suits several kubelets on one demo host.
    pub sans: Vec<String>,
}

impl FromStr for KubeletNode {
    type Err = CertsError;

    /// Parses `NAME` or `NAME=SAN[,SAN…]`; the SANs themselves are checked at generation.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CertsError::InvalidKubeletNode {
            value: s.into(),
            reason,
        };
        let (name, sans) = match s.split_once('=') {
            None => (s, Vec::new()),
            Some((name, list)) => {
                let sans: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
                if sans.iter().any(String::is_empty) {
                    return Err(err("empty SAN in the list"));
                }
                (name, sans)
            }
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(err("missing node name"));
        }
        Ok(KubeletNode {
            name: name.into(),
            sans,
        })
    }
}

/// Everything [`crate::Pki::generate`] needs. `Default` gives a complete single-host setup:
/// ECDSA P-256, 365/3650 days, SANs [`DEFAULT_SANS`], one agent, one kubelet.
///
/// SAN strings are classified automatically: anything that parses as an IP address (optionally
/// in `[brackets]`) becomes an IP SAN, everything else must be a DNS name (`*.` wildcard allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiOptions {
    /// Key algorithm of every key.
    pub key_type: KeyType,
    /// Validity of leaf certificates in days.
    pub leaf_days: u32,
    /// Validity of CA certificates in days; must be at least `leaf_days`.
    pub ca_days: u32,
    /// SANs of `frontend-server` (what kube-apiserver dials: the egress-selector URL host).
    pub frontend_server_sans: Vec<String>,
    /// SANs of `agent-server` (what agents dial: `--proxy-server-host`).
    pub agent_server_sans: Vec<String>,
    /// Agent client certificates to issue, as `agent-<name>`. Empty means one, named
    /// [`crate::DEFAULT_AGENT_NAME`] (`agent-client.crt`).
    pub agent_names: Vec<String>,
    /// SANs of the default `kubelet-server` certificate, and extra SANs of named nodes that
    /// give none of their own.
    pub kubelet_sans: Vec<String>,
    /// Kubelet serving certificates to issue, as `kubelet-<name>`. Empty means one, named
    /// [`crate::DEFAULT_KUBELET_NAME`] (`kubelet-server.crt`) with `kubelet_sans`.
    pub kubelet_nodes: Vec<KubeletNode>,
}

impl Default for PkiOptions {
    fn default() -> Self {
        let sans = || {
            DEFAULT_SANS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        PkiOptions {
            key_type: KeyType::default(),
            leaf_days: DEFAULT_LEAF_DAYS,
            ca_days: DEFAULT_CA_DAYS,
            frontend_server_sans: sans(),
            agent_server_sans: sans(),
            agent_names: Vec::new(),
            kubelet_sans: sans(),
            kubelet_nodes: Vec::new(),
        }
    }
}

impl PkiOptions {
    /// Checks both validity periods before any key is generated.
    pub(crate) fn check_validity(&self) -> Result<(), CertsError> {
        for (what, days) in [
            ("leaf certificates", self.leaf_days),
            ("CA certificates", self.ca_days),
        ] {
            if days == 0 || days > MAX_VALIDITY_DAYS {
                return Err(CertsError::InvalidValidity {
                    what,
                    days,
                    max: MAX_VALIDITY_DAYS,
                });
            }
        }
        if self.leaf_days > self.ca_days {
            return Err(CertsError::LeafOutlivesCa {
                leaf_days: self.leaf_days,
                ca_days: self.ca_days,
            });
        }
        Ok(())
    }
}

/// Turns SAN strings into rcgen SANs: IPs become IP SANs, the rest must be DNS names.
/// Duplicates are dropped (first occurrence wins); an empty result is an error.
pub(crate) fn parse_sans(cert: &str, values: &[String]) -> Result<Vec<SanType>, CertsError> {
    let mut sans: Vec<SanType> = Vec::with_capacity(values.len());
    for value in values {
        let invalid = |reason| CertsError::InvalidSan {
            cert: cert.into(),
            value: value.clone(),
            reason,
        };
        let v = value.trim();
        let unbracketed = v
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(v);
        let san = if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            check_dns_name(v).map_err(invalid)?;
            let ia5 = v.try_into().map_err(|_| invalid("not ASCII"))?;
            SanType::DnsName(ia5)
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    if sans.is_empty() {
        return Err(CertsError::NoSans { cert: cert.into() });
    }
    Ok(sans)
}

/// RFC 1123 host name syntax (letters, digits, hyphens; labels of 1–63 characters, at most 253
/// in all), with an optional leading `*` wildcard label.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("DNS names are at most 253 characters");
    }
    let without_wildcard = name.strip_prefix("*.").unwrap_or(name);
    for label in without_wildcard.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each DNS label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(
                "not an IP address, and a DNS name may only hold letters, digits, '-' and '.'",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a DNS label cannot start or end with '-'");
        }
    }
    Ok(())
}

/// Checks an agent / kubelet-node name: it becomes part of a file name, so it must be a
/// lowercase RFC 1123 subdomain (what Kubernetes allows for node names) and not one of the
/// `reserved` words that would collide with the fixed files of the same prefix.
pub(crate) fn check_name(
    kind: &'static str,
    name: &str,
    reserved: &[&str],
) -> Result<(), CertsError> {
    let invalid = |reason: String| CertsError::InvalidName {
        kind,
        name: name.into(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok_chars || !ok_ends(name.bytes().next()) || !ok_ends(name.bytes().last()) {
        return Err(invalid(
            "use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                .into(),
        ));
    }
    if reserved.contains(&name) {
        return Err(invalid(format!(
            "reserved, it would collide with {reserved:?} files"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_type_parses_names_and_aliases() {
        assert_eq!(
            "ecdsa-p256".parse::<KeyType>().ok(),
            Some(KeyType::EcdsaP256)
        );
        assert_eq!("P384".parse::<KeyType>().ok(), Some(KeyType::EcdsaP384));
        assert_eq!("Ed25519".parse::<KeyType>().ok(), Some(KeyType::Ed25519));
        for kt in KeyType::ALL {
            assert_eq!(kt.to_string().parse::<KeyType>().ok(), Some(kt));
        }
    }

    #[test]
    fn key_type_rsa_is_refused_with_ring_explanation() {
        let err = "rsa-2048".parse::<KeyType>().unwrap_err();
        assert!(matches!(err, CertsError::RsaUnsupported { .. }));
        assert!(err.to_string().contains("ring"), "{err}");
        assert!(matches!(
            "dsa".parse::<KeyType>(),
            Err(CertsError::UnknownKeyType { .. })
        ));
    }

    #[test]
    fn kubelet_node_parses_name_and_san_list() {
        let n: KubeletNode = "node1=node1.local, 10.0.0.1".parse().unwrap();
        assert_eq!(n.name, "node1");
        assert_eq!(n.sans, vec!["node1.local", "10.0.0.1"]);
        let bare: KubeletNode = "node2".parse().unwrap();
        assert!(bare.sans.is_empty());
        assert!("=a".parse::<KubeletNode>().is_err());
        assert!("n=".parse::<KubeletNode>().is_err());
        assert!("n=a,,b".parse::<KubeletNode>().is_err());
    }

    #[test]
    fn sans_are_classified_as_ip_or_dns_and_deduplicated() {
        let values: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "[::1]",
            "::1",
            "*.svc.local",
            "localhost",
        ]
        .map(String::from)
        .to_vec();
        let sans = parse_sans("x", &values).unwrap();
        assert_eq!(sans.len(), 4);
        assert!(matches!(sans[0], SanType::DnsName(_)));
        assert_eq!(sans[1], SanType::IpAddress("127.0.0.1".parse().unwrap()));
        assert_eq!(sans[2], SanType::IpAddress("::1".parse().unwrap()));
        assert!(matches!(sans[3], SanType::DnsName(_)));
    }

    #[test]
    fn bad_sans_are_rejected_with_the_certificate_named() {
        for bad in ["a b", "-x.com", "x..com", "ä.com", "", "a/b"] {
            let err = parse_sans("agent-server", &[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("agent-server"), "{bad:?}: {err}");
        }
        assert!(matches!(
            parse_sans("k", &[]),
            Err(CertsError::NoSans { .. })
        ));
    }

    #[test]
    fn names_must_be_file_safe_and_not_reserved() {
        assert!(check_name("agent", "node-1.example", &["ca"]).is_ok());
        for bad in ["", "Node1", "a/b", "../x", "-a", "a-", ".a", "a b"] {
            assert!(check_name("agent", bad, &["ca"]).is_err(), "{bad:?}");
        }
        assert!(check_name("agent", &"a".repeat(MAX_NAME_LEN + 1), &[]).is_err());
        let err = check_name("agent", "ca", &["ca", "server"]).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn validity_is_bounded_and_leaves_cannot_outlive_cas() {
        assert!(PkiOptions::default().check_validity().is_ok());
        let with = |leaf_days, ca_days| PkiOptions {
            leaf_days,
            ca_days,
            ..Default::default()
        };
        assert!(matches!(
            with(0, 10).check_validity(),
            Err(CertsError::InvalidValidity { .. })
        ));
        assert!(matches!(
            with(1, MAX_VALIDITY_DAYS + 1).check_validity(),
            Err(CertsError::InvalidValidity { .. })
        ));
        assert!(matches!(
            with(11, 10).check_validity(),
            Err(CertsError::LeafOutlivesCa { .. })
        ));
    }
}

//! The versioned `EgressSelectorConfiguration` schema and its strict decoding.
//!
//! Field names, optionality and the strictness (unknown and duplicate fields rejected, names
//! case-sensitive) follow kube-apiserver's `apiserver.k8s.io/v1beta1` and `v1alpha1` types,
//! which are identical for this kind. `tlsServerName` (added in Kubernetes 1.36) is accepted.

use serde::{Deserialize, Deserializer, Serialize};

/// API group of the configuration kind.
pub const API_GROUP: &str = "apiserver.k8s.io";

/// The `kind` this module decodes.
pub const KIND: &str = "EgressSelectorConfiguration";

/// Selection name that kube-apiserver's decoding renames to `controlplane` (deprecated alias;
/// the comparison is exact, so `Master` is not converted and later fails validation).
pub const LEGACY_CONTROLPLANE_NAME: &str = "master";

/// The API versions of `EgressSelectorConfiguration` that kube-apiserver decodes. There is no
/// `v1`: a file saying `apiserver.k8s.io/v1` is refused by kube-apiserver too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// `apiserver.k8s.io/v1alpha1` (Kubernetes 1.16+).
    V1Alpha1,
    /// `apiserver.k8s.io/v1beta1` (Kubernetes 1.18+), what current documentation uses.
    V1Beta1,
}

impl ApiVersion {
    /// The `apiVersion` string as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1Alpha1 => "apiserver.k8s.io/v1alpha1",
            ApiVersion::V1Beta1 => "apiserver.k8s.io/v1beta1",
        }
    }

    /// Parses an `apiVersion` value; `None` for anything kube-apiserver does not decode.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "apiserver.k8s.io/v1alpha1" => Some(ApiVersion::V1Alpha1),
            "apiserver.k8s.io/v1beta1" => Some(ApiVersion::V1Beta1),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole file: which egress path each kind of kube-apiserver traffic takes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressSelectorConfiguration {
    /// `apiserver.k8s.io/v1beta1` or `apiserver.k8s.io/v1alpha1`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub api_version: String,
    /// Always `EgressSelectorConfiguration`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// One entry per selection (`cluster`, `controlplane`, `etcd`); a selection not listed is
    /// dialed directly.
    #[serde(default, deserialize_with = "null_as_default")]
    pub egress_selections: Vec<EgressSelection>,
}

/// One selection: a traffic class and how to dial for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressSelection {
    /// `cluster`, `controlplane` (`master` is converted to it) or `etcd`, case-insensitive.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// How to dial.
    #[serde(default, deserialize_with = "null_as_default")]
    pub connection: Connection,
}

/// How to dial for one selection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connection {
    /// `GRPC`, `HTTPConnect` or `Direct` (case-sensitive). Kept as written so that an
    /// unsupported value can be reported verbatim.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub proxy_protocol: String,
    /// How to reach the proxy; required for `GRPC` and `HTTPConnect`, forbidden for `Direct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

/// The proxy's frontend: a Unix socket or a TCP URL (exactly one for `HTTPConnect`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transport {
    /// TCP (+TLS) frontend; not usable with `GRPC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTransport>,
    /// Unix-socket frontend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uds: Option<UdsTransport>,
}

/// A TCP frontend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpTransport {
    /// `https://host:port` (only `host:port` is used; the host is also the TLS server name).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub url: String,
    /// Client certificate and CA; required for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
}

/// A Unix-socket frontend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UdsTransport {
    /// Socket path, WITHOUT a `unix://` prefix.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub uds_name: String,
}

/// TLS material for a TCP frontend (file paths).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA bundle the proxy's certificate must chain to; empty = the system roots.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub ca_bundle: String,
    /// PEM private key of `client_cert`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub client_key: String,
    /// PEM client certificate presented to the proxy (mutual TLS).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub client_cert: String,
    /// Name the proxy's certificate is verified against; empty = the host of `url`
    /// (Kubernetes 1.36+).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub tls_server_name: String,
}

/// Go's JSON decoding leaves a field at its zero value for an explicit `null`; serde would
/// reject it, so `null` is mapped to the default here.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Just the type metadata, read leniently before the strict decode so that a wrong
/// `apiVersion`/`kind` is reported as such rather than as an unknown field.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default, deserialize_with = "null_as_default")]
    api_version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    kind: String,
}

/// Why the file's bytes are not a decodable `EgressSelectorConfiguration`. The messages follow
/// kube-apiserver's decoder where its text is known, with a hint on what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The file holds nothing but whitespace or comments.
    #[error("Object 'Kind' is missing in the (empty) file; write an EgressSelectorConfiguration (apiVersion: apiserver.k8s.io/v1beta1)")]
    Empty,
    /// Not YAML/JSON, or not a mapping.
    #[error("error converting YAML to JSON: {0}")]
    Syntax(String),
    /// `kind` absent.
    #[error("Object 'Kind' is missing; add \"kind: EgressSelectorConfiguration\"")]
    MissingKind,
    /// `apiVersion` absent.
    #[error("Object 'apiVersion' is missing; add \"apiVersion: apiserver.k8s.io/v1beta1\"")]
    MissingApiVersion,
    /// The group/version/kind is not one kube-apiserver decodes for this file.
    #[error("no kind {kind:?} is registered for version {api_version:?}; EgressSelectorConfiguration exists only as apiserver.k8s.io/v1beta1 and apiserver.k8s.io/v1alpha1 (there is no v1)")]
    NotRegistered {
        /// The `kind` found.
        kind: String,
        /// The `apiVersion` found.
        api_version: String,
    },
    /// Unknown or duplicate field, or a value of the wrong type.
    #[error("strict decoding error: {0}")]
    Strict(String),
}

/// Decodes a configuration file's bytes (YAML, or JSON when it starts with `{`), checking
/// `apiVersion`/`kind` and applying kube-apiserver's conversion (`master` → `controlplane`).
/// Does NOT validate; see [`EgressSelectorConfiguration::validate`].
pub fn decode(data: &[u8]) -> Result<EgressSelectorConfiguration, DecodeError> {
    let text = std::str::from_utf8(data)
        .map_err(|e| DecodeError::Syntax(format!("the file is not UTF-8: {e}")))?;
    let is_json = text.trim_start().starts_with('{');
    if !is_json && is_blank_yaml(text) {
        return Err(DecodeError::Empty);
    }
    let meta: TypeMeta = if is_json {
        serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?
    } else {
        yaml_serde::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?
    };
    if meta.kind.is_empty() {
        return Err(DecodeError::MissingKind);
    }
    if meta.api_version.is_empty() {
        return Err(DecodeError::MissingApiVersion);
    }
    if meta.kind != KIND || ApiVersion::parse(&meta.api_version).is_none() {
        return Err(DecodeError::NotRegistered {
            kind: meta.kind,
            api_version: meta.api_version,
        });
    }
    let mut config: EgressSelectorConfiguration = if is_json {
        serde_json::from_str(text).map_err(|e| DecodeError::Strict(e.to_string()))?
    } else {
        yaml_serde::from_str(text).map_err(|e| DecodeError::Strict(e.to_string()))?
    };
    for selection in &mut config.egress_selections {
        if selection.name == LEGACY_CONTROLPLANE_NAME {
            selection.name = "controlplane".to_string();
        }
    }
    Ok(config)
}

/// True when a YAML text has no content besides whitespace, comments and document markers.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

impl Connection {
    /// How this connection dials, in one line: `GRPC over unix socket /x`,
    /// `HTTPConnect over https://h:p`, `Direct`.
    pub fn describe(&self) -> String {
        let transport = self.transport.as_ref();
        let uds = transport.and_then(|t| t.uds.as_ref());
        let tcp = transport.and_then(|t| t.tcp.as_ref());
        match (uds, tcp) {
            (Some(uds), _) => format!("{} over unix socket {}", self.proxy_protocol, uds.uds_name),
            (None, Some(tcp)) => format!("{} over {}", self.proxy_protocol, tcp.url),
            (None, None) => self.proxy_protocol.clone(),
        }
    }
}

impl EgressSelectorConfiguration {
    /// The decoded API version; `None` only for a value built by hand with a bad `api_version`.
    pub fn version(&self) -> Option<ApiVersion> {
        ApiVersion::parse(&self.api_version)
    }

    /// Renders the configuration as YAML (for generated configs in tests, demos, manifests).
    pub fn to_yaml(&self) -> Result<String, DecodeError> {
        yaml_serde::to_string(self).map_err(|e| DecodeError::Syntax(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v1beta1_grpc_uds_example_decodes() {
        let yaml = r#"
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:            # list
- name: cluster              # "cluster" | "controlplane" | "etcd"
  connection:
    proxyProtocol: GRPC      # "GRPC" | "HTTPConnect" | "Direct"
    transport:
      uds:
        udsName: /etc/kubernetes/konnectivity-server/konnectivity-server.socket   # no unix:// prefix
      # tcp:
      #   url: https://127.0.0.1:8131      # only host:port is used
"#;
        let c = decode(yaml.as_bytes()).unwrap();
        assert_eq!(c.version(), Some(ApiVersion::V1Beta1));
        assert_eq!(c.egress_selections.len(), 1);
        let s = &c.egress_selections[0];
        assert_eq!(s.name, "cluster");
        assert_eq!(s.connection.proxy_protocol, "GRPC");
        assert_eq!(
            s.connection
                .transport
                .as_ref()
                .unwrap()
                .uds
                .as_ref()
                .unwrap()
                .uds_name,
            "/etc/kubernetes/konnectivity-server/konnectivity-server.socket"
        );
    }

    #[test]
    fn v1alpha1_http_connect_tcp_example_decodes_with_all_tls_fields() {
        let yaml = r#"
apiVersion: apiserver.k8s.io/v1alpha1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      tcp:
        url: https://konnectivity-server:9443
        tlsConfig:
          caBundle: /srv/kubernetes/ca/ca.crt
          clientCert: /etc/srv/client/tls.crt
          clientKey: /etc/srv/client/tls.key
          tlsServerName: proxy.example
- name: controlplane
  connection:
    proxyProtocol: Direct
- name: etcd
  connection:
    proxyProtocol: Direct
"#;
        let c = decode(yaml.as_bytes()).unwrap();
        assert_eq!(c.version(), Some(ApiVersion::V1Alpha1));
        let tcp = c.egress_selections[0]
            .connection
            .transport
            .as_ref()
            .unwrap()
            .tcp
            .as_ref()
            .unwrap();
        assert_eq!(tcp.url, "https://konnectivity-server:9443");
        let tls = tcp.tls_config.as_ref().unwrap();
        assert_eq!(tls.ca_bundle, "/srv/kubernetes/ca/ca.crt");
        assert_eq!(tls.client_cert, "/etc/srv/client/tls.crt");
        assert_eq!(tls.client_key, "/etc/srv/client/tls.key");
        assert_eq!(tls.tls_server_name, "proxy.example");
        assert_eq!(c.egress_selections[1].connection.transport, None);
        assert_eq!(c.egress_selections[2].name, "etcd");
    }

    #[test]
    fn json_file_decodes() {
        let json = r#"{"apiVersion":"apiserver.k8s.io/v1beta1","kind":"EgressSelectorConfiguration",
            "egressSelections":[{"name":"cluster","connection":{"proxyProtocol":"GRPC",
            "transport":{"uds":{"udsName":"/run/k.sock"}}}}]}"#;
        let c = decode(json.as_bytes()).unwrap();
        assert_eq!(c.egress_selections[0].connection.proxy_protocol, "GRPC");
    }

    #[test]
    fn master_is_converted_to_controlplane_but_only_lowercase() {
        let yaml = "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: master\n  connection: {proxyProtocol: Direct}\n- name: Master\n  connection: {proxyProtocol: Direct}\n";
        let c = decode(yaml.as_bytes()).unwrap();
        assert_eq!(c.egress_selections[0].name, "controlplane");
        assert_eq!(c.egress_selections[1].name, "Master");
    }

    #[test]
    fn v1_api_version_is_refused_naming_the_supported_versions() {
        let yaml = "apiVersion: apiserver.k8s.io/v1\nkind: EgressSelectorConfiguration\n";
        let err = decode(yaml.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "no kind \"EgressSelectorConfiguration\" is registered for version \"apiserver.k8s.io/v1\""
            ),
            "{text}"
        );
        assert!(text.contains("v1beta1"), "{text}");
    }

    #[test]
    fn wrong_kind_and_missing_type_meta_are_refused() {
        let err = decode(b"apiVersion: apiserver.k8s.io/v1beta1\nkind: TracingConfiguration\n")
            .unwrap_err();
        assert!(matches!(err, DecodeError::NotRegistered { .. }), "{err}");
        let err = decode(b"apiVersion: apiserver.k8s.io/v1beta1\n").unwrap_err();
        assert_eq!(err, DecodeError::MissingKind);
        let err = decode(b"kind: EgressSelectorConfiguration\n").unwrap_err();
        assert_eq!(err, DecodeError::MissingApiVersion);
        assert_eq!(decode(b"# nothing\n\n").unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn unknown_field_is_a_strict_decoding_error() {
        let yaml = "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /x\n        mode: 0600\n";
        let err = decode(yaml.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Strict(_)), "{err}");
        assert!(err.to_string().contains("mode"), "{err}");
    }

    #[test]
    fn field_names_are_case_sensitive_like_kube_apiserver() {
        let yaml = "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      TCP:\n        URL: https://a:1\n";
        let err = decode(yaml.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Strict(_)), "{err}");
    }

    #[test]
    fn explicit_nulls_decode_as_absent() {
        let yaml = "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: Direct\n    transport: null\n";
        let c = decode(yaml.as_bytes()).unwrap();
        assert_eq!(c.egress_selections[0].connection.transport, None);
    }

    #[test]
    fn yaml_rendering_round_trips() {
        let c = EgressSelectorConfiguration {
            api_version: ApiVersion::V1Beta1.as_str().to_string(),
            kind: KIND.to_string(),
            egress_selections: vec![EgressSelection {
                name: "cluster".into(),
                connection: Connection {
                    proxy_protocol: "GRPC".into(),
                    transport: Some(Transport {
                        tcp: None,
                        uds: Some(UdsTransport {
                            uds_name: "/run/k.sock".into(),
                        }),
                    }),
                },
            }],
        };
        let yaml = c.to_yaml().unwrap();
        assert!(yaml.contains("udsName: /run/k.sock"), "{yaml}");
        assert_eq!(decode(yaml.as_bytes()).unwrap(), c);
    }
}

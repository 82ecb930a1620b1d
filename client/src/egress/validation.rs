//! kube-apiserver's validation of an `EgressSelectorConfiguration`, with its exact messages.
//!
//! Mirrors `ValidateEgressSelectorConfiguration` (k8s.io/apiserver egressselector package):
//! first every selection's connection is checked, then the names (lower-cased) for duplicates
//! and support. Messages use the `field.Error` format of k8s apimachinery
//! (`<path>: <type>[: <value>][: <detail>]`) and the field path is always
//! `service.connection…`, without the selection's index or name, exactly as kube-apiserver
//! prints it.

use std::collections::HashSet;
use std::path::Path;

use super::schema::{
    Connection, EgressSelectorConfiguration, TcpTransport, TlsConfig, Transport, UdsTransport,
};

/// `proxyProtocol` value for gRPC single-use tunnels.
pub const PROTOCOL_GRPC: &str = "GRPC";
/// `proxyProtocol` value for HTTP CONNECT.
pub const PROTOCOL_HTTP_CONNECT: &str = "HTTPConnect";
/// `proxyProtocol` value for dialing without a proxy.
pub const PROTOCOL_DIRECT: &str = "Direct";

/// The selection names kube-apiserver accepts (after lower-casing), sorted as it lists them.
pub const VALID_SELECTION_NAMES: [&str; 3] = ["cluster", "controlplane", "etcd"];

/// The kind of a [`FieldError`], printed as apimachinery's `ErrorType` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorType {
    /// `Required value`.
    Required,
    /// `Invalid value`.
    Invalid,
    /// `Unsupported value`.
    NotSupported,
    /// `Duplicate value`.
    Duplicate,
}

impl FieldErrorType {
    fn as_str(self) -> &'static str {
        match self {
            FieldErrorType::Required => "Required value",
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::Duplicate => "Duplicate value",
        }
    }
}

/// One validation finding, formatted like apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `service.connection.uds`.
    pub field: String,
    /// What kind of problem.
    pub error_type: FieldErrorType,
    /// The offending value, already rendered the way Go renders it (quoted string or JSON);
    /// unused for [`FieldErrorType::Required`].
    pub value: String,
    /// The explanation.
    pub detail: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.error_type.as_str())?;
        if self.error_type != FieldErrorType::Required {
            write!(f, ": {}", self.value)?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Everything wrong with a configuration. Displays like apimachinery's aggregate: one error
/// as is, several as `[e1, e2, …]`, duplicate messages removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors {
    /// The findings in kube-apiserver's order, duplicates (same message) removed.
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.errors.len() == 1 {
            return write!(f, "{}", self.errors[0]);
        }
        f.write_str("[")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{e}")?;
        }
        f.write_str("]")
    }
}

impl std::error::Error for ValidationErrors {}

impl EgressSelectorConfiguration {
    /// Validates like kube-apiserver; `Err` carries every finding. File paths named in
    /// `tlsConfig` must exist (symlinks followed), as kube-apiserver checks at startup.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Vec::new();
        for selection in &self.egress_selections {
            let c = &selection.connection;
            match c.proxy_protocol.as_str() {
                PROTOCOL_DIRECT => validate_direct(c, &mut errs),
                PROTOCOL_HTTP_CONNECT => validate_http_connect(c.transport.as_ref(), &mut errs),
                PROTOCOL_GRPC => validate_grpc(c.transport.as_ref(), &mut errs),
                other => errs.push(not_supported(
                    "service.connection.protocol",
                    other,
                    &[PROTOCOL_DIRECT, PROTOCOL_HTTP_CONNECT, PROTOCOL_GRPC],
                )),
            }
        }
        let mut seen = HashSet::new();
        for (i, selection) in self.egress_selections.iter().enumerate() {
            let canonical = selection.name.to_lowercase();
            if !seen.insert(canonical.clone()) {
                errs.push(FieldError {
                    field: format!("service.connection[{i}]"),
                    error_type: FieldErrorType::Duplicate,
                    value: go_quote(&canonical),
                    detail: String::new(),
                });
                continue;
            }
            if !VALID_SELECTION_NAMES.contains(&canonical.as_str()) {
                errs.push(not_supported(
                    "service.connection",
                    &canonical,
                    &VALID_SELECTION_NAMES,
                ));
            }
        }
        let mut messages = HashSet::new();
        errs.retain(|e| messages.insert(e.to_string()));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors { errors: errs })
        }
    }
}

fn required(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: FieldErrorType::Required,
        value: String::new(),
        detail: detail.to_string(),
    }
}

fn invalid(field: &str, value: String, detail: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: FieldErrorType::Invalid,
        value,
        detail: detail.to_string(),
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
    FieldError {
        field: field.to_string(),
        error_type: FieldErrorType::NotSupported,
        value: go_quote(value),
        detail: format!("supported values: {}", list.join(", ")),
    }
}

fn validate_direct(c: &Connection, errs: &mut Vec<FieldError>) {
    if c.transport.is_some() {
        errs.push(invalid(
            "service.connection.transport",
            go_quote("direct"),
            "config must be absent for direct connect",
        ));
    }
}

fn validate_http_connect(transport: Option<&Transport>, errs: &mut Vec<FieldError>) {
    let Some(t) = transport else {
        errs.push(required(
            "service.connection.transport",
            "transport must be set for HTTPConnect",
        ));
        return;
    };
    match (&t.tcp, &t.uds) {
        (Some(tcp), Some(_)) => errs.push(invalid(
            "service.connection.tcp",
            go_json_tcp(tcp),
            "TCP and UDS cannot both be set",
        )),
        (None, None) => errs.push(required(
            "service.connection.tcp",
            "One of TCP or UDS must be set",
        )),
        (Some(tcp), None) => validate_tcp(tcp, errs),
        (None, Some(uds)) => validate_uds(uds, errs),
    }
}

fn validate_grpc(transport: Option<&Transport>, errs: &mut Vec<FieldError>) {
    let Some(t) = transport else {
        errs.push(required(
            "service.connection.transport",
            "transport must be set for GRPC",
        ));
        return;
    };
    match &t.uds {
        Some(uds) => validate_uds(uds, errs),
        None => errs.push(required(
            "service.connection.uds",
            "UDS must be set with GRPC",
        )),
    }
}

fn validate_uds(uds: &UdsTransport, errs: &mut Vec<FieldError>) {
    if uds.uds_name.is_empty() {
        errs.push(invalid(
            "service.connection.udsName",
            go_quote("nil"),
            "must be present for UDS connections",
        ));
    }
}

fn validate_tcp(tcp: &TcpTransport, errs: &mut Vec<FieldError>) {
    if tcp.url.starts_with("http://") {
        if tcp.tls_config.is_some() {
            errs.push(invalid(
                "service.connection.tlsConfig",
                go_quote("nil"),
                "config must not be present when using HTTP",
            ));
        }
    } else if tcp.url.starts_with("https://") {
        validate_tls(tcp.tls_config.as_ref(), errs);
    } else {
        errs.push(invalid(
            "service.connection.url",
            go_quote(&tcp.url),
            "supported connection protocols are http:// and https://",
        ));
    }
}

fn validate_tls(tls: Option<&TlsConfig>, errs: &mut Vec<FieldError>) {
    let Some(tls) = tls else {
        errs.push(required(
            "service.connection.tlsConfig",
            "TLSConfig must be present when using HTTPS",
        ));
        return;
    };
    if !tls.ca_bundle.is_empty() && !exists(&tls.ca_bundle) {
        errs.push(invalid(
            "service.connection.tlsConfig.caBundle",
            go_quote(&tls.ca_bundle),
            "TLS config ca bundle does not exist",
        ));
    }
    if tls.client_cert.is_empty() {
        errs.push(invalid(
            "service.connection.tlsConfig.clientCert",
            go_quote("nil"),
            "Using TLS requires clientCert",
        ));
    } else if !exists(&tls.client_cert) {
        errs.push(invalid(
            "service.connection.tlsConfig.clientCert",
            go_quote(&tls.client_cert),
            "TLS client cert does not exist",
        ));
    }
    if tls.client_key.is_empty() {
        // "requires requires" is kube-apiserver's wording, reproduced verbatim.
        errs.push(invalid(
            "service.connection.tlsConfig.clientKey",
            go_quote("nil"),
            "Using TLS requires requires clientKey",
        ));
    } else if !exists(&tls.client_key) {
        errs.push(invalid(
            "service.connection.tlsConfig.clientKey",
            go_quote(&tls.client_key),
            "TLS client key does not exist",
        ));
    }
}

/// `path.Exists(path.CheckFollowSymlink, p)`: stat succeeds.
fn exists(path: &str) -> bool {
    std::fs::metadata(Path::new(path)).is_ok()
}

/// Go's `%q` of a string (strconv.Quote): double quotes, backslash escapes for `"`, `\` and
/// control characters; printable Unicode kept as is.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `encoding/json` of a string: JSON escapes plus HTML-safe `\u003c`, `\u003e`, `\u0026`
/// and the line/paragraph separators.
fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The TCP transport as kube-apiserver prints it in the "both set" error: `encoding/json` of
/// its internal (untagged) type, so with Go field names.
fn go_json_tcp(tcp: &TcpTransport) -> String {
    let tls = match &tcp.tls_config {
        None => "null".to_string(),
        Some(t) => format!(
            "{{\"CABundle\":{},\"ClientKey\":{},\"ClientCert\":{},\"TLSServerName\":{}}}",
            go_json_string(&t.ca_bundle),
            go_json_string(&t.client_key),
            go_json_string(&t.client_cert),
            go_json_string(&t.tls_server_name),
        ),
    };
    format!(
        "{{\"URL\":{},\"TLSConfig\":{}}}",
        go_json_string(&tcp.url),
        tls
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::schema::decode;
    use super::*;

    const HEAD: &str = "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n";

    /// Decodes `HEAD` + `selections` and returns the validation message (or "" when valid).
    fn check(selections: &str) -> String {
        let config = decode(format!("{HEAD}{selections}").as_bytes()).unwrap();
        match config.validate() {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    fn grpc_uds(name: &str) -> String {
        format!("- name: {name}\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/k.sock\n")
    }

    #[test]
    fn valid_grpc_uds_http_connect_and_direct_pass() {
        let files = tempfile::tempdir().unwrap();
        let cert = files.path().join("c.crt");
        std::fs::write(&cert, "x").unwrap();
        let tcp = format!(
            "- name: controlplane\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n        tlsConfig:\n          caBundle: {c}\n          clientCert: {c}\n          clientKey: {c}\n",
            c = cert.display()
        );
        let direct = "- name: etcd\n  connection:\n    proxyProtocol: Direct\n";
        assert_eq!(check(&format!("{}{tcp}{direct}", grpc_uds("cluster"))), "");
    }

    #[test]
    fn grpc_with_tcp_transport_requires_uds() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n");
        assert_eq!(
            msg,
            "service.connection.uds: Required value: UDS must be set with GRPC"
        );
    }

    #[test]
    fn grpc_without_transport_is_required() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: GRPC\n");
        assert_eq!(
            msg,
            "service.connection.transport: Required value: transport must be set for GRPC"
        );
    }

    #[test]
    fn http_connect_without_transport_is_required() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n");
        assert_eq!(
            msg,
            "service.connection.transport: Required value: transport must be set for HTTPConnect"
        );
    }

    #[test]
    fn http_connect_with_tcp_and_uds_prints_the_tcp_as_go_json() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: /run/k.sock\n      tcp:\n        url: https://a<b:1\n");
        assert_eq!(
            msg,
            r#"service.connection.tcp: Invalid value: {"URL":"https://a\u003cb:1","TLSConfig":null}: TCP and UDS cannot both be set"#
        );
    }

    #[test]
    fn http_connect_with_neither_tcp_nor_uds() {
        let msg = check(
            "- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport: {}\n",
        );
        assert_eq!(
            msg,
            "service.connection.tcp: Required value: One of TCP or UDS must be set"
        );
    }

    #[test]
    fn direct_with_transport_is_invalid() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: Direct\n    transport:\n      uds:\n        udsName: /x\n");
        assert_eq!(
            msg,
            r#"service.connection.transport: Invalid value: "direct": config must be absent for direct connect"#
        );
    }

    #[test]
    fn empty_uds_name_is_invalid() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: \"\"\n");
        assert_eq!(
            msg,
            r#"service.connection.udsName: Invalid value: "nil": must be present for UDS connections"#
        );
    }

    #[test]
    fn url_scheme_must_be_http_or_https() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: grpc://127.0.0.1:8131\n");
        assert_eq!(
            msg,
            r#"service.connection.url: Invalid value: "grpc://127.0.0.1:8131": supported connection protocols are http:// and https://"#
        );
    }

    #[test]
    fn http_url_with_tls_config_is_invalid() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: http://127.0.0.1:8131\n        tlsConfig: {}\n");
        assert_eq!(
            msg,
            r#"service.connection.tlsConfig: Invalid value: "nil": config must not be present when using HTTP"#
        );
    }

    #[test]
    fn https_url_without_tls_config_is_required() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n");
        assert_eq!(
            msg,
            "service.connection.tlsConfig: Required value: TLSConfig must be present when using HTTPS"
        );
    }

    #[test]
    fn tls_files_missing_or_empty_give_the_kube_apiserver_messages() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n        tlsConfig:\n          caBundle: /nonexistent/ca.crt\n");
        assert_eq!(
            msg,
            concat!(
                r#"[service.connection.tlsConfig.caBundle: Invalid value: "/nonexistent/ca.crt": TLS config ca bundle does not exist, "#,
                r#"service.connection.tlsConfig.clientCert: Invalid value: "nil": Using TLS requires clientCert, "#,
                r#"service.connection.tlsConfig.clientKey: Invalid value: "nil": Using TLS requires requires clientKey]"#
            )
        );
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n        tlsConfig:\n          clientCert: /nonexistent/c.crt\n          clientKey: /nonexistent/c.key\n");
        assert_eq!(
            msg,
            concat!(
                r#"[service.connection.tlsConfig.clientCert: Invalid value: "/nonexistent/c.crt": TLS client cert does not exist, "#,
                r#"service.connection.tlsConfig.clientKey: Invalid value: "/nonexistent/c.key": TLS client key does not exist]"#
            )
        );
    }

    #[test]
    fn unknown_or_empty_protocol_is_unsupported() {
        let msg = check("- name: cluster\n  connection:\n    proxyProtocol: grpc\n");
        assert_eq!(
            msg,
            r#"service.connection.protocol: Unsupported value: "grpc": supported values: "Direct", "HTTPConnect", "GRPC""#
        );
        let msg = check("- name: cluster\n  connection: {}\n");
        assert_eq!(
            msg,
            r#"service.connection.protocol: Unsupported value: "": supported values: "Direct", "HTTPConnect", "GRPC""#
        );
    }

    #[test]
    fn duplicate_names_compare_case_insensitively_and_report_the_index() {
        let msg = check(&format!("{}{}", grpc_uds("cluster"), grpc_uds("Cluster")));
        assert_eq!(msg, r#"service.connection[1]: Duplicate value: "cluster""#);
    }

    #[test]
    fn unknown_name_is_unsupported_and_reported_lower_cased() {
        let msg = check(&grpc_uds("Nodes"));
        assert_eq!(
            msg,
            r#"service.connection: Unsupported value: "nodes": supported values: "cluster", "controlplane", "etcd""#
        );
        // Only the exact lower-case `master` is converted by decoding.
        let msg = check(&grpc_uds("MASTER"));
        assert!(msg.contains(r#"Unsupported value: "master""#), "{msg}");
        assert_eq!(check(&grpc_uds("master")), "");
    }

    #[test]
    fn connection_errors_come_before_name_errors_and_duplicates_are_merged() {
        let bad = "- name: bogus\n  connection:\n    proxyProtocol: GRPC\n- name: etcd\n  connection:\n    proxyProtocol: GRPC\n";
        assert_eq!(
            check(bad),
            concat!(
                "[service.connection.transport: Required value: transport must be set for GRPC, ",
                r#"service.connection: Unsupported value: "bogus": supported values: "cluster", "controlplane", "etcd"]"#
            )
        );
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\x01é""#);
    }
}

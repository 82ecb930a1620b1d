//! Kubelet URLs: building them (client side, with the parameter names kube-apiserver sends to
//! kubelets, not the pod-subresource names clients send to kube-apiserver) and the small
//! parsers the stand-in shares with them.

use std::fmt::Write as _;

/// Longest namespace, pod or container name accepted (a DNS subdomain is at most 253).
/// Cost: none for real names; it only bounds what a hostile request can make us log.
pub const MAX_NAME_LEN: usize = 253;

/// Most ports one port-forward request may carry (kube-rs's limit; each port costs two
/// channels and a TCP connection, and `2 * 128 - 1 = 255` is the last channel number).
pub const MAX_PORTS: usize = 128;

/// A namespace, pod, container or uid that cannot be put in a kubelet path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    /// Which name (`namespace`, `pod`, `container`, `uid`).
    pub what: &'static str,
    /// The rejected value.
    pub value: String,
    /// Why.
    pub reason: &'static str,
}

/// Checks that `value` is a non-empty Kubernetes-style name: ASCII letters, digits, `.`, `-`,
/// `_`, at most [`MAX_NAME_LEN`] bytes. Such names never need escaping in a path.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            what,
            value: value.chars().take(MAX_NAME_LEN).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > MAX_NAME_LEN {
        return fail("longer than 253 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return fail("only letters, digits, '.', '-' and '_' are allowed");
    }
    if value == "." || value == ".." {
        return fail("'.' and '..' are not names");
    }
    Ok(())
}

/// `GET /containerLogs` options, mapped to the kubelet's query parameters exactly as
/// kube-apiserver maps `pods/log` (a flag is only sent when set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines (`follow=true`).
    pub follow: bool,
    /// Only the last N lines (`tailLines=N`).
    pub tail_lines: Option<i64>,
    /// Prefix each line with its RFC3339Nano timestamp (`timestamps=true`).
    pub timestamps: bool,
    /// Stop after this many bytes (`limitBytes=N`).
    pub limit_bytes: Option<i64>,
    /// Only lines newer than this many seconds (`sinceSeconds=N`).
    pub since_seconds: Option<i64>,
    /// The previous terminated instance of the container (`previous=true`).
    pub previous: bool,
}

/// Exec options. Output is always requested: stdout, plus stderr unless `tty` (a terminal
/// merges the two, and the kubelet drops stderr with a tty), as kubectl does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Attach the caller's stdin (`input=1`).
    pub stdin: bool,
    /// Ask for a terminal (`tty=1`).
    pub tty: bool,
}

impl ExecOptions {
    /// Whether stderr is requested as its own channel.
    pub fn stderr(&self) -> bool {
        !self.tty
    }
}

/// Builds `/containerLogs/{ns}/{pod}/{container}?…`.
pub fn container_logs_path(
    namespace: &str,
    pod: &str,
    container: &str,
    opts: &LogOptions,
) -> Result<String, InvalidName> {
    validate_name("namespace", namespace)?;
    validate_name("pod", pod)?;
    validate_name("container", container)?;
    let mut q = form_urlencoded::Serializer::new(String::new());
    if opts.follow {
        q.append_pair("follow", "true");
    }
    if let Some(n) = opts.limit_bytes {
        q.append_pair("limitBytes", &n.to_string());
    }
    if opts.previous {
        q.append_pair("previous", "true");
    }
    if let Some(n) = opts.since_seconds {
        q.append_pair("sinceSeconds", &n.to_string());
    }
    if let Some(n) = opts.tail_lines {
        q.append_pair("tailLines", &n.to_string());
    }
    if opts.timestamps {
        q.append_pair("timestamps", "true");
    }
    Ok(with_query(
        format!("/containerLogs/{namespace}/{pod}/{container}"),
        q.finish(),
    ))
}

/// Builds `/exec/{ns}/{pod}/{container}?command=…&error=1&input=1&output=1&tty=1` (keys in
/// Go's sorted order, `command` repeated in argv order).
pub fn exec_path(
    namespace: &str,
    pod: &str,
    container: &str,
    command: &[String],
    opts: &ExecOptions,
) -> Result<String, InvalidName> {
    validate_name("namespace", namespace)?;
    validate_name("pod", pod)?;
    validate_name("container", container)?;
    if command.is_empty() {
        return Err(InvalidName {
            what: "command",
            value: String::new(),
            reason: "at least the program to run is required",
        });
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    for arg in command {
        q.append_pair("command", arg);
    }
    append_streams(&mut q, opts);
    Ok(with_query(
        format!("/exec/{namespace}/{pod}/{container}"),
        q.finish(),
    ))
}

/// Builds `/attach/{ns}/{pod}/{container}?error=1&input=1&output=1&tty=1`.
pub fn attach_path(
    namespace: &str,
    pod: &str,
    container: &str,
    opts: &ExecOptions,
) -> Result<String, InvalidName> {
    validate_name("namespace", namespace)?;
    validate_name("pod", pod)?;
    validate_name("container", container)?;
    let mut q = form_urlencoded::Serializer::new(String::new());
    append_streams(&mut q, opts);
    Ok(with_query(
        format!("/attach/{namespace}/{pod}/{container}"),
        q.finish(),
    ))
}

/// Builds `/portForward/{ns}/{pod}?port=p1,p2` (one comma-joined value, as kube-apiserver).
pub fn port_forward_path(namespace: &str, pod: &str, ports: &[u16]) -> Result<String, InvalidName> {
    validate_name("namespace", namespace)?;
    validate_name("pod", pod)?;
    if ports.is_empty() || ports.len() > MAX_PORTS || ports.contains(&0) {
        return Err(InvalidName {
            what: "port list",
            value: format!("{ports:?}"),
            reason: "between 1 and 128 ports, each 1-65535",
        });
    }
    let mut joined = String::new();
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            joined.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(joined, "{p}");
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("port", &joined)
        .finish();
    Ok(with_query(format!("/portForward/{namespace}/{pod}"), query))
}

/// The stream flags in Go's sorted key order: `error`, `input`, `output`, `tty`.
fn append_streams(q: &mut form_urlencoded::Serializer<'_, String>, opts: &ExecOptions) {
    if opts.stderr() {
        q.append_pair("error", "1");
    }
    if opts.stdin {
        q.append_pair("input", "1");
    }
    q.append_pair("output", "1");
    if opts.tty {
        q.append_pair("tty", "1");
    }
}

fn with_query(path: String, query: String) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

/// The host part of a `host:port` authority, without IPv6 brackets: what the kubelet
/// certificate is verified against. A bare host (no port) is returned unchanged.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
        return authority;
    }
    match authority.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => authority,
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Go's `strconv.ParseBool`: what the kubelet's query decoder accepts for boolean fields.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses the port-forward `port` parameter values (repeatable, each comma-separated) with the
/// CRI server's error texts.
pub fn parse_ports<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    let mut seen_any = false;
    for value in values {
        seen_any = true;
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for part in value.split(',') {
            let port: u16 = part
                .trim()
                .parse()
                .map_err(|e| format!("unable to parse {part:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {part:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if !seen_any {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "{} ports requested; at most {MAX_PORTS} per connection",
            ports.len()
        ));
    }
    Ok(ports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn logs_path_sends_only_set_flags_in_sorted_order() {
        let p = container_logs_path("default", "web", "nginx", &LogOptions::default()).unwrap();
        assert_eq!(p, "/containerLogs/default/web/nginx");
        let opts = LogOptions {
            follow: true,
            tail_lines: Some(10),
            timestamps: true,
            limit_bytes: Some(100),
            ..LogOptions::default()
        };
        let p = container_logs_path("default", "web", "nginx", &opts).unwrap();
        assert_eq!(
            p,
            "/containerLogs/default/web/nginx?follow=true&limitBytes=100&tailLines=10&timestamps=true"
        );
    }

    #[test]
    fn exec_path_uses_kubelet_parameter_names() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "echo a b&c".to_string()];
        let p = exec_path(
            "ns",
            "p",
            "c",
            &cmd,
            &ExecOptions {
                stdin: true,
                tty: false,
            },
        )
        .unwrap();
        assert_eq!(
            p,
            "/exec/ns/p/c?command=sh&command=-c&command=echo+a+b%26c&error=1&input=1&output=1"
        );
        let p = exec_path(
            "ns",
            "p",
            "c",
            &cmd[..1],
            &ExecOptions {
                stdin: false,
                tty: true,
            },
        )
        .unwrap();
        assert_eq!(p, "/exec/ns/p/c?command=sh&output=1&tty=1");
    }

    #[test]
    fn exec_path_requires_a_command() {
        assert!(exec_path("ns", "p", "c", &[], &ExecOptions::default()).is_err());
    }

    #[test]
    fn port_forward_path_joins_ports_with_commas() {
        assert_eq!(
            port_forward_path("ns", "p", &[80, 443]).unwrap(),
            "/portForward/ns/p?port=80%2C443"
        );
        assert!(port_forward_path("ns", "p", &[]).is_err());
        assert!(port_forward_path("ns", "p", &[0]).is_err());
    }

    #[test]
    fn names_with_path_characters_are_rejected() {
        assert!(validate_name("pod", "a/b").is_err());
        assert!(validate_name("pod", "a?b").is_err());
        assert!(validate_name("pod", "..").is_err());
        assert!(validate_name("pod", "").is_err());
        assert!(validate_name("pod", &"a".repeat(254)).is_err());
        assert!(validate_name("pod", "web-0.x_y").is_ok());
        assert!(container_logs_path("a/b", "p", "c", &LogOptions::default()).is_err());
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("10.0.0.1:10250"), "10.0.0.1");
        assert_eq!(host_of("node-1:10250"), "node-1");
        assert_eq!(host_of("[::1]:10250"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("node-1"), "node-1");
    }

    #[test]
    fn go_bool_accepts_strconv_spellings_only() {
        assert_eq!(parse_go_bool("true"), Some(true));
        assert_eq!(parse_go_bool("1"), Some(true));
        assert_eq!(parse_go_bool("F"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn ports_parse_repeated_and_comma_separated_with_cri_errors() {
        assert_eq!(
            parse_ports(["80,443", "8080"]).unwrap(),
            vec![80, 443, 8080]
        );
        assert_eq!(
            parse_ports(Vec::<&str>::new()).unwrap_err(),
            "query parameter \"port\" is required"
        );
        assert_eq!(
            parse_ports([""]).unwrap_err(),
            "query parameter \"port\" cannot be empty"
        );
        assert!(parse_ports(["http"])
            .unwrap_err()
            .starts_with("unable to parse \"http\" as a port"));
        assert!(parse_ports(["70000"])
            .unwrap_err()
            .starts_with("unable to parse"));
        assert_eq!(parse_ports(["0"]).unwrap_err(), "port \"0\" must be > 0");
        let many = vec!["1"; MAX_PORTS + 1];
        assert!(parse_ports(many).is_err());
    }
}

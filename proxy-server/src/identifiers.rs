//! The `agentidentifiers` header: how an agent says which destinations it is the route for.
//!
//! URL query encoding (`ipv4=1.2.3.4&host=node1&default-route=true`), parsed leniently as
//! upstream's server does: unknown keys are ignored (fail-open), `default-route` uses its first
//! value with Go's `ParseBool` rules.

/// Identifiers an agent announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentIdentifiers {
    /// `ipv4`, `ipv6` and `host` values: the dial hosts this agent serves under `destHost`.
    pub hosts: Vec<String>,
    /// `cidr` values (parsed and kept, not used for routing, as upstream).
    pub cidrs: Vec<String>,
    /// `default-route=true`: eligible for the `defaultRoute` strategy.
    pub default_route: bool,
}

impl AgentIdentifiers {
    /// Parses the raw header value.
    pub fn parse(raw: &str) -> Self {
        let mut ids = AgentIdentifiers::default();
        let mut default_route_seen = false;
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            match key.as_ref() {
                "ipv4" | "ipv6" | "host" => ids.hosts.push(value.into_owned()),
                "cidr" => ids.cidrs.push(value.into_owned()),
                "default-route" if !default_route_seen => {
                    default_route_seen = true;
                    ids.default_route = parse_go_bool(&value).unwrap_or(false);
                }
                _ => {}
            }
        }
        ids
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The host part of a dial address (`host:port`, `[v6]:port`, or a bare host), as upstream's
/// `destHost` strategy compares it: port removed, IPv6 brackets stripped.
pub fn dial_host(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
    }
    match address.rfind(':') {
        // A bare IPv6 address has several colons and no brackets: keep it whole.
        Some(i) if address[..i].find(':').is_none() => &address[..i],
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_ignores_unknown_ones() {
        let ids = AgentIdentifiers::parse(
            "ipv4=10.0.0.1&ipv6=fd00::1&host=node1&cidr=10.0.0.0/8&default-route=true&zone=a",
        );
        assert_eq!(ids.hosts, ["10.0.0.1", "fd00::1", "node1"]);
        assert_eq!(ids.cidrs, ["10.0.0.0/8"]);
        assert!(ids.default_route);
    }

    #[test]
    fn default_route_uses_first_value_and_go_bool_rules() {
        assert!(!AgentIdentifiers::parse("default-route=false&default-route=true").default_route);
        assert!(AgentIdentifiers::parse("default-route=T").default_route);
        assert!(!AgentIdentifiers::parse("default-route=yes").default_route);
        assert_eq!(AgentIdentifiers::parse(""), AgentIdentifiers::default());
    }

    #[test]
    fn dial_host_strips_port_and_brackets() {
        assert_eq!(dial_host("10.0.0.1:10250"), "10.0.0.1");
        assert_eq!(dial_host("[fd00::1]:10250"), "fd00::1");
        assert_eq!(dial_host("node1:443"), "node1");
        assert_eq!(dial_host("node1"), "node1");
        assert_eq!(dial_host("fd00::1"), "fd00::1");
    }
}

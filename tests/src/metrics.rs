//! Reading values out of Prometheus text exposition (what `/metrics` returns).

use std::collections::BTreeMap;

/// One parsed sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`, … suffix as exposed).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        // Find the closing quote, honouring backslash escapes.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                other => value.push(other),
            }
        }
        let end = end?;
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

/// Every sample in `text`; comment lines and unparsable lines are skipped.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = match line.find('}') {
                Some(close) => (&line[..=close], line[close + 1..].trim()),
                None => line.split_once(' ')?,
            };
            // A timestamp may follow the value.
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}')?)?),
                None => (series, BTreeMap::new()),
            };
            Some(Sample {
                name: name.trim().to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// The value of the sample called `name` whose label set is exactly `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The `# HELP` text of metric family `name`.
pub fn help<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("# HELP ")?;
        let (n, help) = rest.split_once(' ')?;
        (n == name).then_some(help)
    })
}

/// The `# TYPE` of metric family `name`.
pub fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("# TYPE ")?;
        let (n, ty) = rest.split_once(' ')?;
        (n == name).then_some(ty.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP konnectivity_network_proxy_agent_open_server_connections Current number of open server connections.\n\
# TYPE konnectivity_network_proxy_agent_open_server_connections gauge\n\
konnectivity_network_proxy_agent_open_server_connections 1\n\
# HELP konnectivity_network_proxy_agent_endpoint_dial_failure_total Number of failures dialing the remote endpoint, by reason (example: timeout).\n\
# TYPE konnectivity_network_proxy_agent_endpoint_dial_failure_total counter\n\
konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"unknown\"} 2\n\
konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"timeout\"} 0 1700000000\n\
odd{a=\"x\\\"y\",b=\"2\"} 3.5\n";

    #[test]
    fn value_matches_name_and_exact_label_set() {
        let name = "konnectivity_network_proxy_agent_endpoint_dial_failure_total";
        assert_eq!(value(TEXT, name, &[("reason", "unknown")]), Some(2.0));
        assert_eq!(value(TEXT, name, &[("reason", "timeout")]), Some(0.0));
        assert_eq!(value(TEXT, name, &[]), None);
        assert_eq!(
            value(
                TEXT,
                "konnectivity_network_proxy_agent_open_server_connections",
                &[]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn escaped_quotes_in_label_values_are_parsed() {
        assert_eq!(value(TEXT, "odd", &[("a", "x\"y"), ("b", "2")]), Some(3.5));
    }

    #[test]
    fn help_and_type_are_found_by_family_name() {
        let name = "konnectivity_network_proxy_agent_open_server_connections";
        assert_eq!(
            help(TEXT, name),
            Some("Current number of open server connections.")
        );
        assert_eq!(type_of(TEXT, name), Some("gauge"));
        assert_eq!(help(TEXT, "missing"), None);
    }
}

//! Go's `url.ParseQuery`, used for `--agent-identifiers` (agent, at start-up) and the
//! `agentidentifiers` header (server), so both sides accept and reject exactly what upstream does.

/// A query string Go would reject; `Display` is Go's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A `;` inside a pair (Go ≥ 1.17 no longer treats it as a separator).
    #[error("invalid semicolon separator in query")]
    Semicolon,
    /// A `%` not followed by two hex digits; holds the offending text (at most 3 bytes).
    #[error("invalid URL escape {0:?}")]
    Escape(String),
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; other bytes verbatim. Invalid UTF-8
/// produced by escapes is replaced (Go keeps raw bytes; nothing here compares such values).
pub fn query_unescape(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (Some(hi), Some(lo)) => {
                        // Two hex digits: at most 0xFF, so the narrowing is exact.
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(b.len());
                        let bad = String::from_utf8_lossy(&b[i..end]).into_owned();
                        return Err(QueryError::Escape(bad));
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `url.ParseQuery`: `&`-separated `key=value` pairs (a missing `=` gives an empty value),
/// empty pairs skipped, pairs returned in input order. Go keeps parsing after a bad pair and
/// returns the first error; callers here only need to know that it failed, so the first error
/// is returned.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut pairs = Vec::new();
    let mut first_err: Option<QueryError> = None;
    for pair in query.split('&') {
        if pair.contains(';') {
            first_err.get_or_insert(QueryError::Semicolon);
            continue;
        }
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (query_unescape(key), query_unescape(value)) {
            (Ok(k), Ok(v)) => pairs.push((k, v)),
            (Err(e), _) | (_, Err(e)) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(pairs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_pairs_in_order_with_repeats() {
        assert_eq!(
            parse_query("ipv4=1.2.3.4&ipv4=5.6.7.8&host=node1&default-route=true"),
            Ok(pairs(&[
                ("ipv4", "1.2.3.4"),
                ("ipv4", "5.6.7.8"),
                ("host", "node1"),
                ("default-route", "true"),
            ]))
        );
        assert_eq!(parse_query(""), Ok(vec![]));
        assert_eq!(parse_query("&&host&"), Ok(pairs(&[("host", "")])));
        assert_eq!(
            parse_query("cidr=10.0.0.0%2F8&x=a+b"),
            Ok(pairs(&[("cidr", "10.0.0.0/8"), ("x", "a b")]))
        );
    }

    #[test]
    fn rejects_semicolons_and_bad_escapes_like_go() {
        assert_eq!(
            parse_query("host=a;ipv4=1.2.3.4"),
            Err(QueryError::Semicolon)
        );
        let e = parse_query("host=%zz").expect_err("bad escape");
        assert_eq!(e.to_string(), r#"invalid URL escape "%zz""#);
        assert_eq!(
            parse_query("host=%4"),
            Err(QueryError::Escape("%4".to_string()))
        );
    }
}

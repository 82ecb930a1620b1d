//! Go `time.Duration` syntax: parsing exactly like `time.ParseDuration` and printing exactly like
//! `Duration.String()`, so flags such as `--sync-interval=100ms` or `--keepalive-time=1h0m0s`
//! (the form upstream tooling writes back) behave as they do for the Go binaries.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Nanoseconds per unit, as in Go's `unitMap`. Both micro signs Go accepts are listed.
const UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{00b5}s", 1_000), // U+00B5 MICRO SIGN, the one Go prints
    ("\u{03bc}s", 1_000), // U+03BC GREEK SMALL LETTER MU
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

/// 2^63: the magnitude bound Go checks against while accumulating.
const MAGNITUDE_LIMIT: u64 = 1 << 63;

/// A signed duration in nanoseconds with Go's text form.
///
/// Signed because Go durations are (`-1s` parses); flags that need a non-negative value convert
/// with [`GoDuration::to_std`] and report the flag name when that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(i64);

/// Why a duration string was rejected; `Display` matches Go's error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Malformed, empty, or out of the ±292-year range.
    #[error("time: invalid duration {}", go_quote(.input))]
    Invalid {
        /// The rejected text.
        input: String,
    },
    /// A number without a unit, e.g. `"10"` (only `"0"` may omit it).
    #[error("time: missing unit in duration {}", go_quote(.input))]
    MissingUnit {
        /// The rejected text.
        input: String,
    },
    /// A unit Go does not know, e.g. `"10d"`.
    #[error("time: unknown unit {} in duration {}", go_quote(.unit), go_quote(.input))]
    UnknownUnit {
        /// The unknown unit.
        unit: String,
        /// The rejected text.
        input: String,
    },
}

impl GoDuration {
    /// The zero duration (`0s`).
    pub const ZERO: GoDuration = GoDuration(0);

    /// A duration of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: i64) -> Self {
        GoDuration(nanos)
    }

    /// A duration of `secs` seconds, saturating at Go's range.
    pub const fn from_secs(secs: i64) -> Self {
        GoDuration(secs.saturating_mul(1_000_000_000))
    }

    /// A duration of `millis` milliseconds, saturating at Go's range.
    pub const fn from_millis(millis: i64) -> Self {
        GoDuration(millis.saturating_mul(1_000_000))
    }

    /// The signed number of nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// True for durations below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The std equivalent, or `None` when negative (std durations are unsigned).
    pub fn to_std(self) -> Option<Duration> {
        u64::try_from(self.0).ok().map(Duration::from_nanos)
    }

    /// Converts a std duration, or `None` when it exceeds Go's ~292-year range.
    pub fn from_std(d: Duration) -> Option<Self> {
        i64::try_from(d.as_nanos()).ok().map(GoDuration)
    }

    /// Parses like Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0`.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let invalid = || DurationError::Invalid {
            input: input.to_string(),
        };
        let mut s = input;
        let mut neg = false;
        if let Some(first) = s.as_bytes().first() {
            if *first == b'-' || *first == b'+' {
                neg = *first == b'-';
                s = &s[1..];
            }
        }
        if s == "0" {
            return Ok(GoDuration(0));
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            let bytes = s.as_bytes();
            // The next character must be [0-9.]
            if !(bytes[0] == b'.' || bytes[0].is_ascii_digit()) {
                return Err(invalid());
            }
            // Consume [0-9]*
            let (whole, rest) = leading_int(s).ok_or_else(invalid)?;
            let pre = rest.len() != s.len();
            s = rest;
            // Consume (\.[0-9]*)?
            let mut frac: u64 = 0;
            let mut scale: f64 = 1.0;
            let mut post = false;
            if s.as_bytes().first() == Some(&b'.') {
                s = &s[1..];
                let before = s.len();
                let (f, sc, rest) = leading_fraction(s);
                frac = f;
                scale = sc;
                s = rest;
                post = s.len() != before;
            }
            if !pre && !post {
                // No digits at all, e.g. ".s" or "-.s".
                return Err(invalid());
            }
            // Consume the unit: everything up to the next '.' or digit (both ASCII, so this is
            // always a char boundary).
            let unit_len = s
                .bytes()
                .position(|c| c == b'.' || c.is_ascii_digit())
                .unwrap_or(s.len());
            if unit_len == 0 {
                return Err(DurationError::MissingUnit {
                    input: input.to_string(),
                });
            }
            let (unit, rest) = s.split_at(unit_len);
            s = rest;
            let Some(&(_, per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    input: input.to_string(),
                });
            };
            if whole > MAGNITUDE_LIMIT / per_unit {
                return Err(invalid());
            }
            let mut value = whole * per_unit;
            if frac > 0 {
                // Go uses float64 here to stay nanosecond-accurate for fractions of hours; the
                // product is at most 3.6e12 so the cast cannot overflow.
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let extra = (frac as f64 * (per_unit as f64 / scale)) as u64;
                value = value.checked_add(extra).ok_or_else(invalid)?;
                if value > MAGNITUDE_LIMIT {
                    return Err(invalid());
                }
            }
            total = total.checked_add(value).ok_or_else(invalid)?;
            if total > MAGNITUDE_LIMIT {
                return Err(invalid());
            }
        }
        if neg {
            // total <= 2^63, so -(total) fits in i64 (i64::MIN when equal).
            return Ok(GoDuration(0i64.wrapping_sub_unsigned(total)));
        }
        i64::try_from(total).map(GoDuration).map_err(|_| invalid())
    }
}

/// Consumes a leading `[0-9]*`; `None` on overflow past 2^63 (Go's `errLeadingInt`).
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let mut x: u64 = 0;
    let mut i = 0;
    for &c in s.as_bytes() {
        if !c.is_ascii_digit() {
            break;
        }
        if x > MAGNITUDE_LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > MAGNITUDE_LIMIT {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Consumes a leading `[0-9]*` after a decimal point; stops gaining precision on overflow
/// instead of failing, as Go does.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let mut x: u64 = 0;
    let mut scale = 1.0;
    let mut overflow = false;
    let mut i = 0;
    for &c in s.as_bytes() {
        if !c.is_ascii_digit() {
            break;
        }
        i += 1;
        if overflow {
            continue;
        }
        if x > (MAGNITUDE_LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > MAGNITUDE_LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[i..])
}

/// Go's `time.quote`: double quotes, `"` and `\` escaped, non-ASCII and control bytes as `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out.push('"');
    out
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `0s`, `1.5µs`, `100ms`, `1m30s`, `1h0m0s`, `-2h45m0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_go(self.0))
    }
}

/// Appends the fraction of `v / 10^prec` (".12345") to the reversed buffer, omitting trailing
/// zeros and the point itself when the fraction is zero; returns `v / 10^prec`.
fn push_frac_rev(rev: &mut Vec<u8>, mut v: u64, prec: u32) -> u64 {
    let mut print = false;
    for _ in 0..prec {
        // `v % 10` is a single digit, so the narrowing is exact.
        let digit = (v % 10) as u8;
        print = print || digit != 0;
        if print {
            rev.push(b'0' + digit);
        }
        v /= 10;
    }
    if print {
        rev.push(b'.');
    }
    v
}

/// Appends the decimal digits of `v` to the reversed buffer.
fn push_int_rev(rev: &mut Vec<u8>, mut v: u64) {
    if v == 0 {
        rev.push(b'0');
        return;
    }
    while v > 0 {
        // `v % 10` is a single digit, so the narrowing is exact.
        rev.push(b'0' + (v % 10) as u8);
        v /= 10;
    }
}

/// Port of Go's `Duration.format`, building the text right to left.
fn format_go(d: i64) -> String {
    let neg = d < 0;
    let mut u = d.unsigned_abs();
    let mut rev: Vec<u8> = Vec::with_capacity(32);
    if u < 1_000_000_000 {
        // Sub-second: one unit with a fraction.
        rev.push(b's');
        let prec;
        if u == 0 {
            return "0s".to_string();
        } else if u < 1_000 {
            prec = 0;
            rev.push(b'n');
        } else if u < 1_000_000 {
            prec = 3;
            // "µ" (U+00B5) is C2 B5 in UTF-8; reversed.
            rev.push(0xb5);
            rev.push(0xc2);
        } else {
            prec = 6;
            rev.push(b'm');
        }
        u = push_frac_rev(&mut rev, u, prec);
        push_int_rev(&mut rev, u);
    } else {
        rev.push(b's');
        u = push_frac_rev(&mut rev, u, 9);
        // u is now whole seconds.
        push_int_rev(&mut rev, u % 60);
        u /= 60;
        if u > 0 {
            rev.push(b'm');
            push_int_rev(&mut rev, u % 60);
            u /= 60;
            if u > 0 {
                rev.push(b'h');
                push_int_rev(&mut rev, u);
            }
        }
    }
    if neg {
        rev.push(b'-');
    }
    rev.reverse();
    // Only ASCII and the complete two-byte "µ" were pushed, so this is valid UTF-8; the
    // lossy conversion can therefore never substitute anything.
    String::from_utf8_lossy(&rev).into_owned()
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GoDuration::parse(s)
    }
}

/// clap value parser for Go durations (`value_parser = parse_duration`).
pub fn parse_duration(s: &str) -> Result<GoDuration, DurationError> {
    GoDuration::parse(s)
}

/// Formats a std duration the way Go prints it (for logs and `--help` defaults).
pub fn format_std(d: Duration) -> String {
    match GoDuration::from_std(d) {
        Some(g) => g.to_string(),
        // Beyond Go's range (~292 years): no Go spelling exists; print the largest one.
        None => GoDuration(i64::MAX).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1;
    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;
    const SEC: i64 = 1_000_000_000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;

    fn p(s: &str) -> i64 {
        GoDuration::parse(s)
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
            .as_nanos()
    }

    #[test]
    fn parses_the_forms_go_accepts() {
        // Table from Go's time/time_test.go (parseDurationTests), subset.
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5 * SEC),
            ("30s", 30 * SEC),
            ("1478s", 1478 * SEC),
            ("-5s", -5 * SEC),
            ("+5s", 5 * SEC),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5 * SEC),
            ("5.6s", 5 * SEC + 600 * MS),
            ("5.s", 5 * SEC),
            (".5s", 500 * MS),
            ("1.0s", SEC),
            ("1.00s", SEC),
            ("1.004s", SEC + 4 * MS),
            ("1.0040s", SEC + 4 * MS),
            ("100.00100s", 100 * SEC + MS),
            ("10ns", 10 * NS),
            ("11us", 11 * US),
            ("12\u{00b5}s", 12 * US),
            ("12\u{03bc}s", 12 * US),
            ("13ms", 13 * MS),
            ("14s", 14 * SEC),
            ("15m", 15 * MIN),
            ("16h", 16 * HOUR),
            ("3h30m", 3 * HOUR + 30 * MIN),
            ("10.5s4m", 4 * MIN + 10 * SEC + 500 * MS),
            ("-2m3.4s", -(2 * MIN + 3 * SEC + 400 * MS)),
            (
                "1h2m3s4ms5us6ns",
                HOUR + 2 * MIN + 3 * SEC + 4 * MS + 5 * US + 6 * NS,
            ),
            ("39h9m14.425s", 39 * HOUR + 9 * MIN + 14 * SEC + 425 * MS),
            ("52763797000ns", 52_763_797_000 * NS),
            ("0.3333333333333333333h", 20 * MIN),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("0.100000000000000000000h", 6 * MIN),
            (
                "0.830103483285477580700h",
                49 * MIN + 48 * SEC + 372_539_827 * NS,
            ),
            ("100ms", 100 * MS),
            ("1h0m0s", HOUR),
            ("300us", 300 * US),
            ("2h45m", 2 * HOUR + 45 * MIN),
        ];
        for (input, want) in cases {
            assert_eq!(p(input), *want, "parsing {input:?}");
        }
    }

    #[test]
    fn rejects_what_go_rejects_with_go_messages() {
        let cases: &[(&str, &str)] = &[
            ("", r#"time: invalid duration """#),
            ("3", r#"time: missing unit in duration "3""#),
            ("-", r#"time: invalid duration "-""#),
            ("s", r#"time: invalid duration "s""#),
            (".", r#"time: invalid duration ".""#),
            ("-.", r#"time: invalid duration "-.""#),
            (".s", r#"time: invalid duration ".s""#),
            ("+.s", r#"time: invalid duration "+.s""#),
            ("1d", r#"time: unknown unit "d" in duration "1d""#),
            ("1.1.1s", r#"time: missing unit in duration "1.1.1s""#),
            (
                "\u{85}\u{85}",
                r#"time: invalid duration "\xc2\x85\xc2\x85""#,
            ),
            (
                "9223372036854775808ns",
                r#"time: invalid duration "9223372036854775808ns""#,
            ),
            (
                "9223372036854775.808us",
                r#"time: invalid duration "9223372036854775.808us""#,
            ),
            (
                "9223372036854ms775us808ns",
                r#"time: invalid duration "9223372036854ms775us808ns""#,
            ),
            (
                "-9223372036854775809ns",
                r#"time: invalid duration "-9223372036854775809ns""#,
            ),
            ("1s ", r#"time: unknown unit "s " in duration "1s ""#),
        ];
        for (input, want) in cases {
            let err = GoDuration::parse(input).expect_err(input);
            assert_eq!(err.to_string(), *want, "error for {input:?}");
        }
    }

    #[test]
    fn formats_like_go_duration_string() {
        // Table from Go's time/time_test.go (durationTests).
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1\u{00b5}s"),
            (2_200 * US, "2.2ms"),
            (3_300 * MS, "3.3s"),
            (4 * MIN + 5 * SEC, "4m5s"),
            (4 * MIN + 5001 * MS, "4m5.001s"),
            (5 * HOUR + 6 * MIN + 7001 * MS, "5h6m7.001s"),
            (8 * MIN + 1, "8m0.000000001s"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
            (HOUR, "1h0m0s"),
            (100 * MS, "100ms"),
            (SEC, "1s"),
            (10 * SEC, "10s"),
            (-SEC, "-1s"),
            (300 * US, "300\u{00b5}s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(GoDuration::from_nanos(*nanos).to_string(), *want);
        }
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        for nanos in [
            0,
            1,
            999,
            1_000,
            1_500,
            999_999,
            1_000_000,
            100 * MS,
            1_500 * MS,
            59 * SEC,
            61 * SEC,
            HOUR,
            HOUR + 1,
            2 * HOUR + 45 * MIN,
            -3 * SEC,
            i64::MAX,
            i64::MIN,
        ] {
            let text = GoDuration::from_nanos(nanos).to_string();
            assert_eq!(p(&text), nanos, "round trip of {text}");
        }
    }

    #[test]
    fn std_conversion_rejects_negative() {
        assert_eq!(GoDuration::from_secs(-1).to_std(), None);
        assert_eq!(
            GoDuration::from_millis(1500).to_std(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(format_std(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_std(Duration::from_micros(300)), "300\u{00b5}s");
    }
}

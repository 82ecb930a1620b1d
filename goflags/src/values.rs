//! Scalar and list flag values with Go `strconv` / pflag syntax.
//!
//! Every function here is usable directly as a clap `value_parser`; each error's `Display` is the
//! text the Go library would print, so messages match what operators already know.

use std::fmt;

/// A `strconv` parse failure (`strconv.ParseInt: parsing "x": invalid syntax`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("strconv.{func}: parsing {input:?}: {kind}")]
pub struct NumError {
    /// The Go function whose error this mirrors (`ParseBool`, `ParseInt`, …).
    pub func: &'static str,
    /// The rejected text.
    pub input: String,
    /// Syntax or range.
    pub kind: NumErrorKind,
}

/// The two failure classes of Go's `strconv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumErrorKind {
    /// Not a number of the expected form.
    Syntax,
    /// A number, but outside the target type's range.
    Range,
}

impl fmt::Display for NumErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumErrorKind::Syntax => "invalid syntax",
            NumErrorKind::Range => "value out of range",
        })
    }
}

fn num_err(func: &'static str, input: &str, kind: NumErrorKind) -> NumError {
    NumError {
        func,
        input: input.to_string(),
        kind,
    }
}

/// Go's `strconv.ParseBool`: `1 t T TRUE true True` / `0 f F FALSE false False`, nothing else.
pub fn parse_go_bool(s: &str) -> Result<bool, NumError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(num_err("ParseBool", s, NumErrorKind::Syntax)),
    }
}

/// Go's `underscoreOK`: underscores only between digits or after a base prefix.
fn underscore_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if !b.is_empty() && (b[0] == b'-' || b[0] == b'+') {
        i = 1;
    }
    // '^' start, '0' digit or prefix, '_' underscore, '!' other.
    let mut saw = b'^';
    let mut hex = false;
    if b.len() >= i + 2
        && b[i] == b'0'
        && matches!(b[i + 1].to_ascii_lowercase(), b'b' | b'o' | b'x')
    {
        hex = b[i + 1].eq_ignore_ascii_case(&b'x');
        i += 2;
        saw = b'0';
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// Go's `strconv.ParseUint(s, 0, 64)` magnitude parsing (no sign), shared by the signed variant.
fn parse_magnitude(func: &'static str, orig: &str, s: &str) -> Result<u64, NumError> {
    let syntax = || num_err(func, orig, NumErrorKind::Syntax);
    if s.is_empty() {
        return Err(syntax());
    }
    let b = s.as_bytes();
    let (base, digits): (u32, &str) = if b[0] == b'0' {
        if b.len() >= 3 {
            match b[1].to_ascii_lowercase() {
                b'b' => (2, &s[2..]),
                b'o' => (8, &s[2..]),
                b'x' => (16, &s[2..]),
                _ => (8, &s[1..]),
            }
        } else {
            (8, &s[1..])
        }
    } else {
        (10, s)
    };
    let mut n: u64 = 0;
    let mut underscores = false;
    let mut range_error = false;
    for c in digits.chars() {
        if c == '_' {
            underscores = true;
            continue;
        }
        let d = c.to_digit(36).filter(|d| *d < base).ok_or_else(syntax)?;
        match n
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) => n = v,
            None => range_error = true,
        }
    }
    if underscores && !underscore_ok(s) {
        return Err(syntax());
    }
    if range_error {
        return Err(num_err(func, orig, NumErrorKind::Range));
    }
    Ok(n)
}

/// Go's `strconv.ParseInt(s, 0, 64)` as pflag's `IntVar` uses it: optional sign, `0x`/`0o`/`0b`
/// prefixes, a leading `0` meaning octal, `_` digit separators.
pub fn parse_go_int(s: &str) -> Result<i64, NumError> {
    const FUNC: &str = "ParseInt";
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_magnitude(FUNC, s, body)?;
    if neg {
        if magnitude > i64::MIN.unsigned_abs() {
            return Err(num_err(FUNC, s, NumErrorKind::Range));
        }
        Ok(0i64.wrapping_sub_unsigned(magnitude))
    } else {
        i64::try_from(magnitude).map_err(|_| num_err(FUNC, s, NumErrorKind::Range))
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)` (pflag `Uint64Var`, klog `--log-file-max-size`).
pub fn parse_go_uint(s: &str) -> Result<u64, NumError> {
    parse_magnitude("ParseUint", s, s)
}

/// Go's `strconv.ParseInt(s, 10, 32)` (klog's `--v` Level).
pub fn parse_go_int32_base10(s: &str) -> Result<i32, NumError> {
    const FUNC: &str = "ParseInt";
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
        return Err(num_err(FUNC, s, NumErrorKind::Syntax));
    }
    s.parse::<i32>()
        .map_err(|_| num_err(FUNC, s, NumErrorKind::Range))
}

/// Go's `strconv.ParseFloat(s, 32)` (pflag `Float32Var`), for decimal and `inf`/`nan` forms.
pub fn parse_go_float32(s: &str) -> Result<f32, NumError> {
    const FUNC: &str = "ParseFloat";
    let cleaned: String = s.chars().filter(|c| *c != '_').collect();
    match cleaned.parse::<f64>() {
        Ok(v) if v.is_finite() && v.abs() > f64::from(f32::MAX) => {
            Err(num_err(FUNC, s, NumErrorKind::Range))
        }
        // Range-checked just above; the narrowing only rounds.
        #[allow(clippy::cast_possible_truncation)]
        Ok(v) => Ok(v as f32),
        Err(_) => Err(num_err(FUNC, s, NumErrorKind::Syntax)),
    }
}

/// A malformed pflag string-slice value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error on line 1, column {column}: {problem} (in {input:?})")]
pub struct SliceError {
    /// The rejected text.
    pub input: String,
    /// 1-based column of the problem, as Go's `encoding/csv` reports it.
    pub column: usize,
    /// What is wrong.
    pub problem: &'static str,
}

/// One occurrence of a pflag `StringSlice` flag (`--alpn-proto=a,b`).
///
/// A newtype so clap can collect repeated occurrences (`Vec<StringSlice>`); join them with
/// [`flatten_slices`], which gives pflag's "repeats accumulate" semantics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StringSlice(pub Vec<String>);

/// Parses one occurrence of a string-slice flag.
///
/// pflag splits with Go's `encoding/csv` (so `"a,b",c` is two items); an empty value is the
/// empty list. Beyond pflag, the form pflag *prints* — `[]`, `[a,b]` — is accepted as input and
/// means the list inside the brackets: upstream's test harness feeds every flag's printed value
/// back (`--alpn-proto=[]`), and Go's pflag would turn that into a literal protocol named `[]`.
pub fn parse_string_slice(s: &str) -> Result<StringSlice, SliceError> {
    let inner = match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) => inner,
        None => s,
    };
    if inner.is_empty() {
        return Ok(StringSlice(Vec::new()));
    }
    parse_csv_record(s, inner).map(StringSlice)
}

/// Go `encoding/csv` single-record parsing with the default settings (comma separator, quotes
/// with `""` escapes, no trimming, bare quotes in unquoted fields rejected).
fn parse_csv_record(orig: &str, s: &str) -> Result<Vec<String>, SliceError> {
    let err = |column: usize, problem: &'static str| SliceError {
        input: orig.to_string(),
        column,
        problem,
    };
    let chars: Vec<char> = s.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut field = String::new();
        if chars.get(i) == Some(&'"') {
            // Quoted field.
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(i + 1, "extraneous or missing \" in quoted-field")),
                    Some('"') => {
                        if chars.get(i + 1) == Some(&'"') {
                            field.push('"');
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(c) => {
                        field.push(*c);
                        i += 1;
                    }
                }
            }
            match chars.get(i) {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {
                    fields.push(field);
                    i += 1;
                }
                Some(_) => return Err(err(i + 1, "extraneous or missing \" in quoted-field")),
            }
        } else {
            loop {
                match chars.get(i) {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field);
                        i += 1;
                        break;
                    }
                    Some('"') => return Err(err(i + 1, "bare \" in non-quoted-field")),
                    Some(c) => {
                        field.push(*c);
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Joins the occurrences of a repeated string-slice flag in command-line order.
pub fn flatten_slices(occurrences: &[StringSlice]) -> Vec<String> {
    occurrences
        .iter()
        .flat_map(|s| s.0.iter().cloned())
        .collect()
}

/// pflag's printed form of a string slice: `[]`, `[a,b]`.
pub fn format_string_slice(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bool_accepts_exactly_strconv_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "yes", "tRUE", "on", "2", " true"] {
            let e = parse_go_bool(bad).expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!("strconv.ParseBool: parsing {bad:?}: invalid syntax")
            );
        }
    }

    #[test]
    fn go_int_follows_parseint_base_zero() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("8090", 8090),
            ("-1", -1),
            ("+7", 7),
            ("0x1F", 31),
            ("0X1f", 31),
            ("0o17", 15),
            ("017", 15),
            ("0b101", 5),
            ("1_000", 1000),
            ("0x_1f", 31),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_int(s), Ok(*want), "{s}");
        }
        let syntax = [
            "", "abc", "08091", "0x", "1__0", "_1", "1_", "12a", "- 1", "1.5",
        ];
        for s in syntax {
            assert_eq!(
                parse_go_int(s).map_err(|e| e.kind),
                Err(NumErrorKind::Syntax),
                "{s}"
            );
        }
        for s in [
            "9223372036854775808",
            "-9223372036854775809",
            "0xffffffffffffffffff",
        ] {
            assert_eq!(
                parse_go_int(s).map_err(|e| e.kind),
                Err(NumErrorKind::Range),
                "{s}"
            );
        }
        assert_eq!(
            parse_go_int("abc").expect_err("abc").to_string(),
            r#"strconv.ParseInt: parsing "abc": invalid syntax"#
        );
    }

    #[test]
    fn go_uint_rejects_signs() {
        assert_eq!(parse_go_uint("1800"), Ok(1800));
        assert_eq!(parse_go_uint("0"), Ok(0));
        assert!(parse_go_uint("-1").is_err());
        assert!(parse_go_uint("+1").is_err());
    }

    #[test]
    fn klog_level_is_base_ten_int32() {
        assert_eq!(parse_go_int32_base10("4"), Ok(4));
        assert_eq!(parse_go_int32_base10("-2"), Ok(-2));
        assert!(parse_go_int32_base10("0x4").is_err());
        assert_eq!(
            parse_go_int32_base10("99999999999").map_err(|e| e.kind),
            Err(NumErrorKind::Range)
        );
    }

    #[test]
    fn float32_parses_decimal_and_rejects_garbage() {
        assert_eq!(parse_go_float32("0"), Ok(0.0));
        assert_eq!(parse_go_float32("5.5"), Ok(5.5));
        assert!(parse_go_float32("fast").is_err());
        assert_eq!(
            parse_go_float32("1e39").map_err(|e| e.kind),
            Err(NumErrorKind::Range)
        );
    }

    #[test]
    fn string_slice_splits_like_pflag_and_accepts_printed_form() {
        let p = |s: &str| parse_string_slice(s).expect(s).0;
        assert_eq!(p(""), Vec::<String>::new());
        assert_eq!(p("[]"), Vec::<String>::new());
        assert_eq!(p("a"), vec!["a"]);
        assert_eq!(p("a,b"), vec!["a", "b"]);
        assert_eq!(p("[a,b]"), vec!["a", "b"]);
        assert_eq!(p("a,,b"), vec!["a", "", "b"]);
        assert_eq!(p(r#""x,y",z"#), vec!["x,y", "z"]);
        assert_eq!(p(r#""say ""hi""""#), vec![r#"say "hi""#]);
        assert!(parse_string_slice(r#"a"b"#).is_err());
        assert!(parse_string_slice(r#""open"#).is_err());
    }

    #[test]
    fn repeated_slices_accumulate_in_order() {
        let occ = vec![
            parse_string_slice("a,b").expect("a,b"),
            parse_string_slice("c").expect("c"),
        ];
        assert_eq!(flatten_slices(&occ), vec!["a", "b", "c"]);
        assert_eq!(format_string_slice(&flatten_slices(&occ)), "[a,b,c]");
        assert_eq!(format_string_slice(&[]), "[]");
    }
}

//! The rule for upstream flags whose feature this build does not have.
//!
//! Upstream tooling (manifests generated from `--help`, the e2e harness) passes *every* flag
//! explicitly, so a flag left at its default must be accepted even when the feature behind it
//! is missing. Any other value asks for behaviour we cannot give, and silently ignoring it would
//! be worse than refusing to start: the process fails, naming the flag.

use std::fmt::Display;

/// A flag was set to a non-default value but this build cannot honour it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--{flag}={value} is not supported by this build ({reason}); remove the flag or leave it at its default {default}"
)]
pub struct UnsupportedFlag {
    /// Flag name without dashes.
    pub flag: &'static str,
    /// The value given, as written back in Go's syntax.
    pub value: String,
    /// The default that is accepted.
    pub default: String,
    /// Why the feature is missing (shown in parentheses).
    pub reason: &'static str,
}

/// Fails unless `is_default`. `value` and `default` are only used for the message.
pub fn unsupported_unless_default(
    flag: &'static str,
    is_default: bool,
    value: impl Display,
    default: impl Display,
    reason: &'static str,
) -> Result<(), UnsupportedFlag> {
    if is_default {
        return Ok(());
    }
    Err(UnsupportedFlag {
        flag,
        value: value.to_string(),
        default: default.to_string(),
        reason,
    })
}

/// [`unsupported_unless_default`] deciding "is default" by equality.
pub fn require_default<T: PartialEq + Display>(
    flag: &'static str,
    value: &T,
    default: &T,
    reason: &'static str,
) -> Result<(), UnsupportedFlag> {
    unsupported_unless_default(flag, value == default, value, default, reason)
}

/// Quotes an empty default so the message does not end in "its default " (Go prints `""`).
pub fn display_string_default(s: &str) -> String {
    if s.is_empty() {
        "\"\"".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_value_is_accepted() {
        assert_eq!(
            require_default("enable-lease-controller", &false, &false, "leases"),
            Ok(())
        );
    }

    #[test]
    fn non_default_value_names_the_flag_value_and_default() {
        let err = require_default(
            "enable-lease-controller",
            &true,
            &false,
            "leases are not implemented yet",
        )
        .expect_err("true is not the default");
        assert_eq!(
            err.to_string(),
            "--enable-lease-controller=true is not supported by this build (leases are not \
             implemented yet); remove the flag or leave it at its default false"
        );
    }

    #[test]
    fn empty_string_default_is_quoted() {
        let err = unsupported_unless_default(
            "agent-namespace",
            false,
            "kube-system",
            display_string_default(""),
            "no auth",
        )
        .expect_err("non-default");
        assert!(err.to_string().ends_with("its default \"\""), "{err}");
    }
}

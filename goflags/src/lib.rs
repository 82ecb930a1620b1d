//! Go / pflag / klog command-line syntax for the Konnectivity binaries.
//!
//! Upstream's proxy-server and proxy-agent are Go programs parsed by pflag, and the tooling
//! around them (Kubernetes manifests, the ANP test harness) writes flags in that dialect:
//! Go durations (`1h0m0s`), Go booleans (`--flag`, `--flag=False`), pflag string slices
//! (`--alpn-proto=a,b`, printed back as `[]`), integers with Go prefixes, and klog's logging
//! flags. This crate provides those value syntaxes as clap value parsers, the klog flag set with
//! its mapping onto `tracing`, bind-address resolution, Go's `url.ParseQuery`, and the rule for flags whose feature a
//! build does not have ([`unsupported`]).
//!
//! Conventions for a binary's clap struct (`#[command(args_override_self = true)]` so a repeated
//! flag's last value wins, as in pflag):
//! * booleans: `num_args = 0..=1, require_equals = true, default_missing_value = "true",
//!   value_parser = parse_go_bool` — `--flag value` then leaves `value` as a positional, as pflag;
//! * everything else: `allow_hyphen_values = true` so `--flag -1s` takes `-1s`, as pflag.
#![forbid(unsafe_code)]

pub mod duration;
pub mod klog;
pub mod net;
pub mod query;
pub mod unsupported;
pub mod values;

pub use duration::{format_std, parse_duration, DurationError, GoDuration};
pub use klog::{init_logging, KlogFlags, LoggingError, LoggingGuard};
pub use net::{bind_addr, unspecified_ip, BindAddrError};
pub use query::{parse_query, query_unescape, QueryError};
pub use unsupported::{
    display_string_default, require_default, unsupported_unless_default, UnsupportedFlag,
};
pub use values::{
    flatten_slices, format_string_slice, parse_go_bool, parse_go_float32, parse_go_int,
    parse_go_int32_base10, parse_go_uint, parse_string_slice, NumError, NumErrorKind, SliceError,
    StringSlice,
};

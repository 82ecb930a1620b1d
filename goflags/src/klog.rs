//! The klog flags every upstream binary inherits (`--v`, `--logtostderr`, `--log-file`, …) and
//! their mapping onto `tracing-subscriber`.
//!
//! Upstream registers klog's Go flags on its pflag set with `_` normalised to `-` and sets
//! `-v=4` before parsing; the same names, spellings and defaults are accepted here.
//!
//! What each flag does in this build:
//!
//! | flag | effect |
//! |---|---|
//! | `-v`, `--v` | verbosity: ≤4 ⇒ INFO, 5–6 ⇒ DEBUG, ≥7 ⇒ TRACE (WARN/ERROR always); `RUST_LOG`, when set, overrides it |
//! | `--logtostderr` (true) | log to standard error only; `--log-file`/`--log-dir` are then ignored, as in klog |
//! | `--log-file` | with `--logtostderr=false`: append to this file |
//! | `--log-dir` | with `--logtostderr=false` and no `--log-file`: append to `<dir>/<program>.log` (klog's per-severity file naming is not reproduced) |
//! | `--log-file-max-size` (MB, 1800) | when the file would grow past it, it is truncated and restarted, as klog does; 0 = unlimited |
//! | `--alsologtostderr` | with a file: also log to standard error (at or above `--alsologtostderrthreshold`) |
//! | `--stderrthreshold` (2 = ERROR) | with a file and no `--alsologtostderr`: events at or above it also go to standard error; with `--legacy-stderr-threshold-behavior=false` it filters standard error even when `--logtostderr=true` |
//! | `--skip-headers` | omit timestamp, level and target from each line |
//! | `--vmodule`, `--log-backtrace-at`, `--add-dir-header`, `--skip-log-headers`, `--one-output` | syntax-checked as klog does, otherwise no effect (they refer to Go source files or klog's file layout) |

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::values::{parse_go_bool, parse_go_int32_base10, parse_go_uint, NumError};

/// Verbosity the upstream proxy-server and proxy-agent set before parsing (`local.Set("v", "4")`).
pub const DEFAULT_VERBOSITY: i32 = 4;

/// klog's default `--log-file-max-size`, in megabytes.
pub const DEFAULT_LOG_FILE_MAX_SIZE_MB: u64 = 1800;

/// klog's default `--stderrthreshold` (ERROR).
pub const DEFAULT_STDERR_THRESHOLD: i32 = 2;

/// Bytes per `--log-file-max-size` unit (klog uses 1024*1024).
const BYTES_PER_MB: u64 = 1024 * 1024;

/// The klog flags, to `#[command(flatten)]` into a binary's flag struct.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Logging flags (klog)")]
pub struct KlogFlags {
    /// If true, adds the file directory to the header of the log messages [no effect in this build]
    #[arg(long = "add-dir-header", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub add_dir_header: bool,

    /// log to standard error as well as files (no effect when -logtostderr=true)
    #[arg(long = "alsologtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub alsologtostderr: bool,

    /// logs at or above this threshold go to stderr when -alsologtostderr=true (no effect when -logtostderr=true)
    #[arg(long = "alsologtostderrthreshold", value_name = "SEVERITY", default_value = "0",
          value_parser = parse_severity, allow_hyphen_values = true)]
    pub alsologtostderrthreshold: i32,

    /// If true, stderrthreshold is ignored when logtostderr=true (legacy behavior). If false, stderrthreshold is honored even when logtostderr=true
    #[arg(long = "legacy-stderr-threshold-behavior", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub legacy_stderr_threshold_behavior: bool,

    /// when logging hits line file:N, emit a stack trace [no effect in this build]
    #[arg(long = "log-backtrace-at", value_name = "FILE:N", default_value = ":0",
          value_parser = parse_trace_location, allow_hyphen_values = true)]
    pub log_backtrace_at: String,

    /// If non-empty, write log files in this directory (no effect when -logtostderr=true)
    #[arg(
        long = "log-dir",
        value_name = "DIR",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub log_dir: String,

    /// If non-empty, use this log file (no effect when -logtostderr=true)
    #[arg(
        long = "log-file",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub log_file: String,

    /// Defines the maximum size a log file can grow to (no effect when -logtostderr=true). Unit is megabytes. If the value is 0, the maximum file size is unlimited.
    #[arg(long = "log-file-max-size", value_name = "UINT", default_value = "1800",
          value_parser = parse_go_uint, allow_hyphen_values = true)]
    pub log_file_max_size: u64,

    /// log to standard error instead of files
    #[arg(long = "logtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool)]
    pub logtostderr: bool,

    /// If true, only write logs to their native severity level (vs also writing to each lower severity level; no effect when -logtostderr=true) [no effect in this build]
    #[arg(long = "one-output", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub one_output: bool,

    /// If true, avoid header prefixes in the log messages
    #[arg(long = "skip-headers", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub skip_headers: bool,

    /// If true, avoid headers when opening log files (no effect when -logtostderr=true) [no effect in this build]
    #[arg(long = "skip-log-headers", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub skip_log_headers: bool,

    /// logs at or above this threshold go to stderr when writing to files and stderr (no effect when -logtostderr=true or -alsologtostderr=true unless -legacy_stderr_threshold_behavior=false)
    #[arg(long = "stderrthreshold", value_name = "SEVERITY", default_value = "2",
          value_parser = parse_severity, allow_hyphen_values = true)]
    pub stderrthreshold: i32,

    /// number for the log level verbosity (≤4 INFO, 5-6 DEBUG, ≥7 TRACE; RUST_LOG overrides)
    #[arg(short = 'v', long = "v", value_name = "LEVEL", default_value = "4",
          value_parser = parse_go_int32_base10, allow_hyphen_values = true)]
    pub v: i32,

    /// comma-separated list of pattern=N settings for file-filtered logging [no effect in this build]
    #[arg(long = "vmodule", value_name = "PATTERN=N,...", default_value = "",
          value_parser = parse_vmodule, allow_hyphen_values = true)]
    pub vmodule: String,
}

impl Default for KlogFlags {
    fn default() -> Self {
        KlogFlags {
            add_dir_header: false,
            alsologtostderr: false,
            alsologtostderrthreshold: 0,
            legacy_stderr_threshold_behavior: true,
            log_backtrace_at: ":0".to_string(),
            log_dir: String::new(),
            log_file: String::new(),
            log_file_max_size: DEFAULT_LOG_FILE_MAX_SIZE_MB,
            logtostderr: true,
            one_output: false,
            skip_headers: false,
            skip_log_headers: false,
            stderrthreshold: DEFAULT_STDERR_THRESHOLD,
            v: DEFAULT_VERBOSITY,
            vmodule: String::new(),
        }
    }
}

/// A malformed klog flag value; texts are klog's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KlogValueError {
    /// `--stderrthreshold` / `--alsologtostderrthreshold` neither a severity name nor a number.
    #[error("{0}")]
    Severity(NumError),
    /// `--vmodule` not `pattern=N,…`.
    #[error("syntax error: expect comma-separated list of filename=N")]
    VmoduleSyntax,
    /// `--vmodule` with a negative level.
    #[error("negative value for vmodule level")]
    VmoduleNegative,
    /// `--log-backtrace-at` not `file.go:N`.
    #[error("syntax error: expect file.go:234")]
    TraceSyntax,
    /// `--log-backtrace-at` line not positive.
    #[error("negative or zero value for level")]
    TraceLine,
}

/// klog severity: a name (`INFO`, `WARNING`, `ERROR`, `FATAL`, any case) or a number.
pub fn parse_severity(s: &str) -> Result<i32, KlogValueError> {
    match s.to_ascii_uppercase().as_str() {
        "INFO" => Ok(0),
        "WARNING" => Ok(1),
        "ERROR" => Ok(2),
        "FATAL" => Ok(3),
        _ => parse_go_int32_base10(s).map_err(KlogValueError::Severity),
    }
}

/// klog's `moduleSpec.Set` syntax check; returns the value unchanged.
pub fn parse_vmodule(s: &str) -> Result<String, KlogValueError> {
    for pat in s.split(',') {
        if pat.is_empty() {
            continue;
        }
        let parts: Vec<&str> = pat.split('=').collect();
        if parts.len() != 2 || parts[0].is_empty() || parts[1].is_empty() {
            return Err(KlogValueError::VmoduleSyntax);
        }
        let level = parse_go_int32_base10(parts[1]).map_err(|_| KlogValueError::VmoduleSyntax)?;
        if level < 0 {
            return Err(KlogValueError::VmoduleNegative);
        }
    }
    Ok(s.to_string())
}

/// klog's `traceLocation.Set` syntax check. `""` and the printed default `:0` mean unset.
pub fn parse_trace_location(s: &str) -> Result<String, KlogValueError> {
    if s.is_empty() || s == ":0" {
        return Ok(s.to_string());
    }
    let fields: Vec<&str> = s.split(':').collect();
    if fields.len() != 2 || !fields[0].contains('.') {
        return Err(KlogValueError::TraceSyntax);
    }
    let line: i64 = fields[1].parse().map_err(|_| KlogValueError::TraceSyntax)?;
    if line <= 0 {
        return Err(KlogValueError::TraceLine);
    }
    Ok(s.to_string())
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` is set but is not a valid filter directive list.
    #[error("RUST_LOG={value:?} is not a valid tracing filter: {message}; fix or unset RUST_LOG (then --v applies)")]
    RustLog {
        /// The variable's value.
        value: String,
        /// The parser's complaint.
        message: String,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}; check --log-file/--log-dir, or use --logtostderr=true")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised in this process: {0}")]
    AlreadyInitialised(String),
}

/// Keeps the log file open; dropping it flushes the file. Hold it for the life of `main`.
#[derive(Debug)]
pub struct LoggingGuard {
    file: Option<Arc<LogFile>>,
}

impl Drop for LoggingGuard {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            file.flush_quietly();
        }
    }
}

/// The tracing level allowed by klog verbosity `v`.
pub fn verbosity_filter(v: i32) -> LevelFilter {
    match v {
        i32::MIN..=4 => LevelFilter::INFO,
        5..=6 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The tracing filter for a klog severity threshold: events at or above it pass. klog's INFO
/// covers every V-level, so it passes everything (DEBUG/TRACE included); FATAL and above pass
/// nothing, since nothing here logs at FATAL.
pub fn severity_filter(severity: i32) -> LevelFilter {
    match severity {
        i32::MIN..=0 => LevelFilter::TRACE,
        1 => LevelFilter::WARN,
        2 => LevelFilter::ERROR,
        _ => LevelFilter::OFF,
    }
}

/// Where events go, decided from the flags alone (pure, so it can be tested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPlan {
    /// The file to append to, if any.
    pub file: Option<PathBuf>,
    /// Truncate-and-restart bound for the file in bytes; 0 = unlimited.
    pub file_max_bytes: u64,
    /// Threshold for standard error (`LevelFilter::OFF` = nothing).
    pub stderr: LevelFilter,
}

impl LogPlan {
    /// Applies klog's routing rules; `program` names the file under `--log-dir` / the temp dir.
    pub fn from_flags(flags: &KlogFlags, program: &str) -> LogPlan {
        if flags.logtostderr {
            let stderr = if flags.legacy_stderr_threshold_behavior {
                LevelFilter::TRACE
            } else {
                severity_filter(flags.stderrthreshold)
            };
            return LogPlan {
                file: None,
                file_max_bytes: 0,
                stderr,
            };
        }
        let file = if !flags.log_file.is_empty() {
            PathBuf::from(&flags.log_file)
        } else {
            let dir = if flags.log_dir.is_empty() {
                std::env::temp_dir()
            } else {
                PathBuf::from(&flags.log_dir)
            };
            dir.join(format!("{program}.log"))
        };
        let stderr = if flags.alsologtostderr {
            severity_filter(flags.alsologtostderrthreshold)
        } else {
            severity_filter(flags.stderrthreshold)
        };
        LogPlan {
            file: Some(file),
            file_max_bytes: flags.log_file_max_size.saturating_mul(BYTES_PER_MB),
            stderr,
        }
    }
}

/// An append-only log file that is truncated and restarted when it would exceed its bound.
#[derive(Debug)]
struct LogFile {
    max_bytes: u64,
    state: Mutex<LogFileState>,
}

#[derive(Debug)]
struct LogFileState {
    file: File,
    written: u64,
}

impl LogFile {
    fn open(path: &Path, max_bytes: u64) -> Result<LogFile, LoggingError> {
        let open_err = |source| LoggingError::OpenFile {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(open_err)?;
        let written = file.metadata().map_err(open_err)?.len();
        Ok(LogFile {
            max_bytes,
            state: Mutex::new(LogFileState { file, written }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogFileState> {
        // A panic while holding the lock leaves at worst a partial line; keep logging.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_record(&self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if self.max_bytes > 0
            && state.written > 0
            && state.written.saturating_add(len) > self.max_bytes
        {
            // klog re-creates (truncates) the file once it is full; in append mode the next
            // write then lands at offset 0.
            state.file.set_len(0)?;
            state.written = 0;
        }
        state.file.write_all(buf)?;
        state.written = state.written.saturating_add(len);
        Ok(())
    }

    fn flush_quietly(&self) {
        let mut state = self.lock();
        // Nothing useful can be done about a failing flush at exit.
        let _ = state.file.flush();
        let _ = state.file.sync_data();
    }
}

/// `MakeWriter` handle onto a [`LogFile`]; every event is one `write_all` under the lock, so
/// lines from concurrent threads never interleave.
#[derive(Debug, Clone)]
struct LogFileWriter(Arc<LogFile>);

impl Write for LogFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_record(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().file.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFileWriter {
    type Writer = LogFileWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

type Base = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

fn output_layer<W>(writer: W, ansi: bool, skip_headers: bool, threshold: LevelFilter) -> BoxedLayer
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    if skip_headers {
        layer
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_filter(threshold)
            .boxed()
    } else {
        layer.with_filter(threshold).boxed()
    }
}

/// The verbosity filter: `RUST_LOG` when set and non-empty, else `--v`.
fn base_filter(flags: &KlogFlags, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match rust_log.filter(|s| !s.trim().is_empty()) {
        Some(value) => EnvFilter::builder()
            .parse(value)
            .map_err(|e| LoggingError::RustLog {
                value: value.to_string(),
                message: e.to_string(),
            }),
        None => Ok(EnvFilter::default().add_directive(verbosity_filter(flags.v).into())),
    }
}

/// Builds the subscriber without installing it (tests use it with `with_default`).
pub fn build_subscriber(
    flags: &KlogFlags,
    program: &str,
    rust_log: Option<&str>,
) -> Result<(impl tracing::Subscriber + Send + Sync, LoggingGuard), LoggingError> {
    let filter = base_filter(flags, rust_log)?;
    let plan = LogPlan::from_flags(flags, program);
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut guard = LoggingGuard { file: None };
    if let Some(path) = &plan.file {
        let file = Arc::new(LogFile::open(path, plan.file_max_bytes)?);
        layers.push(output_layer(
            LogFileWriter(Arc::clone(&file)),
            false,
            flags.skip_headers,
            LevelFilter::TRACE,
        ));
        guard.file = Some(file);
    }
    if plan.stderr != LevelFilter::OFF {
        layers.push(output_layer(
            io::stderr,
            io::stderr().is_terminal(),
            flags.skip_headers,
            plan.stderr,
        ));
    }
    let subscriber = Registry::default().with(filter).with(layers);
    Ok((subscriber, guard))
}

/// Installs the process-wide subscriber described by the klog flags (and routes `log` records
/// from dependencies into it). Call once, early in `main`, and keep the guard alive.
pub fn init_logging(flags: &KlogFlags) -> Result<LoggingGuard, LoggingError> {
    let program = std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "konnectivity".to_string());
    let rust_log = std::env::var("RUST_LOG").ok();
    let (subscriber, guard) = build_subscriber(flags, &program, rust_log.as_deref())?;
    subscriber
        .try_init()
        .map_err(|e| LoggingError::AlreadyInitialised(e.to_string()))?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(args_override_self = true)]
    struct Cli {
        #[command(flatten)]
        klog: KlogFlags,
    }

    fn parse(args: &[&str]) -> Result<KlogFlags, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.klog)
    }

    #[test]
    fn defaults_match_klog_with_upstream_verbosity() {
        assert_eq!(parse(&[]).expect("no flags"), KlogFlags::default());
        assert_eq!(KlogFlags::default().v, 4);
        assert!(KlogFlags::default().logtostderr);
        assert_eq!(KlogFlags::default().log_file_max_size, 1800);
        assert_eq!(KlogFlags::default().stderrthreshold, 2);
    }

    #[test]
    fn v_accepts_every_pflag_spelling() {
        for args in [
            &["-v=7"][..],
            &["-v", "7"],
            &["-v7"],
            &["--v=7"],
            &["--v", "7"],
        ] {
            assert_eq!(parse(args).expect("valid -v").v, 7, "{args:?}");
        }
        assert!(parse(&["--v=x"]).is_err());
    }

    #[test]
    fn printed_defaults_are_accepted_back() {
        let flags = parse(&[
            "--add-dir-header=false",
            "--alsologtostderr=false",
            "--log-backtrace-at=:0",
            "--log-dir=",
            "--log-file=",
            "--log-file-max-size=1800",
            "--logtostderr=true",
            "--one-output=false",
            "--skip-headers=false",
            "--skip-log-headers=false",
            "--stderrthreshold=2",
            "--v=4",
            "--vmodule=",
        ])
        .expect("printed defaults");
        assert_eq!(flags, KlogFlags::default());
    }

    #[test]
    fn klog_value_syntax_is_checked() {
        assert_eq!(
            parse(&["--stderrthreshold=warning"])
                .expect("name")
                .stderrthreshold,
            1
        );
        assert!(parse(&["--stderrthreshold=loud"]).is_err());
        assert!(parse(&["--vmodule=server=2,agent*=5"]).is_ok());
        assert!(parse(&["--vmodule=server"]).is_err());
        assert!(parse(&["--vmodule=server=-1"]).is_err());
        assert!(parse(&["--log-backtrace-at=server.go:12"]).is_ok());
        assert!(parse(&["--log-backtrace-at=server:12"]).is_err());
        assert!(parse(&["--log-backtrace-at=server.go:0"]).is_err());
    }

    #[test]
    fn verbosity_maps_to_tracing_levels() {
        assert_eq!(verbosity_filter(0), LevelFilter::INFO);
        assert_eq!(verbosity_filter(4), LevelFilter::INFO);
        assert_eq!(verbosity_filter(5), LevelFilter::DEBUG);
        assert_eq!(verbosity_filter(6), LevelFilter::DEBUG);
        assert_eq!(verbosity_filter(7), LevelFilter::TRACE);
        assert_eq!(verbosity_filter(-3), LevelFilter::INFO);
    }

    #[test]
    fn logtostderr_ignores_log_file() {
        let flags = parse(&["--log-file=/tmp/x.log"]).expect("flags");
        let plan = LogPlan::from_flags(&flags, "proxy-agent");
        assert_eq!(plan.file, None);
        assert_eq!(plan.stderr, LevelFilter::TRACE);
    }

    #[test]
    fn log_file_with_logtostderr_false_sends_only_errors_to_stderr() {
        let flags = parse(&["--logtostderr=false", "--log-file=/tmp/x.log"]).expect("flags");
        let plan = LogPlan::from_flags(&flags, "proxy-agent");
        assert_eq!(plan.file, Some(PathBuf::from("/tmp/x.log")));
        assert_eq!(plan.file_max_bytes, 1800 * 1024 * 1024);
        assert_eq!(plan.stderr, LevelFilter::ERROR);

        let also = parse(&[
            "--logtostderr=false",
            "--log-file=/tmp/x.log",
            "--alsologtostderr",
        ])
        .expect("flags");
        assert_eq!(LogPlan::from_flags(&also, "p").stderr, LevelFilter::TRACE);
    }

    #[test]
    fn log_dir_names_the_file_after_the_program() {
        let flags = parse(&["--logtostderr=false", "--log-dir=/var/log/knp"]).expect("flags");
        let plan = LogPlan::from_flags(&flags, "proxy-server");
        assert_eq!(
            plan.file,
            Some(PathBuf::from("/var/log/knp/proxy-server.log"))
        );
    }

    #[test]
    fn non_legacy_threshold_filters_stderr() {
        let flags = parse(&[
            "--legacy-stderr-threshold-behavior=false",
            "--stderrthreshold=WARNING",
        ])
        .expect("flags");
        assert_eq!(LogPlan::from_flags(&flags, "p").stderr, LevelFilter::WARN);
    }

    #[test]
    fn events_reach_the_log_file_at_the_configured_verbosity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.log");
        let path_arg = format!("--log-file={}", path.display());
        let flags =
            parse(&["--logtostderr=false", &path_arg, "--stderrthreshold=FATAL"]).expect("flags");
        let (subscriber, guard) = build_subscriber(&flags, "agent", None).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("visible-info");
            tracing::debug!("hidden-debug");
        });
        drop(guard);
        let text = std::fs::read_to_string(&path).expect("log file");
        assert!(text.contains("visible-info"), "{text}");
        assert!(!text.contains("hidden-debug"), "{text}");
    }

    #[test]
    fn rust_log_overrides_verbosity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.log");
        let path_arg = format!("--log-file={}", path.display());
        let flags =
            parse(&["--logtostderr=false", &path_arg, "--stderrthreshold=FATAL"]).expect("flags");
        let (subscriber, guard) =
            build_subscriber(&flags, "agent", Some("debug")).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || tracing::debug!("now-visible"));
        drop(guard);
        assert!(std::fs::read_to_string(&path)
            .expect("log file")
            .contains("now-visible"));
        assert!(matches!(
            build_subscriber(&flags, "agent", Some("=[bogus")),
            Err(LoggingError::RustLog { .. })
        ));
    }

    #[test]
    fn full_log_file_is_truncated_and_restarted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small.log");
        let file = LogFile::open(&path, 10).expect("open");
        file.write_record(b"12345678\n").expect("first");
        file.write_record(b"abcdef\n").expect("second overflows");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "abcdef\n");
    }

    #[test]
    fn unwritable_log_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("x.log");
        assert!(matches!(
            LogFile::open(&path, 0),
            Err(LoggingError::OpenFile { .. })
        ));
    }
}

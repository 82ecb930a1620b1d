//! Finding (and building) the `proxy-server` and `proxy-agent` binaries to benchmark.
//!
//! The bench measures the binaries of its own profile: run with `cargo run --release`, it
//! looks in `target/release/`. `cargo run -p konnectivity-bench` builds only the bench, so it
//! runs `cargo build [--release] -p proxy-server -p proxy-agent --bins` itself first (a no-op
//! when they are up to date, and it keeps stale binaries from being measured).
//! `PROXY_SERVER_BIN` / `PROXY_AGENT_BIN` select other binaries (no build then).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{BenchError, Result};

/// Name of the server binary (and package).
pub const SERVER_BIN: &str = "proxy-server";
/// Name of the agent binary (and package).
pub const AGENT_BIN: &str = "proxy-agent";
/// Environment variable naming a server binary to use instead of the workspace's.
pub const SERVER_BIN_ENV: &str = "PROXY_SERVER_BIN";
/// Environment variable naming an agent binary to use instead of the workspace's.
pub const AGENT_BIN_ENV: &str = "PROXY_AGENT_BIN";

/// Variables cargo gives a package's process that must not leak into a nested build: build
/// scripts (ring's) watch some of them, and inheriting them would make the nested build and
/// the next outer build invalidate each other's artifacts.
const PACKAGE_ENV: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The two binaries under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `proxy-server`.
    pub server: PathBuf,
    /// `proxy-agent`.
    pub agent: PathBuf,
    /// Cargo profile directory name they come from (`release`, `debug`), or `custom`.
    pub profile: String,
}

/// `target/<profile>` of the running executable (integration tests live in `deps/`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::io("locating the running executable", e))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| BenchError::Binaries(format!("{} has no parent directory", exe.display())))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.toml")
}

fn build(profile_dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace_manifest())
        .args(["-p", SERVER_BIN, "-p", AGENT_BIN, "--bins"]);
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_") || k.starts_with("CARGO_BIN_") || PACKAGE_ENV.contains(&k) {
            cmd.env_remove(k);
        }
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    eprintln!(
        "[bench] building {SERVER_BIN} and {AGENT_BIN} (cargo build{} -p {SERVER_BIN} -p {AGENT_BIN})",
        if release { " --release" } else { "" }
    );
    let out = cmd
        .output()
        .map_err(|e| BenchError::Binaries(format!("cannot run cargo to build the binaries: {e}; build them with `cargo build --release -p {SERVER_BIN} -p {AGENT_BIN}` or set {SERVER_BIN_ENV}/{AGENT_BIN_ENV}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Binaries(format!(
            "`cargo build -p {SERVER_BIN} -p {AGENT_BIN}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Binaries {
    /// The binaries of the running executable's profile, built first when `build` is set;
    /// the environment overrides win.
    pub fn locate(build_first: bool) -> Result<Binaries> {
        let server_env = std::env::var_os(SERVER_BIN_ENV).map(PathBuf::from);
        let agent_env = std::env::var_os(AGENT_BIN_ENV).map(PathBuf::from);
        let dir = profile_dir()?;
        if build_first && (server_env.is_none() || agent_env.is_none()) {
            build(&dir)?;
        }
        let custom = server_env.is_some() || agent_env.is_some();
        let server = server_env.unwrap_or_else(|| dir.join(SERVER_BIN));
        let agent = agent_env.unwrap_or_else(|| dir.join(AGENT_BIN));
        for (path, var) in [(&server, SERVER_BIN_ENV), (&agent, AGENT_BIN_ENV)] {
            if !path.is_file() {
                return Err(BenchError::Binaries(format!(
                    "{} does not exist; build it (cargo build --release -p {SERVER_BIN} -p {AGENT_BIN}) or set {var}",
                    path.display()
                )));
            }
        }
        let profile = if custom {
            "custom".to_string()
        } else {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "unknown".to_string())
        };
        Ok(Binaries {
            server,
            agent,
            profile,
        })
    }
}

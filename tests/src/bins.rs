//! Finding (and, once per process, building) the workspace binaries the tests run:
//! `proxy-server`, `proxy-agent`, `kubelet-standin` and `konnectivity-kubectl`.
//!
//! `cargo test -p konnectivity-e2e` builds only this package's targets; the binaries of
//! other packages are not built for it. So the first test that needs a binary runs
//! `cargo build -p <its package> --bins` (a no-op when up to date) with the same cargo,
//! profile and target directory as the test itself. Cargo releases its build lock before
//! running tests, so this nested build does not deadlock.
//!
//! `PROXY_SERVER_BIN` / `PROXY_AGENT_BIN` / `KUBELET_STANDIN_BIN` / `KONNECTIVITY_KUBECTL_BIN`
//! override the paths (e.g. to run the suite against the upstream Go binaries); no build
//! happens for an overridden binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{HarnessError, Result};

/// Name of the server binary (and package).
pub const SERVER_BIN: &str = "proxy-server";
/// Name of the agent binary (and package).
pub const AGENT_BIN: &str = "proxy-agent";
/// Name of the kubelet stand-in binary.
pub const STANDIN_BIN: &str = "kubelet-standin";
/// Name of the kubectl-like CLI binary.
pub const KUBECTL_BIN: &str = "konnectivity-kubectl";

/// Every binary the tests may run: (binary, its package, the variable that overrides its path).
const BINARIES: [(&str, &str, &str); 4] = [
    (SERVER_BIN, "proxy-server", "PROXY_SERVER_BIN"),
    (AGENT_BIN, "proxy-agent", "PROXY_AGENT_BIN"),
    (STANDIN_BIN, "konnectivity-kubelet", "KUBELET_STANDIN_BIN"),
    (
        KUBECTL_BIN,
        "konnectivity-kubectl",
        "KONNECTIVITY_KUBECTL_BIN",
    ),
];

/// Variables cargo sets for one package's test run that must not leak into a nested build.
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

/// `target/<profile>` of the running executable: test executables live in
/// `target/<profile>/deps/`, binaries directly in `target/<profile>/`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| HarnessError::io("locating the running test executable", e))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| HarnessError::Process(format!("{} has no parent directory", exe.display())))?
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

/// Builds `package`'s binaries once per test process (index = its place in [`BINARIES`]).
fn build_once(profile_dir: &Path, index: usize, package: &str) -> Result<(), String> {
    static BUILT: [OnceLock<Result<(), String>>; BINARIES.len()] =
        [const { OnceLock::new() }; BINARIES.len()];
    BUILT[index]
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let mut cmd = Command::new(cargo);
            cmd.arg("build")
                .arg("--manifest-path")
                .arg(workspace_manifest())
                .args(["-p", package, "--bins"]);
            // Cargo gives the test process package-specific variables (CARGO_PKG_NAME,
            // CARGO_MANIFEST_DIR, …). Build scripts such as ring's declare
            // `rerun-if-env-changed` on them, so inheriting them would make the nested build
            // and the next outer build invalidate each other's artifacts on every run.
            for (key, _) in std::env::vars_os() {
                let Some(k) = key.to_str() else { continue };
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_BIN_")
                    || PACKAGE_ENV.contains(&k)
                {
                    cmd.env_remove(k);
                }
            }
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            // Same target directory as the test executable, whatever CARGO_TARGET_DIR says.
            if let Some(target) = profile_dir.parent() {
                cmd.arg("--target-dir").arg(target);
            }
            eprintln!("[e2e] building {package} (cargo build -p {package} --bins)");
            match cmd.output() {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "`cargo build -p {package}` failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => Err(format!("cannot run cargo to build {package}: {e}")),
            }
        })
        .clone()
}

/// Path of binary `name` (one of [`SERVER_BIN`], [`AGENT_BIN`], [`STANDIN_BIN`],
/// [`KUBECTL_BIN`]), building its package first if needed.
pub fn binary(name: &str) -> Result<PathBuf> {
    let (index, (_, package, override_var)) = BINARIES
        .iter()
        .enumerate()
        .find(|(_, (bin, _, _))| *bin == name)
        .ok_or_else(|| HarnessError::Process(format!("{name} is not a binary the tests know")))?;
    if let Some(path) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(path));
    }
    let dir = profile_dir()?;
    build_once(&dir, index, package).map_err(HarnessError::Process)?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Process(format!(
            "{} does not exist after building; set {override_var} to the binary to test",
            path.display(),
        )))
    }
}

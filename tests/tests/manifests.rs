//! The deployment artefacts agree with the code: every YAML document under `deploy/` and the
//! repository's `docker-compose.yml` is parsed, the command lines of their proxy-server and
//! proxy-agent containers go through the binaries' own flag parsers and validation
//! (`ServerFlags` / `AgentFlags`), and the egress selector configurations go through
//! `konnectivity_client::egress` (decode, kube-apiserver's validation, dialer construction).
//!
//! Paths named by flags must lie inside a volume the container mounts; they are then mirrored
//! into a temporary directory so that validation, which checks that certificate files exist,
//! runs to completion. Kubernetes `$(VAR)` references are expanded from the container's `env`,
//! with fixed stand-in values for downward-API fields.
//!
//! Beyond "the flags parse", the tests pin what makes the deployments work: the socket the
//! server listens on is the one the egress configuration names, agents dial the server's agent
//! port, probes hit the health ports, agents announce the node they run on, and in the compose
//! network the apiserver side shares no network with any kubelet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use konnectivity_certs::{Pki, PkiOptions};
use konnectivity_client::egress::{
    decode, ApiVersion, EgressSelector, EgressSelectorConfiguration, SelectionName,
};
use proxy_agent::config::AgentConfig;
use proxy_agent::flags::AgentFlags;
use proxy_server::config::{FrontendListen, FrontendMode, ServerConfig};
use proxy_server::flags::ServerFlags;
use serde::Deserialize;
use yaml_serde::Value;

/// Stand-in for the downward API's `spec.nodeName`.
const DUMMY_NODE_NAME: &str = "node-a";
/// Stand-in for the downward API's `status.hostIP` / `status.podIP`.
const DUMMY_HOST_IP: &str = "10.0.0.21";

/// proxy-server flags whose value is a file that must exist at start-up.
const SERVER_FILE_FLAGS: &[&str] = &[
    "server-cert",
    "server-key",
    "server-ca-cert",
    "cluster-cert",
    "cluster-key",
    "cluster-ca-cert",
    "kubeconfig",
];
/// proxy-agent flags whose value is a file that must exist at start-up.
const AGENT_FILE_FLAGS: &[&str] = &[
    "agent-cert",
    "agent-key",
    "ca-cert",
    "service-account-token-path",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

// ---------------------------------------------------------------------------------------------
// YAML helpers
// ---------------------------------------------------------------------------------------------

/// Every non-empty document of a (multi-document) YAML file.
fn yaml_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        // A parse error is returned for every further document too: stop at the first.
        let value = Value::deserialize(doc)
            .with_context(|| format!("{}: YAML document {i} does not parse", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A list of strings (`command`, `args`); numbers and booleans are taken as YAML would print them.
fn string_list(v: &Value, key: &str, origin: &str) -> anyhow::Result<Vec<String>> {
    seq_at(v, key)
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => bail!("{origin}: {key} holds a non-scalar item {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Containers and their flags
// ---------------------------------------------------------------------------------------------

/// Which of our binaries a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    Server,
    Agent,
}

/// A container running one of our binaries, as the runtime would start it.
#[derive(Debug, Clone)]
struct Container {
    /// Where it was found, for messages (`deploy/x.yaml: Pod/name/container`).
    origin: String,
    binary: Binary,
    /// argv with `argv[0]` the binary name and every variable expanded.
    argv: Vec<String>,
    /// The container's environment after expansion (what `$PROXY_SERVER_ID` etc. read).
    env: BTreeMap<String, String>,
    /// Paths inside the container where volumes are mounted.
    mounts: Vec<PathBuf>,
}

/// The binary a container runs, from the basename of its command or, without one, its image.
fn binary_of(command0: Option<&str>, image: &str) -> Option<Binary> {
    let by_name = |name: &str| match name {
        "proxy-server" => Some(Binary::Server),
        "proxy-agent" => Some(Binary::Agent),
        _ => None,
    };
    if let Some(cmd) = command0 {
        return by_name(cmd.rsplit('/').next().unwrap_or(cmd));
    }
    let repo = image.split(':').next().unwrap_or(image);
    match repo.rsplit('/').next().unwrap_or(repo) {
        "server" | "proxy-server" => Some(Binary::Server),
        "agent" | "proxy-agent" => Some(Binary::Agent),
        _ => None,
    }
}

/// Kubernetes' `$(VAR)` expansion of command, args and env values: a defined variable is
/// replaced, `$$` is a literal `$`, anything else is left as written.
fn expand_k8s(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(&vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value the downward API would give a `fieldRef`.
fn downward_api(field_path: &str, namespace: &str, pod_name: &str) -> anyhow::Result<String> {
    Ok(match field_path {
        "spec.nodeName" => DUMMY_NODE_NAME.to_string(),
        "status.hostIP" | "status.podIP" => DUMMY_HOST_IP.to_string(),
        "metadata.namespace" => namespace.to_string(),
        "metadata.name" => pod_name.to_string(),
        "spec.serviceAccountName" => "konnectivity-agent".to_string(),
        other => bail!("fieldRef {other:?} has no stand-in value in this test"),
    })
}

/// The value of the last `--name=value` / `--name value` in `argv`.
fn flag_value(argv: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let mut found = None;
    let mut i = 1;
    while i < argv.len() {
        let arg = &argv[i];
        if let Some(v) = arg.strip_prefix(&format!("{long}=")) {
            found = Some(v.to_string());
        } else if *arg == long && i + 1 < argv.len() && !argv[i + 1].starts_with("--") {
            found = Some(argv[i + 1].clone());
            i += 1;
        }
        i += 1;
    }
    found
}

/// The mount point containing `path`, if any.
fn mount_of<'a>(mounts: &'a [PathBuf], path: &Path) -> Option<&'a Path> {
    mounts
        .iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .map(PathBuf::as_path)
}

/// Checks every file flag names an absolute path inside a mounted volume, then rewrites it to
/// a file created under `mirror` (same relative path), so validation can run to completion.
fn mirror_file_flags(
    c: &Container,
    file_flags: &[&str],
    mirror: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut argv = c.argv.clone();
    for flag in file_flags {
        let Some(value) = flag_value(&c.argv, flag) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let path = Path::new(&value);
        ensure!(
            path.is_absolute(),
            "{}: --{flag}={value} is not an absolute path",
            c.origin
        );
        ensure!(
            mount_of(&c.mounts, path).is_some(),
            "{}: --{flag}={value} is not inside any mounted volume (mounts: {:?})",
            c.origin,
            c.mounts
        );
        let mirrored = mirror.join(path.strip_prefix("/")?);
        if let Some(dir) = mirrored.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &mirrored,
            "placeholder: validation only checks that the file exists",
        )?;
        let mirrored = mirrored.display().to_string();
        for arg in argv.iter_mut().skip(1) {
            if *arg == format!("--{flag}={value}") {
                *arg = format!("--{flag}={mirrored}");
            } else if *arg == value {
                *arg = mirrored.clone();
            }
        }
    }
    Ok(argv)
}

/// With the paths as written (files absent here), validation may only fail because a file
/// named by one of `file_flags` does not exist.
fn only_missing_file_errors(
    c: &Container,
    file_flags: &[&str],
    result: Result<(), String>,
) -> anyhow::Result<()> {
    let Err(message) = result else {
        return Ok(());
    };
    let about_a_file = message.contains("no such file or directory")
        && file_flags
            .iter()
            .filter_map(|f| flag_value(&c.argv, f))
            .any(|path| !path.is_empty() && message.contains(&path));
    ensure!(
        about_a_file,
        "{}: the flags are refused for a reason other than a missing certificate file: {message}",
        c.origin
    );
    Ok(())
}

/// Parses and fully validates a proxy-server command line.
fn server_config(c: &Container, mirror: &Path) -> anyhow::Result<ServerConfig> {
    let env = |name: &str| c.env.get(name).cloned();
    let flags = ServerFlags::try_parse_from(&c.argv)
        .map_err(|e| anyhow::anyhow!("{}: proxy-server refuses its flags:\n{e}", c.origin))?;
    let as_written = flags.into_config_with_env(&env).map(drop);
    only_missing_file_errors(c, SERVER_FILE_FLAGS, as_written.map_err(|e| e.to_string()))?;

    let argv = mirror_file_flags(c, SERVER_FILE_FLAGS, mirror)?;
    let config = ServerFlags::try_parse_from(&argv)
        .with_context(|| format!("{}: proxy-server flags (files mirrored)", c.origin))?
        .into_config_with_env(&env)
        .map_err(|e| anyhow::anyhow!("{}: proxy-server refuses its flags: {e}", c.origin))?;
    if let FrontendListen::Uds { path, .. } = &config.frontend.listen {
        ensure!(
            mount_of(&c.mounts, path).is_some(),
            "{}: the Unix socket {} is not in a mounted volume, so kube-apiserver cannot reach it",
            c.origin,
            path.display()
        );
    }
    Ok(config)
}

/// Parses and fully validates a proxy-agent command line.
fn agent_config(c: &Container, mirror: &Path) -> anyhow::Result<AgentConfig> {
    let env = |name: &str| c.env.get(name).cloned();
    let flags = AgentFlags::try_parse_from(&c.argv)
        .map_err(|e| anyhow::anyhow!("{}: proxy-agent refuses its flags:\n{e}", c.origin))?;
    let as_written = flags.into_config_with_env(&env).map(drop);
    only_missing_file_errors(c, AGENT_FILE_FLAGS, as_written.map_err(|e| e.to_string()))?;

    let argv = mirror_file_flags(c, AGENT_FILE_FLAGS, mirror)?;
    AgentFlags::try_parse_from(&argv)
        .with_context(|| format!("{}: proxy-agent flags (files mirrored)", c.origin))?
        .into_config_with_env(&env)
        .map_err(|e| anyhow::anyhow!("{}: proxy-agent refuses its flags: {e}", c.origin))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

/// Kinds a file under deploy/ may hold; anything else fails the test so that a new manifest
/// is not silently left unchecked.
const KNOWN_KINDS: &[&str] = &[
    "Pod",
    "DaemonSet",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "EgressSelectorConfiguration",
];

/// One document of deploy/, with the file it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        str_at(&self.value, "kind").unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value
            .get("metadata")
            .and_then(|m| str_at(m, "name"))
            .unwrap_or("")
    }

    fn namespace(&self) -> &str {
        self.value
            .get("metadata")
            .and_then(|m| str_at(m, "namespace"))
            .unwrap_or("default")
    }

    fn origin(&self) -> String {
        format!("{}: {}/{}", self.file, self.kind(), self.name())
    }

    /// The pod spec of a Pod or of a workload's template.
    fn pod_spec(&self) -> Option<&Value> {
        match self.kind() {
            "Pod" => self.value.get("spec"),
            "DaemonSet" => self.value.get("spec")?.get("template")?.get("spec"),
            _ => None,
        }
    }
}

fn deploy_docs() -> anyhow::Result<Vec<Doc>> {
    let dir = repo_root().join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let file = format!(
            "deploy/{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        for value in yaml_documents(&path)? {
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    Ok(docs)
}

/// The containers of a pod spec that run our binaries.
fn pod_containers(doc: &Doc, spec: &Value) -> anyhow::Result<Vec<Container>> {
    let volumes: BTreeSet<&str> = seq_at(spec, "volumes")
        .iter()
        .filter_map(|v| str_at(v, "name"))
        .collect();
    let mut out = Vec::new();
    for c in seq_at(spec, "containers") {
        let cname = str_at(c, "name").unwrap_or("?");
        let origin = format!("{}/{cname}", doc.origin());
        let image = str_at(c, "image").unwrap_or("");
        let command = string_list(c, "command", &origin)?;
        let Some(binary) = binary_of(command.first().map(String::as_str), image) else {
            continue;
        };

        let mut env = BTreeMap::new();
        for e in seq_at(c, "env") {
            let name = str_at(e, "name").with_context(|| format!("{origin}: env without name"))?;
            let value = if let Some(v) = str_at(e, "value") {
                expand_k8s(v, &env)
            } else if let Some(path) = e
                .get("valueFrom")
                .and_then(|f| f.get("fieldRef"))
                .and_then(|f| str_at(f, "fieldPath"))
            {
                downward_api(path, doc.namespace(), doc.name())
                    .with_context(|| format!("{origin}: env {name}"))?
            } else {
                bail!("{origin}: env {name} has neither value nor valueFrom.fieldRef");
            };
            env.insert(name.to_string(), value);
        }

        let mut argv: Vec<String> = if command.is_empty() {
            bail!("{origin}: no command; the image's entrypoint is not known to this test")
        } else {
            command.iter().map(|a| expand_k8s(a, &env)).collect()
        };
        argv.extend(
            string_list(c, "args", &origin)?
                .iter()
                .map(|a| expand_k8s(a, &env)),
        );
        if let Some(unexpanded) = argv.iter().find(|a| a.contains("$(")) {
            bail!("{origin}: {unexpanded:?} references a variable the container does not define");
        }

        let mut mounts = Vec::new();
        for m in seq_at(c, "volumeMounts") {
            let vname = str_at(m, "name").unwrap_or("");
            ensure!(
                volumes.contains(vname),
                "{origin}: volumeMount {vname:?} names no volume of the pod"
            );
            mounts.push(PathBuf::from(str_at(m, "mountPath").unwrap_or("")));
        }
        out.push(Container {
            origin,
            binary,
            argv,
            env,
            mounts,
        });
    }
    Ok(out)
}

/// `httpGet.port` of a probe, which must be a number here (named ports are not used).
fn probe_port(container: &Value, probe: &str) -> Option<u16> {
    container
        .get(probe)?
        .get("httpGet")?
        .get("port")?
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
}

/// The container spec named like `c.origin`'s last segment.
fn container_value<'a>(spec: &'a Value, c: &Container) -> Option<&'a Value> {
    let cname = c.origin.rsplit('/').next()?;
    seq_at(spec, "containers")
        .iter()
        .find(|v| str_at(v, "name") == Some(cname))
}

/// Every document under deploy/ parses, has a known kind, apiVersion and name.
#[test]
fn every_deploy_document_parses_and_has_a_known_kind() -> anyhow::Result<()> {
    let docs = deploy_docs()?;
    ensure!(!docs.is_empty(), "no YAML document under deploy/");
    let mut kinds = BTreeSet::new();
    for d in &docs {
        ensure!(
            KNOWN_KINDS.contains(&d.kind()),
            "{}: kind {:?} is not checked by this test; add a check for it",
            d.file,
            d.kind()
        );
        ensure!(
            str_at(&d.value, "apiVersion").is_some_and(|v| !v.is_empty()),
            "{}: no apiVersion",
            d.origin()
        );
        if d.kind() != "EgressSelectorConfiguration" {
            ensure!(!d.name().is_empty(), "{}: no metadata.name", d.file);
        }
        kinds.insert(d.kind().to_string());
    }
    for required in ["Pod", "DaemonSet", "EgressSelectorConfiguration"] {
        ensure!(
            kinds.contains(required),
            "deploy/ has no {required}: {kinds:?}"
        );
    }
    Ok(())
}

/// The static pod's proxy-server and the DaemonSet's proxy-agent command lines are accepted
/// by the binaries and fit together and with the egress selector configuration.
#[test]
fn deploy_flags_are_accepted_by_the_binaries_and_fit_together() -> anyhow::Result<()> {
    let docs = deploy_docs()?;
    let mirror = tempfile::tempdir()?;
    let mut servers = Vec::new();
    let mut agents = Vec::new();
    for d in &docs {
        let Some(spec) = d.pod_spec() else { continue };
        for c in pod_containers(d, spec)? {
            let cv = container_value(spec, &c).context("container vanished")?;
            match c.binary {
                Binary::Server => {
                    let config = server_config(&c, mirror.path())?;
                    ensure!(
                        d.kind() == "Pod"
                            && spec.get("hostNetwork").and_then(Value::as_bool) == Some(true),
                        "{}: the proxy-server must be a host-network static Pod",
                        c.origin
                    );
                    ensure!(
                        probe_port(cv, "livenessProbe") == Some(config.health_addr.port()),
                        "{}: livenessProbe does not target the health port {}",
                        c.origin,
                        config.health_addr.port()
                    );
                    if let Some(id) = c.env.get(proxy_server::flags::SERVER_ID_ENV) {
                        ensure!(
                            config.server_id == *id,
                            "{}: ${} is not used as the server id",
                            c.origin,
                            proxy_server::flags::SERVER_ID_ENV
                        );
                    }
                    servers.push((c, config));
                }
                Binary::Agent => {
                    let config = agent_config(&c, mirror.path())?;
                    ensure!(
                        spec.get("hostNetwork").and_then(Value::as_bool) == Some(true),
                        "{}: the agent must use the host network to reach kubelets as the node",
                        c.origin
                    );
                    let tolerates_all = seq_at(spec, "tolerations")
                        .iter()
                        .any(|t| str_at(t, "operator") == Some("Exists") && t.get("key").is_none());
                    ensure!(
                        tolerates_all,
                        "{}: no `operator: Exists` toleration",
                        c.origin
                    );
                    for probe in ["livenessProbe", "readinessProbe"] {
                        ensure!(
                            probe_port(cv, probe) == Some(config.health_addr.port()),
                            "{}: {probe} does not target the health port {}",
                            c.origin,
                            config.health_addr.port()
                        );
                    }
                    ensure!(
                        config.identity.identifiers
                            == format!("ipv4={DUMMY_HOST_IP}&host={DUMMY_NODE_NAME}"),
                        "{}: --agent-identifiers does not announce the node's IP and name: {:?}",
                        c.origin,
                        config.identity.identifiers
                    );
                    agents.push((c, config));
                }
            }
        }
    }
    ensure!(
        servers.len() == 1,
        "expected one proxy-server container in deploy/, found {}",
        servers.len()
    );
    ensure!(!agents.is_empty(), "no proxy-agent container in deploy/");
    let (server, server_cfg) = &servers[0];
    ensure!(
        server_cfg
            .proxy_strategies
            .contains(&proxy_server::config::ProxyStrategy::DestHost),
        "{}: without the destHost strategy, dials to a kubelet go to a random node",
        server.origin
    );
    for (agent, agent_cfg) in &agents {
        ensure!(
            agent_cfg.server.port == server_cfg.backend.addr.port(),
            "{}: dials port {} but the server's agent port is {}",
            agent.origin,
            agent_cfg.server.port,
            server_cfg.backend.addr.port()
        );
        ensure!(
            agent_cfg.server.client_cert.is_some() == server_cfg.backend.client_ca.is_some(),
            "{}: the server requires agent client certificates iff agents present one",
            agent.origin
        );
    }

    // The default egress selector configuration points at the server's socket and protocol.
    let FrontendListen::Uds { path: socket, .. } = &server_cfg.frontend.listen else {
        bail!(
            "{}: the static pod's frontend is not a Unix socket",
            server.origin
        );
    };
    let egress = load_egress(&repo_root().join("deploy/egress-selector-configuration.yaml"))?;
    let uds = cluster_uds(&egress).context("deploy/egress-selector-configuration.yaml")?;
    ensure!(
        Path::new(&uds) == socket,
        "egress-selector-configuration.yaml dials {uds} but the server listens on {}",
        socket.display()
    );
    let protocol = cluster_protocol(&egress).unwrap_or_default();
    let expected = match server_cfg.frontend.mode {
        FrontendMode::Grpc => "GRPC",
        FrontendMode::HttpConnect => "HTTPConnect",
    };
    ensure!(
        protocol == expected,
        "egress-selector-configuration.yaml speaks {protocol} to a server in {expected} mode"
    );
    Ok(())
}

/// RBAC stays namespaced and binds the DaemonSet's own ServiceAccount.
#[test]
fn agent_rbac_is_namespaced_and_binds_the_daemonset_service_account() -> anyhow::Result<()> {
    let docs = deploy_docs()?;
    let find = |kind: &'static str| docs.iter().filter(move |d| d.kind() == kind);
    let ds = find("DaemonSet")
        .next()
        .context("no DaemonSet in deploy/")?;
    let sa_name = ds
        .pod_spec()
        .and_then(|s| str_at(s, "serviceAccountName"))
        .context("the DaemonSet names no serviceAccountName")?;
    ensure!(
        find("ServiceAccount").any(|d| d.name() == sa_name && d.namespace() == ds.namespace()),
        "ServiceAccount {sa_name} is not defined next to the DaemonSet"
    );
    let binding = find("RoleBinding")
        .find(|b| {
            seq_at(&b.value, "subjects").iter().any(|s| {
                str_at(s, "kind") == Some("ServiceAccount") && str_at(s, "name") == Some(sa_name)
            })
        })
        .context("no RoleBinding for the agent's ServiceAccount")?;
    let role = binding
        .value
        .get("roleRef")
        .and_then(|r| str_at(r, "name"))
        .context("RoleBinding without roleRef.name")?;
    ensure!(
        find("Role").any(|r| r.name() == role && r.namespace() == binding.namespace()),
        "RoleBinding refers to Role {role}, which deploy/ does not define"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Egress selector configurations
// ---------------------------------------------------------------------------------------------

fn load_egress(path: &Path) -> anyhow::Result<EgressSelectorConfiguration> {
    let docs = yaml_documents(path)?;
    ensure!(
        docs.len() == 1,
        "{}: kube-apiserver reads exactly one object, the file has {} documents",
        path.display(),
        docs.len()
    );
    let bytes = std::fs::read(path)?;
    decode(&bytes).with_context(|| format!("{}: does not decode", path.display()))
}

fn cluster_selection(
    config: &EgressSelectorConfiguration,
) -> Option<&konnectivity_client::egress::EgressSelection> {
    config
        .egress_selections
        .iter()
        .find(|s| SelectionName::parse(&s.name) == Some(SelectionName::Cluster))
}

fn cluster_uds(config: &EgressSelectorConfiguration) -> anyhow::Result<String> {
    cluster_selection(config)
        .and_then(|s| s.connection.transport.as_ref())
        .and_then(|t| t.uds.as_ref())
        .map(|u| u.uds_name.clone())
        .context("the cluster selection has no Unix socket transport")
}

fn cluster_protocol(config: &EgressSelectorConfiguration) -> Option<String> {
    cluster_selection(config).map(|s| s.connection.proxy_protocol.clone())
}

/// Every egress selector configuration of the repository decodes, passes kube-apiserver's
/// validation and yields a proxy dialer for the `cluster` selection. TLS files it names are
/// replaced by a real PKI's files of the same name (the dialer loads them).
#[test]
fn egress_selector_configurations_decode_validate_and_build_a_cluster_dialer() -> anyhow::Result<()>
{
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("deploy"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("egress-selector-configuration") && n.ends_with(".yaml")
            })
        })
        .collect();
    files.push(root.join("docker/egress-selector-configuration.yaml"));
    files.sort();
    ensure!(
        files.len() >= 3,
        "expected the gRPC, HTTP CONNECT and compose configurations: {files:?}"
    );

    let tmp = tempfile::tempdir()?;
    let pki = Pki::generate(&PkiOptions::default())?.write(tmp.path().join("pki"), false)?;
    let mut protocols = BTreeSet::new();
    for path in &files {
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        let mut config = load_egress(path)?;
        ensure!(
            config.version() == Some(ApiVersion::V1Beta1),
            "{shown}: use apiserver.k8s.io/v1beta1 (what current kube-apiserver documents)"
        );
        let protocol = cluster_protocol(&config)
            .with_context(|| format!("{shown}: no `cluster` selection"))?;
        protocols.insert(protocol);

        // Files named by tlsConfig: as written they are absent here, which must be the only
        // complaint; then point them at real PEM files with the same names.
        let names_tls_files = config.egress_selections.iter().any(|s| {
            s.connection
                .transport
                .as_ref()
                .and_then(|t| t.tcp.as_ref())
                .is_some_and(|t| t.tls_config.is_some())
        });
        if names_tls_files {
            if let Err(e) = config.validate() {
                ensure!(
                    e.errors.iter().all(|f| f.detail.contains("does not exist")),
                    "{shown}: invalid for a reason other than absent TLS files: {e}"
                );
            }
        }
        for s in &mut config.egress_selections {
            let Some(tls) = s
                .connection
                .transport
                .as_mut()
                .and_then(|t| t.tcp.as_mut())
                .and_then(|t| t.tls_config.as_mut())
            else {
                continue;
            };
            for file in [
                &mut tls.ca_bundle,
                &mut tls.client_cert,
                &mut tls.client_key,
            ] {
                if file.is_empty() {
                    continue;
                }
                let name = Path::new(file.as_str())
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_string();
                let real = pki
                    .files()
                    .into_iter()
                    .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(name.as_str()))
                    .with_context(|| {
                        format!("{shown}: {file} is not a konnectivity-certs file name")
                    })?;
                *file = real.display().to_string();
            }
        }
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{shown}: kube-apiserver would refuse it: {e}"))?;
        let selector = EgressSelector::from_config(&config)
            .map_err(|e| anyhow::anyhow!("{shown}: no dialer: {e}"))?;
        ensure!(
            !selector.lookup(SelectionName::Cluster).is_direct(),
            "{shown}: the cluster selection dials directly, bypassing the proxy"
        );
    }
    ensure!(
        protocols.contains("GRPC") && protocols.contains("HTTPConnect"),
        "expected both a GRPC and an HTTPConnect configuration, found {protocols:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

/// One compose service.
struct Service {
    name: String,
    value: Value,
}

impl Service {
    /// Networks the service is attached to, with its fixed IPv4 address where set.
    fn networks(&self) -> BTreeMap<String, Option<String>> {
        match self.value.get("networks") {
            Some(Value::Sequence(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .map(|n| (n.to_string(), None))
                .collect(),
            Some(Value::Mapping(map)) => map
                .iter()
                .filter_map(|(k, v)| {
                    let addr = v
                        .get("ipv4_address")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    Some((k.as_str()?.to_string(), addr))
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// `(source, target)` of each volume entry in short syntax.
    fn volumes(&self) -> Vec<(String, PathBuf)> {
        seq_at(&self.value, "volumes")
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|v| {
                let mut parts = v.split(':');
                Some((parts.next()?.to_string(), PathBuf::from(parts.next()?)))
            })
            .collect()
    }

    /// The command as a single string (for shell commands).
    fn command_text(&self) -> String {
        match self.value.get("command") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }

    fn runs_kubelet(&self) -> bool {
        self.command_text().contains("kubelet-standin")
    }
}

fn compose() -> anyhow::Result<(Value, Vec<Service>)> {
    let path = repo_root().join("docker-compose.yml");
    let mut docs = yaml_documents(&path)?;
    ensure!(docs.len() == 1, "docker-compose.yml must hold one document");
    let doc = docs.remove(0);
    let services = doc
        .get("services")
        .and_then(Value::as_mapping)
        .context("docker-compose.yml has no services")?
        .iter()
        .filter_map(|(k, v)| {
            Some(Service {
                name: k.as_str()?.to_string(),
                value: v.clone(),
            })
        })
        .collect();
    Ok((doc, services))
}

/// Compose's own interpolation of `$$` (a literal `$`); `${VAR}` in our binaries' flags would
/// depend on the caller's environment and is refused.
fn compose_arg(s: &str, origin: &str) -> anyhow::Result<String> {
    let literal = s.replace("$$", "\u{0}");
    ensure!(
        !literal.contains('$'),
        "{origin}: {s:?} depends on compose variable interpolation"
    );
    Ok(literal.replace('\u{0}', "$"))
}

/// The proxy-server and proxy-agent services of the compose file, as containers.
fn compose_containers(services: &[Service]) -> anyhow::Result<Vec<Container>> {
    let mut out = Vec::new();
    for s in services {
        let origin = format!("docker-compose.yml: {}", s.name);
        let image = str_at(&s.value, "image").unwrap_or("");
        let command = string_list(&s.value, "command", &origin)?;
        let entrypoint = string_list(&s.value, "entrypoint", &origin)?;
        // Our server and agent images have their binary as entrypoint; a command starting
        // with the binary's name replaces it (the node image has none).
        let binary = binary_of(entrypoint.first().map(String::as_str), image)
            .or_else(|| binary_of(command.first().map(String::as_str), ""));
        let Some(binary) = binary else { continue };
        let name = match binary {
            Binary::Server => "proxy-server",
            Binary::Agent => "proxy-agent",
        };
        let mut argv = vec![name.to_string()];
        let skip = usize::from(command.first().is_some_and(|c| c.ends_with(name)));
        for arg in command.iter().skip(skip) {
            argv.push(compose_arg(arg, &origin)?);
        }
        let env = match s.value.get("environment") {
            Some(Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        out.push(Container {
            origin,
            binary,
            argv,
            env,
            mounts: s.volumes().into_iter().map(|(_, target)| target).collect(),
        });
    }
    Ok(out)
}

/// The compose file's proxy-server and proxy-agent command lines are accepted by the binaries
/// and match each other, the egress configuration and the kubelet addresses.
#[test]
fn compose_flags_are_accepted_and_agents_announce_their_kubelet() -> anyhow::Result<()> {
    let (_, services) = compose()?;
    let mirror = tempfile::tempdir()?;
    let containers = compose_containers(&services)?;
    let service = |c: &Container| {
        services
            .iter()
            .find(|s| c.origin.ends_with(&format!(": {}", s.name)))
    };
    let mut server = None;
    let mut agents = Vec::new();
    for c in &containers {
        match c.binary {
            Binary::Server => server = Some((c, server_config(c, mirror.path())?)),
            Binary::Agent => agents.push((c, agent_config(c, mirror.path())?)),
        }
    }
    let (server_c, server_cfg) = server.context("no proxy-server service in docker-compose.yml")?;
    ensure!(
        agents.len() >= 2,
        "expected an agent per node (two or more), found {}",
        agents.len()
    );

    let kubelets: Vec<&Service> = services.iter().filter(|s| s.runs_kubelet()).collect();
    ensure!(
        kubelets.len() >= 2,
        "expected a kubelet stand-in per node (two or more)"
    );
    let certs_command = services
        .iter()
        .find(|s| s.command_text().contains("konnectivity-certs"))
        .map(Service::command_text)
        .context("no service generates the PKI with konnectivity-certs")?;

    let server_svc = service(server_c).context("server service")?;
    for (agent_c, agent_cfg) in &agents {
        let agent_svc = service(agent_c).context("agent service")?;
        ensure!(
            agent_cfg.server.port == server_cfg.backend.addr.port(),
            "{}: dials port {} but the server's agent port is {}",
            agent_c.origin,
            agent_cfg.server.port,
            server_cfg.backend.addr.port()
        );
        let shared: Vec<_> = agent_svc
            .networks()
            .into_keys()
            .filter(|n| server_svc.networks().contains_key(n))
            .collect();
        ensure!(
            !shared.is_empty(),
            "{}: shares no network with the proxy-server",
            agent_c.origin
        );
        ensure!(
            agent_cfg.server.host == server_svc.name
                || server_svc.networks().values().any(|a| a.as_deref() == Some(&agent_cfg.server.host)),
            "{}: --proxy-server-host={} is neither the server's service name nor one of its addresses",
            agent_c.origin,
            agent_cfg.server.host
        );
        ensure!(
            certs_command.contains(&agent_cfg.server.host),
            "{}: --proxy-server-host={} is not a SAN the certs service puts in agent-server.crt",
            agent_c.origin,
            agent_cfg.server.host
        );

        // The announced ipv4 is the address of a kubelet on one of the agent's networks.
        let ipv4 = agent_cfg
            .identity
            .identifiers
            .split('&')
            .find_map(|kv| kv.strip_prefix("ipv4="))
            .with_context(|| {
                format!("{}: --agent-identifiers announces no ipv4", agent_c.origin)
            })?;
        let kubelet = kubelets
            .iter()
            .find(|k| k.networks().values().any(|a| a.as_deref() == Some(ipv4)))
            .with_context(|| {
                format!(
                    "{}: announces {ipv4}, which is no kubelet's address",
                    agent_c.origin
                )
            })?;
        ensure!(
            kubelet
                .networks()
                .iter()
                .any(|(n, a)| a.as_deref() == Some(ipv4) && agent_svc.networks().contains_key(n)),
            "{}: announces {ipv4} but is not on that kubelet's network",
            agent_c.origin
        );
        ensure!(
            certs_command.contains(&format!(",{ipv4}")),
            "the certs service does not give kubelet {} the IP SAN {ipv4}",
            kubelet.name
        );
    }

    // The apiserver side's egress configuration (bind-mounted) dials the server's socket,
    // through a volume the two services share.
    let FrontendListen::Uds { path: socket, .. } = &server_cfg.frontend.listen else {
        bail!("{}: the frontend is not a Unix socket", server_c.origin);
    };
    let egress_path = repo_root().join("docker/egress-selector-configuration.yaml");
    let uds = cluster_uds(&load_egress(&egress_path)?)?;
    ensure!(
        Path::new(&uds) == socket,
        "docker/egress-selector-configuration.yaml dials {uds}, the server listens on {}",
        socket.display()
    );
    let apiserver = services
        .iter()
        .find(|s| {
            s.volumes()
                .iter()
                .any(|(src, _)| src.ends_with("docker/egress-selector-configuration.yaml"))
        })
        .context("no service mounts docker/egress-selector-configuration.yaml")?;
    let server_volume = server_svc
        .volumes()
        .into_iter()
        .filter(|(_, target)| socket.starts_with(target))
        .max_by_key(|(_, target)| target.as_os_str().len())
        .context("the socket is not in a volume of the server")?;
    ensure!(
        apiserver
            .volumes()
            .iter()
            .any(|(src, target)| *src == server_volume.0
                && Path::new(&uds).starts_with(target)
                && target == &server_volume.1),
        "{} does not mount the server's socket volume {} at {}",
        apiserver.name,
        server_volume.0,
        server_volume.1.display()
    );
    Ok(())
}

/// The point of the compose network: nothing on the apiserver's side can route to a kubelet.
/// Every network is internal, the apiserver shares no network with a kubelet, and the
/// proxy-server is on no kubelet's network either.
#[test]
fn compose_control_plane_shares_no_network_with_any_kubelet() -> anyhow::Result<()> {
    let (doc, services) = compose()?;
    let networks = doc
        .get("networks")
        .and_then(Value::as_mapping)
        .context("docker-compose.yml declares no networks")?;
    for (name, net) in networks {
        let name = name.as_str().unwrap_or("?");
        ensure!(
            net.get("internal").and_then(Value::as_bool) == Some(true),
            "network {name:?} is not `internal: true`: it would have a gateway to the host"
        );
    }
    let kubelet_networks: BTreeSet<String> = services
        .iter()
        .filter(|s| s.runs_kubelet())
        .flat_map(|s| s.networks().into_keys())
        .collect();
    ensure!(
        kubelet_networks.len() >= 2,
        "expected one network per node: {kubelet_networks:?}"
    );
    let control_side: Vec<&Service> = services
        .iter()
        .filter(|s| {
            s.command_text().contains("konnectivity-kubectl")
                || s.volumes()
                    .iter()
                    .any(|(src, _)| src.contains("egress-selector"))
                || str_at(&s.value, "image").is_some_and(|i| i.contains("/server:"))
        })
        .collect();
    ensure!(
        control_side.len() >= 2,
        "expected the proxy-server and the apiserver services"
    );
    for s in control_side {
        ensure!(
            str_at(&s.value, "network_mode").is_none(),
            "{}: network_mode would bypass the declared networks",
            s.name
        );
        let nets = s.networks();
        ensure!(
            !nets.is_empty(),
            "{}: attached to the default network",
            s.name
        );
        for n in nets.keys() {
            ensure!(
                !kubelet_networks.contains(n),
                "{} is on network {n}, where a kubelet is: the control plane could reach it directly",
                s.name
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The helpers themselves
// ---------------------------------------------------------------------------------------------

#[test]
fn k8s_expansion_replaces_defined_variables_and_keeps_the_rest() {
    let vars: BTreeMap<String, String> = [("A", "1"), ("HOST_IP", "10.0.0.1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        expand_k8s("ipv4=$(HOST_IP)&a=$(A)", &vars),
        "ipv4=10.0.0.1&a=1"
    );
    assert_eq!(expand_k8s("$(MISSING)", &vars), "$(MISSING)");
    assert_eq!(expand_k8s("$$(A)", &vars), "$(A)");
    assert_eq!(expand_k8s("cost $5 $(A", &vars), "cost $5 $(A");
}

#[test]
fn flag_value_takes_the_last_occurrence_in_either_syntax() {
    let argv: Vec<String> = ["bin", "--a=1", "--b", "x", "--a", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(flag_value(&argv, "a").as_deref(), Some("2"));
    assert_eq!(flag_value(&argv, "b").as_deref(), Some("x"));
    assert_eq!(flag_value(&argv, "c"), None);
}

#[test]
fn a_flag_naming_a_file_outside_every_volume_is_refused() {
    let c = Container {
        origin: "test".into(),
        binary: Binary::Agent,
        argv: vec![
            "proxy-agent".into(),
            "--ca-cert=/etc/elsewhere/ca.crt".into(),
        ],
        env: BTreeMap::new(),
        mounts: vec![PathBuf::from("/etc/pki")],
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = mirror_file_flags(&c, AGENT_FILE_FLAGS, tmp.path()).expect_err("must refuse");
    assert!(
        err.to_string().contains("not inside any mounted volume"),
        "{err}"
    );
}

#[test]
fn a_refusal_other_than_a_missing_file_is_reported() {
    let c = Container {
        origin: "test".into(),
        binary: Binary::Server,
        argv: vec!["proxy-server".into(), "--mode=bogus".into()],
        env: BTreeMap::new(),
        mounts: Vec::new(),
    };
    let flags = ServerFlags::try_parse_from(&c.argv).expect("parses");
    let result = flags
        .into_config_with_env(&|_| None)
        .map(drop)
        .map_err(|e| e.to_string());
    assert!(only_missing_file_errors(&c, SERVER_FILE_FLAGS, result).is_err());
}

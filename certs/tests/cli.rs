//! Runs the real `konnectivity-certs` binary.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_konnectivity-certs"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn cli_writes_every_file_and_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let dir_s = dir.to_str().unwrap();
    let out = run(&[
        "--dir",
        dir_s,
        "--agent-name",
        "node1",
        "--agent-name",
        "node2",
        "--kubelet-node",
        "node1=node1.local,10.0.0.1",
        "--server-san",
        "proxy.local,127.0.0.1",
        "--key-type",
        "ed25519",
        "--days",
        "10",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = stdout_lines(&out);
    let names: Vec<&str> = listed
        .iter()
        .map(|l| Path::new(l).file_name().unwrap().to_str().unwrap())
        .collect();
    for expected in [
        "frontend-ca.crt",
        "frontend-ca.key",
        "frontend-server.crt",
        "frontend-client.key",
        "agent-ca.crt",
        "agent-server.key",
        "agent-node1.crt",
        "agent-node2.key",
        "kubelet-ca.crt",
        "kubelet-node1.crt",
        "kubelet-node1.key",
        "kubelet-client.crt",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.contains(&"agent-client.crt") && !names.contains(&"kubelet-server.crt"));
    assert_eq!(listed.len(), std::fs::read_dir(&dir).unwrap().count());
    for line in &listed {
        let mode = std::fs::metadata(line).unwrap().permissions().mode() & 0o777;
        let want = if line.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode, want, "{line}");
    }
    // The SAN flag reached the certificate.
    let pem = std::fs::read(dir.join("frontend-server.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        sans.contains("proxy.local") && !sans.contains("localhost"),
        "{sans}"
    );
}

#[test]
fn cli_refuses_to_overwrite_without_force_and_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert!(run(&["--dir", dir]).status.success());
    let before = std::fs::read(tmp.path().join("agent-client.key")).unwrap();

    let again = run(&["--dir", dir]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("agent-client.key")).unwrap(),
        before
    );

    let forced = run(&["--dir", dir, "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(
        std::fs::read(tmp.path().join("agent-client.key")).unwrap(),
        before
    );
}

#[test]
fn cli_rejects_rsa_and_bad_input_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let dir = dir.to_str().unwrap();
    let rsa = run(&["--dir", dir, "--key-type", "rsa"]);
    assert!(!rsa.status.success());
    assert!(String::from_utf8_lossy(&rsa.stderr).contains("ring"));
    let san = run(&["--dir", dir, "--agent-server-san", "bad name"]);
    assert!(!san.status.success());
    assert!(String::from_utf8_lossy(&san.stderr).contains("agent-server"));
    assert!(
        !tmp.path().join("out").exists(),
        "nothing written on bad input"
    );
}

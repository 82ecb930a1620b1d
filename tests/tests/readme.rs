//! The README documents every flag each binary accepts: a flag added without documentation
//! fails here. (The tables are rendered by `scripts/flags-table.py` from `--help`.)

use std::path::Path;
use std::process::Command;

fn help_flags(bin: &Path) -> Vec<String> {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{} --help failed", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut flags: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-v, ").unwrap_or(l);
            let name = l.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(format!("--{}", &name[..end]))
        })
        .filter(|f| f != "--help")
        .collect();
    flags.dedup();
    flags
}

#[test]
fn readme_documents_every_flag_of_both_binaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    for name in [
        konnectivity_e2e::bins::SERVER_BIN,
        konnectivity_e2e::bins::AGENT_BIN,
    ] {
        let bin = konnectivity_e2e::bins::binary(name).expect("binary built");
        let flags = help_flags(&bin);
        assert!(flags.len() > 20, "suspiciously few flags parsed: {flags:?}");
        let missing: Vec<&String> = flags
            .iter()
            .filter(|f| !readme.contains(&format!("`{f}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md does not document {} flags of {}: {missing:?} (run scripts/flags-table.py)",
            missing.len(),
            bin.display()
        );
    }
}

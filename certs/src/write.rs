//! Writing the PKI to a directory: all or nothing, keys never readable by others.

use std::fs::{self, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::{CertsError, Pki, PkiPaths};

/// Mode of private-key files, set when the file is created (no window where it is wider).
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files (public data).
pub const CERT_FILE_MODE: u32 = 0o644;

impl Pki {
    /// Writes every certificate and key into `dir` (created if missing) and returns their paths.
    ///
    /// Without `overwrite`, any existing target file is an error naming it, raised before
    /// anything is written. Each file is first written in full to a temporary file in `dir`
    /// (keys created with mode [`KEY_FILE_MODE`], certificates set to [`CERT_FILE_MODE`]) and
    /// only when all are staged are they renamed into place, so a failure while writing
    /// (disk full, permissions) leaves no half-written PKI behind.
    pub fn write(&self, dir: impl AsRef<Path>, overwrite: bool) -> Result<PkiPaths, CertsError> {
        let dir = dir.as_ref();
        let paths = self.paths_in(dir);
        // `paths` was made by mapping `self`, so both lists have the same order and length.
        let files: Vec<(&Path, &str, u32)> = self
            .entries()
            .into_iter()
            .zip(paths.entries())
            .flat_map(|((_, pem), (_, p))| {
                [
                    (p.cert.as_path(), pem.cert_pem.as_str(), CERT_FILE_MODE),
                    (p.key.as_path(), pem.key_pem.as_str(), KEY_FILE_MODE),
                ]
            })
            .collect();

        for (path, _, _) in &files {
            check_target(path, overwrite)?;
        }
        fs::create_dir_all(dir).map_err(|source| CertsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

        let mut staged = Vec::with_capacity(files.len());
        for (path, contents, mode) in &files {
            let tmp = stage(dir, path, contents, *mode).map_err(|source| CertsError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            staged.push((tmp, *path));
        }
        for (tmp, path) in staged {
            let persisted = if overwrite {
                tmp.persist(path)
            } else {
                // Closes the race with another writer that appeared after `check_target`.
                tmp.persist_noclobber(path)
            };
            persisted.map_err(|e| match e.error.kind() {
                io::ErrorKind::AlreadyExists => CertsError::WouldOverwrite { path: path.into() },
                _ => CertsError::Write {
                    path: path.into(),
                    source: e.error,
                },
            })?;
        }
        // Make the renames durable; failing to sync a directory is not worth failing the run.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(paths)
    }
}

/// Refuses an existing target unless overwriting; a directory in the way is refused always.
fn check_target(path: &Path, overwrite: bool) -> Result<(), CertsError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertsError::Write {
            path: path.into(),
            source,
        }),
        Ok(meta) if meta.is_dir() => Err(CertsError::Write {
            path: path.into(),
            source: io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
        }),
        Ok(_) if overwrite => Ok(()),
        Ok(_) => Err(CertsError::WouldOverwrite { path: path.into() }),
    }
}

/// Writes `contents` to a new temporary file beside `target`, created with `mode`.
fn stage(dir: &Path, target: &Path, contents: &str, mode: u32) -> io::Result<NamedTempFile> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // The umask may have narrowed the creation mode; certificates are meant to be world-readable.
    // Keys keep whatever the creation gave (0600 or narrower), never widened.
    if mode == CERT_FILE_MODE {
        tmp.as_file()
            .set_permissions(Permissions::from_mode(mode))?;
    }
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::tests::{verify_client, verify_server};
    use crate::{PemPair, PkiOptions};

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn pki() -> Pki {
        Pki::generate(&PkiOptions {
            agent_names: vec!["node1".into(), "node2".into()],
            ..Default::default()
        })
        .unwrap()
    }

    fn dir_listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_creates_the_directory_with_keys_0600_and_certs_0644() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/pki");
        let pki = pki();
        let paths = pki.write(&dir, false).unwrap();
        for (_, p) in paths.entries() {
            assert_eq!(mode_of(&p.key), KEY_FILE_MODE, "{}", p.key.display());
            assert_eq!(mode_of(&p.cert), CERT_FILE_MODE, "{}", p.cert.display());
        }
        // Exactly the announced files, no temporary files left behind.
        let mut expected: Vec<String> = paths
            .files()
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        expected.sort();
        assert_eq!(dir_listing(&dir), expected);
    }

    #[test]
    fn written_files_hold_the_generated_pem_and_still_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = pki();
        let paths = pki.write(tmp.path(), false).unwrap();
        let load = |p: &crate::CertKeyPaths| PemPair {
            cert_pem: fs::read_to_string(&p.cert).unwrap(),
            key_pem: fs::read_to_string(&p.key).unwrap(),
        };
        for ((_, pem), (_, p)) in pki.entries().into_iter().zip(paths.entries()) {
            assert_eq!(&load(p), pem);
        }
        let ca = load(&paths.agent_ca);
        verify_server(&ca, &load(&paths.agent_server), "localhost").unwrap();
        verify_client(&ca, &load(paths.agent("node2").unwrap())).unwrap();
    }

    #[test]
    fn existing_key_is_refused_by_name_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("agent-node2.key");
        fs::write(&victim, "old key").unwrap();
        let err = pki().write(tmp.path(), false).unwrap_err();
        assert!(
            matches!(&err, CertsError::WouldOverwrite { path } if *path == victim),
            "{err}"
        );
        assert!(err.to_string().contains("agent-node2.key"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "old key");
        assert_eq!(dir_listing(tmp.path()), ["agent-node2.key"]);
    }

    #[test]
    fn existing_certificate_is_refused_too() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("kubelet-ca.crt"), "old").unwrap();
        let err = pki().write(tmp.path(), false).unwrap_err();
        assert!(err.to_string().contains("kubelet-ca.crt"), "{err}");
        assert_eq!(dir_listing(tmp.path()), ["kubelet-ca.crt"]);
    }

    #[test]
    fn force_replaces_existing_files_and_tightens_a_loose_key() {
        let tmp = tempfile::tempdir().unwrap();
        let first = pki();
        let paths = first.write(tmp.path(), false).unwrap();
        let key = &paths.frontend_server.key;
        fs::set_permissions(key, Permissions::from_mode(0o644)).unwrap();

        let second = pki();
        assert!(second.write(tmp.path(), false).is_err());
        second.write(tmp.path(), true).unwrap();
        assert_eq!(
            fs::read_to_string(key).unwrap(),
            second.frontend_server.key_pem
        );
        assert_ne!(
            second.frontend_server.key_pem,
            first.frontend_server.key_pem
        );
        assert_eq!(mode_of(key), KEY_FILE_MODE);
        assert_eq!(dir_listing(tmp.path()).len(), paths.files().len());
    }

    #[test]
    fn a_directory_in_place_of_a_file_is_refused_even_with_force() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("agent-ca.key")).unwrap();
        let err = pki().write(tmp.path(), true).unwrap_err();
        assert!(err.to_string().contains("agent-ca.key"), "{err}");
        assert_eq!(dir_listing(tmp.path()), ["agent-ca.key"]);
    }

    #[test]
    fn an_output_path_that_is_a_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let err = pki().write(&file, false).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}

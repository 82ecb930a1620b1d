//! A per-test working directory holding a freshly generated PKI and the processes' logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use konnectivity_certs::{Pki, PkiOptions, PkiPaths};
use tempfile::TempDir;

use crate::error::{HarnessError, Result};

/// One test's private world: a temporary directory with a PKI in `pki/` and process logs.
///
/// When the test fails (a panic, or an `Err` reported by [`crate::report::e2e`]) the directory
/// is kept and its path printed, so the certificates and logs can be inspected afterwards.
pub struct TestEnv {
    dir: Option<TempDir>,
    root: PathBuf,
    /// Every certificate and key of the test PKI.
    pub pki: PkiPaths,
    counter: AtomicUsize,
}

impl TestEnv {
    /// A new directory with the default PKI (SANs `localhost`, `127.0.0.1`, `::1`).
    pub fn new() -> Result<TestEnv> {
        TestEnv::with_options(&PkiOptions::default())
    }

    /// A new directory with a PKI generated from `opts`.
    pub fn with_options(opts: &PkiOptions) -> Result<TestEnv> {
        let dir = tempfile::Builder::new()
            .prefix("konnectivity-e2e-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the test directory", e))?;
        let root = dir.path().to_path_buf();
        let pki = Pki::generate(opts)?.write(root.join("pki"), false)?;
        Ok(TestEnv {
            dir: Some(dir),
            root,
            pki,
            counter: AtomicUsize::new(0),
        })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A path inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A fresh, unused path inside the directory: `<stem>-<n>.<ext>`.
    pub fn unique_file(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!("{stem}-{n}.{ext}"))
    }

    /// A second, unrelated PKI (different CAs) in a sub-directory: "certificates from another CA".
    pub fn foreign_pki(&self) -> Result<PkiPaths> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Ok(Pki::generate(&PkiOptions::default())?
            .write(self.root.join(format!("foreign-pki-{n}")), false)?)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if std::thread::panicking() {
            let kept = dir.keep();
            eprintln!(
                "[e2e] test failed; its directory is kept at {}",
                kept.display()
            );
        } else {
            // Deleted or kept by `report::report`, once the test's outcome is known.
            crate::report::park_dir(dir);
        }
    }
}

//! Failure diagnostics for tests that return `Result`.
//!
//! A test that fails by returning `Err` drops its fixtures *before* the harness learns of the
//! failure, so drop-time "am I panicking?" checks cannot decide whether to print logs. Instead,
//! dropped processes and test directories are parked in a per-thread list; [`report`] (called
//! by [`e2e`] with the test's result) prints the logs and keeps the directories
//! on failure, and deletes them on success. Unreported entries are deleted when the thread ends.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

/// Hard limit on one end-to-end test: a hung test fails with its logs instead of hanging CI.
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// A dropped process's identity and log.
pub(crate) struct ProcessRecord {
    pub name: String,
    pub pid: u32,
    pub args: Vec<String>,
    pub log: PathBuf,
}

thread_local! {
    static PROCESSES: RefCell<Vec<ProcessRecord>> = const { RefCell::new(Vec::new()) };
    static DIRS: RefCell<Vec<TempDir>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn park_process(record: ProcessRecord) {
    let _ = PROCESSES.try_with(|p| p.borrow_mut().push(record));
}

pub(crate) fn park_dir(dir: TempDir) {
    // If the thread is ending the directory is simply deleted.
    let _ = DIRS.try_with(|d| d.borrow_mut().push(dir));
}

/// Ends a test: on `Err`, prints the log tail of every process the test ran, keeps the test
/// directories, and panics with the error; on `Ok`, deletes the directories.
pub fn report(result: anyhow::Result<()>) {
    let processes = PROCESSES.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let dirs = DIRS.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let Err(error) = result else { return };
    for p in &processes {
        let log = std::fs::read(&p.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<unreadable: {e}>"));
        eprintln!(
            "----- {} (pid {}, args {:?}) log tail, full log {} -----\n{}\n----- end of {} -----",
            p.name,
            p.pid,
            p.args,
            p.log.display(),
            crate::process::tail(&log, crate::process::LOG_TAIL_LINES),
            p.name
        );
    }
    for dir in dirs {
        eprintln!(
            "[e2e] test failed; its directory is kept at {}",
            dir.keep().display()
        );
    }
    panic!("{error:?}");
}

/// Runs an end-to-end test body: bounded by [`TEST_DEADLINE`], with process logs printed and
/// the test directory kept when it fails (see [`report`]).
///
/// ```ignore
/// #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// async fn dial_works() {
///     e2e(async {
///         let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
///         Ok(())
///     })
///     .await
/// }
/// ```
pub async fn e2e(body: impl std::future::Future<Output = anyhow::Result<()>>) {
    let result = match tokio::time::timeout(TEST_DEADLINE, body).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "test exceeded its deadline of {TEST_DEADLINE:?}"
        )),
    };
    report(result);
}

//! `konnectivity-kubectl`: flags → [`konnectivity_kubectl::run`] → exit status.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use konnectivity_kubectl::{run, Cli, EXIT_FAILURE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    konnectivity_kubectl::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for tasks blocked on stdin reads: the process is done.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

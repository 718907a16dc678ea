//! The `minke` command line over the image library (`minke`) and the host shim (`minke-shim`):
//! argument parsing, progress, printing and exit codes. The image and VM logic lives in the two
//! libraries; every command here is a call into one of them.
//!
//! Exit codes: 0 success; 1 failure (the whole error chain is printed once on stderr);
//! 2 bad usage; `minke run -- CMD` and `minke exec` exit with CMD's own code.

#![forbid(unsafe_code)]

mod cli;
mod progress;
mod run;
mod run_image;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Warnings from the libraries (`minke: warning: …`) on stderr; MINKE_LOG=debug for more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("MINKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // Our own stdout closed by its reader (`minke inspect | head`) ends quietly: the
            // error is then the bare write error. A broken pipe anywhere else (a connection to
            // a guest, a command's output that could not be delivered) is a failure and says so.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("minke: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

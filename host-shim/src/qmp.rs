//! QMP, QEMU's control protocol, through the `qapi` crate's synchronous client.
//!
//! A connection is opened per operation (greeting, `qmp_capabilities`, one command) so that a
//! VM attached from another process can use the same socket: QEMU serves one QMP client at a
//! time on a socket chardev.

use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::qmp;

/// A QMP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("cannot connect to the QMP socket {path} (is the VM running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// QEMU closed the connection or sent something that is not QMP.
    #[error("QMP {what} failed")]
    Io {
        /// Which step.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// QEMU refused the command.
    #[error("QEMU refused `{command}`: {message}")]
    Refused {
        /// Command name.
        command: &'static str,
        /// QEMU's description.
        message: String,
    },
}

/// How long one QMP exchange may take before it is abandoned.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one QMP command on the socket at `path`.
pub(crate) fn execute<C: qapi::Command>(path: &Path, cmd: &C) -> Result<C::Ok, QmpError> {
    let s = UnixStream::connect(path).map_err(|source| QmpError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |what| move |source| QmpError::Io { what, source };
    s.set_read_timeout(Some(QMP_TIMEOUT)).map_err(io("setup"))?;
    let mut reader = BufReader::new(s.try_clone().map_err(io("setup"))?);
    // The greeting is read here rather than by `qapi` so that an early EOF is an error, not a
    // panic inside the library.
    let mut greeting = String::new();
    reader.read_line(&mut greeting).map_err(io("greeting"))?;
    serde_json::from_str::<qmp::QapiCapabilities>(&greeting).map_err(|e| QmpError::Io {
        what: "greeting",
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {greeting:?}")),
    })?;
    let mut q = qapi::Qmp::new(qapi::Stream::new(reader, s));
    q.execute(&qmp::qmp_capabilities { enable: None })
        .map_err(|e| refused("qmp_capabilities", e))?;
    q.execute(cmd).map_err(|e| refused(C::NAME, e))
}

fn refused(command: &'static str, e: qapi::ExecuteError) -> QmpError {
    match e {
        qapi::ExecuteError::Io(source) => QmpError::Io {
            what: command,
            source,
        },
        qapi::ExecuteError::Qapi(e) => QmpError::Refused {
            command,
            message: e.desc,
        },
    }
}

/// Pauses the vCPUs.
pub(crate) fn stop(path: &Path) -> Result<(), QmpError> {
    execute(path, &qmp::stop {}).map(drop)
}

/// Resumes the vCPUs.
pub(crate) fn cont(path: &Path) -> Result<(), QmpError> {
    execute(path, &qmp::cont {}).map(drop)
}

/// Presses the ACPI power button.
pub(crate) fn system_powerdown(path: &Path) -> Result<(), QmpError> {
    execute(path, &qmp::system_powerdown {}).map(drop)
}

/// Ends QEMU at once.
pub(crate) fn quit(path: &Path) -> Result<(), QmpError> {
    execute(path, &qmp::quit {}).map(drop)
}

/// Whether the vCPUs run, and QEMU's run state name.
pub(crate) fn query_status(path: &Path) -> Result<(bool, String), QmpError> {
    let st = execute(path, &qmp::query_status {})?;
    let name = serde_json::to_value(st.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok((st.running, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    #[test]
    fn speaks_qmp_to_a_fake_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(
                br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}
"#,
            )
            .unwrap();
            let mut lines = Vec::new();
            for reply in [
                r#"{"return": {}}"#,
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}
{"return": {"running": false, "singlestep": false, "status": "paused"}}"#,
            ] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                lines.push(line);
                writeln!(w, "{reply}").unwrap();
            }
            lines
        });
        assert_eq!(query_status(&path).unwrap(), (false, "paused".to_string()));
        let lines = h.join().unwrap();
        assert!(lines[0].contains("qmp_capabilities"), "{lines:?}");
        assert!(lines[1].contains("query-status"), "{lines:?}");
    }

    #[test]
    fn early_eof_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || drop(l.accept().unwrap()));
        assert!(matches!(
            stop(&path),
            Err(QmpError::Io {
                what: "greeting",
                ..
            })
        ));
        h.join().unwrap();
    }
}

//! The serial agent: the guest end of the virtio-serial transport.
//!
//! The host shim falls back to virtio-serial when it has no vsock, and then adds
//! `minke.transport=serial` to the kernel command line. This agent finds the virtio-serial
//! port named [`PORT_NAME`] (`/sys/class/virtio-ports/vportNpM/name`: no udev makes
//! `/dev/virtio-ports/` links in a minke guest), opens `/dev/vportNpM` and runs the guest end
//! of the stream multiplexer ([`minke_mux`]; frames and rules in [`minke_protocol::mux`]):
//!
//! - a stream the host opens to port N is bridged to [`crate::conn::port_socket`]`(N)`, where
//!   the agent serving that port listens under this transport (the control agent, 1024);
//! - a guest process reaches host port N by sending `CONNECT N` on
//!   [`crate::conn::HOST_SOCKET`] (the time sync agent, [`minke_protocol::TIMESYNC_PORT`]).
//!
//! It reports ready once the host has welcomed its session, so `minke: ready` on the console
//! still means the host can connect. Under vsock it has nothing to do, and PID1 does not start
//! it (it counts as ready); started anyway, it reports ready and exits 0, and PID1 does not
//! restart an agent that exits 0.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use minke_mux::connect::ConnectServer;
use minke_mux::{Acceptor, Line, Mux, OpenError, Role};
use minke_protocol::mux::PORT_NAME;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::conn;

/// Where the kernel lists virtio-serial ports.
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long the port may take to appear after the module loaded.
const PORT_WAIT: Duration = Duration::from_secs(30);
/// How long a guest process's `CONNECT` may wait for the host to accept.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the serial agent; returns the exit code (only when there is nothing to do, or the
/// line failed).
pub fn run() -> i32 {
    if !conn::serial_transport() {
        eprintln!(
            "minke agent serial: the host uses vsock this boot (no {}={} on the kernel command \
             line): nothing to do",
            minke_protocol::mux::TRANSPORT_PARAM,
            minke_protocol::mux::TRANSPORT_SERIAL
        );
        crate::notify_ready("serial");
        return 0;
    }
    let Some(dev) = wait_for_port(Path::new(PORTS_DIR), PORT_NAME, PORT_WAIT) else {
        eprintln!(
            "minke agent serial: no virtio-serial port named {PORT_NAME} appeared in {PORTS_DIR} \
             within {PORT_WAIT:?}: is the virtio_console module in the image, and does QEMU have \
             `-device virtserialport,name={PORT_NAME}`?"
        );
        return 1;
    };
    match serve(&dev) {
        Ok(()) => 1,
        Err(e) => {
            eprintln!("minke agent serial: {e}");
            1
        }
    }
}

/// Runs the multiplexer on `dev` until the line fails.
fn serve(dev: &Path) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    let dup = |f: &File| {
        f.try_clone()
            .map_err(|e| format!("cannot duplicate the descriptor of {}: {e}", dev.display()))
    };
    let (reader, watch) = (dup(&file)?, dup(&file)?);
    let acceptor: Acceptor = Arc::new(|port| UnixStream::connect(conn::port_socket(port)));
    let line = Line {
        reader: Box::new(reader),
        writer: Box::new(file),
        wait_peer: Some(Box::new(move || wait_for_host(&watch))),
    };
    let mux = Mux::start(Role::Guest, line, acceptor).map_err(|e| {
        format!(
            "cannot start the multiplexer: {}",
            minke_protocol::error_chain(&e)
        )
    })?;
    std::fs::create_dir_all(conn::RUN_DIR)
        .map_err(|e| format!("cannot create {}: {e}", conn::RUN_DIR))?;
    let host = Path::new(conn::HOST_SOCKET);
    let server = ConnectServer::start(&mux, host, OPEN_TIMEOUT)
        .map_err(|e| format!("cannot listen on {}: {e}", host.display()))?;
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {} to root: {e}", host.display()))?;
    eprintln!(
        "minke agent serial: multiplexing {} ({PORT_NAME}); waiting for the host",
        dev.display()
    );
    loop {
        match mux.wait_up(Duration::from_secs(10)) {
            Ok(()) => break,
            Err(OpenError::NoSession(t)) => {
                eprintln!("minke agent serial: no answer from the host after {t:?}; still waiting")
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    crate::notify_ready("serial");
    eprintln!("minke agent serial: session with the host is up");
    mux.wait_closed();
    drop(server);
    let why = mux.stats().last_error.unwrap_or_default();
    Err(format!("the serial line closed: {why}"))
}

/// The device node of the virtio-serial port named `name`, once the kernel lists it.
pub fn find_port(ports_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(ports_dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    entries.into_iter().find_map(|port| {
        let n = std::fs::read_to_string(ports_dir.join(&port).join("name")).ok()?;
        (n.trim_end_matches('\n') == name).then(|| Path::new("/dev").join(port))
    })
}

/// Waits for the port to be listed and its device node to exist: the port is announced by
/// the device after the driver loaded, a little later than the module load returns.
fn wait_for_port(ports_dir: &Path, name: &str, limit: Duration) -> Option<PathBuf> {
    let end = Instant::now() + limit;
    let mut step = Duration::from_millis(2);
    loop {
        if let Some(dev) = find_port(ports_dir, name).filter(|d| d.exists()) {
            return Some(dev);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(100));
    }
}

/// The port reads end of file while no host is connected to its chardev, and polls as hung
/// up until one is: wait for that to end. Returns false if the descriptor fails.
fn wait_for_host(port: &File) -> bool {
    eprintln!("minke agent serial: the host is not connected to the port; waiting");
    loop {
        let mut fds = [PollFd::new(port, PollFlags::IN)];
        let t = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        match poll(&mut fds, Some(&t)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
        let rev = fds[0].revents();
        if rev.contains(PollFlags::NVAL) || rev.contains(PollFlags::ERR) {
            return false;
        }
        if !rev.contains(PollFlags::HUP) {
            eprintln!("minke agent serial: the host is back");
            return true;
        }
        // Hung up polls as ready at once: pace the checks.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name() {
        let dir = std::env::temp_dir().join(format!("minke-ports-{}", std::process::id()));
        for (port, name) in [("vport1p1", "other\n"), ("vport1p2", "minke.control\n")] {
            std::fs::create_dir_all(dir.join(port)).unwrap();
            std::fs::write(dir.join(port).join("name"), name).unwrap();
        }
        assert_eq!(
            find_port(&dir, "minke.control"),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(find_port(&dir, "minke"), None);
        assert_eq!(find_port(&dir.join("missing"), "minke.control"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

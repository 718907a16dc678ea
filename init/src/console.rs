//! Console output of the init: its own `minke-init:` log lines, marker lines, and the
//! non-blocking path that forwards service output without ever stalling PID1.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

/// Logs one `minke-init: …` line on the console (stderr).
macro_rules! log {
    ($($t:tt)*) => { $crate::console::line(format_args!($($t)*)) };
}
pub(crate) use log;

/// Writes `minke-init: ARGS\n` to stderr in one write, ignoring failures.
pub fn line(args: fmt::Arguments<'_>) {
    let text = format!("minke-init: {args}\n");
    write_all(rustix::stdio::stderr(), text.as_bytes());
}

/// Prints a line without prefix (the `minke: …` markers the host waits for).
pub fn marker(text: &str) {
    let text = format!("{text}\n");
    write_all(rustix::stdio::stderr(), text.as_bytes());
}

/// Prints a framed warning that nobody can miss on a boot log.
pub fn loud(args: fmt::Arguments<'_>) {
    let text = format!(
        "minke-init: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         minke-init: !!! {args}\n\
         minke-init: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    write_all(rustix::stdio::stderr(), text.as_bytes());
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return,
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// A second, non-blocking descriptor on the console for service output: when the serial line
/// can't keep up, lines are dropped (and counted) rather than blocking the event loop.
#[derive(Debug, Default)]
pub struct ServiceConsole {
    fd: Option<OwnedFd>,
    dropped: u64,
}

impl ServiceConsole {
    /// Opens `/dev/console` non-blocking; falls back to blocking stderr if that fails.
    pub fn open() -> Self {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            "/dev/console",
            OFlags::WRONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok();
        ServiceConsole { fd, dropped: 0 }
    }

    /// Writes `NAME: LINE\n`, or counts it as dropped when the console is busy.
    pub fn service_line(&mut self, name: &str, line: &[u8]) {
        let mut text = Vec::with_capacity(name.len() + line.len() + 3);
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(line);
        text.push(b'\n');
        let fd = match &self.fd {
            Some(fd) => fd.as_fd(),
            None => rustix::stdio::stderr(),
        };
        if self.dropped > 0 {
            let note = format!("minke-init: {} console lines dropped\n", self.dropped);
            if rustix::io::write(fd, note.as_bytes()).is_ok() {
                self.dropped = 0;
            }
        }
        let mut buf = text.as_slice();
        while !buf.is_empty() {
            match rustix::io::write(fd, buf) {
                Ok(0) => break,
                Ok(n) => buf = buf.get(n..).unwrap_or_default(),
                Err(Errno::INTR) => {}
                Err(_) => {
                    self.dropped += 1;
                    break;
                }
            }
        }
    }
}

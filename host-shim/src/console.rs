//! The guest's serial console, written to `console.log` by the booting process with a cap.
//!
//! The guest decides how much it prints, so QEMU must not write the log file itself (a
//! `-chardev file` grows without bound). Instead QEMU's console chardev is a Unix socket in
//! client mode that connects to [`ConsoleLog::listen`]'s socket `console.sock` in the state
//! directory (0700), and this module copies what arrives into `console.log` (0600). When the
//! file reaches [`ROTATE_AT`] bytes it becomes `console.log.1` (replacing the previous one) and
//! a new `console.log` starts, so the logs hold at most twice that. Below the cap the file
//! holds exactly what the guest printed, as before.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::state::{self, files, StateError};

/// Size at which `console.log` is moved to `console.log.1` and started again.
pub const ROTATE_AT: u64 = 8 << 20;
/// Where the previous `console.log` goes when it is full.
pub const ROTATED: &str = "console.log.1";

/// Copies the console into `console.log` on a thread of its own until the source ends.
#[derive(Debug)]
pub struct ConsoleLog {
    thread: Option<JoinHandle<Result<(), StateError>>>,
    stop: Arc<AtomicBool>,
    socket: Option<PathBuf>,
    written: Arc<Written>,
}

/// How many bytes reached the log so far, for those waiting for the guest to print something.
#[derive(Debug, Default)]
struct Written {
    bytes: Mutex<u64>,
    grew: Condvar,
}

impl Written {
    fn add(&self, n: u64) {
        if let Ok(mut b) = self.bytes.lock() {
            *b += n;
            self.grew.notify_all();
        }
    }
}

impl ConsoleLog {
    /// Truncates `state_dir/console.log` (mode 0600) and copies `source` into it, rotating at
    /// [`ROTATE_AT`], until `source` ends or fails.
    pub fn start(state_dir: &Path, source: impl Read + Send + 'static) -> Result<Self, StateError> {
        Self::start_capped(state_dir, source, ROTATE_AT)
    }

    fn start_capped(
        state_dir: &Path,
        mut source: impl Read + Send + 'static,
        cap: u64,
    ) -> Result<Self, StateError> {
        let written = Arc::new(Written::default());
        let mut w = Rotating::create(state_dir, cap, written.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("minke-console".into())
            .spawn(move || w.copy_from(&mut source))
            .map_err(state::io_err(state_dir))?;
        Ok(ConsoleLog {
            thread: Some(thread),
            stop,
            socket: None,
            written,
        })
    }

    /// Creates `console.log` (mode 0600), listens on `state_dir/console.sock` and copies the
    /// first connection's bytes into the log. Call it before starting QEMU with
    /// `-chardev socket,id=con,path=STATE/console.sock` (client mode, the default), so QEMU
    /// finds the socket listening and no early console output is lost.
    pub fn listen(state_dir: &Path) -> Result<Self, StateError> {
        Self::listen_capped(state_dir, ROTATE_AT)
    }

    fn listen_capped(state_dir: &Path, cap: u64) -> Result<Self, StateError> {
        let path = state::check_socket_path(state_dir, files::CONSOLE_SOCKET)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(state::io_err(&path))?;
        let written = Arc::new(Written::default());
        let mut w = Rotating::create(state_dir, cap, written.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("minke-console".into())
            .spawn(move || {
                let (mut conn, _) = listener.accept().map_err(state::io_err(&w.path))?;
                drop(listener);
                if stop2.load(Ordering::SeqCst) {
                    return Ok(());
                }
                w.copy_from(&mut conn)
            })
            .map_err(state::io_err(state_dir))?;
        Ok(ConsoleLog {
            thread: Some(thread),
            stop,
            socket: Some(path),
            written,
        })
    }

    /// How many bytes the log has taken in so far.
    pub fn written(&self) -> u64 {
        self.written.bytes.lock().map_or(0, |b| *b)
    }

    /// Waits until the log has taken in more than `seen` bytes, or `timeout` passed; returns
    /// the count then. Lets a reader of `console.log` look again as soon as the guest printed.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let Ok(bytes) = self.written.bytes.lock() else {
            return seen;
        };
        match self
            .written
            .grew
            .wait_timeout_while(bytes, timeout, |b| *b <= seen)
        {
            Ok((b, _)) => *b,
            Err(_) => seen,
        }
    }

    /// Waits until the source has ended; returns the copy's error, if any.
    pub fn finish(mut self) -> Result<(), StateError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StateError::Io {
                path: PathBuf::from(files::CONSOLE),
                source: io::Error::other("the console thread panicked"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for ConsoleLog {
    /// Lets the copy run on until its source ends (QEMU's exit); a listener still waiting for
    /// QEMU is woken and ends.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(p) = &self.socket {
            if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                let _ = std::os::unix::net::UnixStream::connect(p);
            }
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `console.log` with rotation to `console.log.1`.
struct Rotating {
    path: PathBuf,
    old: PathBuf,
    file: File,
    len: u64,
    cap: u64,
    written: Arc<Written>,
}

impl Rotating {
    fn create(dir: &Path, cap: u64, written: Arc<Written>) -> Result<Self, StateError> {
        let path = dir.join(files::CONSOLE);
        let file = state::create_private(&path)?;
        Ok(Rotating {
            old: dir.join(ROTATED),
            path,
            file,
            len: 0,
            cap: cap.max(1),
            written,
        })
    }

    fn copy_from(&mut self, source: &mut dyn Read) -> Result<(), StateError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The source going away (QEMU killed) ends the log like an EOF.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(state::io_err(&self.path)(e)),
            };
            self.write(&buf[..n])?;
            self.written.add(n as u64);
        }
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), StateError> {
        while !bytes.is_empty() {
            if self.len >= self.cap {
                self.rotate()?;
            }
            let room = (self.cap - self.len).min(bytes.len() as u64) as usize;
            self.file
                .write_all(&bytes[..room])
                .map_err(state::io_err(&self.path))?;
            self.len += room as u64;
            bytes = &bytes[room..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), StateError> {
        std::fs::rename(&self.path, &self.old).map_err(state::io_err(&self.old))?;
        self.file = state::create_private(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_small_log_is_what_the_guest_printed() {
        let d = tempfile::tempdir().unwrap();
        let text = b"boot\nminke: ready\n".to_vec();
        ConsoleLog::start(d.path(), io::Cursor::new(text.clone()))
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(std::fs::read(d.path().join(files::CONSOLE)).unwrap(), text);
        assert!(!d.path().join(ROTATED).exists());
        let mode = std::fs::metadata(d.path().join(files::CONSOLE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_flood_keeps_at_most_two_files_of_the_cap_holding_the_latest_bytes() {
        let d = tempfile::tempdir().unwrap();
        let flood: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        ConsoleLog::start_capped(d.path(), io::Cursor::new(flood.clone()), 1000)
            .unwrap()
            .finish()
            .unwrap();
        let cur = std::fs::read(d.path().join(files::CONSOLE)).unwrap();
        let old = std::fs::read(d.path().join(ROTATED)).unwrap();
        assert_eq!((old.len(), cur.len()), (1000, 1000));
        let mut both = old;
        both.extend_from_slice(&cur);
        assert_eq!(both, flood[flood.len() - 2000..]);
        for f in [files::CONSOLE, ROTATED] {
            let mode = std::fs::metadata(d.path().join(f)).unwrap().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn the_socket_takes_what_qemu_sends() {
        let d = tempfile::tempdir().unwrap();
        let log = ConsoleLog::listen_capped(d.path(), 1 << 20).unwrap();
        let mut qemu =
            std::os::unix::net::UnixStream::connect(d.path().join(files::CONSOLE_SOCKET)).unwrap();
        qemu.write_all(b"hello from ttyS0\n").unwrap();
        drop(qemu);
        log.finish().unwrap();
        assert_eq!(
            std::fs::read(d.path().join(files::CONSOLE)).unwrap(),
            b"hello from ttyS0\n"
        );
        // Dropped before QEMU ever connected: the listener ends, the socket is removed.
        let d2 = tempfile::tempdir().unwrap();
        drop(ConsoleLog::listen(d2.path()).unwrap());
        assert!(!d2.path().join(files::CONSOLE_SOCKET).exists());
    }
}
